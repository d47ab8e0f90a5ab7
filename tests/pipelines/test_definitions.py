"""The Dagster code location: asset graph, partitions, nightly schedule, legal entity sensor."""

from __future__ import annotations

import datetime as dt

from dagster import AssetKey, DagsterInstance, build_schedule_context, build_sensor_context

from pipelines.definitions import build_definitions
from pipelines.partitions import ENTITY_DIMENSION, leave_partitions
from resources.scope import scopes_from_keys
from tests.harness import make_config


def test_asset_graph_is_what_the_design_says(home, hr):
    defs = build_definitions(make_config(home, hr.url))
    graph = defs.resolve_asset_graph()
    deps = {
        key.to_user_string(): sorted(p.to_user_string() for p in graph.get(key).parent_keys)
        for key in graph.get_all_asset_keys()
    }
    assert deps["hr_leaves"] == []
    assert deps["leave_diff"] == ["hr_leaves"]
    assert deps["calendar_sync"] == ["leave_diff"]
    checks = {(c.asset_key.to_user_string(), c.name) for c in graph.asset_check_keys}
    assert ("leave_diff", "diff_is_safe") in checks
    spec = graph.get_check_spec(next(c for c in graph.asset_check_keys if c.name == "diff_is_safe"))
    assert spec.blocking
    for name in ("hr_leaves", "leave_diff", "calendar_sync"):
        node = graph.get(AssetKey(name))
        assert node.partitions_def == leave_partitions(make_config(home, hr.url))
        assert (
            node.backfill_policy is not None and node.backfill_policy.max_partitions_per_run is None
        )


def test_date_partitions_reach_today_plus_horizon(home, hr):
    cfg = make_config(home, hr.url, window={"horizon_days": 10, "timezone": "Europe/Paris"})
    dates = leave_partitions(cfg).get_partitions_def_for_dimension("date")
    today = (
        dt.datetime.now(dt.UTC).astimezone(__import__("zoneinfo").ZoneInfo("Europe/Paris")).date()
    )
    keys = dates.get_partition_keys()
    assert keys[-1] == (today + dt.timedelta(days=10)).isoformat()
    assert keys[0] == cfg.window.partitions_start.isoformat()


def test_nightly_schedule_launches_one_run_per_legal_entity_over_the_window(home, hr):
    cfg = make_config(home, hr.url, window={"lookback_days": 30, "horizon_days": 365})
    defs = build_definitions(cfg)
    (home / "dagster-instance").mkdir()
    instance = DagsterInstance.local_temp(str(home / "dagster-instance"))
    instance.add_dynamic_partitions(ENTITY_DIMENSION, ["FR", "US", "_unassigned"])
    when = dt.datetime(2026, 6, 1, 2, 0, tzinfo=dt.UTC)
    schedule = defs.get_schedule_def("nightly_reconciliation")
    with build_schedule_context(instance=instance, scheduled_execution_time=when) as context:
        requests = list(schedule.evaluate_tick(context).run_requests)
    assert len(requests) == 3
    starts = sorted(r.tags["dagster/asset_partition_range_start"] for r in requests)
    ends = sorted(r.tags["dagster/asset_partition_range_end"] for r in requests)
    assert starts == ["2026-05-02|FR", "2026-05-02|US", "2026-05-02|_unassigned"]
    assert ends == ["2027-06-01|FR", "2027-06-01|US", "2027-06-01|_unassigned"]
    assert len({r.run_key for r in requests}) == 3


def test_sensor_adds_the_legal_entities_hr_knows(home, hr):
    hr.entity("DE", "Europe/Berlin")
    defs = build_definitions(make_config(home, hr.url))
    (home / "dagster-instance").mkdir()
    instance = DagsterInstance.local_temp(str(home / "dagster-instance"))
    instance.add_dynamic_partitions(ENTITY_DIMENSION, ["FR"])
    sensor = defs.get_sensor_def("legal_entities_from_hr")
    with build_sensor_context(instance=instance) as context:
        result = sensor(context)
    added = [k for req in result.dynamic_partitions_requests for k in req.partition_keys]
    assert sorted(added) == ["DE", "US", "_unassigned"]


def test_scope_groups_multi_partition_keys_by_entity():
    keys = ["2026-01-02|FR", "2026-01-01|FR", "2026-01-05|US"]
    scopes = scopes_from_keys(keys)
    assert [
        (s.entity_key, s.date_from.isoformat(), s.date_to.isoformat(), len(s.dates)) for s in scopes
    ] == [
        ("FR", "2026-01-01", "2026-01-02", 2),
        ("US", "2026-01-05", "2026-01-05", 1),
    ]


def test_drift_report_has_its_own_job_and_schedule(home, hr):
    cfg = make_config(home, hr.url, window={"drift_cron": "0 6 * * 1"})
    defs = build_definitions(cfg)
    schedule = defs.get_schedule_def("drift_report")
    assert schedule.job_name == "drift" and schedule.cron_schedule == "0 6 * * 1"
    reconcile = defs.resolve_job_def("reconcile")
    assert "sync_drift" not in {
        k.to_user_string() for k in reconcile.asset_layer.selected_asset_keys
    }
