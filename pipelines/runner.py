"""Runs the reconciliation through Dagster on the persistent instance, so it shows in the UI."""

from __future__ import annotations

import datetime as dt
import os
import re
import warnings
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from resources.config import AppConfig, ConfigError

warnings.filterwarnings("ignore", category=Warning, module="dagster")

UNASSIGNED_LABEL = "(unassigned)"
COUNTS = ("created", "updated", "deleted", "moved", "failed", "unchanged", "quarantined")


class SetupError(ConfigError):
    """A target, the HR database or the state store cannot work: found before any write."""


def ensure_dagster_home(cfg: AppConfig) -> Path:
    """Use $DAGSTER_HOME, or <LEAVESYNC_HOME>/dagster (the same one `make ui` opens)."""
    home = Path(os.environ.get("DAGSTER_HOME") or cfg.home() / "dagster").resolve()
    home.mkdir(parents=True, exist_ok=True)
    os.environ["DAGSTER_HOME"] = str(home)
    settings = home / "dagster.yaml"
    ensure_instance_settings(settings)
    # One "materialization planned" event per asset for a run over a partition range.
    os.environ.setdefault("DAGSTER_EMIT_PARTITION_SUBSET_IN_PLANNED_EVENTS", "true")
    # Store a range run's per-partition materializations in batches (PostgreSQL storage).
    os.environ.setdefault("DAGSTER_EVENT_BATCH_SIZE", "1000")
    _relaxed_sqlite_sync(home)
    return home


# The demo's queue (`make ui`): one run per legal entity at a time, as in production
# (deploy/dagster.yaml), whatever launched it: hr_changes, the schedules, a backfill.
DEMO_RUN_QUEUE = """run_coordinator:
  module: pipelines.run_queue
  class: LegalEntityRunCoordinator
  config:
    max_concurrent_runs: 2
    max_concurrent_runs_per_legal_entity: 1
    dequeue_interval_seconds: 2
"""


_RELAXED_HOMES: dict[str, str] = {}  # instance folder -> synchronous level


def _relaxed_sqlite_sync(home: Path) -> None:
    """Dagster's own SQLite files (the embedded default instance) written without fsync.

    Dagster opens a connection per event and, SQLite's default, syncs every commit and
    every WAL checkpoint: measured ~2,000 fdatasync calls and 6-7 s of waiting for one
    nothing-changed 6-entity sync on this machine's disk, most of its time. With
    synchronous=OFF a crash of the process loses nothing committed; only a power loss or
    an OS crash can damage Dagster's run history, which is bookkeeping: our state store (a
    different database, untouched here) is what keeps calendars right, and a new instance
    folder is rebuilt by the next sync. PostgreSQL storage (deploy/, production) is not
    affected. LEAVESYNC_DAGSTER_SQLITE_SYNC=FULL (or NORMAL) keeps SQLite's syncing.
    """
    level = os.environ.get("LEAVESYNC_DAGSTER_SQLITE_SYNC", "OFF").upper()
    if level not in ("OFF", "NORMAL"):
        return
    import sqlalchemy as sa

    if not _RELAXED_HOMES:  # one listener for the process, whatever the number of folders
        sa.event.listen(sa.pool.Pool, "connect", _on_sqlite_connect)
    _RELAXED_HOMES[str(home) + os.sep] = level


def _on_sqlite_connect(dbapi_connection, _record) -> None:
    if type(dbapi_connection).__module__ != "sqlite3":
        return
    cursor = dbapi_connection.cursor()
    try:
        files = [row[2] or "" for row in cursor.execute("PRAGMA database_list")]
        for root, level in _RELAXED_HOMES.items():
            if any(f.startswith(root) for f in files):
                cursor.execute(f"PRAGMA synchronous={level}")
                break
    finally:
        cursor.close()


def ensure_instance_settings(settings: Path) -> None:
    """Turn telemetry and the UI's pop-ups off, and queue runs one per legal entity at a time,
    in a dagster.yaml that does not set them."""
    text = settings.read_text() if settings.exists() else ""
    missing = [
        f"{key}:\n  enabled: false\n"
        for key in ("telemetry", "nux")
        if not re.search(rf"^{key}:", text, re.MULTILINE)
    ]
    if not re.search(r"^run_coordinator:", text, re.MULTILINE):
        missing.append(DEMO_RUN_QUEUE)
    if missing:
        sep = "" if not text or text.endswith("\n") else "\n"
        settings.write_text(text + sep + "".join(missing))


@dataclass
class EntityRun:
    """What one legal entity's run did, as the CLI reports it."""

    entity_key: str
    run_id: str
    status: str  # "ok", "blocked", "failed", "planned" (dry run)
    summary: pd.DataFrame | None = None  # per legal entity code the run touched
    plan: object | None = None
    messages: list[str] = field(default_factory=list)
    label: str = ""  # the legal entity's code(s) in HR
    planned: int = 0  # changes the diff asked for
    extracted: int = 0  # leaves extracted
    sent_again: int = 0  # changes sent again after a transient failure (retry_rounds)

    def counts(self) -> dict[str, int]:
        """Written, failed, unchanged and quarantined, summed over the legal entities touched."""
        frame = self.summary if self.summary is not None else pd.DataFrame()
        out = {c: int(frame[c].sum()) if c in frame else 0 for c in COUNTS}
        if self.status == "planned":
            out["created"] = out["updated"] = out["deleted"] = out["moved"] = 0
        return out

    def written(self) -> int:
        c = self.counts()
        return c["created"] + c["updated"] + c["deleted"] + c["moved"]

    def not_applied(self) -> int:
        """Planned changes neither written nor failed (blocked, stopped, or a dry run)."""
        return max(0, self.planned - self.written() - self.counts()["failed"])


def sync_entity_partitions(instance, hr) -> list[str]:
    """Add a legal_entity partition for every legal entity HR knows; return all keys."""
    from pipelines.partitions import ENTITY_DIMENSION

    known = set(instance.get_dynamic_partitions(ENTITY_DIMENSION))
    keys = hr.partition_keys()
    new = [k for k in keys if k not in known]
    if new:
        instance.add_dynamic_partitions(ENTITY_DIMENSION, new)
    return keys


def preflight(cfg: AppConfig, resources: dict, check_targets: bool = True) -> list[str]:
    """Every target's configuration, then the HR and state databases, once, before any run.

    Returns HR's partition keys; raises SetupError naming what to fix.
    """
    from resources.providers.base import FatalProviderError

    if check_targets:
        settings = resources["settings"]
        for target in cfg.targets:
            try:
                settings.provider(target.name).preflight()
            except FatalProviderError as err:
                raise SetupError(_prefixed(f"target {target.name}", str(err))) from None
    hr_setting = "hr.url_env" if cfg.hr.url_env else "hr.url"
    try:
        keys = resources["hr"].partition_keys()
    except Exception as err:  # noqa: BLE001 - any failure to read HR stops the sync here
        raise SetupError(_prefixed("HR database", _one_line(err), hr_setting)) from None
    state_setting = "state.url_env" if cfg.state.url_env else "state.url"
    try:
        resources["state"].preflight()
    except Exception as err:  # noqa: BLE001 - likewise for the state store
        raise SetupError(_prefixed("state database", _one_line(err), state_setting)) from None
    return keys


def _one_line(err: BaseException) -> str:
    text = str(getattr(err, "orig", None) or err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _prefixed(prefix: str, message: str, setting: str | None = None) -> str:
    """``prefix: message`` without doubling a prefix the message already has."""
    body = message if message.lower().startswith(prefix.lower()) else f"{prefix}: {message}"
    return f"{body} (check {setting})" if setting and setting not in body else body


def reconcile(
    cfg: AppConfig,
    entity_keys: list[str] | None,
    date_from: dt.date,
    date_to: dt.date,
    dry_run: bool = False,
    allow_mass_delete: bool = False,
    progress: Callable[[str], None] = print,
    workers: int = 1,
    on_change: Callable[[str, str, int, int], None] | None = None,
    on_done: Callable[[EntityRun], None] | None = None,
    on_start: Callable[[int], None] | None = None,
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
        on_change=on_change,
        on_done=on_done,
        on_start=on_start,
    )


def run_job(
    cfg: AppConfig,
    job_name: str,
    entity_keys: list[str] | None,
    date_from: dt.date,
    date_to: dt.date,
    allow_mass_delete: bool = False,
    tags: dict[str, str] | None = None,
    progress: Callable[[str], None] = print,
    workers: int = 1,
    on_change: Callable[[str, str, int, int], None] | None = None,
    on_done: Callable[[EntityRun], None] | None = None,
    on_start: Callable[[int], None] | None = None,
) -> list[EntityRun]:
    """One Dagster run of ``job_name`` per legal entity over [date_from, date_to].

    ``workers`` > 1 runs that many entity runs at once, each in its own process.
    ``on_change(entity, target, done, planned)`` hears changes land (this process's runs).
    """
    ensure_dagster_home(cfg)
    from assets.leave_diff import ALLOW_MASS_DELETE_TAG
    from pipelines.definitions import PLAN_JOB, build_definitions
    from pipelines.orphans import sweep
    from pipelines.partitions import range_tags
    from pipelines.run_queue import entity_tags
    from resources.scope import window_today

    sweep(cfg, progress)  # a run left in progress by a dead process frees its entity first
    defs = build_definitions(cfg)
    resources = defs.resources
    known = preflight(cfg, resources, check_targets=job_name != PLAN_JOB)
    sync_entity_partitions(run_instance(), resources["hr"])
    keys = entity_keys or known
    unknown = [k for k in keys if k not in known]
    if unknown:
        raise ConfigError(
            f"unknown legal entity: {', '.join(unknown)} (HR knows: {', '.join(known)})"
        )
    labels = _labels(resources["hr"], keys)
    requests = []
    today = window_today(cfg.window.timezone)
    for key in keys:
        run_tags = {
            **range_tags(key, date_from, date_to, today),
            # The queue's per-entity limit sees this run while it is in progress.
            **entity_tags([key]),
            "leavesync/trigger": "cli",
            **(tags or {}),
        }
        if allow_mass_delete:
            run_tags[ALLOW_MASS_DELETE_TAG] = "true"
        requests.append((key, run_tags))
    if on_start:
        on_start(len(requests))
    if workers <= 1 or len(requests) <= 1:
        runs = []
        for key, run_tags in requests:
            progress(f"{labels[key]}: {job_name} {date_from}..{date_to}")
            run = _execute(defs, job_name, key, run_tags, on_change, labels[key])
            runs.append(_labelled([run], labels)[0])
            if on_done:
                on_done(run)
        return runs
    from concurrent.futures import ProcessPoolExecutor, as_completed

    with ProcessPoolExecutor(
        max_workers=workers, mp_context=_worker_context(), initializer=_die_with_parent
    ) as pool:
        futures = {}
        for key, run_tags in requests:
            future = pool.submit(_execute_in_worker, cfg.model_dump_json(), job_name, key, run_tags)
            futures[future] = key
        done: dict[str, EntityRun] = {}
        for future in as_completed(futures):
            run = _labelled([future.result()], labels)[0]
            done[futures[future]] = run
            progress(f"{run.label}: {job_name} {date_from}..{date_to}: {run.status}")
            if on_done:
                on_done(run)
        return [done[k] for k, _ in requests]


def _labels(hr, keys: list[str]) -> dict[str, str]:
    """Each partition key's legal entity code(s) as HR spells them."""
    from resources.hr import UNASSIGNED

    codes = hr.legal_entities()
    out = {}
    for key in keys:
        if key == UNASSIGNED:
            out[key] = UNASSIGNED_LABEL
            continue
        from resources.hr import entity_partition_key

        out[key] = ", ".join(c for c in codes if entity_partition_key(c) == key) or key
    return out


def _labelled(runs: list[EntityRun], labels: dict[str, str]) -> list[EntityRun]:
    for run in runs:
        run.label = labels.get(run.entity_key, run.entity_key)
    return runs


def _worker_context():
    import multiprocessing

    return multiprocessing.get_context("spawn")


def _die_with_parent() -> None:
    """A worker exits when the CLI that started it dies, even by kill -9 (Linux)."""
    import ctypes
    import signal

    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGKILL)
    except OSError:  # not Linux: the pool's own shutdown is all there is
        return
    # The parent may have died between fork and prctl: then we are orphaned already.
    if os.getppid() == 1:
        os._exit(1)


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


def _execute(
    defs,
    job_name: str,
    key: str,
    run_tags: dict[str, str],
    on_change: Callable[[str, str, int, int], None] | None = None,
    label: str = "",
) -> EntityRun:
    """One run in this process; what the CLI reports of it."""
    from assets import sync
    from assets.extract import HR_LEAVES
    from assets.leave_diff import LEAVE_DIFF, SAFETY_CHECK
    from pipelines.definitions import PLAN_JOB
    from pipelines.orphans import owner_tags

    listener = None
    if on_change is not None:

        def listener(target: str, done: int, total: int) -> None:
            on_change(label or key, target, done, total)

        sync.PROGRESS_LISTENERS.append(listener)
    instance = run_instance()
    _as_code_location_run(instance, job_name)
    try:
        result = defs.resolve_job_def(job_name).execute_in_process(
            instance=instance,
            tags={**run_tags, **owner_tags()},  # whose process runs it (pipelines/orphans.py)
            raise_on_error=False,
            # The run's full event log is in the instance (and the UI); the terminal gets ours.
            run_config={"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}},
        )
    finally:
        if listener is not None:
            sync.PROGRESS_LISTENERS.remove(listener)
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
        run.planned = len(run.plan.diff.changes)
        run.messages += [r.message() for r in run.plan.refusals]
        run.messages += [f"override: {r.message()}" for r in run.plan.overridden]
    for mat in result.get_asset_materialization_events():
        name = mat.asset_key.to_user_string()
        meta = mat.materialization.metadata
        if name == HR_LEAVES and "run_rows" in meta:
            run.extracted = int(meta["run_rows"].value)
        if name == sync.CALENDAR_SYNC and "changes_sent_again" in meta:
            run.sent_again = max(run.sent_again, int(meta["changes_sent_again"].value))
    try:
        # calendar_sync's value: its per-entity summary (its materializations are per partition).
        summary = result.output_for_node(sync.CALENDAR_SYNC)
        run.summary = summary if isinstance(summary, pd.DataFrame) else None
    except Exception:  # noqa: BLE001 - not applied (blocked, failed, or a plan-only run)
        pass
    for ev in result.all_events:
        if not (ev.is_failure and ev.event_specific_data is not None):
            continue
        failure = getattr(ev.event_specific_data, "user_failure_data", None)
        if failure is not None and run.summary is None and "summary" in failure.metadata:
            run.summary = pd.DataFrame(failure.metadata["summary"].value)
        err = getattr(ev.event_specific_data, "error", None)
        if err is not None and not blocked:
            message = _cause(err)
            if message and message not in run.messages:
                run.messages.append(message)
    if run.summary is None and run.plan is not None:
        # Nothing reached a calendar (blocked, stopped before applying, or a plan-only run):
        # unchanged and quarantined as planned, nothing written.
        run.summary = run.plan.summary().drop(columns=["create", "update", "delete", "move"])
        for col in ("created", "updated", "deleted", "moved", "failed"):
            run.summary[col] = 0
    if job_name == PLAN_JOB and run.status == "ok":
        run.status = "planned"
    return run


# The instances kept, the most recently used last. A CLI or worker process uses one
# DAGSTER_HOME; a test process hundreds in turn, and each open instance holds its storages
# (on PostgreSQL, a pool of connections): the oldest beyond these few are disposed.
KEPT_RUN_INSTANCES = 4
_RUN_INSTANCES: OrderedDict[str, object] = OrderedDict()


def run_instance():
    """This process's Dagster instance for its runs: one per DAGSTER_HOME, the last few kept open.

    On PostgreSQL storage Dagster's storages open a new connection per statement by default
    (NullPool, right for short-lived callers); a run writes ~40 events and reads its run back
    several times, so a CLI or worker process holding one pooled connection per storage, as
    Dagster's own webserver does, saves a connection set-up per event (measured: ~1 s of a
    nothing-changed entity run). No statement timeout is set (0): a run may wait on a lock.
    SQLite storages ignore the call.
    """
    from dagster import DagsterInstance

    home = os.environ.get("DAGSTER_HOME", "")
    instance = _RUN_INSTANCES.get(home)
    if instance is not None:
        _RUN_INSTANCES.move_to_end(home)
        return instance
    instance = DagsterInstance.get()
    instance.optimize_for_webserver(statement_timeout=0, pool_recycle=3600, max_overflow=4)
    _RUN_INSTANCES[home] = instance
    while len(_RUN_INSTANCES) > KEPT_RUN_INSTANCES:
        _, oldest = _RUN_INSTANCES.popitem(last=False)
        oldest.dispose()
    return instance


def _as_code_location_run(instance, job_name: str) -> None:
    """Runs of this instance are recorded with the code location's origin, as the UI's and the
    daemon's are: listed under their job and the location, re-executable from the UI.

    execute_in_process keeps the CLI fast (no daemon, no code server); it has no parameter
    for the origin, so this instance's run creation adds it.
    """
    import sys

    from dagster._core.code_pointer import ModuleCodePointer
    from dagster._core.origin import JobPythonOrigin, RepositoryPythonOrigin
    from dagster._core.remote_origin import (
        ManagedGrpcPythonEnvCodeLocationOrigin,
        RemoteJobOrigin,
        RemoteRepositoryOrigin,
    )
    from dagster._core.types.loadable_target_origin import LoadableTargetOrigin

    module, root = "pipelines.location", str(Path(__file__).resolve().parents[1])
    target = LoadableTargetOrigin(
        executable_path=sys.executable, module_name=module, working_directory=root
    )
    location = ManagedGrpcPythonEnvCodeLocationOrigin(target, "leavesync")
    remote = RemoteJobOrigin(RemoteRepositoryOrigin(location, "__repository__"), job_name)
    python = JobPythonOrigin(
        job_name, RepositoryPythonOrigin(sys.executable, ModuleCodePointer(module, "defs", root))
    )
    # Kept once per instance: a process's instance serves every job (reconcile, then drift).
    create = instance.__dict__.setdefault("_leavesync_create_run", instance.create_run_for_job)

    def create_with_origin(**kwargs):
        kwargs.setdefault("remote_job_origin", remote)
        kwargs.setdefault("job_code_origin", python)
        return create(**kwargs)

    instance.create_run_for_job = create_with_origin


def _undoubled(text: str) -> str:
    """'target x: target x: why' -> 'target x: why' (a prefix added at two levels)."""
    return re.sub(r"^((?:target|legal entity) [^:]+: )\1+", r"\1", text)


def _cause(err) -> str:
    """The innermost error's own message: what went wrong, not where Dagster caught it."""
    while getattr(err, "cause", None) is not None and (
        "Error occurred while" in err.message
        or err.cls_name == "DagsterExecutionStepExecutionError"
    ):
        err = err.cause
    text = (err.message or "").strip()
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if not lines:
        return err.cls_name or "error"
    first = lines[0]
    # Dagster prefixes a Failure's description with the exception's class name.
    for prefix in ("dagster._core.definitions.events.Failure: ", "Failure: "):
        first = first.removeprefix(prefix)
    if err.cls_name not in ("Failure", None) and ":" not in first[:60]:
        first = f"{err.cls_name}: {first}"
    first = _undoubled(first)
    return "\n".join([first, *lines[1:]]) if err.cls_name == "Failure" else first
