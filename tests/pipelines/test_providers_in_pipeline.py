"""Each calendar provider plugged into the pipeline: HR → diff → provider emulator → snapshot."""

from __future__ import annotations

import datetime as dt
import json

import pytest

from tests.harness import Pipeline, make_config, scope
from tests.live_targets import live_targets

ANN, BOB = "ann@example.com", "bob@example.com"
D = dt.date(2026, 3, 2)


def seed(hr) -> dict[str, int]:
    hr.employee(1, "FR", ANN)
    hr.employee(2, "US", BOB)
    return {
        "whole": hr.leave(1, D, D + dt.timedelta(days=2)),
        "half": hr.leave(2, D + dt.timedelta(days=3), start_half="PM"),
        "pending": hr.leave(1, D + dt.timedelta(days=6), status="pending"),
    }


def reconcile(p: Pipeline):
    result, outcome = p.sync(
        [scope("FR", D, D + dt.timedelta(days=30)), scope("US", D, D + dt.timedelta(days=30))]
    )
    assert outcome is not None and not outcome.failed, outcome and outcome.failed
    return result.diff.counts()[["create", "update", "delete"]].sum().to_dict()


def run_cycle(home, hr, target: dict, holdings) -> None:
    """First sync, idempotent re-sync, then an edit and a cancellation; check the calendars."""
    ids = seed(hr)
    p = Pipeline(make_config(home, hr.url, targets=[target]))
    assert reconcile(p) == {"create": 3, "update": 0, "delete": 0}
    held = holdings()
    assert sorted(held) == sorted(f"leave-{i}" for i in ids.values())
    assert reconcile(p) == {"create": 0, "update": 0, "delete": 0}
    hr.update_leave(ids["whole"], end_date=D + dt.timedelta(days=4))
    hr.update_leave(ids["pending"], status="cancelled")
    assert reconcile(p) == {"create": 0, "update": 1, "delete": 1}
    held = holdings()
    assert sorted(held) == sorted(f"leave-{ids[k]}" for k in ("whole", "half"))
    # Read back through the provider: nothing drifted from what the snapshot says we wrote.
    provider = p.settings.provider(target["name"])
    remote = {r.event_key: r for r in provider.read_back([ANN, BOB], D, D + dt.timedelta(days=31))}
    snap = p.state.snapshot_all(target["name"]).set_index("event_key")
    from resources.providers.base import EventPayload, changed_fields

    for key, row in snap.iterrows():
        written = EventPayload.from_dict(json.loads(row["payload"]))
        assert changed_fields(written, remote[key].payload, provider.compared_fields) == [], key
    assert reconcile(p) == {"create": 0, "update": 0, "delete": 0}


def run_live_cycle(kind: str, home, hr, monkeypatch, tmp_path) -> None:
    """``run_cycle`` on the live target of this kind (tests/live_targets.py)."""
    live = live_targets([kind], tmp_path / "live")[0].start([ANN, BOB], f"{kind}-s3cret-value")
    try:
        for name, value in live.env().items():
            monkeypatch.setenv(name, value)
        run_cycle(home, hr, live.target(), lambda: [h.event_key for h in live.held()])
    finally:
        live.stop()


def test_google_target(home, hr, monkeypatch, tmp_path):
    run_live_cycle("google", home, hr, monkeypatch, tmp_path)


def test_microsoft_graph_target(home, hr, monkeypatch, tmp_path):
    run_live_cycle("microsoft_graph", home, hr, monkeypatch, tmp_path)


def test_ews_target(home, hr, monkeypatch, tmp_path):
    run_live_cycle("ews", home, hr, monkeypatch, tmp_path)


@pytest.mark.parametrize("serves", [{"legal_entities": ["US"]}, {"email_domains": ["example.org"]}])
def test_a_target_only_gets_the_employees_it_serves(home, hr, serves):
    seed(hr)
    target = {
        "name": "feeds",
        "type": "ics",
        "serves": serves,
        "settings": {"directory": str(home / "feeds")},
    }
    p = Pipeline(make_config(home, hr.url, targets=[target]))
    counts = reconcile(p)
    assert counts["create"] == (1 if serves.get("legal_entities") else 0)
