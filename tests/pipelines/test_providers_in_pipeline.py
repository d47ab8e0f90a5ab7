"""Each calendar provider plugged into the pipeline: HR → diff → provider emulator → snapshot."""

from __future__ import annotations

import datetime as dt
import json

import pytest

from resources.providers.ews.mapping import KEY_PROPERTY
from tests.emulators.ews import EwsEmulator
from tests.emulators.google_calendar import GoogleCalendarEmulator, make_service_account
from tests.emulators.graph import GraphEmulator
from tests.harness import Pipeline, make_config, scope

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


def test_google_target(home, hr, monkeypatch):
    info, public_key = make_service_account()
    emulator = GoogleCalendarEmulator(info["client_email"], public_key, {ANN, BOB}).start()
    monkeypatch.setenv("LEAVESYNC_TEST_GOOGLE_KEY", json.dumps(info))
    try:
        target = {
            "name": "workspace",
            "type": "google",
            "settings": {
                "service_account_key_env": "LEAVESYNC_TEST_GOOGLE_KEY",
                "api_base_url": emulator.base_url,
                "token_uri": emulator.token_uri,
                "batch_uri": emulator.batch_uri,
            },
        }

        def holdings() -> list[str]:
            return [
                e["extendedProperties"]["private"]["leavesyncKey"]
                for u in (ANN, BOB)
                for e in emulator.events(u)
            ]

        run_cycle(home, hr, target, holdings)
    finally:
        emulator.stop()


def test_microsoft_graph_target(home, hr, monkeypatch, tmp_path):
    emulator = GraphEmulator.start(tmp_path / "pki")
    client_id = "11111111-2222-3333-4444-555555555555"
    emulator.register_app(client_id, "s3cret-value")
    monkeypatch.setenv("LEAVESYNC_TEST_GRAPH_SECRET", "s3cret-value")
    try:
        target = {
            "name": "m365",
            "type": "microsoft_graph",
            "settings": {
                "tenant_id": emulator.tenant_id,
                "client_id": client_id,
                "client_secret_env": "LEAVESYNC_TEST_GRAPH_SECRET",
                "authority": emulator.base_url,
                "graph_url": emulator.base_url,
                "ca_bundle": str(emulator.pki.ca_file),
            },
        }

        def holdings() -> list[str]:
            keys = []
            for user in (ANN, BOB):
                for event in emulator.events(user):
                    props = event.get("singleValueExtendedProperties") or []
                    keys += [p["value"] for p in props if p["id"].endswith("leavesyncKey")]
            return keys

        run_cycle(home, hr, target, holdings)
    finally:
        emulator.stop()


def test_ews_target(home, hr, monkeypatch):
    with EwsEmulator([ANN, BOB]) as emulator:
        monkeypatch.setenv("LEAVESYNC_TEST_EWS_PASSWORD", emulator.password)
        target = {
            "name": "exchange",
            "type": "ews",
            "settings": {
                "ews_url": emulator.url,
                "username": emulator.username,
                "password_env": "LEAVESYNC_TEST_EWS_PASSWORD",
                "auth_type": "basic",
            },
        }

        def holdings() -> list[str]:
            return [
                item.extended_value(KEY_PROPERTY)
                for user in (ANN, BOB)
                for item in emulator.items(user)
            ]

        run_cycle(home, hr, target, holdings)


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
