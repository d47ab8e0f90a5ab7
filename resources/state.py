"""The state store: what was exported (the snapshot), quarantined rows, drift history."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import pandas as pd
import sqlalchemy as sa
from dagster import ConfigurableResource
from pydantic import PrivateAttr

from resources.providers.base import ChangeResult, EventPayload

metadata = sa.MetaData()

snapshot_table = sa.Table(
    "snapshot",
    metadata,
    sa.Column("target", sa.String(64), primary_key=True),
    sa.Column("event_key", sa.String(191), primary_key=True),
    sa.Column("leave_id", sa.String(191), nullable=False),
    sa.Column("calendar", sa.String(320), nullable=False),
    sa.Column("legal_entity", sa.String(191), nullable=False),
    sa.Column("partition_date", sa.String(10), nullable=False),
    sa.Column("fingerprint", sa.BigInteger, nullable=False),
    sa.Column("provider_event_id", sa.Text),
    sa.Column("version", sa.String(255)),
    sa.Column("payload", sa.Text, nullable=False),
    sa.Column("written_at", sa.DateTime, nullable=False),
    sa.Column("run_id", sa.String(64)),
    sa.Index("ix_snapshot_scope", "legal_entity", "partition_date"),
)

quarantine_table = sa.Table(
    "quarantine",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("run_id", sa.String(64), nullable=False),
    sa.Column("detected_at", sa.DateTime, nullable=False),
    sa.Column("partition", sa.String(191), nullable=False),
    sa.Column("leave_id", sa.String(191)),
    sa.Column("legal_entity", sa.String(191)),
    sa.Column("start_date", sa.String(32)),
    sa.Column("rule", sa.String(64), nullable=False),
    sa.Column("severity", sa.String(8), nullable=False),
    sa.Column("message", sa.Text, nullable=False),
    sa.Column("row", sa.Text, nullable=False),
    sa.Index("ix_quarantine_run", "run_id"),
)

change_failures_table = sa.Table(
    "change_failures",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("run_id", sa.String(64), nullable=False),
    sa.Column("at", sa.DateTime, nullable=False),
    sa.Column("target", sa.String(64), nullable=False),
    sa.Column("event_key", sa.String(191), nullable=False),
    sa.Column("calendar", sa.String(320), nullable=False),
    sa.Column("op", sa.String(8), nullable=False),
    sa.Column("permanent", sa.Boolean, nullable=False),
    sa.Column("error", sa.Text, nullable=False),
)

drift_history_table = sa.Table(
    "drift_history",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("run_id", sa.String(64), nullable=False),
    sa.Column("at", sa.DateTime, nullable=False),
    sa.Column("target", sa.String(64), nullable=False),
    sa.Column("legal_entity", sa.String(191), nullable=False),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("count", sa.Integer, nullable=False),
    sa.Column("repaired", sa.Integer, nullable=False),
)

SNAPSHOT_COLUMNS = [c.name for c in snapshot_table.columns]


@dataclass(frozen=True)
class SnapshotRow:
    """What the snapshot records about one exported event after the provider confirmed it."""

    target: str
    event_key: str
    leave_id: str
    calendar: str
    legal_entity: str
    partition_date: str
    fingerprint: int
    provider_event_id: str | None
    version: str | None
    payload: EventPayload


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


class StateStore(ConfigurableResource):
    """SQLAlchemy state store: SQLite by default, PostgreSQL (or MariaDB) in production."""

    url: str

    _engine: sa.Engine | None = PrivateAttr(default=None)

    def engine(self) -> sa.Engine:
        if self._engine is None:
            self._engine = sa.create_engine(self.url, pool_pre_ping=True)
            metadata.create_all(self._engine)
        return self._engine

    # --- snapshot -------------------------------------------------------------------------
    def snapshot_in_scope(
        self,
        legal_entities: Sequence[str],
        date_from: dt.date,
        date_to: dt.date,
        with_payload: bool = True,
    ) -> pd.DataFrame:
        """Snapshot rows (all targets) of these legal entities whose partition date is in range."""
        if not legal_entities:
            return pd.DataFrame(columns=SNAPSHOT_COLUMNS)
        t = snapshot_table
        stmt = _select_snapshot(with_payload).where(
            t.c.legal_entity.in_(list(legal_entities)),
            t.c.partition_date >= date_from.isoformat(),
            t.c.partition_date <= date_to.isoformat(),
        )
        return self._frame(stmt)

    def snapshot_for_keys(
        self, event_keys: Iterable[str], with_payload: bool = True
    ) -> pd.DataFrame:
        """Snapshot rows (all targets) of these event keys, wherever their partition is."""
        keys = list(dict.fromkeys(event_keys))
        frames = [
            self._frame(
                _select_snapshot(with_payload).where(
                    snapshot_table.c.event_key.in_(keys[i : i + 500])
                )
            )
            for i in range(0, len(keys), 500)
        ]
        return (
            pd.concat(frames, ignore_index=True)
            if frames
            else pd.DataFrame(columns=SNAPSHOT_COLUMNS)
        )

    def snapshot_all(self, target: str | None = None) -> pd.DataFrame:
        stmt = sa.select(snapshot_table)
        if target:
            stmt = stmt.where(snapshot_table.c.target == target)
        return self._frame(stmt)

    def _frame(self, stmt: sa.Select) -> pd.DataFrame:
        with self.engine().connect() as conn:
            result = conn.execute(stmt)
            frame = pd.DataFrame(result.fetchall(), columns=list(result.keys()))
        if frame.empty:
            return pd.DataFrame(columns=SNAPSHOT_COLUMNS) if "event_key" in frame else frame
        return frame

    def record_changes(
        self, target: str, rows: Sequence[tuple[ChangeResult, SnapshotRow | None]], run_id: str
    ) -> None:
        """Record provider-confirmed changes of one target (creates/updates upsert, deletes remove)."""
        if not rows:
            return
        now = _utcnow()
        t = snapshot_table
        with self.engine().begin() as conn:
            conn.execute(
                sa.delete(t).where(t.c.target == target, t.c.event_key == sa.bindparam("b_key")),
                [{"b_key": result.change.event_key} for result, _ in rows],
            )
            inserts = [
                {
                    "target": row.target,
                    "event_key": row.event_key,
                    "leave_id": row.leave_id,
                    "calendar": row.calendar,
                    "legal_entity": row.legal_entity,
                    "partition_date": row.partition_date,
                    "fingerprint": int(row.fingerprint),
                    "provider_event_id": result.provider_event_id or row.provider_event_id,
                    "version": result.version or row.version,
                    "payload": json.dumps(row.payload.to_dict(), ensure_ascii=False),
                    "written_at": now,
                    "run_id": run_id,
                }
                for result, row in rows
                if row is not None
            ]
            if inserts:
                conn.execute(sa.insert(t), inserts)

    def relocate(self, rows: pd.DataFrame) -> None:
        """Move snapshot rows to a new partition (a leave whose event did not change)."""
        if rows.empty:
            return
        t = snapshot_table
        with self.engine().begin() as conn:
            conn.execute(
                sa.update(t)
                .where(
                    t.c.target == sa.bindparam("b_target"), t.c.event_key == sa.bindparam("b_key")
                )
                .values(
                    legal_entity=sa.bindparam("b_entity"), partition_date=sa.bindparam("b_date")
                ),
                [
                    {
                        "b_target": r.target,
                        "b_key": r.event_key,
                        "b_entity": r.legal_entity,
                        "b_date": r.partition_date,
                    }
                    for r in rows.itertuples(index=False)
                ],
            )

    # --- quarantine, failures, drift ------------------------------------------------------
    def record_quarantine(self, run_id: str, partition: str, findings: pd.DataFrame) -> None:
        if findings.empty:
            return
        now = _utcnow()
        records = [
            {
                "run_id": run_id,
                "detected_at": now,
                "partition": partition,
                "leave_id": _opt(r["leave_id"]),
                "legal_entity": _opt(r["legal_entity"]),
                "start_date": _opt(r["start_date"], 32),
                "rule": r["rule"],
                "severity": r["severity"],
                "message": r["message"],
                "row": r["row"],
            }
            for r in findings.to_dict("records")
        ]
        with self.engine().begin() as conn:
            conn.execute(sa.insert(quarantine_table), records)

    def quarantine_for_run(self, run_id: str) -> pd.DataFrame:
        return self._frame(sa.select(quarantine_table).where(quarantine_table.c.run_id == run_id))

    def record_failure(self, run_id: str, target: str, result: ChangeResult) -> None:
        with self.engine().begin() as conn:
            conn.execute(
                sa.insert(change_failures_table),
                {
                    "run_id": run_id,
                    "at": _utcnow(),
                    "target": target,
                    "event_key": result.change.event_key,
                    "calendar": result.change.calendar,
                    "op": result.change.op,
                    "permanent": result.permanent,
                    "error": result.error or "unknown error",
                },
            )

    def record_drift(self, run_id: str, counts: pd.DataFrame) -> None:
        """counts: target, legal_entity, kind, count, repaired."""
        if counts.empty:
            return
        now = _utcnow()
        records = [{**r, "run_id": run_id, "at": now} for r in counts.to_dict("records")]
        with self.engine().begin() as conn:
            conn.execute(sa.insert(drift_history_table), records)

    def drift_history(self) -> pd.DataFrame:
        return self._frame(sa.select(drift_history_table).order_by(drift_history_table.c.at))


def _select_snapshot(with_payload: bool) -> sa.Select:
    """The snapshot's columns; the diff does not need the (large) written payloads."""
    if with_payload:
        return sa.select(snapshot_table)
    return sa.select(*(c for c in snapshot_table.columns if c.name != "payload"))


def _opt(value: object, limit: int = 191) -> str | None:
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return None
    return str(value)[:limit]
