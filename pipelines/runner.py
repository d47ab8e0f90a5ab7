"""Runs the reconciliation through Dagster on the persistent instance, so it shows in the UI."""

from __future__ import annotations

import datetime as dt
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from resources.config import AppConfig, ConfigError

warnings.filterwarnings("ignore", category=Warning, module="dagster")


def ensure_dagster_home(cfg: AppConfig) -> Path:
    """Use $DAGSTER_HOME, or <LEAVESYNC_HOME>/dagster (the same one `make ui` opens)."""
    home = Path(os.environ.get("DAGSTER_HOME") or cfg.home() / "dagster").resolve()
    home.mkdir(parents=True, exist_ok=True)
    os.environ["DAGSTER_HOME"] = str(home)
    (home / "dagster.yaml").touch(exist_ok=True)
    # One "materialization planned" event per asset for a run over a partition range, instead
    # of one per partition: it halves Dagster's own overhead per nightly run. (The cost:
    # partitions of a failed run are not each marked failed; the run and its checks are.)
    os.environ.setdefault("DAGSTER_EMIT_PARTITION_SUBSET_IN_PLANNED_EVENTS", "true")
    # Store a range run's per-partition materializations in batches (one INSERT per 1000 on
    # PostgreSQL storage instead of one connection per event: 80 s -> 30 s for a nightly run).
    os.environ.setdefault("DAGSTER_EVENT_BATCH_SIZE", "1000")
    return home


@dataclass
class EntityRun:
    entity_key: str
    run_id: str
    status: str  # "ok", "blocked", "failed"
    summary: pd.DataFrame | None = None
    plan: object | None = None
    messages: list[str] = field(default_factory=list)


def sync_entity_partitions(instance, hr) -> list[str]:
    """Add a legal_entity partition for every legal entity HR knows; return all keys."""
    from pipelines.partitions import ENTITY_DIMENSION

    known = set(instance.get_dynamic_partitions(ENTITY_DIMENSION))
    keys = hr.partition_keys()
    new = [k for k in keys if k not in known]
    if new:
        instance.add_dynamic_partitions(ENTITY_DIMENSION, new)
    return keys


def reconcile(
    cfg: AppConfig,
    entity_keys: list[str] | None,
    date_from: dt.date,
    date_to: dt.date,
    dry_run: bool = False,
    allow_mass_delete: bool = False,
    progress=print,
    workers: int = 1,
) -> list[EntityRun]:
    """One reconciliation run (or plan run, for a dry run) per legal entity."""
    from pipelines.definitions import PLAN_JOB
    from pipelines.schedules import RECONCILE_JOB

    return run_job(
        cfg,
        PLAN_JOB if dry_run else RECONCILE_JOB,
        entity_keys,
        date_from,
        date_to,
        allow_mass_delete=allow_mass_delete,
        progress=progress,
        workers=workers,
    )


def run_job(
    cfg: AppConfig,
    job_name: str,
    entity_keys: list[str] | None,
    date_from: dt.date,
    date_to: dt.date,
    allow_mass_delete: bool = False,
    tags: dict[str, str] | None = None,
    progress=print,
    workers: int = 1,
) -> list[EntityRun]:
    """One Dagster run of ``job_name`` per legal entity over [date_from, date_to].

    ``workers`` > 1 runs that many entity runs at once, each in its own process.
    """
    ensure_dagster_home(cfg)
    from dagster import DagsterInstance

    from assets.leave_diff import ALLOW_MASS_DELETE_TAG
    from pipelines.definitions import build_definitions
    from pipelines.orphans import sweep
    from pipelines.partitions import range_tags

    sweep(cfg, progress)  # a run left in progress by a dead process frees its entity first
    defs = build_definitions(cfg)
    known = sync_entity_partitions(DagsterInstance.get(), defs.resources["hr"])
    keys = entity_keys or known
    unknown = [k for k in keys if k not in known]
    if unknown:
        raise ConfigError(
            f"unknown legal entity: {', '.join(unknown)} (HR knows: {', '.join(known)})"
        )
    requests = []
    for key in keys:
        run_tags = {
            **range_tags(key, date_from, date_to),
            "leavesync/trigger": "cli",
            **(tags or {}),
        }
        if allow_mass_delete:
            run_tags[ALLOW_MASS_DELETE_TAG] = "true"
        requests.append((key, run_tags))
    if workers <= 1 or len(requests) <= 1:
        runs = []
        for key, run_tags in requests:
            progress(f"{key}: {job_name} {date_from}..{date_to}")
            runs.append(_execute(defs, job_name, key, run_tags))
        return runs
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        futures = []
        for key, run_tags in requests:
            progress(f"{key}: {job_name} {date_from}..{date_to} (queued)")
            futures.append(
                pool.submit(_execute_in_worker, cfg.model_dump_json(), job_name, key, run_tags)
            )
        return [f.result() for f in futures]


_WORKER_DEFS: dict[str, object] = {}


def _execute_in_worker(
    cfg_json: str, job_name: str, key: str, run_tags: dict[str, str]
) -> EntityRun:
    """A worker process's run; its Definitions are built once per process."""
    if cfg_json not in _WORKER_DEFS:
        from pipelines.definitions import build_definitions

        cfg = AppConfig.model_validate_json(cfg_json)
        ensure_dagster_home(cfg)
        _WORKER_DEFS[cfg_json] = build_definitions(cfg)
    return _execute(_WORKER_DEFS[cfg_json], job_name, key, run_tags)


def _execute(defs, job_name: str, key: str, run_tags: dict[str, str]) -> EntityRun:
    """One run in this process; what the CLI reports of it."""
    from dagster import DagsterInstance

    from assets.leave_diff import LEAVE_DIFF, SAFETY_CHECK
    from assets.sync import CALENDAR_SYNC
    from pipelines.orphans import owner_tags

    result = defs.resolve_job_def(job_name).execute_in_process(
        instance=DagsterInstance.get(),
        tags={**run_tags, **owner_tags()},  # whose process runs it (pipelines/orphans.py)
        raise_on_error=False,
        # The run's full event log is in the instance (and the UI); the terminal gets warnings.
        run_config={"loggers": {"console": {"config": {"log_level": "WARNING"}}}},
    )
    run = EntityRun(key, result.run_id, "ok" if result.success else "failed")
    blocked = [
        ev
        for ev in result.get_asset_check_evaluations()
        if ev.check_name == SAFETY_CHECK and not ev.passed
    ]
    if blocked:
        run.status = "blocked"
    try:
        run.plan = result.output_for_node(LEAVE_DIFF)
    except Exception:  # noqa: BLE001 - the step failed before producing its plan
        run.plan = None
    if run.plan is not None:
        run.messages += [r.message() for r in run.plan.refusals]
        run.messages += [f"override: {r.message()}" for r in run.plan.overridden]
    for mat in result.get_asset_materialization_events():
        if mat.asset_key.to_user_string() == CALENDAR_SYNC:
            meta = mat.materialization.metadata.get("summary")
            if meta is not None:
                run.summary = pd.DataFrame(meta.value)
            break
    if run.summary is None and run.plan is not None:
        run.summary = run.plan.summary().rename(
            columns={"create": "created", "update": "updated", "delete": "deleted"}
        )
    for ev in result.all_events:
        if ev.is_failure and ev.event_specific_data is not None:
            err = getattr(ev.event_specific_data, "error", None)
            if err is not None and not blocked:
                run.messages.append(err.message.strip().splitlines()[-1])
    return run
