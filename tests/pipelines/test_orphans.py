"""kill -9 of a sync (the CLI or one of its workers): the ghost run is failed at the next start."""

from __future__ import annotations

import datetime as dt
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml
from dagster import DagsterEventType, DagsterInstance, DagsterRunStatus, RunsFilter, job

from pipelines import orphans

REPO = Path(__file__).resolve().parents[2]
START = dt.date.today() + dt.timedelta(days=1)
END = START + dt.timedelta(days=20)

# Loaded by every Python process of the sync (the CLI and its spawned workers) through
# PYTHONPATH: each feed write is held up, so that the kill lands mid-apply, and the heartbeat
# beats fast, so that the test sees it beat.
HOLD = textwrap.dedent(
    """
    import os, time
    from pathlib import Path

    if os.environ.get("LEAVESYNC_TEST_HOLD"):
        from pipelines import orphans
        from resources.providers import ics

        orphans.HEARTBEAT_SECONDS = 0.3
        marker = Path(os.environ["LEAVESYNC_TEST_HOLD"])
        original = ics._write_atomically

        def held_write(path, data):
            marker.write_text("applying")
            time.sleep(120)
            original(path, data)

        ics._write_atomically = held_write
    """
)


@pytest.fixture
def setup(home, hr, tmp_path):
    for i, entity in enumerate(["FR", "FR", "US", "US"], start=1):
        hr.employee(i, entity, f"p{i}@example.com")
        hr.leave(i, START + dt.timedelta(days=i), START + dt.timedelta(days=i + 1))
    cfg = home / "leavesync.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "hr": {"url": hr.url},
                "targets": [
                    {"name": "feeds", "type": "ics", "settings": {"directory": str(home / "feeds")}}
                ],
            }
        )
    )
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(HOLD)
    args = ["sync", "--config", str(cfg), "--from", START.isoformat(), "--to", END.isoformat()]
    return {"home": home, "hook": hook, "args": args, "marker": tmp_path / "applying"}


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), **extra}


def _start_held_cli(setup, *extra: str) -> subprocess.Popen:
    """The real CLI in a subprocess, once it is inside its apply."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipelines.cli", *setup["args"], *extra],
        cwd=REPO,
        env=_env(
            PYTHONPATH=f"{setup['hook']}{os.pathsep}{REPO}",
            LEAVESYNC_TEST_HOLD=str(setup["marker"]),
        ),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 300
    while not setup["marker"].exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the sync never reached its apply"
        time.sleep(0.1)
    return proc


def _in_progress(instance) -> list:
    return list(instance.get_runs(RunsFilter(statuses=[DagsterRunStatus.STARTED])))


def _failure_message(instance, run_id: str) -> str:
    events = instance.all_logs(run_id, of_type=DagsterEventType.RUN_FAILURE)
    return " ".join(e.dagster_event.message or "" for e in events)


def _cli(setup, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pipelines.cli", *setup["args"], *extra],
        cwd=REPO,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_killed_cli_leaves_a_ghost_that_the_next_start_fails_and_its_entity_runs_again(setup):
    proc = _start_held_cli(setup, "--entity", "FR")
    instance = DagsterInstance.get()
    (ghost,) = _in_progress(instance)
    assert ghost.tags[orphans.PID_TAG] == str(proc.pid)
    # While it runs, its heartbeat moves on, and nobody takes it for an orphan.
    first_beat = ghost.tags[orphans.HEARTBEAT_TAG]
    deadline = time.monotonic() + 60
    while instance.get_run_by_id(ghost.run_id).tags[orphans.HEARTBEAT_TAG] == first_beat:
        assert time.monotonic() < deadline, "no heartbeat"
        time.sleep(0.2)
    assert orphans.fail_orphaned_runs(instance) == []
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert instance.get_run_by_id(ghost.run_id).status == DagsterRunStatus.STARTED

    again = _cli(setup, "--entity", "FR")
    assert again.returncode == 0, again.stderr
    assert f"run {ghost.run_id} of FR marked failed" in again.stderr
    assert f"pid {proc.pid}" in again.stderr and "is gone" in again.stderr
    assert instance.get_run_by_id(ghost.run_id).status == DagsterRunStatus.FAILURE
    message = _failure_message(instance, ghost.run_id)
    assert "Orphaned run" in message and f"pid {proc.pid}" in message
    assert _in_progress(instance) == []
    # The entity ran again at once, to the end: both FR feeds are there.
    feeds = sorted(p.name for p in (setup["home"] / "feeds").glob("*.ics"))
    assert feeds == ["p1@example.com.ics", "p2@example.com.ics"]


def test_killed_cli_and_workers_leave_ghosts_that_the_next_start_fails(setup):
    proc = _start_held_cli(setup, "--workers", "2")
    instance = DagsterInstance.get()
    deadline = time.monotonic() + 300
    while len(_in_progress(instance)) < 2:  # both workers are inside a run
        assert time.monotonic() < deadline, [r.tags for r in _in_progress(instance)]
        time.sleep(0.2)
    workers = {int(r.tags[orphans.PID_TAG]) for r in _in_progress(instance)}
    assert proc.pid not in workers and len(workers) == 2
    for pid in (proc.pid, *workers):  # the CLI and the processes running its entities
        os.kill(pid, signal.SIGKILL)
    proc.wait(timeout=30)

    again = _cli(setup)
    assert again.returncode == 0, again.stderr
    assert again.stderr.count("marked failed") == 2
    assert _in_progress(instance) == []
    assert len(list((setup["home"] / "feeds").glob("*.ics"))) == 4


@job
def _noop_job():
    pass


def _run_with(instance, **tags: str):
    return instance.create_run_for_job(
        _noop_job, status=DagsterRunStatus.STARTED, tags={**RANGE_TAGS, **tags}
    )


RANGE_TAGS = {"dagster/asset_partition_range_start": "2026-01-01|FR"}


def test_only_runs_whose_process_is_gone_or_silent_are_failed():
    instance = DagsterInstance.ephemeral()
    here = socket.gethostname()
    gone = subprocess.Popen(["true"])
    gone.wait()
    now = dt.datetime.now(dt.UTC)
    stale = (now - dt.timedelta(seconds=orphans.STALE_AFTER_SECONDS + 5)).isoformat()
    mine = orphans.owner_tags()
    runs = {
        "alive": _run_with(instance, **mine),
        "dead": _run_with(instance, **{**mine, orphans.PID_TAG: str(gone.pid)}),
        # Our pid, but another process started under it: the one that wrote the tags is gone.
        "reused_pid": _run_with(instance, **{**mine, orphans.PROCESS_TAG: "other-boot:1"}),
        "remote_beating": _run_with(
            instance,
            **{**mine, orphans.HOST_TAG: "elsewhere", orphans.HEARTBEAT_TAG: now.isoformat()},
        ),
        "remote_silent": _run_with(
            instance, **{**mine, orphans.HOST_TAG: "elsewhere", orphans.HEARTBEAT_TAG: stale}
        ),
        "daemon": _run_with(instance),  # no tags of ours: Dagster's run monitoring watches it
    }
    failed = {o.run_id: o for o in orphans.fail_orphaned_runs(instance)}
    status = {k: instance.get_run_by_id(r.run_id).status for k, r in runs.items()}
    assert {k for k, s in status.items() if s == DagsterRunStatus.FAILURE} == {
        "dead",
        "reused_pid",
        "remote_silent",
    }
    assert set(failed) == {runs[k].run_id for k in ("dead", "reused_pid", "remote_silent")}
    assert f"pid {gone.pid} on {here}) is gone" in failed[runs["dead"].run_id].reason
    assert "no heartbeat since" in failed[runs["remote_silent"].run_id].reason
    assert all(o.entity == "FR" for o in failed.values())
    assert "Orphaned run" in _failure_message(instance, runs["dead"].run_id)
    assert orphans.fail_orphaned_runs(instance) == []  # once is enough


def test_the_readme_run_monitoring_block_is_a_valid_instance_configuration(tmp_path):
    readme = (REPO / "README.md").read_text()
    section = readme.split("## Crash safety and recovery", 1)[1]
    block = section.split("```yaml\n", 1)[1].split("```", 1)[0]
    (tmp_path / "dagster.yaml").write_text(block)
    with DagsterInstance.from_config(str(tmp_path)) as instance:
        assert instance.run_monitoring_enabled
        assert instance.run_monitoring_start_timeout_seconds == 180
        assert instance.run_monitoring_max_runtime_seconds == 14400
        assert instance.run_monitoring_settings["free_slots_after_run_end_seconds"] == 300
