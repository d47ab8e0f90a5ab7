"""Desired events against the snapshot: whole-frame diff, no Dagster import."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from assets.render import EVENT_COLUMNS
from resources.providers.base import FINGERPRINT_FIELDS

# A move is one change: the event leaves ``from_calendar`` (a new email, another team
# calendar) for ``calendar``; calendar_sync deletes it there before it creates it here.
OPS = ("create", "update", "delete", "move")
CHANGE_COLUMNS: tuple[str, ...] = (
    "op",
    *EVENT_COLUMNS,
    "from_calendar",
    "provider_event_id",
    "version",
)


@dataclass
class Diff:
    """The plan for one run scope: changes to apply, snapshot-only relocations, unchanged count.

    ``changes`` holds one row per (target, event key); a move carries the new calendar and
    payload, ``from_calendar`` and the old calendar's provider id and version.
    """

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
    A leave whose event belongs in another calendar now is one move.
    """
    snap = snapshot[~snapshot["event_key"].isin(list(protected_keys))]
    parts: list[pd.DataFrame] = []
    relocations: list[pd.DataFrame] = []
    unchanged: list[pd.DataFrame] = []
    targets = sorted(set(desired["target"].unique()) | set(snap["target"].unique()))
    for target in targets:
        want = desired[desired["target"] == target]
        have = snap[snap["target"] == target]
        # One hash look-up per desired key: positions of the snapshot row, -1 when none.
        pos = pd.Index(have["event_key"]).get_indexer(want["event_key"])
        matched = pos >= 0
        at = pos[matched]
        old_fp = have["fingerprint"].to_numpy(dtype="int64")[at]
        both = want[matched]
        moved_calendar = _differs(both["calendar"], have["calendar"], at)
        changed = ~moved_calendar & (both["fingerprint"].to_numpy(dtype="int64") != old_fp)
        same = ~moved_calendar & ~changed
        relocated = same & (
            _differs(both["legal_entity"], have["legal_entity"], at)
            | _differs(both["partition_date"], have["partition_date"], at)
        )
        gone = np.ones(len(have), dtype=bool)
        gone[at] = False
        moved_from = have.iloc[at[moved_calendar]]
        moves = _as_changes(both[moved_calendar], "move", moved_from)
        moves["from_calendar"] = moved_from["calendar"].to_numpy()
        parts += [
            _deletes(have[gone]),
            moves,
            _as_changes(both[changed], "update", have.iloc[at[changed]]),
            _as_changes(want[~matched], "create", None),
        ]
        relocations.append(
            both.loc[relocated, ["target", "event_key", "legal_entity", "partition_date"]]
        )
        unchanged.append(
            both[same]
            .groupby("legal_entity")
            .size()
            .rename("unchanged")
            .reset_index()
            .assign(target=target)
        )
    parts = [p for p in parts if len(p)]
    changes = (
        pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=list(CHANGE_COLUMNS))
    )
    reloc = [r for r in relocations if len(r)]
    kept = [u for u in unchanged if len(u)]
    return Diff(
        changes,
        pd.concat(reloc, ignore_index=True)
        if reloc
        else pd.DataFrame(columns=["target", "event_key", "legal_entity", "partition_date"]),
        pd.concat(kept, ignore_index=True)[["target", "legal_entity", "unchanged"]]
        if kept
        else pd.DataFrame(columns=["target", "legal_entity", "unchanged"]),
    )


def _differs(new: pd.Series, old: pd.Series, at: np.ndarray) -> np.ndarray:
    """new[i] != old[at[i]], compared in the columns' own arrays (Arrow strings stay Arrow)."""
    taken = old.array.take(at)
    if type(taken) is type(new.array):
        unequal = new.array != taken
        if hasattr(unequal, "to_numpy"):
            return unequal.to_numpy(dtype=bool, na_value=True)
        return np.asarray(unequal, dtype=bool)
    return new.to_numpy(dtype=object) != np.asarray(taken, dtype=object)


def _as_changes(rows: pd.DataFrame, op: str, snapshot_rows: pd.DataFrame | None) -> pd.DataFrame:
    """Create/update rows; updates carry the provider's event id and version from the snapshot."""
    if rows.empty:
        return pd.DataFrame(columns=list(CHANGE_COLUMNS))
    out = rows[list(EVENT_COLUMNS)].copy()
    out.insert(0, "op", op)
    out["from_calendar"] = None
    out["provider_event_id"] = (
        None if snapshot_rows is None else snapshot_rows["provider_event_id"].to_numpy()
    )
    out["version"] = None if snapshot_rows is None else snapshot_rows["version"].to_numpy()
    return out


def _deletes(rows: pd.DataFrame) -> pd.DataFrame:
    if rows.empty:
        return pd.DataFrame(columns=list(CHANGE_COLUMNS))
    out = pd.DataFrame(
        {
            "op": "delete",
            "target": rows["target"],
            "event_key": rows["event_key"],
            "leave_id": rows["leave_id"],
            "calendar": rows["calendar"],
            "legal_entity": rows["legal_entity"],
            "partition_date": rows["partition_date"],
        }
    )
    for name in (*FINGERPRINT_FIELDS, "fingerprint", "from_calendar"):
        out[name] = pd.NA if name == "fingerprint" else None
    out["provider_event_id"] = rows["provider_event_id"]
    out["version"] = rows["version"]
    return out[list(CHANGE_COLUMNS)]
