"""The hr_changes sensor: which runs HR's changes launch, its cursor, clock skew, coalescing."""

from __future__ import annotations

import datetime as dt
import json

import pytest
import sqlalchemy as sa
from dagster import (
    DagsterInstance,
    DagsterRun,
    DagsterRunStatus,
    DefaultSensorStatus,
    build_sensor_context,
)

from pipelines.definitions import build_definitions
from pipelines.partitions import ENTITY_DIMENSION
from pipelines.schedules import nightly_window
from resources.scope import (
    DATE_FROM_TAG,
    DATE_TO_TAG,
    DATES_TAG,
    month_start,
    partition_of,
    window_today,
)
from resources.state import StateStore
from tests.harness import Pipeline, make_config, scope
from tests.hr_builder import HRBuilder

TODAY = dt.date.today()
# HR's clock: months away from ours on purpose; the sensor only compares HR's times.
T0 = dt.datetime(2026, 1, 1)
T1 = dt.datetime(2031, 3, 4, 12, 0, 0)


def day(n: int) -> dt.date:
    return TODAY + dt.timedelta(days=n)


def at(seconds: float) -> dt.datetime:
    return T1 + dt.timedelta(seconds=seconds)


class Sensor:
    """The sensor of one configuration, evaluated tick by tick on a Dagster instance."""

    def __init__(self, cfg, instance: DagsterInstance, cursor: str | None = None) -> None:
        self.cfg, self.instance, self.cursor = cfg, instance, cursor
        self.defs = build_definitions(cfg)
        self.sensor = self.defs.get_sensor_def("hr_changes")

    def tick(self) -> list:
        with build_sensor_context(instance=self.instance, cursor=self.cursor) as context:
            result = self.sensor.evaluate_tick(context)
        self.cursor = result.cursor
        self.skip = result.skip_message
        return sorted(result.run_requests or [], key=lambda r: r.tags[_START])

    def execute(self, request) -> bool:
        """Run a request's job in this process, as the daemon's run would: its config, tags."""
        job = self.defs.resolve_job_def("reconcile")
        return job.execute_in_process(
            run_config=request.run_config,
            instance=self.instance,
            tags=request.tags,
            raise_on_error=False,
        ).success


_START = "dagster/asset_partition_range_start"
_END = "dagster/asset_partition_range_end"


def entity(request) -> str:
    return request.tags[_START].split("|", 1)[1]


def days(request) -> list[str] | None:
    tagged = request.tags.get(DATES_TAG)
    return tagged.split(",") if tagged else None


def iso(*ns: int) -> list[str]:
    return sorted(day(n).isoformat() for n in ns)


@pytest.fixture
def instance(home):
    (home / "dagster-instance").mkdir()
    with DagsterInstance.local_temp(str(home / "dagster-instance")) as inst:
        inst.add_dynamic_partitions(ENTITY_DIMENSION, ["FR", "US", "_unassigned"])
        yield inst


def seed(hr: HRBuilder) -> dict[str, int]:
    hr.employee(1, "FR", "ann@example.com")
    hr.employee(2, "FR", "bob@example.com")
    hr.employee(3, "US", "cy@example.com")
    return {
        "pending": hr.leave(1, day(2), status="pending"),
        "bob": hr.leave(2, day(10), day(11)),
        "bob_later": hr.leave(2, day(40)),
        "cy": hr.leave(3, day(4)),
    }


def synced(home, builder: HRBuilder, **sections):
    """A configuration whose snapshot holds every leave (the nightly run has run)."""
    sections.setdefault("realtime", {"enabled": True})
    cfg = make_config(home, builder.url, **sections)
    start, end = nightly_window(cfg, window_today(cfg.window.timezone))
    result, outcome = Pipeline(cfg).sync([scope("FR", start, end), scope("US", start, end)])
    assert outcome is not None and not outcome.failed and not result.refused
    return cfg


def test_an_approval_launches_one_run_over_its_day(home, hr, instance):
    ids = seed(hr)
    sensor = Sensor(synced(home, hr), instance)
    assert sensor.tick() == []  # the first poll starts from HR's newest change
    assert sensor.skip == "no change in HR"
    hr.update_leave(ids["pending"], status="approved", updated_at=at(0))
    (run,) = sensor.tick()
    month = partition_of(day(2), month_start(TODAY)).isoformat()
    assert entity(run) == "FR" and days(run) == iso(2)
    assert run.tags[_START] == f"{month}|FR" and run.tags[_END] == f"{month}|FR"
    assert (run.tags[DATE_FROM_TAG], run.tags[DATE_TO_TAG]) == (day(2).isoformat(),) * 2
    assert run.tags["leavesync/trigger"] == "hr_changes"
    assert sensor.tick() == []  # read again in the overlap window: not launched again


def test_a_move_across_legal_entities_runs_both_and_the_events_follow(home, hr, instance):
    ids = seed(hr)
    cfg = synced(home, hr)
    sensor = Sensor(cfg, instance)
    sensor.tick()
    hr.update_employee(2, legal_entity="US", updated_at=at(0))
    fr, us = sensor.tick()
    # FR: where the snapshot says bob's events were exported; US: where his leaves are now.
    assert (entity(fr), days(fr)) == ("FR", iso(10, 40))
    assert (entity(us), days(us)) == ("US", iso(10, 40))
    assert sensor.execute(fr) and sensor.execute(us)
    snapshot = StateStore(url=cfg.state_url()).snapshot_all()
    where = dict(zip(snapshot["leave_id"], snapshot["legal_entity"], strict=True))
    assert where[str(ids["bob"])] == "US" and where[str(ids["bob_later"])] == "US"
    assert len(snapshot) == 4  # moved, not duplicated


def test_an_opt_out_runs_the_employees_days_and_deletes_the_events(home, hr, instance):
    ids = seed(hr)
    cfg = synced(home, hr)
    sensor = Sensor(cfg, instance)
    sensor.tick()
    hr.update_employee(2, sync_enabled=False, updated_at=at(0))
    (run,) = sensor.tick()
    assert (entity(run), days(run)) == ("FR", iso(10, 40))
    assert sensor.execute(run)
    left = set(StateStore(url=cfg.state_url()).snapshot_all()["leave_id"])
    assert left == {str(ids["pending"]), str(ids["cy"])}


def test_a_new_leave_and_a_moved_date_touch_new_and_exported_days(home, hr, instance):
    ids = seed(hr)
    sensor = Sensor(synced(home, hr), instance)
    sensor.tick()
    hr.leave(3, day(20), id=50, updated_at=at(0))
    hr.update_leave(ids["bob"], start_date=day(70), end_date=day(71), updated_at=at(1))
    fr, us = sensor.tick()
    assert (entity(fr), days(fr)) == ("FR", iso(10, 70))
    assert (entity(us), days(us)) == ("US", iso(20))


def test_a_legal_entity_change_runs_its_whole_window(home, hr, instance):
    seed(hr)
    cfg = synced(home, hr)
    sensor = Sensor(cfg, instance)
    sensor.tick()
    hr.execute(
        "UPDATE legal_entities SET timezone = 'Europe/Berlin', updated_at = :t WHERE code = 'FR'",
        t=at(0),
    )
    (run,) = sensor.tick()
    start, end = nightly_window(cfg, window_today(cfg.window.timezone))
    assert entity(run) == "FR" and days(run) is None
    assert (run.tags[DATE_FROM_TAG], run.tags[DATE_TO_TAG]) == (start.isoformat(), end.isoformat())


def test_a_burst_in_one_entity_runs_its_whole_window_so_the_guard_judges_it_as_at_night(
    home, hr, instance
):
    hr.employee(1, "FR", "ann@example.com")
    leaves = [hr.leave(1, day(n)) for n in range(1, 13)]
    sensor = Sensor(synced(home, hr), instance)
    sensor.tick()
    for i, lid in enumerate(leaves[:10]):  # safety.min_deletes (10) cancellations
        hr.update_leave(lid, status="cancelled", updated_at=at(i))
    (run,) = sensor.tick()
    assert entity(run) == "FR" and days(run) is None


def test_the_burst_counts_events_so_two_targets_reach_the_guard_with_half_the_leaves(
    home, hr, instance
):
    hr.employee(1, "FR", "ann@example.com")
    hr.employee(2, "FR", "bob@example.com")
    leaves = [hr.leave(1, day(n)) for n in range(1, 13)]
    for n in range(1, 31):
        hr.leave(2, day(n))
    feeds = [
        {"name": name, "type": "ics", "settings": {"directory": str(home / name)}}
        for name in ("feeds", "mirror")
    ]
    cfg = synced(home, hr, targets=feeds)
    sensor = Sensor(cfg, instance)
    sensor.tick()
    for i, lid in enumerate(leaves[:5]):  # 5 leaves: 10 events deleted (safety.min_deletes)
        hr.update_leave(lid, status="cancelled", updated_at=at(i))
    (run,) = sensor.tick()
    assert entity(run) == "FR" and days(run) is None  # judged over the whole window
    # 10 of the window's 84 events: allowed, as at night; over the 5 days alone (10 of 20)
    # the guard would refuse the run and the cancellations would wait for the night.
    assert sensor.execute(run)
    assert len(StateStore(url=cfg.state_url()).snapshot_all()) == 2 * 37


def test_a_custom_query_returning_updated_at_is_polled(home, hr, instance):
    seed(hr)
    query = """
        SELECT l.id AS leave_id, l.employee_id, e.email AS employee_email,
               e.display_name AS employee_name, e.legal_entity, le.timezone,
               l.leave_type, lt.name AS leave_type_name, lt.sensitive, l.status,
               l.start_date, l.end_date, l.start_half, l.end_half, l.start_time, l.end_time,
               CASE WHEN e.updated_at > l.updated_at THEN e.updated_at ELSE l.updated_at END
                 AS updated_at,
               e.sync_enabled, e.active
        FROM leaves l JOIN employees e ON e.id = l.employee_id
        JOIN legal_entities le ON le.code = e.legal_entity
        JOIN leave_types lt ON lt.code = l.leave_type
    """
    cfg = synced(home, hr, hr={"url": hr.url, "query": query})
    sensor = Sensor(cfg, instance)
    sensor.tick()
    hr.update_employee(3, sync_enabled=False, updated_at=at(0))
    (run,) = sensor.tick()
    assert (entity(run), days(run)) == ("US", iso(4))
    assert sensor.execute(run)


def test_the_cursor_survives_a_restart(home, hr, instance):
    ids = seed(hr)
    cfg = synced(home, hr)
    before = Sensor(cfg, instance)
    before.tick()
    hr.update_leave(ids["cy"], status="cancelled", updated_at=at(0))
    assert len(before.tick()) == 1
    stored = json.loads(before.cursor)
    assert stored["newest"]["leaves"].startswith("2031-03-04T12:00:00")
    # A new process: new resources, new sensor, the cursor Dagster kept.
    after = Sensor(make_config(home, hr.url, realtime={"enabled": True}), instance, before.cursor)
    assert after.tick() == []
    hr.update_leave(ids["pending"], status="approved", updated_at=at(30))
    (run,) = after.tick()
    assert (entity(run), days(run)) == ("FR", iso(2))


def test_a_change_committed_late_with_an_older_updated_at_is_not_lost(home, hr, instance):
    ids = seed(hr)
    sensor = Sensor(synced(home, hr, realtime={"enabled": True, "overlap_seconds": 600}), instance)
    sensor.tick()
    hr.update_leave(ids["cy"], status="cancelled", updated_at=at(0))
    assert len(sensor.tick()) == 1
    # Committed now, stamped 5 minutes before the newest change the sensor has seen (a long
    # transaction, or an HR server whose clock lags): inside the overlap window.
    hr.update_leave(ids["pending"], status="approved", updated_at=at(-300))
    (run,) = sensor.tick()
    assert (entity(run), days(run)) == ("FR", iso(2))
    # Same second as a change already seen: that second's digest changes, so it is found.
    hr.update_leave(ids["bob"], status="cancelled", updated_at=at(0.5))
    (run,) = sensor.tick()
    assert (entity(run), days(run)) == ("FR", iso(10))
    # Older than the overlap window: left to the nightly run (README, "Near real time").
    hr.update_leave(ids["bob_later"], status="cancelled", updated_at=at(-900))
    assert sensor.tick() == []


def _queued(instance: DagsterInstance, run_id: str, tags: dict[str, str]) -> DagsterRun:
    """A reconcile run waiting in the queue (as the daemon's queue holds it)."""
    from dagster._core.remote_origin import (
        InProcessCodeLocationOrigin,
        RemoteJobOrigin,
        RemoteRepositoryOrigin,
    )
    from dagster._core.types.loadable_target_origin import LoadableTargetOrigin

    location = InProcessCodeLocationOrigin(
        LoadableTargetOrigin(module_name="pipelines.location"), location_name="leavesync"
    )
    origin = RemoteJobOrigin(RemoteRepositoryOrigin(location, "__repository__"), "reconcile")
    run = DagsterRun(
        job_name="reconcile",
        run_id=run_id,
        status=DagsterRunStatus.QUEUED,
        tags=tags,
        remote_job_origin=origin,
    )
    return instance.add_run(run)


def test_ticks_coalesce_while_a_run_of_the_entity_is_queued(home, hr, instance):
    ids = seed(hr)
    sensor = Sensor(synced(home, hr), instance)
    sensor.tick()
    hr.update_leave(ids["pending"], status="approved", updated_at=at(0))
    (first,) = sensor.tick()
    queued = _queued(instance, "a" * 32, dict(first.tags))
    # A change the queued run will read anyway (its day): nothing more to launch.
    hr.update_leave(ids["pending"], status="cancelled", updated_at=at(10))
    assert sensor.tick() == []
    # Changes on other days wait for the queued run to start, then go in one run.
    hr.update_leave(ids["bob"], status="cancelled", updated_at=at(20))
    assert sensor.tick() == []
    assert "queued" in sensor.skip
    hr.update_leave(ids["bob_later"], status="cancelled", updated_at=at(40))
    assert sensor.tick() == []
    instance.report_run_canceled(queued)  # or started: it no longer waits in the queue
    (run,) = sensor.tick()
    assert (entity(run), days(run)) == ("FR", iso(10, 40))
    assert sensor.tick() == []


def test_the_nightly_run_queued_covers_every_change_of_its_entity(home, hr, instance):
    ids = seed(hr)
    cfg = synced(home, hr)
    sensor = Sensor(cfg, instance)
    sensor.tick()
    from pipelines.schedules import nightly_run_requests

    (nightly,) = nightly_run_requests(cfg, ["US"], window_today(cfg.window.timezone))
    _queued(instance, "b" * 32, dict(nightly.tags))
    hr.update_leave(ids["cy"], status="cancelled", updated_at=at(0))
    hr.update_leave(ids["pending"], status="approved", updated_at=at(1))
    (run,) = sensor.tick()
    assert entity(run) == "FR"


def test_a_tick_launches_at_most_max_runs_per_tick(home, hr, instance):
    ids = seed(hr)
    hr.entity("DE", "Europe/Berlin")
    hr.employee(4, "DE", "dee@example.com")
    de = hr.leave(4, day(5))
    instance.add_dynamic_partitions(ENTITY_DIMENSION, ["DE"])
    cfg = synced(home, hr, realtime={"enabled": True, "max_runs_per_tick": 2})
    sensor = Sensor(cfg, instance)
    sensor.tick()
    hr.update_leave(ids["cy"], status="cancelled", updated_at=at(0))
    hr.update_leave(ids["pending"], status="approved", updated_at=at(0))
    hr.update_leave(de, status="cancelled", updated_at=at(0))
    assert [entity(r) for r in sensor.tick()] == ["DE", "FR"]
    assert [entity(r) for r in sensor.tick()] == ["US"]  # waited in the cursor


def test_a_new_legal_entity_gets_its_partition_and_its_run(home, hr, instance):
    seed(hr)
    sensor = Sensor(synced(home, hr), instance)
    sensor.tick()
    hr.execute(
        "INSERT INTO legal_entities (code, name, timezone, workday_start, midday, workday_end,"
        " updated_at) VALUES ('ES', 'Acme SL', 'Europe/Madrid', '09:00:00', '13:00:00',"
        " '18:00:00', :t)",
        t=at(0),
    )
    with build_sensor_context(instance=instance, cursor=sensor.cursor) as context:
        result = sensor.sensor.evaluate_tick(context)
    assert [entity(r) for r in result.run_requests] == ["ES"]
    added = [k for r in result.dynamic_partitions_requests for k in r.partition_keys]
    assert added == ["ES"]


def test_realtime_is_on_for_the_embedded_demo_database_and_opt_in_otherwise(home, hr):
    from resources.config import parse_config

    assert parse_config({}).realtime_enabled()
    assert not make_config(home, hr.url).realtime_enabled()
    assert make_config(home, hr.url, realtime={"enabled": True}).realtime_enabled()
    names = {s.name for s in build_definitions(make_config(home, hr.url)).sensors}
    assert "hr_changes" not in names
    off = parse_config({"realtime": {"enabled": False}})
    assert "hr_changes" not in {s.name for s in build_definitions(off).sensors}
    on = build_definitions(make_config(home, hr.url, realtime={"enabled": True, "poll_seconds": 7}))
    assert on.get_sensor_def("hr_changes").minimum_interval_seconds == 7
    assert on.get_sensor_def("hr_changes").default_status == DefaultSensorStatus.RUNNING
    stopped = make_config(
        home, hr.url, realtime={"enabled": True}, window={"schedules_running": False}
    )
    sensor = build_definitions(stopped).get_sensor_def("hr_changes")
    assert sensor.default_status == DefaultSensorStatus.STOPPED


def test_the_reference_schema_indexes_updated_at_and_a_missing_index_is_reported(home, hr):
    from resources.hr import HRDatabase

    assert HRDatabase(url=hr.url).change_warnings() == []
    bare = sa.create_engine(f"sqlite:///{home / 'bare.sqlite'}")
    HRBuilder(bare)
    with bare.begin() as conn:
        conn.execute(sa.text("DROP INDEX ix_employees_updated_at"))
    warnings = HRDatabase(url=f"sqlite:///{home / 'bare.sqlite'}").change_warnings()
    assert warnings == [
        "employees.updated_at has no index: every poll scans employees "
        "(CREATE INDEX ix_employees_updated_at ON employees (updated_at))"
    ]


@pytest.mark.parametrize("server", ["postgres_url", "mariadb_url"])
def test_changes_are_read_on_database_servers(server, home, instance, request):
    url = request.getfixturevalue(server)
    hr = HRBuilder(sa.create_engine(url))
    ids = seed(hr)
    sensor = Sensor(synced(home, hr), instance)
    sensor.tick()
    hr.update_employee(2, legal_entity="US", updated_at=at(0))
    hr.update_leave(ids["cy"], status="cancelled", updated_at=at(-120))
    fr, us = sensor.tick()
    assert (entity(fr), days(fr)) == ("FR", iso(10, 40))
    assert (entity(us), days(us)) == ("US", iso(4, 10, 40))
    assert sensor.tick() == []


def _rows(items: list[tuple[int, dt.datetime]]):
    import pandas as pd

    return pd.DataFrame(
        {
            "source_id": [str(i) for i, _ in items],
            "leave_id": [str(i) for i, _ in items],
            "legal_entity": ["FR"] * len(items),
            "start_date": [day(1).isoformat()] * len(items),
            "changed_at": [t for _, t in items],
        }
    )


def test_a_bulk_second_tells_the_rows_that_arrived_from_those_that_left():
    from pipelines.realtime import MAX_ROWS_PER_SECOND, Cursor, new_changes

    bulk = [(i, at(0)) for i in range(1, 501)]  # an import: 500 rows stamped in one second
    cursor = Cursor()
    assert len(new_changes(cursor, "employees", _rows(bulk), 600)) == 500
    remembered = Cursor.from_json(cursor.to_json())  # as Dagster stores it
    assert len(remembered.to_json()) < 3000 and MAX_ROWS_PER_SECOND < 500
    # One row updated again (it leaves the bulk second): only it is new.
    moved = [*bulk[1:], (1, at(60))]
    assert list(new_changes(remembered, "employees", _rows(moved), 600)["source_id"]) == ["1"]
    # A late commit into the bulk second, and another row leaving it: only those two.
    late = [*moved[1:], (2, at(61)), (9999, at(0.25))]
    fresh = new_changes(remembered, "employees", _rows(late), 600)
    assert sorted(fresh["source_id"]) == ["2", "9999"]
    # More differences than the sketch can tell apart: every row of the second is new again.
    churn = [(i, at(0)) for i in range(200, 700)] + [(1, at(60)), (2, at(61)), (9999, at(0.25))]
    fresh = new_changes(remembered, "employees", _rows(churn), 600)
    assert len(fresh) == 501 and "9999" in set(fresh["source_id"])


def test_an_opt_out_after_a_bulk_import_runs_that_employee_only(home, hr, instance):
    hr.employee(1, "FR", "ann@example.com")
    for i in range(2, 60):  # HR's import stamped every employee in the same second
        hr.employee(i, "FR" if i % 2 else "US", f"e{i}@example.com")
        hr.leave(i, day(5 + i % 7))
    hr.execute("UPDATE employees SET updated_at = :t", t=at(-30))
    lid = hr.leave(1, day(3))
    sensor = Sensor(synced(home, hr), instance)
    sensor.tick()
    hr.update_employee(1, sync_enabled=False, updated_at=at(0))
    (run,) = sensor.tick()
    assert (entity(run), days(run)) == ("FR", iso(3))
    assert sensor.execute(run)
    cfg_state = StateStore(url=sensor.cfg.state_url()).snapshot_all()
    assert str(lid) not in set(cfg_state["leave_id"])


def test_an_import_too_large_to_read_is_counted_not_fetched():
    from pipelines.realtime import BULK_ROWS, Cursor, poll_source

    reads: list[tuple] = []
    table = {("import", at(0)): BULK_ROWS + 1}

    def rows_between(start, end):
        reads.append((start, end))
        items = [
            (i, t)
            for (i, t), _ in table.items()
            if i != "import" and t >= start and (end is None or t < end)
        ]
        return _rows(items) if items else _rows([]).astype({"changed_at": object})

    def poll(cursor):
        counts: dict = {}
        for (_, t), n in table.items():
            counts[t] = counts.get(t, 0) + n
        return poll_source(cursor, "leaves", at(-600), counts, rows_between, 600)

    def fetched_the_import() -> bool:
        return any(a <= at(0) and (b is None or b > at(0)) for a, b in reads)

    cursor = Cursor()
    first = poll(cursor)
    assert first.bulk == [at(0).isoformat()] and not fetched_the_import()
    assert poll(cursor).bulk == []  # remembered by its count: nothing to rerun
    table[(7, at(30))] = 1  # a change elsewhere: found, the import still not fetched
    found = poll(cursor)
    assert list(found.fresh["source_id"]) == ["7"] and found.bulk == []
    table[("import", at(0))] -= 1  # one imported row updated again: it leaves the import
    table[(8, at(40))] = 1
    found = poll(cursor)
    assert list(found.fresh["source_id"]) == ["8"] and found.bulk == []
    assert not fetched_the_import()
    table[("import", at(0))] += 5  # rows committed late into it: every entity reruns
    assert poll(cursor).bulk == [at(0).isoformat()]
