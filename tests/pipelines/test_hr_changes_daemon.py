"""hr_changes under a real `dagster-daemon`: its runs wait for their legal entity's slot in the
run queue, ticks coalesce behind a queued run, and its cursor outlives a daemon restart."""

from __future__ import annotations

import datetime as dt
import json
import uuid

import pytest
import yaml
from dagster import DagsterInstance, DagsterRun, DagsterRunStatus, RunsFilter
from icalendar import Calendar

from pipelines.partitions import ENTITY_DIMENSION
from pipelines.realtime import TRIGGER
from pipelines.run_queue import ENTITY_TAG, entity_tags
from pipelines.schedules import nightly_window
from resources.config import parse_config
from resources.providers.ical import KEY_PROP
from resources.providers.ics import feed_file_name
from resources.scope import DATES_TAG, window_today
from tests.harness import Pipeline, scope
from tests.servers.dagster_stack import (
    DagsterStack,
    instance_yaml,
    sensor_cursor,
    stack_env,
    wait_for,
)

TODAY = dt.date.today()
T1 = dt.datetime(2031, 3, 4, 12, 0, 0)  # HR's clock, far from ours: only HR's times compare
WAIT = 240  # seconds: a loaded 2-core machine starts a run worker in 5 to 30 s


def day(n: int) -> dt.date:
    return TODAY + dt.timedelta(days=n)


def at(seconds: float) -> dt.datetime:
    return T1 + dt.timedelta(seconds=seconds)


def sensor_runs(instance: DagsterInstance, entity: str) -> list[DagsterRun]:
    runs = instance.get_runs(RunsFilter(tags={"leavesync/trigger": TRIGGER}))
    return sorted(
        (r for r in runs if r.tags.get(ENTITY_TAG) == entity),
        key=lambda r: instance.get_run_record_by_id(r.run_id).create_timestamp,
    )


def status_of(instance: DagsterInstance, run: DagsterRun) -> DagsterRunStatus:
    return instance.get_run_by_id(run.run_id).status


def feed_keys(home, email: str) -> dict[str, str]:
    """Event key -> STATUS in an employee's .ics feed."""
    path = home / "feeds" / feed_file_name(email)
    if not path.exists():
        return {}
    feed = Calendar.from_ical(path.read_bytes())
    return {str(e.get(KEY_PROP)): str(e.get("STATUS")) for e in feed.walk("VEVENT")}


@pytest.fixture
def deployed(home, hr, tmp_path):
    """FR (ann, bob) and US (cy) synced; the configuration on disk; the daemon's instance."""
    hr.employee(1, "FR", "ann@example.com")
    hr.employee(2, "FR", "bob@example.com")
    hr.employee(3, "US", "cy@example.com")
    ids = {
        "pending": hr.leave(1, day(2), status="pending"),
        "bob": hr.leave(2, day(10)),
        "bob_later": hr.leave(2, day(40)),
        "cy": hr.leave(3, day(4)),
    }
    data = {
        "hr": {"url": hr.url},
        "state": {"url": f"sqlite:///{home / 'state.sqlite'}"},
        "targets": [
            {"name": "feeds", "type": "ics", "settings": {"directory": str(home / "feeds")}}
        ],
        "realtime": {"enabled": True, "poll_seconds": 5},
    }
    cfg = parse_config(data, "test configuration")
    start, end = nightly_window(cfg, window_today(cfg.window.timezone))
    result, outcome = Pipeline(cfg).sync([scope("FR", start, end), scope("US", start, end)])
    assert outcome is not None and not outcome.failed
    config = home / "leavesync.yaml"
    config.write_text(yaml.safe_dump(data))
    dagster_home = tmp_path / "dagster"
    dagster_home.mkdir(exist_ok=True)
    (dagster_home / "dagster.yaml").write_text(
        instance_yaml(max_concurrent_runs=4, dequeue_interval_seconds=1)
    )
    env = stack_env(home, dagster_home, config)
    with DagsterInstance.from_config(str(dagster_home)) as instance:
        instance.add_dynamic_partitions(ENTITY_DIMENSION, ["FR", "US", "_unassigned"])
        yield ids, env, instance


def _executing(instance: DagsterInstance, entity: str) -> DagsterRun:
    """A run of ``entity`` in progress (as a nightly run holds the slot) with no worker."""
    run = DagsterRun(
        job_name="reconcile",
        run_id=str(uuid.uuid4()),
        status=DagsterRunStatus.STARTED,
        tags={**entity_tags([entity]), "leavesync/trigger": "test"},
    )
    return instance.add_run(run)


def test_runs_of_one_entity_queue_behind_each_other_coalesce_and_survive_a_restart(
    deployed, home, hr, tmp_path
):
    ids, env, instance = deployed
    log = tmp_path / "daemon.log"
    stack = DagsterStack(env, log).start()
    try:
        wait_for("the first hr_changes tick", lambda: sensor_cursor(instance, "hr_changes"), WAIT)
        nightly = _executing(instance, "FR")
        hr.update_leave(ids["pending"], status="approved", updated_at=at(0))
        hr.update_leave(ids["cy"], status="cancelled", updated_at=at(1))

        # US runs at once; FR's run waits in the queue while FR's other run executes.
        def us_done():
            runs = sensor_runs(instance, "US")
            return runs and status_of(instance, runs[0]) == DagsterRunStatus.SUCCESS

        wait_for("the US run", us_done, WAIT, stack)
        (queued,) = sensor_runs(instance, "FR")
        assert status_of(instance, queued) == DagsterRunStatus.QUEUED
        assert feed_keys(home, "cy@example.com") == {}

        # Two more ticks' worth of FR changes while its run is queued: no second FR run.
        def tick_saw(second: float):
            cursor = json.loads(sensor_cursor(instance, "hr_changes") or "{}")
            return cursor.get("newest", {}).get("leaves", "") >= at(second).isoformat()

        hr.update_leave(ids["bob"], status="cancelled", updated_at=at(10))
        wait_for("a tick that reads bob's cancellation", lambda: tick_saw(10), WAIT, stack)
        hr.update_leave(ids["bob_later"], status="cancelled", updated_at=at(20))
        wait_for("a tick that reads the second one", lambda: tick_saw(20), WAIT, stack)
        assert len(sensor_runs(instance, "FR")) == 1
        assert status_of(instance, queued) == DagsterRunStatus.QUEUED
        waiting = json.loads(sensor_cursor(instance, "hr_changes"))["pending"]
        assert sorted(waiting["FR"]["days"]) == [day(10).isoformat(), day(40).isoformat()]

        instance.report_run_failed(nightly)  # FR's slot is free: the queued run starts
        freed = instance.get_run_record_by_id(nightly.run_id).end_time

        def fr_done(count: int):
            def check():
                runs = sensor_runs(instance, "FR")
                ended = [r for r in runs if instance.get_run_by_id(r.run_id).is_finished]
                return len(runs) == count and len(ended) == count and runs

            return check

        first, coalesced = wait_for("both FR runs", fr_done(2), WAIT, stack)
        assert first.run_id == queued.run_id and first.tags[DATES_TAG] == day(2).isoformat()
        assert coalesced.tags[DATES_TAG] == f"{day(10).isoformat()},{day(40).isoformat()}"
        for run in (first, coalesced):
            assert status_of(instance, run) == DagsterRunStatus.SUCCESS
        assert feed_keys(home, "ann@example.com") == {f"leave-{ids['pending']}": "CONFIRMED"}
        assert feed_keys(home, "bob@example.com") == {}
        # One FR run at a time: each started after the previous one ended.
        records = [instance.get_run_record_by_id(r.run_id) for r in (first, coalesced)]
        assert freed is not None and records[0].start_time >= freed
        assert records[1].start_time >= records[0].end_time

        # The daemon stops; a change lands meanwhile; the restarted daemon's sensor resumes
        # from the cursor Dagster kept (a fresh cursor would start after this change).
        stack.stop()
        hr.update_employee(1, sync_enabled=False, updated_at=at(30))
        stack = DagsterStack(env, log).start()
        *_, opt_out = wait_for("the opt-out's run", fr_done(3), WAIT, stack)
        assert opt_out.tags[DATES_TAG] == day(2).isoformat()
        assert status_of(instance, opt_out) == DagsterRunStatus.SUCCESS
        assert feed_keys(home, "ann@example.com") == {}
        assert len(sensor_runs(instance, "US")) == 1  # nothing launched twice
    finally:
        stack.stop()
