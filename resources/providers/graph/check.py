"""Test settings: credentials, token, permission, and a sample mailbox's calendar; writes nothing."""

from __future__ import annotations

from typing import TYPE_CHECKING
from urllib.parse import quote

from resources.providers.base import CheckReport, FatalProviderError
from resources.providers.graph.client import check_ca_bundle
from resources.providers.graph.mapping import READ_PREFER
from resources.providers.graph.signin import token_roles

if TYPE_CHECKING:
    from resources.providers.graph.provider import GraphCalendarProvider

WRITE_ROLE = "Calendars.ReadWrite"


def check(provider: GraphCalendarProvider, sample_calendar: str) -> CheckReport:
    """Each step with its outcome and, when it fails, what to fix."""
    s = provider.settings
    report = CheckReport(provider.target_name)
    try:
        provider.signin.check_credential()
        check_ca_bundle(s.ca_bundle)
        report.add(
            "credentials in the environment",
            True,
            s.client_certificate_env or s.client_secret_env,
        )
    except FatalProviderError as err:
        report.add("credentials in the environment", False, str(err))
        return report
    try:
        token = provider.signin.renew()
        report.add("token from Entra ID", True, f"tenant {s.tenant_id}, app {s.client_id}")
    except FatalProviderError as err:
        report.add("token from Entra ID", False, str(err))
        return report
    roles = token_roles(token)
    if roles is None:
        report.add(
            "application permission Calendars.ReadWrite",
            True,
            "token cannot be inspected; the first write will tell",
        )
    else:
        ok = WRITE_ROLE in roles
        report.add(
            "application permission Calendars.ReadWrite",
            ok,
            "granted"
            if ok
            else (
                f"the token carries {sorted(roles) or 'no application permission'}: in the "
                "Entra admin center, App registrations > API permissions > Add a permission > "
                "Microsoft Graph > Application permissions > Calendars.ReadWrite, then "
                "'Grant admin consent'"
            ),
        )
    client = provider.client
    mailbox = sample_calendar.strip().lower()
    url = f"{client.graph_base}/users/{quote(mailbox, safe='@')}/calendar?$select=id,name,canEdit"
    try:
        reply = client.get_with_retry(url, 'IdType="ImmutableId"', mailbox)
    except FatalProviderError as err:
        report.add(f"read the calendar of {sample_calendar}", False, str(err))
        return report
    if reply.status != 200:
        report.add(
            f"read the calendar of {sample_calendar}",
            False,
            provider.explain_mailbox_error(sample_calendar, reply),
        )
        return report
    can_edit = bool(reply.body.get("canEdit", True))
    report.add(
        f"read the calendar of {sample_calendar}", True, f"calendar {reply.body.get('name', '')!r}"
    )
    report.add(
        f"calendar of {sample_calendar} is editable by the app",
        can_edit,
        "" if can_edit else "canEdit is false for this calendar",
    )
    tags = provider.tags
    lookup = client.graph_base + tags.lookup_url(mailbox, tags.key_equals("leave-check"), 1)
    reply = client.get_with_retry(lookup, READ_PREFER, mailbox)
    report.add(
        "find events by the leavesync extended property",
        reply.status == 200,
        "" if reply.status == 200 else reply.describe(),
    )
    return report
