"""How the assets appear in Dagster's catalog: groups, owners and kinds (icons in the UI)."""

# One group per stage an operator looks at: what HR says, what leavesync does about it, and
# what the calendars hold.
HR_GROUP = "hr"
RECONCILE_GROUP = "reconciliation"
DRIFT_GROUP = "drift"
# The people who answer for leavesync in production: HR systems and IT, as one team.
OWNERS = ["team:hr-it"]
# A provider type's kind: Dagster shows an icon for the well-known ones.
PROVIDER_KINDS = {
    "ics": "icalendar",
    "google": "google",
    "microsoft_graph": "microsoft",
    "ews": "microsoft",
    "caldav": "caldav",
}


def target_kinds(target_types: list[str]) -> set[str]:
    """The kinds of an asset writing to these targets (Dagster allows three kinds)."""
    kinds = sorted({PROVIDER_KINDS.get(t, t) for t in target_types})
    return {"python", *kinds[:2]}
