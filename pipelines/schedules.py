"""The nightly reconciliation: one run per legal entity over [today - lookback, today + horizon]."""

import datetime as dt
from zoneinfo import ZoneInfo

from dagster import (
    DefaultScheduleStatus,
    RunRequest,
    ScheduleDefinition,
    ScheduleEvaluationContext,
    schedule,
)

from pipelines.partitions import ENTITY_DIMENSION, first_partition, range_tags
from pipelines.run_queue import entity_tags
from resources.config import AppConfig

RECONCILE_JOB = "reconcile"


def nightly_window(cfg: AppConfig, today: dt.date) -> tuple[dt.date, dt.date]:
    """[today - lookback, today + horizon], not before the first partition."""
    start = max(today - dt.timedelta(days=cfg.window.lookback_days), first_partition(cfg, today))
    return start, today + dt.timedelta(days=cfg.window.horizon_days)


def nightly_run_requests(
    cfg: AppConfig, entity_keys: list[str], today: dt.date, schedule_name: str = "nightly"
) -> list[RunRequest]:
    date_from, date_to = nightly_window(cfg, today)
    return [
        RunRequest(
            run_key=f"{schedule_name}-{today.isoformat()}-{key}",
            tags={
                **range_tags(key, date_from, date_to, today),
                **entity_tags([key]),
                "leavesync/trigger": schedule_name,
            },
        )
        for key in sorted(entity_keys)
    ]


def build_nightly_schedule(
    cfg: AppConfig, name: str, job_name: str, cron: str
) -> ScheduleDefinition:
    """A schedule running ``job_name`` over the window for every legal entity, one run each."""

    @schedule(
        name=name,
        cron_schedule=cron,
        execution_timezone=cfg.window.timezone,
        job_name=job_name,
        default_status=DefaultScheduleStatus.RUNNING
        if cfg.window.schedules_running
        else DefaultScheduleStatus.STOPPED,
        description=f"Runs {job_name} over the window for every legal entity, one run per entity.",
    )
    def _schedule(context: ScheduleEvaluationContext):
        when = context.scheduled_execution_time or dt.datetime.now(dt.UTC)
        today = when.astimezone(ZoneInfo(cfg.window.timezone)).date()
        keys = context.instance.get_dynamic_partitions(ENTITY_DIMENSION)
        return nightly_run_requests(cfg, keys, today, name)

    return _schedule
