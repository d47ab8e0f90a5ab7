"""The run queue's per-legal-entity limit: which entities a run covers, and the instance config."""

from pathlib import Path

from dagster import DagsterInstance

from pipelines.run_queue import (
    ENTITY_TAG,
    LegalEntityRunCoordinator,
    entity_tags,
    run_entities,
    slot_tag,
)

REPO = Path(__file__).resolve().parents[2]
KNOWN = ["FR", "US", "DE", "_unassigned"]


def test_entities_of_runs_from_every_launcher():
    assert run_entities({ENTITY_TAG: "FR"}, KNOWN) == ["FR"]
    assert run_entities({"dagster/partition": "2026-11-01|DE"}, KNOWN) == ["DE"]
    assert run_entities({"dagster/partition/legal_entity": "US"}, KNOWN) == ["US"]
    one = {
        "dagster/asset_partition_range_start": "2026-01-01|FR",
        "dagster/asset_partition_range_end": "2026-11-01|FR",
    }
    assert run_entities(one, KNOWN) == ["FR"]
    # Dagster's split of a 3-entity x 1-month backfill: one run over a range of entities.
    month = {
        "dagster/asset_partition_range_start": "2026-11-01|FR",
        "dagster/asset_partition_range_end": "2026-11-01|DE",
    }
    assert run_entities(month, KNOWN) == ["FR", "US", "DE"]
    assert run_entities({}, KNOWN) == []


def test_entity_tags_give_one_slot_per_entity():
    assert entity_tags(["US", "FR"]) == {
        ENTITY_TAG: "FR,US",
        slot_tag("FR"): "1",
        slot_tag("US"): "1",
    }
    assert entity_tags([]) == {}


def test_the_production_instance_holds_one_run_per_legal_entity(tmp_path, monkeypatch):
    (tmp_path / "dagster.yaml").write_text(
        (REPO / "deploy/dagster.yaml")
        .read_text()
        .replace(
            "postgres:\n    postgres_url:\n      env: DAGSTER_PG_URL",
            f"sqlite:\n    base_dir: {tmp_path}",
        )
    )
    with DagsterInstance.from_config(str(tmp_path)) as instance:
        coordinator = instance.run_coordinator
        assert isinstance(coordinator, LegalEntityRunCoordinator)
        assert coordinator.max_concurrent_runs_per_legal_entity == 1
        instance.add_dynamic_partitions("legal_entity", ["FR", "US"])
        limits = instance.get_concurrency_config().run_queue_config.tag_concurrency_limits
        assert {"key": slot_tag("FR"), "limit": 1} in limits
        assert {"key": slot_tag("US"), "limit": 1} in limits
        assert instance.get_concurrency_config().run_queue_config.max_concurrent_runs == 2
        assert instance.run_monitoring_enabled
        assert not instance.nux_enabled


def test_the_demo_instance_of_make_ui_holds_one_run_per_legal_entity(tmp_path):
    from pipelines.runner import ensure_instance_settings

    settings = tmp_path / "dagster.yaml"
    settings.write_text("telemetry:\n  enabled: true\n")
    ensure_instance_settings(settings)
    ensure_instance_settings(settings)  # idempotent
    with DagsterInstance.from_config(str(tmp_path)) as instance:
        assert isinstance(instance.run_coordinator, LegalEntityRunCoordinator)
        instance.add_dynamic_partitions("legal_entity", ["FR"])
        limits = instance.get_concurrency_config().run_queue_config.tag_concurrency_limits
        assert {"key": slot_tag("FR"), "limit": 1} in limits
        assert instance.telemetry_enabled  # what the file sets is kept
    # A queue the user configured is left alone.
    settings.write_text("run_coordinator:\n  module: dagster\n  class: QueuedRunCoordinator\n")
    ensure_instance_settings(settings)
    assert settings.read_text().count("run_coordinator:") == 1
