"""What a run did in each of its partitions (legal entity × month), for the asset pages.

Dagster records one materialization per partition of a ranged run; each carries the counts of
its own legal entity and month, not the whole run's. Pure pandas, no Dagster import.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence

import pandas as pd

from resources.hr import UNASSIGNED, entity_partition_key
from resources.scope import partition_of

APPLIED = ("created", "updated", "deleted", "moved")
# A quarantined row counts in the legal entity partition it was extracted for (its own code
# may be unknown to HR): the extract's partition column.
QUARANTINE_ENTITY = "_partition"
_OP_OF = {"created": "create", "updated": "update", "deleted": "delete", "moved": "move"}


def _entity_key(code: object) -> str:
    if code is None or (isinstance(code, float) and pd.isna(code)) or str(code) == "":
        return UNASSIGNED
    return entity_partition_key(str(code))


def _day(value: object) -> dt.date | None:
    try:
        return dt.date.fromisoformat(str(value)[:10])
    except ValueError:
        return None


class PartitionIndex:
    """A run's partition keys, and the key of an (entity code, start date) pair in the run."""

    def __init__(self, partition_keys: Sequence[str], newest: dt.date) -> None:
        self.keys = [str(k) for k in partition_keys]
        self.newest = newest
        self._by_pair = {}
        for key in self.keys:
            month, entity = key.split("|", 1)  # date × legal_entity, dimensions in name order
            self._by_pair[(entity, month)] = key

    def key_of(self, entity: object, day: object) -> str | None:
        """The run's partition holding this row; None for a row outside the run's partitions
        (a leave moved in from another legal entity or month)."""
        when = _day(day)
        if when is None:
            return None
        month = partition_of(when, self.newest).isoformat()
        return self._by_pair.get((_entity_key(entity), month))

    def count(self, rows: pd.DataFrame, entity_col: str, day_col: str) -> pd.Series:
        """Rows per partition key of the run (zeros included)."""
        if rows.empty:
            return pd.Series(0, index=self.keys, dtype=int)
        # Each distinct (entity, day) once: a run's rows share a few hundred of them.
        got: dict[str, int] = {}
        entities = rows[entity_col].to_numpy(dtype=object)
        pairs = Counter(zip(entities, rows[day_col].to_numpy(dtype=object), strict=True))
        for (entity, day), n in pairs.items():
            key = self.key_of(entity, day)
            if key is not None:
                got[key] = got.get(key, 0) + n
        return pd.Series(got, dtype=int).reindex(self.keys, fill_value=0).astype(int)


def sync_by_partition(
    index: PartitionIndex,
    changes: pd.DataFrame,
    applied: Mapping[tuple[str, str, str], int],
    failed: Iterable[Mapping[str, str]],
    desired: pd.DataFrame,
    quarantine: pd.DataFrame,
) -> dict[str, dict[str, int]]:
    """Per partition key: created, updated, deleted, moved (landed), failed, unchanged (events
    HR wants that needed no change) and quarantined (leaves with an error, by start date)."""
    out = {
        k: dict.fromkeys((*APPLIED, "failed", "unchanged", "quarantined"), 0) for k in index.keys
    }
    for (entity, day, op), n in applied.items():
        key = index.key_of(entity, day)
        for name, code in _OP_OF.items():
            if key is not None and op == code:
                out[key][name] += int(n)
    for f in failed:
        key = index.key_of(f.get("legal_entity"), f.get("partition_date"))
        if key is not None:
            out[key]["failed"] += 1
    written = changes[changes["op"].isin(["create", "update", "move"])] if len(changes) else changes
    wanted = index.count(desired, "legal_entity", "partition_date")
    rewritten = index.count(written, "legal_entity", "partition_date")
    errors = quarantine[quarantine["severity"] == "error"] if len(quarantine) else quarantine
    errors = errors.drop_duplicates("leave_id") if len(errors) else errors
    held = index.count(errors, QUARANTINE_ENTITY, "start_date")
    for key in index.keys:
        out[key]["unchanged"] = max(0, int(wanted[key]) - int(rewritten[key]))
        out[key]["quarantined"] = int(held[key])
    return out


def planned_by_partition(
    index: PartitionIndex, changes: pd.DataFrame, quarantine: pd.DataFrame
) -> dict[str, dict[str, int]]:
    """Per partition key: the changes the diff plans (create, update, delete, move) and the
    leaves quarantined, for leave_diff's materializations."""
    out = {}
    by_op = {
        op: index.count(
            changes[changes["op"] == op] if len(changes) else changes,
            "legal_entity",
            "partition_date",
        )  # fmt: skip
        for op in ("create", "update", "delete", "move")
    }
    errors = quarantine[quarantine["severity"] == "error"] if len(quarantine) else quarantine
    errors = errors.drop_duplicates("leave_id") if len(errors) else errors
    held = index.count(errors, QUARANTINE_ENTITY, "start_date")
    for key in index.keys:
        out[key] = {op: int(by_op[op][key]) for op in by_op}
        out[key]["quarantined"] = int(held[key])
    return out
