"""The nightly reconciliation: one run per legal entity over [today - lookback, today + horizon]."""

import datetime as dt
from zoneinfo import ZoneInfo

from dagster import RunRequest, ScheduleDefinition, ScheduleEvaluationContext, schedule

from pipelines.config import AppConfig
from pipelines.partitions import ENTITY_DIMENSION, range_tags

RECONCILE_JOB = "reconcile"


def nightly_window(cfg: AppConfig, today: dt.date) -> tuple[dt.date, dt.date]:
    start = max(today - dt.timedelta(days=cfg.window.lookback_days), cfg.window.partitions_start)
    return start, today + dt.timedelta(days=cfg.window.horizon_days)


def nightly_run_requests(
    cfg: AppConfig, entity_keys: list[str], today: dt.date
) -> list[RunRequest]:
    date_from, date_to = nightly_window(cfg, today)
    return [
        RunRequest(
            run_key=f"nightly-{today.isoformat()}-{key}",
            tags={**range_tags(key, date_from, date_to), "leavesync/trigger": "nightly"},
        )
        for key in sorted(entity_keys)
    ]


def build_nightly_schedule(cfg: AppConfig) -> ScheduleDefinition:
    @schedule(
        name="nightly_reconciliation",
        cron_schedule=cfg.window.cron,
        execution_timezone=cfg.window.timezone,
        job_name=RECONCILE_JOB,
        description="Reconciles the window for every legal entity, one run per entity.",
    )
    def nightly_reconciliation(context: ScheduleEvaluationContext):
        when = context.scheduled_execution_time or dt.datetime.now(dt.UTC)
        today = when.astimezone(ZoneInfo(cfg.window.timezone)).date()
        keys = context.instance.get_dynamic_partitions(ENTITY_DIMENSION)
        return nightly_run_requests(cfg, keys, today)

    return nightly_reconciliation
