"""The sensors: legal_entity partitions in step with HR, and HR's changes reconciled in seconds."""

from dagster import (
    DagsterRunStatus,
    DefaultSensorStatus,
    RunRequest,
    RunsFilter,
    SensorEvaluationContext,
    SensorResult,
    sensor,
)

from pipelines.partitions import legal_entity_partitions
from pipelines.realtime import (
    EMPTY_START,
    Cursor,
    Pending,
    Window,
    merge_pending,
    plan_runs,
    poll_source,
    queued_run,
    read_from,
    touched,
)
from pipelines.schedules import RECONCILE_JOB, nightly_window
from resources.config import AppConfig
from resources.hr import HRDatabase
from resources.scope import month_start, window_today
from resources.state import StateStore


def build_entity_sensor(hr: HRDatabase, running: bool = True):
    @sensor(
        name="legal_entities_from_hr",
        minimum_interval_seconds=300,
        default_status=DefaultSensorStatus.RUNNING if running else DefaultSensorStatus.STOPPED,
        description="Adds a legal_entity partition for each legal entity HR knows.",
    )
    def legal_entities_from_hr(context: SensorEvaluationContext) -> SensorResult:
        known = set(context.instance.get_dynamic_partitions(legal_entity_partitions.name))
        new = [k for k in hr.partition_keys() if k not in known]
        if new:
            context.log.info(f"new legal entities: {', '.join(new)}")
        return SensorResult(
            dynamic_partitions_requests=[legal_entity_partitions.build_add_request(new)]
            if new
            else []
        )

    return legal_entities_from_hr


# --- hr_changes: HR changes reach the calendars within a poll and a run ----------------------
NOT_STARTED = (DagsterRunStatus.QUEUED, DagsterRunStatus.NOT_STARTED, DagsterRunStatus.STARTING)


def build_hr_changes_sensor(cfg: AppConfig, hr: HRDatabase, state: StateStore):
    """Polls HR every realtime.poll_seconds; one run per legal entity a change touches, over
    the days it touches (README, "Near real time")."""
    realtime = cfg.realtime
    targets = [t.name for t in cfg.targets]
    # Changed leaves past which an entity runs its whole window, so the blast-radius guard
    # judges its deletes against the nightly run's events, not a few days' (each leave is an
    # event per target: 5 opt-out leaves are 10 deletes with two targets).
    burst = -(-cfg.safety.min_deletes // max(1, len(targets)))
    warned: list[str] = []

    @sensor(
        name="hr_changes",
        minimum_interval_seconds=realtime.poll_seconds,
        job_name=RECONCILE_JOB,
        # window.schedules_running: false deploys it stopped, with the schedules.
        default_status=DefaultSensorStatus.RUNNING
        if cfg.window.schedules_running
        else DefaultSensorStatus.STOPPED,
        description=(
            "Reads the leaves, employees and legal entities HR changed since the last poll and "
            "reconciles the days they touch, one run per legal entity."
        ),
    )
    def hr_changes(context: SensorEvaluationContext) -> SensorResult:
        cursor = Cursor.from_json(context.cursor)
        today = window_today(cfg.window.timezone)
        window = Window(*nightly_window(cfg, today), month_start(today))
        if not warned:
            warned.extend(hr.change_warnings() or ["none"])
            for warning in warned:
                if warning != "none":
                    context.log.warning(warning)
        found: dict[str, Pending] = {}
        for source in hr.change_sources():
            # A first poll (or a reset cursor) starts from HR's newest change: what came
            # before it is the nightly run's. A table with no updated_at yet is read whole
            # once one appears.
            stored = cursor.newest.get(source)
            first = stored is None
            newest = hr.latest_change(source) if first else cursor.newest_at(source)
            if first:
                cursor.newest[source] = newest.isoformat() if newest else ""
                if newest is None:
                    continue
            start = read_from(newest, realtime.overlap_seconds) if newest else EMPTY_START
            polled = poll_source(
                cursor,
                source,
                start,
                hr.change_counts(source, start),
                lambda a, b, source=source: hr.changes_since(source, a, window.start, b),
                realtime.overlap_seconds,
            )
            fresh = polled.fresh
            if polled.bulk and not first:
                # Too many rows in one second to read (an import): every entity reruns.
                why = f"{source}: bulk change at {', '.join(polled.bulk)}"
                context.log.info(why + ": every legal entity's window runs")
                for key in hr.partition_keys():
                    found.setdefault(key, Pending()).merge(Pending(whole=True, why=[why]))
            if first or fresh.empty:
                continue
            leave_ids = sorted({str(i) for i in fresh["leave_id"].dropna()})
            exported = state.exported_under(leave_ids, targets) if leave_ids else fresh.iloc[:0]
            codes = None if hr.query else set(hr.legal_entities())
            for key, pending in touched(source, fresh, exported, codes, window).items():
                found.setdefault(key, Pending()).merge(pending)
            context.log.info(f"{len(fresh)} changed rows in {source} since {start.isoformat()}")
        merge_pending(cursor, found, burst)
        if not cursor.pending:
            return SensorResult(skip_reason="no change in HR", cursor=cursor.to_json())
        queued = [
            q
            for run in context.instance.get_runs(
                filters=RunsFilter(job_name=RECONCILE_JOB, statuses=list(NOT_STARTED))
            )
            if (q := queued_run(run.run_id, run.tags, window)) is not None
        ]
        runs, waiting = plan_runs(cursor, queued, window, realtime.max_runs_per_tick)
        for key, why in waiting.items():
            context.log.info(f"{key}: changes wait ({why})")
        known = set(context.instance.get_dynamic_partitions(legal_entity_partitions.name))
        new_keys = sorted({r.entity_key for r in runs} - known)
        requests = []
        for run in runs:
            scope = ", ".join(run.dates) if run.dates else f"{run.date_from}..{run.date_to}"
            context.log.info(f"{run.entity_key}: run over {scope} for {run.why}")
            # The jobs' executor runs in process already (pipelines/definitions.py).
            requests.append(RunRequest(tags=run.tags(window)))
        return SensorResult(
            run_requests=requests,
            skip_reason=None if requests else "changes wait: " + "; ".join(waiting.values()),
            cursor=cursor.to_json(),
            dynamic_partitions_requests=[legal_entity_partitions.build_add_request(new_keys)]
            if new_keys
            else [],
        )

    return hr_changes
