"""The state store: what was exported (the snapshot), quarantined rows, drift history."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import pandas as pd
import sqlalchemy as sa
from dagster import ConfigurableResource
from pydantic import PrivateAttr

from resources.database import create_engine, guarded, resolve_url
from resources.providers.base import ChangeResult, EventPayload, event_keys_of

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
    sa.Column("event_key", sa.String(191)),
    sa.Column("employee_id", sa.String(191)),
    sa.Column("employee_email", sa.String(320)),
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

# The intent journal: a create about to be sent, until its snapshot row is written. A re-run
# re-sends an unresolved intent's attempt id (Graph's transactionId); a resolved one is gone,
# so the next create of the same key (a reinstated leave) gets a new id.
create_intents_table = sa.Table(
    "create_intents",
    metadata,
    sa.Column("attempt_id", sa.String(64), primary_key=True),
    sa.Column("target", sa.String(64), nullable=False),
    sa.Column("event_key", sa.String(191), nullable=False),
    sa.Column("calendar", sa.String(320), nullable=False),
    sa.Column("leave_id", sa.String(191)),
    sa.Column("legal_entity", sa.String(191)),
    sa.Column("partition_date", sa.String(10)),
    sa.Column("run_id", sa.String(64)),
    sa.Column("created_at", sa.DateTime, nullable=False),
    sa.Index("ix_create_intents_key", "target", "event_key"),
)

# Every calendar a target was ever asked to write to, per legal entity: drift reads them all
# back, so nothing of ours is left behind where HR and the snapshot no longer look.
calendars_table = sa.Table(
    "calendars",
    metadata,
    sa.Column("target", sa.String(64), primary_key=True),
    sa.Column("legal_entity", sa.String(191), primary_key=True),
    sa.Column("calendar", sa.String(320), primary_key=True),
    sa.Column("first_written_at", sa.DateTime, nullable=False),
)

# Drift's full read-back of every employee HR knows, done once per target and legal entity
# for a new (or wiped) state store, whose registry cannot know the calendars written before.
calendar_scans_table = sa.Table(
    "calendar_scans",
    metadata,
    sa.Column("target", sa.String(64), primary_key=True),
    sa.Column("legal_entity", sa.String(191), primary_key=True),
    sa.Column("scanned_at", sa.DateTime, nullable=False),
)

SNAPSHOT_COLUMNS = [c.name for c in snapshot_table.columns]
INTENT_COLUMNS = [c.name for c in create_intents_table.columns]


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
    """SQLAlchemy state store: SQLite by default, PostgreSQL (or MariaDB) in production.

    ``url_env`` names the environment variable holding the URL; it is read when the store is
    first used, so the URL (and its password) never enters Dagster's config or snapshots.
    """

    url: str | None = None
    url_env: str | None = None

    _engine: sa.Engine | None = PrivateAttr(default=None)
    _url: str | None = PrivateAttr(default=None)
    _registered: set[tuple[str, str, str]] = PrivateAttr(default_factory=set)

    def resolved_url(self) -> str:
        if self._url is None:
            self._url = resolve_url("state", self.url, self.url_env, "state")
        return self._url

    def engine(self) -> sa.Engine:
        if self._engine is None:
            engine = create_engine("state", self.resolved_url())
            with guarded("state", self.resolved_url(), "creating its tables"):
                metadata.create_all(engine)
                _add_missing_columns(engine)
            self._engine = engine
        return self._engine

    def preflight(self) -> None:
        """Connect once (creating the tables if needed): a DatabaseError says what is wrong."""
        self.engine()

    @contextmanager
    def _begin(self, what: str) -> Iterator[sa.Connection]:
        engine = self.engine()
        with guarded("state", self.resolved_url(), what), engine.begin() as conn:
            yield conn

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
        return self._frame(stmt, SNAPSHOT_COLUMNS)

    def snapshot_for_keys(
        self, event_keys: Iterable[str], with_payload: bool = True
    ) -> pd.DataFrame:
        """Snapshot rows (all targets) of these event keys, wherever their partition is."""
        keys = list(dict.fromkeys(event_keys))
        frames = [
            self._frame(
                _select_snapshot(with_payload).where(
                    snapshot_table.c.event_key.in_(keys[i : i + 500])
                ),
                SNAPSHOT_COLUMNS,
            )
            for i in range(0, len(keys), 500)
        ]
        return (
            pd.concat(frames, ignore_index=True)
            if frames
            else pd.DataFrame(columns=SNAPSHOT_COLUMNS)
        )

    def exported_under(self, leave_ids: Iterable[str], targets: Sequence[str]) -> pd.DataFrame:
        """Where these leaves' events were last exported: leave_id, legal_entity (HR code) and
        partition_date, per target (primary-key look-ups, for the hr_changes sensor)."""
        t = snapshot_table
        keys = [key for i in dict.fromkeys(leave_ids) for key in event_keys_of(str(i))]
        columns = ["leave_id", "legal_entity", "partition_date"]
        frames = [
            self._frame(
                sa.select(t.c.leave_id, t.c.legal_entity, t.c.partition_date).where(
                    t.c.target.in_(list(targets)), t.c.event_key.in_(keys[i : i + 500])
                ),
                columns,
            )
            for i in range(0, len(keys), 500)
        ]
        frames = [f for f in frames if len(f)]
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=columns)

    def snapshot_all(self, target: str | None = None) -> pd.DataFrame:
        stmt = sa.select(snapshot_table)
        if target:
            stmt = stmt.where(snapshot_table.c.target == target)
        return self._frame(stmt, SNAPSHOT_COLUMNS)

    def _frame(self, stmt: sa.Select, columns: list[str] | None = None) -> pd.DataFrame:
        with self._begin("reading") as conn:
            result = conn.execute(stmt)
            # Plain tuples: given SQLAlchemy rows, pandas probes each for a dtype attribute,
            # an exception apiece (half the time of a 30,000-row snapshot read).
            frame = pd.DataFrame(list(map(tuple, result)), columns=list(result.keys()))
        if frame.empty and columns is not None:
            return pd.DataFrame(columns=columns)
        return frame

    def record_changes(
        self, target: str, rows: Sequence[tuple[ChangeResult, SnapshotRow | None]], run_id: str
    ) -> None:
        """Record provider-confirmed changes of one target.

        A create or update replaces the key's row; a delete removes the row only when it is for
        that calendar (a move's old calendar, or the one the snapshot holds). Either resolves
        the key's create intents.
        """
        if not rows:
            return
        now = _utcnow()
        t = snapshot_table
        writes = [(result, row) for result, row in rows if row is not None]
        deletes = [result.change for result, row in rows if row is None]
        with self._begin("recording confirmed changes") as conn:
            if deletes:
                conn.execute(
                    sa.delete(t).where(
                        t.c.target == target,
                        t.c.event_key == sa.bindparam("b_key"),
                        t.c.calendar == sa.bindparam("b_calendar"),
                    ),
                    [{"b_key": c.event_key, "b_calendar": c.calendar} for c in deletes],
                )
            if writes:
                conn.execute(
                    sa.delete(t).where(
                        t.c.target == target, t.c.event_key == sa.bindparam("b_key")
                    ),
                    [{"b_key": row.event_key} for _, row in writes],
                )
                conn.execute(
                    sa.insert(t),
                    [
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
                        for result, row in writes
                    ],
                )
            i = create_intents_table
            conn.execute(
                sa.delete(i).where(i.c.target == target, i.c.event_key == sa.bindparam("b_key")),
                [{"b_key": k} for k in dict.fromkeys(r.change.event_key for r, _ in rows)],
            )
        self.register_calendars(target, {(row.legal_entity, row.calendar) for _, row in writes})

    def relocate(self, rows: pd.DataFrame) -> None:
        """Move snapshot rows to a new partition (a leave whose event did not change)."""
        if rows.empty:
            return
        t = snapshot_table
        with self._begin("relocating snapshot rows") as conn:
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

    # --- intent journal -------------------------------------------------------------------
    def open_intents(self, target: str, creates: Sequence[Intent], run_id: str) -> dict:
        """The attempt id of each create about to be sent, keyed (event_key, calendar).

        An unresolved intent of the same key and calendar gives its attempt id back (a re-run
        after a crash re-sends the same token); otherwise a new intent is journaled first.
        Their calendars enter the registry before anything is sent.
        """
        if not creates:
            return {}
        i = create_intents_table
        keys = list(dict.fromkeys(c.event_key for c in creates))
        found: dict[tuple[str, str], str] = {}
        with self._begin("journaling create intents") as conn:
            for n in range(0, len(keys), 500):
                rows = conn.execute(
                    sa.select(i.c.event_key, i.c.calendar, i.c.attempt_id)
                    .where(i.c.target == target, i.c.event_key.in_(keys[n : n + 500]))
                    .order_by(i.c.created_at)
                )
                for key, calendar, attempt in rows:
                    found.setdefault((key, calendar), attempt)
            now = _utcnow()
            new = []
            for c in creates:
                if (c.event_key, c.calendar) in found:
                    continue
                attempt = uuid.uuid4().hex
                found[(c.event_key, c.calendar)] = attempt
                new.append(
                    {
                        "attempt_id": attempt,
                        "target": target,
                        "event_key": c.event_key,
                        "calendar": c.calendar,
                        "leave_id": c.leave_id,
                        "legal_entity": c.legal_entity,
                        "partition_date": c.partition_date,
                        "run_id": run_id,
                        "created_at": now,
                    }
                )
            if new:
                conn.execute(sa.insert(i), new)
        self.register_calendars(target, {(c.legal_entity, c.calendar) for c in creates})
        return {(c.event_key, c.calendar): found[(c.event_key, c.calendar)] for c in creates}

    def resolve_intents(self, target: str, pairs: Iterable[tuple[str, str]]) -> None:
        """Forget the create intents of these (event_key, calendar) pairs.

        For what drift settles outside the snapshot: a create killed before its snapshot row
        whose leave HR then cancelled leaves an event and an intent that no later diff names;
        drift deletes the event as stale and, here, the intent with it.
        """
        keys = [{"b_key": k, "b_calendar": c} for k, c in dict.fromkeys(pairs)]
        if not keys:
            return
        i = create_intents_table
        with self._begin("resolving create intents") as conn:
            conn.execute(
                sa.delete(i).where(
                    i.c.target == target,
                    i.c.event_key == sa.bindparam("b_key"),
                    i.c.calendar == sa.bindparam("b_calendar"),
                ),
                keys,
            )

    def unresolved_intents(self, target: str | None = None) -> pd.DataFrame:
        stmt = sa.select(create_intents_table)
        if target:
            stmt = stmt.where(create_intents_table.c.target == target)
        return self._frame(stmt, INTENT_COLUMNS)

    # --- calendar registry ----------------------------------------------------------------
    def register_calendars(self, target: str, entries: Iterable[tuple[str, str]]) -> None:
        """Remember that ``target`` writes (legal_entity, calendar) pairs; idempotent."""
        new = {(target, str(e), str(c)) for e, c in entries} - self._registered
        if not new:
            return
        t = calendars_table
        with guarded("state", self.resolved_url(), "registering calendars"):
            for _ in range(3):
                try:
                    with self.engine().begin() as conn:
                        have = set()
                        cals = sorted({c for _, _, c in new})
                        for n in range(0, len(cals), 500):
                            have |= set(
                                conn.execute(
                                    sa.select(t.c.target, t.c.legal_entity, t.c.calendar).where(
                                        t.c.target == target, t.c.calendar.in_(cals[n : n + 500])
                                    )
                                ).all()
                            )
                        missing = sorted(new - have)
                        if missing:
                            now = _utcnow()
                            conn.execute(
                                sa.insert(t),
                                [
                                    {
                                        "target": tg,
                                        "legal_entity": e,
                                        "calendar": c,
                                        "first_written_at": now,
                                    }
                                    for tg, e, c in missing
                                ],
                            )
                    break
                except sa.exc.IntegrityError:
                    continue  # another run registered some of them meanwhile: read again
        self._registered |= new

    def registry_calendars(self, target: str, legal_entities: Sequence[str]) -> list[str]:
        """Every calendar ``target`` ever wrote to for these legal entities."""
        t = calendars_table
        stmt = sa.select(t.c.calendar).where(
            t.c.target == target, t.c.legal_entity.in_(list(legal_entities))
        )
        return sorted(set(self._frame(stmt, ["calendar"])["calendar"]))

    def scanned(self, target: str, legal_entities: Sequence[str]) -> set[str]:
        """The legal entities whose every HR employee drift has read back for ``target``."""
        t = calendar_scans_table
        stmt = sa.select(t.c.legal_entity).where(
            t.c.target == target, t.c.legal_entity.in_(list(legal_entities))
        )
        return set(self._frame(stmt, ["legal_entity"])["legal_entity"])

    def mark_scanned(self, target: str, legal_entities: Iterable[str]) -> None:
        todo = set(legal_entities) - self.scanned(target, list(legal_entities))
        if not todo:
            return
        now = _utcnow()
        with self._begin("recording a full read-back") as conn:
            conn.execute(
                sa.insert(calendar_scans_table),
                [{"target": target, "legal_entity": e, "scanned_at": now} for e in sorted(todo)],
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
                "event_key": _opt(r.get("event_key")),
                "employee_id": _opt(r.get("employee_id")),
                "employee_email": _opt(r.get("employee_email"), 320),
                "rule": r["rule"],
                "severity": r["severity"],
                "message": r["message"],
                "row": r["row"],
            }
            for r in findings.to_dict("records")
        ]
        with self._begin("recording quarantined rows") as conn:
            conn.execute(sa.insert(quarantine_table), records)

    def quarantine_for_run(self, run_id: str) -> pd.DataFrame:
        return self._frame(sa.select(quarantine_table).where(quarantine_table.c.run_id == run_id))

    def record_failure(self, run_id: str, target: str, result: ChangeResult) -> None:
        with self._begin("recording a failed change") as conn:
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
        with self._begin("recording drift") as conn:
            conn.execute(sa.insert(drift_history_table), records)

    def drift_history(self) -> pd.DataFrame:
        return self._frame(sa.select(drift_history_table).order_by(drift_history_table.c.at))


@dataclass(frozen=True)
class Intent:
    """A create about to be sent: where, and which leave and partition it is for."""

    event_key: str
    calendar: str
    leave_id: str
    legal_entity: str
    partition_date: str


def _add_missing_columns(engine: sa.Engine) -> None:
    """Add columns that newer versions defined to a state store made by an older one."""
    inspector = sa.inspect(engine)
    for table in (quarantine_table,):
        have = {c["name"] for c in inspector.get_columns(table.name)}
        for column in table.columns:
            if column.name in have:
                continue
            kind = column.type.compile(dialect=engine.dialect)
            with engine.begin() as conn:
                conn.execute(sa.text(f"ALTER TABLE {table.name} ADD COLUMN {column.name} {kind}"))


def _select_snapshot(with_payload: bool) -> sa.Select:
    """The snapshot's columns; the diff does not need the (large) written payloads."""
    if with_payload:
        return sa.select(snapshot_table)
    return sa.select(*(c for c in snapshot_table.columns if c.name != "payload"))


def _opt(value: object, limit: int = 191) -> str | None:
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return None
    return str(value)[:limit]
