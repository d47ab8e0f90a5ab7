"""calendar_sync: apply the diff to each target, recording each confirmed change in the snapshot."""

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import pandas as pd
from dagster import (
    AssetExecutionContext,
    AssetIn,
    AssetsDefinition,
    BackfillPolicy,
    Failure,
    MaterializeResult,
    MetadataValue,
    asset,
)

from assets.catalog import OWNERS, RECONCILE_GROUP, target_kinds
from assets.leave_diff import LEAVE_DIFF, LeaveDiff
from assets.partition_report import PartitionIndex, sync_by_partition
from assets.render import payloads
from assets.tables import markdown_table
from resources.providers.base import (
    CalendarProvider,
    ChangeResult,
    EventChange,
    FatalProviderError,
)
from resources.providers.retry import RetryRounds
from resources.scope import month_start, window_today
from resources.settings import LeavesyncSettings
from resources.state import Intent, SnapshotRow, StateStore

CALENDAR_SYNC = "calendar_sync"
# Confirmed changes are written to the snapshot at least this often; a change confirmed by
# the target but not yet recorded is re-sent by the next run, and every target treats a
# repeated create/update/delete of the same event key as the same change (idempotent).
FLUSH_EVERY = 200
FLUSH_SECONDS = 2.0


@dataclass
class SyncOutcome:
    """Per target and legal entity: applied and failed changes (a move counts once, as "move")."""

    applied: dict[tuple[str, str, str], int] = field(default_factory=dict)
    failed: list[dict[str, str]] = field(default_factory=list)
    # (legal entity, partition date, op): the same changes by start date, for the partitions.
    by_day: dict[tuple[str, str, str], int] = field(default_factory=dict)
    # Changes sent again after failing with a transient error (see _TargetRun.apply).
    resent: int = 0

    def count(self, target: str, entity: str, op: str, day: str = "") -> None:
        key = (target, entity, op)
        self.applied[key] = self.applied.get(key, 0) + 1
        self.by_day[(entity, day, op)] = self.by_day.get((entity, day, op), 0) + 1

    def frame(self) -> pd.DataFrame:
        rows = [
            {"target": t, "legal_entity": e, "op": o, "n": n}
            for (t, e, o), n in self.applied.items()
        ]
        return pd.DataFrame(rows, columns=["target", "legal_entity", "op", "n"])


def changes_for(
    frame: pd.DataFrame, attempts: dict[tuple[str, str], str] | None = None
) -> list[EventChange]:
    """EventChange objects for rows of the diff (payloads only where needed).

    A move row becomes its create half here (see apply_diff for its delete half);
    ``attempts`` gives each create its journaled attempt id, keyed (event_key, calendar).
    """
    writes = frame[frame["op"] != "delete"]
    events = dict(zip(writes.index, payloads(writes), strict=True))
    attempts = attempts or {}
    out = []
    for idx, row in zip(frame.index, frame.itertuples(index=False), strict=True):
        create = row.op in ("create", "move")
        out.append(
            EventChange(
                op="create" if create else row.op,
                event_key=row.event_key,
                calendar=row.calendar,
                event=events.get(idx),
                provider_event_id=None if create else _opt(row.provider_event_id),
                version=None if create else _opt(row.version),
                attempt_id=attempts.get((row.event_key, row.calendar)) if create else None,
            )
        )
    return out


def _delete_halves(frame: pd.DataFrame) -> list[EventChange]:
    """Deletes, and the delete half of each move: in its old calendar, with its old id."""
    return [
        EventChange(
            op="delete",
            event_key=row.event_key,
            calendar=row.from_calendar if row.op == "move" else row.calendar,
            provider_event_id=_opt(row.provider_event_id),
            version=_opt(row.version),
            moving_to=row.calendar if row.op == "move" else None,
        )
        for row in frame.itertuples(index=False)
    ]


class _TargetRun:
    """One target's changes as the provider confirms them: snapshot, journal, outcome."""

    def __init__(self, target, provider, state, run_id, outcome, log) -> None:
        self.target, self.provider, self.state = target, provider, state
        self.run_id, self.outcome, self.log = run_id, outcome, log
        self.pending: list[tuple[ChangeResult, SnapshotRow | None]] = []
        self.last_flush = time.monotonic()
        self.done, self.total = 0, 0
        self.progress: Callable[[str, int, int], None] | None = None

    def apply(
        self,
        frame: pd.DataFrame,
        changes: list[EventChange],
        retry: RetryRounds | None = None,
    ) -> set[str]:
        """Send ``changes`` (one per row of ``frame``); the keys of those that landed.

        A change that failed with a transient error (the service said "later" more times than
        the provider retries one request) is sent again in a later round, after a pause: a
        bad minute of the service costs time, not a failed change. A permanent failure is
        final at once. Sending a change again is safe: a create looks up our tag and key
        first (and keeps its attempt id), an update or delete carries the version it read.
        """
        rows = {
            (c.op, c.event_key, c.calendar): row
            for c, row in zip(changes, frame.itertuples(index=False), strict=True)
        }
        retry = retry or RetryRounds()
        landed: set[str] = set()
        todo = changes
        for round_no in range(retry.rounds + 1):
            again: list[EventChange] = []
            for result in self.provider.apply(todo):
                change = result.change
                row = rows[(change.op, change.event_key, change.calendar)]
                if not result.ok and not result.permanent and round_no < retry.rounds:
                    again.append(change)
                    continue
                self.done += 1
                if result.ok:
                    landed.add(change.event_key)
                    snap = (
                        None if change.op == "delete" else _snapshot_row(self.target, row, result)
                    )
                    self.pending.append((result, snap))
                    # A move counts once, when its create half lands.
                    if row.op != "move" or change.op == "create":
                        self.outcome.count(
                            self.target, str(row.legal_entity), row.op, str(row.partition_date)
                        )
                else:
                    self.fail(row, result)
                if (
                    len(self.pending) >= FLUSH_EVERY
                    or time.monotonic() - self.last_flush > FLUSH_SECONDS
                ):
                    self.flush()
                    self.log.info(f"target {self.target}: {self.done}/{self.total} changes done")
            if not again:
                break
            self.flush()
            self.outcome.resent += len(again)
            self.log.warning(
                f"target {self.target}: {len(again)} change(s) failed with a transient error "
                f"(the service kept saying 'later'); sending them again in "
                f"{retry.pause_seconds:g}s (round {round_no + 2} of {retry.rounds + 1})"
            )
            time.sleep(retry.pause_seconds)
            todo = again
        return landed

    def fail(self, row, result: ChangeResult) -> None:
        error = result.error or "unknown error"
        if row.op == "move" and result.change.op == "delete":
            error = (
                f"moving to {row.calendar}: the delete from {row.from_calendar} failed "
                f"({error}); not created in {row.calendar}, retried next run"
            )
        elif row.op == "move":
            error = (
                f"moving to {row.calendar}: deleted from {row.from_calendar}, the create "
                f"failed ({error}); created next run"
            )
        self.state.record_failure(self.run_id, self.target, result)
        self.outcome.failed.append(
            {
                "target": self.target,
                "legal_entity": str(row.legal_entity),
                "event_key": row.event_key,
                "calendar": row.calendar,
                "op": row.op,
                "error": error,
                "partition_date": str(row.partition_date),
            }
        )
        self.log.warning(f"target {self.target}: {row.op} {row.event_key} failed: {error}")

    def flush(self) -> None:
        if self.pending:
            self.state.record_changes(self.target, self.pending, self.run_id)
        self.pending, self.last_flush = [], time.monotonic()
        if self.progress:
            self.progress(self.target, self.done, self.total)


def apply_diff(
    plan: LeaveDiff,
    provider_for: Callable[[str], CalendarProvider],
    state: StateStore,
    run_id: str,
    log: logging.Logger | None = None,
    outcome: SyncOutcome | None = None,
    on_progress: Callable[[str, int, int], None] | None = None,
    retry_for: Callable[[str], RetryRounds] | None = None,
) -> SyncOutcome:
    """Apply every target's changes; each confirmed change reaches the snapshot, failures are kept.

    Per target, two provider calls: first the deletes and the delete half of every move,
    then the creates, the updates and the create half of each move whose delete landed. With
    an alias the new address reaches the old mailbox, where a create's look-up would find
    the old event and adopt it, and the delete would then remove it; and a move killed
    between its halves has no snapshot row, so the next run creates (never blind) again.
    ``outcome`` collects what landed even if a target stops the run; ``on_progress`` gets
    (target, changes done, changes planned) as they land; ``retry_for`` gives a target's
    rounds for changes that failed with a transient error (none by default).
    """
    log = log or logging.getLogger(__name__)
    outcome = outcome if outcome is not None else SyncOutcome()
    changes = plan.diff.changes
    for target, frame in changes.groupby("target", sort=True):
        target = str(target)
        run = _TargetRun(target, provider_for(target), state, run_id, outcome, log)
        run.progress, run.total = on_progress, len(frame)
        retry = retry_for(target) if retry_for else None
        log.info(f"target {target}: applying {len(frame)} changes")
        try:
            first = frame[frame["op"].isin(["delete", "move"])]
            freed = run.apply(first, _delete_halves(first), retry) if len(first) else set()
            run.flush()
            moves = frame["op"].eq("move") & frame["event_key"].isin(freed)
            second = frame[frame["op"].isin(["create", "update"]) | moves]
            if len(second):
                creates = second[second["op"].isin(["create", "move"])]
                attempts = state.open_intents(target, _intents(creates), run_id)
                run.apply(second, changes_for(second, attempts), retry)
        except FatalProviderError as err:
            run.flush()
            raise Failure(description=f"target {target}: {err}") from err
        run.flush()
    state.relocate(plan.diff.relocations)
    return outcome


def _intents(creates: pd.DataFrame) -> list[Intent]:
    return [
        Intent(
            str(r.event_key),
            str(r.calendar),
            str(r.leave_id),
            str(r.legal_entity),
            str(r.partition_date),
        )
        for r in creates.itertuples(index=False)
    ]


def _snapshot_row(target: str, row, result: ChangeResult) -> SnapshotRow:
    return SnapshotRow(
        target=target,
        event_key=row.event_key,
        leave_id=str(row.leave_id),
        calendar=row.calendar,
        legal_entity=str(row.legal_entity),
        partition_date=str(row.partition_date),
        fingerprint=int(row.fingerprint),
        provider_event_id=result.provider_event_id,
        version=result.version,
        payload=result.change.event,  # type: ignore[arg-type]
    )


def _opt(value: object) -> str | None:
    return (
        None
        if value is None or (isinstance(value, float) and pd.isna(value)) or value is pd.NA
        else str(value)
    )


def sync_summary(plan: LeaveDiff, outcome: SyncOutcome) -> pd.DataFrame:
    """Per legal entity: created, updated, deleted, moved (as applied), unchanged, quarantined,
    failed."""
    planned = plan.summary().set_index("legal_entity")
    applied = outcome.frame()
    out = pd.DataFrame(index=planned.index)
    ops = (("create", "created"), ("update", "updated"), ("delete", "deleted"), ("move", "moved"))
    for op, col in ops:
        got = applied[applied["op"] == op].groupby("legal_entity")["n"].sum()
        out[col] = got.reindex(out.index, fill_value=0)
    out["unchanged"] = planned["unchanged"]
    out["quarantined"] = planned["quarantined"]
    failed = pd.Series([f["legal_entity"] for f in outcome.failed], dtype=object).value_counts()
    out["failed"] = failed.reindex(out.index, fill_value=0)
    return out.astype(int).reset_index()


def build_calendar_sync(
    partitions_def, target_names: list[str], target_types: list[str] | None = None
) -> AssetsDefinition:
    @asset(
        name=CALENDAR_SYNC,
        partitions_def=partitions_def,
        backfill_policy=BackfillPolicy.single_run(),
        group_name=RECONCILE_GROUP,
        owners=OWNERS,
        kinds=target_kinds(target_types or []),
        ins={"plan": AssetIn(LEAVE_DIFF)},
        description="Applies the diff to every calendar target and updates the snapshot per change.",
    )
    def calendar_sync(
        context: AssetExecutionContext,
        plan: LeaveDiff,
        state: StateStore,
        settings: LeavesyncSettings,
    ) -> MaterializeResult:
        if plan.refused:
            raise Failure(description="\n".join(r.message() for r in plan.refusals))
        outcome = SyncOutcome()
        try:
            apply_diff(
                plan,
                settings.provider,
                state,
                context.run.run_id,
                context.log,
                outcome=outcome,
                on_progress=_report_progress,
                retry_for=settings.retry_rounds,
            )
        except Failure as stop:
            # What landed before the stop is in the snapshot; the CLI and the UI say so.
            summary = sync_summary(plan, outcome)
            raise Failure(
                description=stop.description,
                metadata=_sync_metadata(summary, outcome, target_names),
            ) from stop
        summary = sync_summary(plan, outcome)
        cfg = settings.app()
        index = PartitionIndex(
            context.partition_keys, month_start(window_today(cfg.window.timezone))
        )
        counts = sync_by_partition(
            index,
            plan.diff.changes,
            outcome.by_day,
            outcome.failed,
            plan.desired,
            plan.quarantine,
        )
        for key, figures in counts.items():
            context.add_asset_metadata(
                _partition_metadata(key, figures, outcome, index), partition_key=key
            )
        # Every partition's materialization says what that partition's run did; the run's
        # per-entity summary is the asset's value (the CLI prints it).
        return MaterializeResult(
            metadata={
                "targets": MetadataValue.json(target_names),
                "run_partitions": len(index.keys),
                "changes_sent_again": outcome.resent,
            },
            value=summary,
        )

    return calendar_sync


def _partition_metadata(
    key: str, figures: dict[str, int], outcome: SyncOutcome, index: PartitionIndex
) -> dict:
    month, entity = key.split("|", 1)
    meta: dict = {"legal_entity": entity, "month": month[:7], **figures}
    failed = [
        f for f in outcome.failed if index.key_of(f["legal_entity"], f["partition_date"]) == key
    ]
    if failed:
        frame = pd.DataFrame(failed, columns=["target", "event_key", "calendar", "op", "error"])
        meta["failed_changes"] = MetadataValue.md(markdown_table(frame.head(100)))
    return meta


# Listeners of this process told of changes as they land (the CLI's live progress).
PROGRESS_LISTENERS: list[Callable[[str, int, int], None]] = []


def _report_progress(target: str, done: int, total: int) -> None:
    for listener in PROGRESS_LISTENERS:
        listener(target, done, total)


def _sync_metadata(summary: pd.DataFrame, outcome: SyncOutcome, target_names: list[str]) -> dict:
    failed = pd.DataFrame(
        outcome.failed, columns=["target", "legal_entity", "event_key", "calendar", "op", "error"]
    )
    return {
        "summary": MetadataValue.json(summary.to_dict("records")),
        "summary_table": MetadataValue.md(markdown_table(summary)),
        "failed": MetadataValue.md(markdown_table(failed.head(100))),
        "targets": MetadataValue.json(target_names),
    }
