"""The Dagster code location: assets, checks, jobs, schedule, sensor and resources."""

from __future__ import annotations

from dagster import Definitions, define_asset_job, in_process_executor

from assets.drift import SYNC_DRIFT, build_sync_drift
from assets.extract import HR_LEAVES, build_hr_leaves
from assets.leave_diff import LEAVE_DIFF, build_leave_diff
from assets.sync import CALENDAR_SYNC, build_calendar_sync
from pipelines.io_manager import PartitionSetPickleIOManager
from pipelines.partitions import leave_partitions
from pipelines.schedules import RECONCILE_JOB, build_nightly_schedule
from pipelines.sensors import build_entity_sensor, build_hr_changes_sensor
from resources.config import AppConfig
from resources.hr import HRDatabase
from resources.settings import LeavesyncSettings
from resources.state import StateStore

PLAN_JOB = "plan"
DRIFT_JOB = "drift"


def build_resources(cfg: AppConfig) -> dict:
    """The resources of every job. A url_env is handed over as the variable's name: the
    resource reads it when used, in a run or in the CLI alike, so the URL and its password
    never enter Dagster's run config, job snapshots or metadata."""
    hr = HRDatabase(url=cfg.hr_url_in_file(), url_env=cfg.hr.url_env, query=cfg.hr.query)
    state = StateStore(url=cfg.state_url_in_file(), url_env=cfg.state.url_env)
    return {
        "hr": hr,
        "state": state,
        "settings": LeavesyncSettings(config_json=cfg.model_dump_json()),
        "io_manager": PartitionSetPickleIOManager(base_dir=str(cfg.home() / "io")),
    }


def build_definitions(cfg: AppConfig) -> Definitions:
    partitions = leave_partitions(cfg)
    resources = build_resources(cfg)
    assets = [
        build_hr_leaves(partitions),
        build_leave_diff(partitions),
        build_calendar_sync(
            partitions, [t.name for t in cfg.targets], [t.type for t in cfg.targets]
        ),
        build_sync_drift(partitions),
    ]
    reconcile = define_asset_job(
        RECONCILE_JOB,
        selection=[HR_LEAVES, LEAVE_DIFF, CALENDAR_SYNC],
        description="Extract, validate and diff, then apply to every calendar target.",
    )
    plan_only = define_asset_job(
        PLAN_JOB,
        selection=[HR_LEAVES, LEAVE_DIFF],
        description="Extract, validate and diff without touching any calendar (dry run).",
    )
    drift = define_asset_job(
        DRIFT_JOB,
        selection=[HR_LEAVES, LEAVE_DIFF, SYNC_DRIFT],
        description="Read the calendars back, report drift from the snapshot and HR, repair it.",
    )
    return Definitions(
        assets=assets,
        jobs=[reconcile, plan_only, drift],
        # Drift reads every calendar in the window back: its own schedule keeps the nightly
        # reconciliation cheap and lets operators read back less often (quota, large feeds).
        schedules=[
            build_nightly_schedule(cfg, "nightly_reconciliation", RECONCILE_JOB, cfg.window.cron),
            build_nightly_schedule(cfg, "drift_report", DRIFT_JOB, cfg.window.drift_cron),
        ],
        sensors=[
            build_entity_sensor(resources["hr"], cfg.window.schedules_running),
            # Off where HR's updated_at cannot be trusted: the nightly run is then the only path.
            *(
                [build_hr_changes_sensor(cfg, resources["hr"], resources["state"])]
                if cfg.realtime_enabled()
                else []
            ),
        ],
        resources=resources,
        # A run is one process (the CLI's, or the worker the code server starts), its steps
        # in order: a run of a legal entity costs one interpreter, not one per step, and
        # Dagster's multiprocess executor leaves scheduled runs hanging between steps
        # (dagster-io/dagster#28492; seen here as daemon-launched runs stuck after extract).
        executor=in_process_executor,
    )
