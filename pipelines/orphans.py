"""Runs whose process died (kill -9, crash, lost host) are marked failed, so none stays STARTED.

A run executed in this process carries tags naming it (host, pid, process start) and a
heartbeat refreshed while it runs. Before it launches anything, the CLI marks failed every
in-progress run whose process is gone on this host, or whose heartbeat stopped (another host,
a container that is no more). Runs launched by the daemon are Dagster's own run monitoring's
(README, "Crash safety and recovery").
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from resources.config import AppConfig

log = logging.getLogger(__name__)

HOST_TAG = "leavesync/host"
PID_TAG = "leavesync/pid"
# The process's start (boot id and start time): a pid reused by another process is not ours.
PROCESS_TAG = "leavesync/process"
HEARTBEAT_TAG = "leavesync/heartbeat"

HEARTBEAT_SECONDS = 30.0
# A run on another host whose heartbeat is older than this is taken for dead.
STALE_AFTER_SECONDS = 600.0

_heartbeat_lock = threading.Lock()
_heartbeat_started = False


@dataclass(frozen=True)
class OrphanedRun:
    run_id: str
    entity: str
    reason: str


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(microsecond=0)


def _stat(pid: int) -> list[str] | None:
    """The fields of /proc/<pid>/stat from the third on (state, ppid, ...); None if absent."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after its last ')'.
    return stat.rsplit(")", 1)[1].split()


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def process_identity(pid: int) -> str:
    """Boot id and start time of a process ('' where /proc is not there, or no such process)."""
    fields = _stat(pid)
    return f"{_boot_id()}:{fields[19]}" if fields else ""  # field 22: starttime


def process_alive(pid: int, identity: str) -> bool:
    """Whether the process that recorded (pid, identity) still runs on this host."""
    if Path("/proc/self/stat").exists():
        fields = _stat(pid)
        if fields is None or fields[0] == "Z":  # gone, or a zombie nobody reaped yet
            return False
        return not identity or identity == f"{_boot_id()}:{fields[19]}"
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process: alive
    return True


def owner_tags() -> dict[str, str]:
    """Tags of a run executed in this process; starts this process's heartbeat."""
    _start_heartbeat()
    pid = os.getpid()
    return {
        HOST_TAG: socket.gethostname(),
        PID_TAG: str(pid),
        PROCESS_TAG: process_identity(pid),
        HEARTBEAT_TAG: _now().isoformat(),
    }


def _start_heartbeat() -> None:
    global _heartbeat_started
    with _heartbeat_lock:
        if _heartbeat_started:
            return
        _heartbeat_started = True
    threading.Thread(target=_beat, name="leavesync-heartbeat", daemon=True).start()


def _beat() -> None:
    """Refresh the heartbeat tag of the runs this process is executing."""
    from dagster import DagsterInstance, DagsterRunStatus, RunsFilter

    pid = os.getpid()
    mine = {HOST_TAG: socket.gethostname(), PID_TAG: str(pid), PROCESS_TAG: process_identity(pid)}
    instance = None
    while True:
        time.sleep(HEARTBEAT_SECONDS)
        try:
            instance = instance or DagsterInstance.get()
            runs = instance.get_runs(
                RunsFilter(statuses=[DagsterRunStatus.STARTED], tags=mine), limit=100
            )
            for run in runs:
                instance.add_run_tags(run.run_id, {HEARTBEAT_TAG: _now().isoformat()})
        except Exception as err:  # noqa: BLE001 - a missed beat must never fail the run itself
            log.debug("heartbeat not recorded: %s", err)


def _entity_of(tags: dict[str, str]) -> str:
    for name in ("dagster/asset_partition_range_start", "dagster/partition"):
        if name in tags:
            return tags[name].rsplit("|", 1)[-1]
    return "?"


def _why_orphaned(tags: dict[str, str], now: dt.datetime) -> str | None:
    """Why a run of ours in progress has no live process, or None if it may still run."""
    host, pid = tags.get(HOST_TAG, "?"), int(tags[PID_TAG])
    if host == socket.gethostname():
        if process_alive(pid, tags.get(PROCESS_TAG, "")):
            return None
        return f"the process that ran it (pid {pid} on {host}) is gone: killed or crashed"
    try:
        beat = dt.datetime.fromisoformat(tags.get(HEARTBEAT_TAG, ""))
    except ValueError:
        beat = None
    if beat is not None and (now - beat).total_seconds() < STALE_AFTER_SECONDS:
        return None
    return (
        f"the process that ran it (pid {pid} on {host}) sent no heartbeat since "
        f"{beat.isoformat() if beat else 'it started'}"
    )


def fail_orphaned_runs(instance) -> list[OrphanedRun]:
    """Mark failed every in-progress run of ours whose process is gone; return them."""
    from dagster import DagsterRunStatus, RunsFilter

    statuses = [DagsterRunStatus.NOT_STARTED, DagsterRunStatus.STARTING, DagsterRunStatus.STARTED]
    now = _now()
    found = []
    for record in instance.get_run_records(RunsFilter(statuses=statuses)):
        run = record.dagster_run
        if PID_TAG not in run.tags:
            continue  # launched by the daemon: Dagster's run monitoring watches it
        reason = _why_orphaned(dict(run.tags), now)
        if reason is None:
            continue
        entity = _entity_of(dict(run.tags))
        instance.report_run_failed(
            run,
            f"Orphaned run: {reason}. Marked failed by leavesync (pid {os.getpid()} on "
            f"{socket.gethostname()}) at {now.isoformat()}. The changes it applied are in the "
            f"snapshot; the next run of {entity} resumes from there.",
        )
        storage = instance.event_log_storage
        if storage.supports_global_concurrency_limits:
            storage.free_concurrency_slots_for_run(run.run_id)
        found.append(OrphanedRun(run.run_id, entity, reason))
    return found


def sweep(cfg: AppConfig, say: Callable[[str], None]) -> list[OrphanedRun]:
    """Fail the orphaned runs of this configuration's Dagster instance, if it exists yet."""
    home = Path(os.environ.get("DAGSTER_HOME") or cfg.home() / "dagster").resolve()
    if not (home / "dagster.yaml").exists():
        return []
    from pipelines.runner import run_instance

    os.environ["DAGSTER_HOME"] = str(home)
    found = fail_orphaned_runs(run_instance())  # the instance this process's runs use
    for o in found:
        say(f"run {o.run_id} of {o.entity} marked failed: {o.reason}")
    return found


def sweep_at_start(cfg: AppConfig) -> None:
    """The CLI's start: report on stderr the orphaned runs it marked failed."""
    import sys

    try:
        sweep(cfg, lambda m: print(m, file=sys.stderr))
    except Exception as err:  # noqa: BLE001 - a broken instance is reported by the command itself
        print(f"could not look for orphaned runs: {err}", file=sys.stderr)
