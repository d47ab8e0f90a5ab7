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

from assets.leave_diff import LEAVE_DIFF, LeaveDiff
from assets.render import payloads
from assets.tables import markdown_table
from resources.providers.base import (
    CalendarProvider,
    ChangeResult,
    EventChange,
    FatalProviderError,
)
from resources.settings import LeavesyncSettings
from resources.state import SnapshotRow, StateStore

CALENDAR_SYNC = "calendar_sync"
# Confirmed changes are written to the snapshot at least this often; a change confirmed by
# the target but not yet recorded is re-sent by the next run, and every target treats a
# repeated create/update/delete of the same event key as the same change (idempotent).
FLUSH_EVERY = 200
FLUSH_SECONDS = 2.0


@dataclass
class SyncOutcome:
    """Per target and legal entity: applied and failed changes."""

    applied: dict[tuple[str, str, str], int] = field(default_factory=dict)
    failed: list[dict[str, str]] = field(default_factory=list)

    def count(self, target: str, entity: str, op: str) -> None:
        key = (target, entity, op)
        self.applied[key] = self.applied.get(key, 0) + 1

    def frame(self) -> pd.DataFrame:
        rows = [
            {"target": t, "legal_entity": e, "op": o, "n": n}
            for (t, e, o), n in self.applied.items()
        ]
        return pd.DataFrame(rows, columns=["target", "legal_entity", "op", "n"])


def changes_for(frame: pd.DataFrame) -> list[EventChange]:
    """EventChange objects for one target's rows of the diff (payloads only where needed)."""
    writes = frame[frame["op"] != "delete"]
    events = dict(zip(writes.index, payloads(writes), strict=True))
    return [
        EventChange(
            op=row.op,
            event_key=row.event_key,
            calendar=row.calendar,
            event=events.get(idx),
            provider_event_id=_opt(row.provider_event_id),
            version=_opt(row.version),
        )
        for idx, row in zip(frame.index, frame.itertuples(index=False), strict=True)
    ]


def apply_diff(
    plan: LeaveDiff,
    provider_for: Callable[[str], CalendarProvider],
    state: StateStore,
    run_id: str,
    log: logging.Logger | None = None,
    outcome: SyncOutcome | None = None,
    on_progress: Callable[[str, int, int], None] | None = None,
) -> SyncOutcome:
    """Apply every target's changes; each confirmed change reaches the snapshot, failures are kept.

    ``outcome`` collects what landed even if a target stops the run; ``on_progress`` gets
    (target, changes done, changes planned) as they land.
    """
    log = log or logging.getLogger(__name__)
    outcome = outcome if outcome is not None else SyncOutcome()
    changes = plan.diff.changes
    for target, frame in changes.groupby("target", sort=True):
        rows_by_key = {(r.op, r.event_key, r.calendar): r for r in frame.itertuples(index=False)}
        provider = provider_for(str(target))
        pending: list[tuple[ChangeResult, SnapshotRow | None]] = []
        last_flush = time.monotonic()
        done = 0
        log.info(f"target {target}: applying {len(frame)} changes")
        try:
            for result in provider.apply(changes_for(frame)):
                row = rows_by_key[
                    (result.change.op, result.change.event_key, result.change.calendar)
                ]
                done += 1
                if result.ok:
                    pending.append((result, _snapshot_row(str(target), row, result)))
                    outcome.count(str(target), str(row.legal_entity), row.op)
                else:
                    state.record_failure(run_id, str(target), result)
                    outcome.failed.append(
                        {
                            "target": str(target),
                            "legal_entity": str(row.legal_entity),
                            "event_key": row.event_key,
                            "calendar": row.calendar,
                            "op": row.op,
                            "error": result.error or "",
                        }
                    )
                    log.warning(
                        f"target {target}: {row.op} {row.event_key} for {row.calendar} failed: {result.error}"
                    )
                if len(pending) >= FLUSH_EVERY or time.monotonic() - last_flush > FLUSH_SECONDS:
                    state.record_changes(str(target), pending, run_id)
                    pending, last_flush = [], time.monotonic()
                    log.info(f"target {target}: {done}/{len(frame)} changes done")
                    if on_progress:
                        on_progress(str(target), done, len(frame))
        except FatalProviderError as err:
            state.record_changes(str(target), pending, run_id)
            raise Failure(description=f"target {target}: {err}") from err
        state.record_changes(str(target), pending, run_id)
        if on_progress:
            on_progress(str(target), done, len(frame))
    state.relocate(plan.diff.relocations)
    return outcome


def _snapshot_row(target: str, row, result: ChangeResult) -> SnapshotRow | None:
    if row.op == "delete":
        return None
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
    """Per legal entity: created, updated, deleted (as applied), unchanged, quarantined, failed."""
    planned = plan.summary().set_index("legal_entity")
    applied = outcome.frame()
    out = pd.DataFrame(index=planned.index)
    for op, col in (("create", "created"), ("update", "updated"), ("delete", "deleted")):
        got = applied[applied["op"] == op].groupby("legal_entity")["n"].sum()
        out[col] = got.reindex(out.index, fill_value=0)
    out["unchanged"] = planned["unchanged"]
    out["quarantined"] = planned["quarantined"]
    failed = pd.Series([f["legal_entity"] for f in outcome.failed], dtype=object).value_counts()
    out["failed"] = failed.reindex(out.index, fill_value=0)
    return out.astype(int).reset_index()


def build_calendar_sync(partitions_def, target_names: list[str]) -> AssetsDefinition:
    @asset(
        name=CALENDAR_SYNC,
        partitions_def=partitions_def,
        backfill_policy=BackfillPolicy.single_run(),
        group_name="leavesync",
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
            )
        except Failure as stop:
            # What landed before the stop is in the snapshot; the CLI and the UI say so.
            summary = sync_summary(plan, outcome)
            raise Failure(
                description=stop.description,
                metadata=_sync_metadata(summary, outcome, target_names),
            ) from stop
        summary = sync_summary(plan, outcome)
        return MaterializeResult(metadata=_sync_metadata(summary, outcome, target_names))

    return calendar_sync


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
