"""A process keeps its runs' Dagster instance per DAGSTER_HOME, but only the last few."""

from __future__ import annotations

from collections import OrderedDict

from dagster import DagsterInstance

from pipelines import runner
from pipelines.runner import KEPT_RUN_INSTANCES, ensure_instance_settings, run_instance


def test_only_the_most_recent_instances_stay_open_and_the_others_are_disposed(
    tmp_path, monkeypatch
):
    disposed: list[DagsterInstance] = []
    dispose = DagsterInstance.dispose

    def recorded(self: DagsterInstance) -> None:
        disposed.append(self)
        dispose(self)

    monkeypatch.setattr(DagsterInstance, "dispose", recorded)
    monkeypatch.setattr(runner, "_RUN_INSTANCES", OrderedDict())  # not other tests' instances
    homes = [tmp_path / f"dagster-{i}" for i in range(KEPT_RUN_INSTANCES + 2)]
    opened = []
    for home in homes:
        home.mkdir()
        ensure_instance_settings(home / "dagster.yaml")
        monkeypatch.setenv("DAGSTER_HOME", str(home))
        opened.append(run_instance())
        assert run_instance() is opened[-1]  # the same folder: the same instance, kept
        assert len(runner._RUN_INSTANCES) <= KEPT_RUN_INSTANCES

    assert disposed == opened[:2]  # the two oldest, each disposed once
    assert list(runner._RUN_INSTANCES.values()) == opened[2:]
    monkeypatch.setenv("DAGSTER_HOME", str(homes[2]))  # used again: now the most recent
    assert run_instance() is opened[2]
    monkeypatch.setenv("DAGSTER_HOME", str(homes[0]))  # a disposed one's folder: a new instance
    again = run_instance()
    assert again is not opened[0] and again.get_runs() == []
    assert disposed == [*opened[:2], opened[3]]  # the least recently used went, not homes[2]
    for instance in runner._RUN_INSTANCES.values():
        instance.dispose()
