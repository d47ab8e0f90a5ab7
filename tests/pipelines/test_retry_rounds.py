"""A change that outlasted the provider's retries is sent again at the end of the apply.

The real CLI against the Graph emulator: the create answers 503 more times than the target's
max_attempts, then the service recovers. With the default retry_rounds the change lands in
the same run (exit 0, said once in the output); without rounds it fails (exit 1).
"""

from __future__ import annotations

import datetime as dt

import pytest
import yaml

from pipelines.cli import main
from tests.live_targets import LiveGraph

D = dt.date.today() + dt.timedelta(days=3)
ANN = "ann@example.com"


@pytest.fixture
def graph(tmp_path, monkeypatch):
    live = LiveGraph(tmp_path / "graph").start([ANN], "retry-rounds-secret")
    for name, value in live.env().items():
        monkeypatch.setenv(name, value)
    yield live
    live.stop()


def _sync(home, hr, graph, **target) -> int:
    config = home / "leavesync.yaml"
    spec = graph.target()
    spec["settings"].update(max_attempts=2, backoff_base_seconds=0.01)
    spec.update(target)
    config.write_text(yaml.safe_dump({"hr": {"url": hr.url}, "targets": [spec]}))
    window = ["--from", D.isoformat(), "--to", (D + dt.timedelta(days=10)).isoformat()]
    return main(["sync", "--config", str(config), "--entity", "FR", *window])


def _held(graph) -> list[str]:
    return [h.event_key for h in graph.held()]


def test_a_create_refused_past_max_attempts_lands_in_the_next_round(home, hr, graph, capsys):
    hr.employee(1, "FR", ANN)
    lid = hr.leave(1, D)
    # The create's POST answers 503 twice (max_attempts: 2), the third send succeeds.
    graph.emulator.fault("503", times=2, method="POST", mailbox=ANN)

    assert _sync(home, hr, graph, retry_pause_seconds=0) == 0

    out = capsys.readouterr().out
    assert out.count("sent again after a transient error") == 1
    assert "1 change(s)" in out.split("sent again after a transient error", 1)[1]
    assert _held(graph) == [f"leave-{lid}"]


def test_without_rounds_the_same_create_fails_and_the_run_says_so(home, hr, graph, capsys):
    hr.employee(1, "FR", ANN)
    hr.leave(1, D)
    graph.emulator.fault("503", times=2, method="POST", mailbox=ANN)

    assert _sync(home, hr, graph, retry_rounds=0) == 1

    out = capsys.readouterr().out
    assert "sent again" not in out
    assert _held(graph) == []
    assert _sync(home, hr, graph, retry_rounds=0) == 0  # the service is back: the next run
    assert len(_held(graph)) == 1
