"""Desired events against the snapshot: whole-frame diff, no Dagster import."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import pandas as pd

from assets.render import EVENT_COLUMNS
from resources.providers.base import FINGERPRINT_FIELDS

OPS = ("create", "update", "delete")
CHANGE_COLUMNS: tuple[str, ...] = (
    "op",
    *EVENT_COLUMNS,
    "provider_event_id",
    "version",
)
_KEY = ["target", "event_key"]


@dataclass
class Diff:
    """The plan for one run scope: changes to apply, snapshot-only relocations, unchanged count."""

    changes: pd.DataFrame
    relocations: pd.DataFrame
    unchanged: pd.DataFrame  # target, legal_entity, count

    def counts(self) -> pd.DataFrame:
        """created/updated/deleted/unchanged per target and legal entity."""
        frames = []
        if not self.changes.empty:
            c = self.changes.groupby(["target", "legal_entity", "op"]).size().unstack(fill_value=0)
            frames.append(c)
        if not self.unchanged.empty:
            frames.append(self.unchanged.set_index(["target", "legal_entity"])[["unchanged"]])
        if not frames:
            return pd.DataFrame(columns=["target", "legal_entity", *OPS, "unchanged"])
        out = pd.concat(frames, axis=1).fillna(0)
        for col in (*OPS, "unchanged"):
            if col not in out:
                out[col] = 0
        return out[[*OPS, "unchanged"]].astype(int).reset_index()


def compute_diff(
    desired: pd.DataFrame, snapshot: pd.DataFrame, protected_keys: Iterable[str] = ()
) -> Diff:
    """Compare desired events with the snapshot rows in scope (plus rows of desired keys).

    ``protected_keys``: event keys of quarantined leaves; their exported events are left alone.
    A leave whose event moved to another calendar is a delete there and a create here.
    """
    snap = snapshot[["target", "event_key", "leave_id", "calendar", "legal_entity",
                     "partition_date", "fingerprint", "provider_event_id", "version"]]
    snap = snap[~snap["event_key"].isin(list(protected_keys))]
    # Nullable ints: the outer merge must not turn 64-bit fingerprints into lossy floats.
    snap = snap.astype({"fingerprint": "Int64"})
    desired = desired.astype({"fingerprint": "Int64"})
    merged = desired.merge(snap, on=_KEY, how="outer", suffixes=("", "_snap"), indicator=True)
    side = merged["_merge"]
    both = side.eq("both")
    moved_calendar = both & merged["calendar"].ne(merged["calendar_snap"])
    changed = both & ~moved_calendar & merged["fingerprint"].ne(merged["fingerprint_snap"]).fillna(False)
    relocated = both & ~moved_calendar & ~changed & (
        merged["legal_entity"].ne(merged["legal_entity_snap"])
        | merged["partition_date"].ne(merged["partition_date_snap"])
    )
    unchanged_mask = both & ~moved_calendar & ~changed

    creates = merged[side.eq("left_only") | moved_calendar]
    updates = merged[changed]
    deletes = merged[side.eq("right_only") | moved_calendar]

    parts = [
        _as_changes(creates, "create", keep_ids=False),
        _as_changes(updates, "update", keep_ids=True),
        _deletes(deletes),
    ]
    changes = pd.concat([p for p in parts if not p.empty], ignore_index=True) if any(
        not p.empty for p in parts
    ) else pd.DataFrame(columns=list(CHANGE_COLUMNS))
    # Deletes first: a leave moving between calendars frees its key before it is recreated.
    order = changes["op"].map({"delete": 0, "update": 1, "create": 2})
    changes = changes.assign(_o=order).sort_values("_o", kind="stable").drop(columns="_o")
    changes = changes.reset_index(drop=True)

    relocations = merged.loc[relocated, ["target", "event_key", "legal_entity", "partition_date"]]
    unchanged = (
        merged[unchanged_mask].groupby(["target", "legal_entity"]).size().rename("unchanged").reset_index()
    )
    return Diff(changes, relocations.reset_index(drop=True), unchanged)


def _as_changes(rows: pd.DataFrame, op: str, keep_ids: bool) -> pd.DataFrame:
    if rows.empty:
        return pd.DataFrame(columns=list(CHANGE_COLUMNS))
    out = rows[list(EVENT_COLUMNS)].copy()
    out.insert(0, "op", op)
    out["provider_event_id"] = rows["provider_event_id"] if keep_ids else None
    out["version"] = rows["version"] if keep_ids else None
    return out


def _deletes(rows: pd.DataFrame) -> pd.DataFrame:
    if rows.empty:
        return pd.DataFrame(columns=list(CHANGE_COLUMNS))
    out = pd.DataFrame(
        {
            "op": "delete",
            "target": rows["target"],
            "event_key": rows["event_key"],
            "leave_id": rows["leave_id_snap"],
            "calendar": rows["calendar_snap"],
            "legal_entity": rows["legal_entity_snap"],
            "partition_date": rows["partition_date_snap"],
        }
    )
    for name in (*FINGERPRINT_FIELDS, "fingerprint"):
        out[name] = pd.NA if name == "fingerprint" else None
    out["provider_event_id"] = rows["provider_event_id"]
    out["version"] = rows["version"]
    return out[list(CHANGE_COLUMNS)]
