"""The Dagster code location: asset graph, partitions, nightly schedule, legal entity sensor."""

from __future__ import annotations

import datetime as dt

from dagster import AssetKey, DagsterInstance, build_schedule_context, build_sensor_context

from pipelines.definitions import build_definitions
from pipelines.partitions import ENTITY_DIMENSION, leave_partitions, range_tags
from resources.scope import scopes_from_keys, window_today
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


def test_month_partitions_run_from_the_lookback_month_to_the_current_month(home, hr):
    cfg = make_config(home, hr.url, window={"lookback_days": 40, "timezone": "Europe/Paris"})
    dates = leave_partitions(cfg).get_partitions_def_for_dimension("date")
    today = window_today("Europe/Paris")
    keys = dates.get_partition_keys()
    assert keys[-1] == today.replace(day=1).isoformat()
    assert keys[0] == (today - dt.timedelta(days=40)).replace(day=1).isoformat()
    assert all(dt.date.fromisoformat(k).day == 1 for k in keys)
    assert len(keys) in (2, 3)


def test_partitions_start_is_configurable(home, hr):
    cfg = make_config(home, hr.url, window={"partitions_start": "2025-02-17"})
    keys = leave_partitions(cfg).get_partitions_def_for_dimension("date").get_partition_keys()
    assert keys[0] == "2025-02-01"


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
    # The window's months: the lookback's month, and the current month holding the horizon.
    assert starts == ["2026-05-01|FR", "2026-05-01|US", "2026-05-01|_unassigned"]
    assert ends == ["2026-06-01|FR", "2026-06-01|US", "2026-06-01|_unassigned"]
    assert {(r.tags["leavesync/date_from"], r.tags["leavesync/date_to"]) for r in requests} == {
        ("2026-05-02", "2027-06-01")
    }
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


def _scopes(scopes):
    return [
        (s.entity_key, s.date_from.isoformat(), s.date_to.isoformat(), len(s.dates)) for s in scopes
    ]


def test_scope_groups_month_keys_by_entity():
    keys = ["2026-02-01|FR", "2026-01-01|FR", "2026-04-01|US"]
    assert _scopes(scopes_from_keys(keys)) == [
        ("FR", "2026-01-01", "2026-02-28", 59),
        ("US", "2026-04-01", "2026-04-30", 30),
    ]


def test_the_newest_month_holds_the_horizon_and_tags_give_day_precision():
    keys = ["2026-05-01|FR", "2026-06-01|FR"]
    newest, horizon_end = dt.date(2026, 6, 1), dt.date(2027, 6, 1)
    (whole,) = scopes_from_keys(keys, newest, horizon_end)
    assert (whole.date_from, whole.date_to) == (dt.date(2026, 5, 1), horizon_end)
    tags = {"leavesync/date_from": "2026-05-02", "leavesync/date_to": "2026-08-15"}
    (exact,) = scopes_from_keys(keys, newest, horizon_end, tags)
    assert _scopes([exact]) == [("FR", "2026-05-02", "2026-08-15", 106)]
    # A month that is not newest ends with its month, whatever the horizon.
    (past,) = scopes_from_keys(["2026-05-01|FR"], newest, horizon_end)
    assert past.date_to == dt.date(2026, 5, 31)


def test_a_scope_of_months_apart_leaves_out_the_months_between():
    (scope,) = scopes_from_keys(["2026-01-01|FR", "2026-03-01|FR"])
    assert "2026-02-10" not in scope.dates and {"2026-01-31", "2026-03-01"} <= scope.dates


def test_range_tags_select_the_months_of_the_dates_and_carry_the_dates():
    tags = range_tags("FR", dt.date(2026, 3, 5), dt.date(2027, 2, 1), today=dt.date(2026, 6, 9))
    assert tags["dagster/asset_partition_range_start"] == "2026-03-01|FR"
    assert tags["dagster/asset_partition_range_end"] == "2026-06-01|FR"
    assert (tags["leavesync/date_from"], tags["leavesync/date_to"]) == ("2026-03-05", "2027-02-01")


def test_drift_report_has_its_own_job_and_schedule(home, hr):
    cfg = make_config(home, hr.url, window={"drift_cron": "0 6 * * 1"})
    defs = build_definitions(cfg)
    schedule = defs.get_schedule_def("drift_report")
    assert schedule.job_name == "drift" and schedule.cron_schedule == "0 6 * * 1"
    reconcile = defs.resolve_job_def("reconcile")
    assert "sync_drift" not in {
        k.to_user_string() for k in reconcile.asset_layer.selected_asset_keys
    }


def test_every_asset_has_a_group_owner_kinds_and_description(home, hr):
    cfg = make_config(home, hr.url)
    cfg = cfg.model_copy(
        update={"targets": [*cfg.targets, cfg.targets[0].model_copy(update={"name": "m365",
                                                                            "type": "ews"})]}
    )  # fmt: skip
    graph = build_definitions(cfg).resolve_asset_graph()
    specs = {
        key.to_user_string(): (graph.get(key).group_name, graph.get(key).owners,
                               sorted(graph.get(key).kinds))
        for key in graph.get_all_asset_keys()
    }  # fmt: skip

    assert specs == {
        "hr_leaves": ("hr", ["team:hr-it"], ["pandas", "sql"]),
        "leave_diff": ("reconciliation", ["team:hr-it"], ["great_expectations", "pandas"]),
        "calendar_sync": ("reconciliation", ["team:hr-it"], ["icalendar", "microsoft", "python"]),
        "sync_drift": ("drift", ["team:hr-it"], ["matplotlib", "pandas", "python"]),
    }
    for key in graph.get_all_asset_keys():
        assert len(graph.get(key).description or "") > 40, key
