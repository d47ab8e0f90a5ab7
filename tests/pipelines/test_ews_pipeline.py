"""The EWS target in the pipeline when the state store is lost, restored or behind (#20):
nothing is ever duplicated, nothing HR wants is lost, and drift removes what HR no longer wants.
Calendars are read straight from the emulator's store."""

from __future__ import annotations

import datetime as dt
import json
import shutil
import uuid
from collections import Counter

import pytest

from assets.drift import measure_drift
from resources.providers.base import EventPayload, changed_fields
from resources.providers.ews.mapping import KEY_PROPERTY
from tests.emulators.ews import EwsEmulator
from tests.harness import Pipeline, fail_first_snapshot_write, make_config, wanted_keys
from tests.pipelines.eight_employees import EMPLOYEES, SCOPES, D, seed, sync

PASSWORD_ENV = "LEAVESYNC_TEST_EWS_PASSWORD"


@pytest.fixture
def exchange(monkeypatch):
    with EwsEmulator(EMPLOYEES.values()) as emulator:
        monkeypatch.setenv(PASSWORD_ENV, emulator.password)
        yield emulator


def target(emulator: EwsEmulator) -> dict:
    return {
        "name": "exchange",
        "type": "ews",
        "settings": {
            "ews_url": emulator.url,
            "username": emulator.username,
            "password_env": PASSWORD_ENV,
            "auth_type": "basic",
            "backoff_base": 0.01,
            "backoff_cap": 0.2,
        },
    }


def live_keys(emulator: EwsEmulator) -> Counter:
    """Our keys in the employees' calendars, straight from the emulator's store."""
    return Counter(
        item.extended_value(KEY_PROPERTY)
        for user in EMPLOYEES.values()
        for item in emulator.items(user)
        if item.extended_value(KEY_PROPERTY)
    )


def created_items(emulator: EwsEmulator, since: int = 0) -> int:
    return sum(r.count for r in emulator.requests[since:] if r.op == "CreateItem")


def assert_calendars_match(p: Pipeline, emulator: EwsEmulator, hr, stale=()) -> None:
    """Every leave HR wants is there exactly once, as the snapshot says it was written."""
    held = live_keys(emulator)
    assert {k: n for k, n in held.items() if n > 1} == {}, "duplicates"
    assert set(held) == wanted_keys(hr) | set(stale)
    provider = p.settings.provider("exchange")
    remote = {
        r.event_key: r
        for r in provider.read_back(EMPLOYEES.values(), D, D + dt.timedelta(days=41))
        if r.payload is not None
    }
    snapshot = p.state.snapshot_all("exchange").set_index("event_key")
    for key in wanted_keys(hr):
        written = EventPayload.from_dict(json.loads(snapshot.loc[key, "payload"]))
        assert changed_fields(written, remote[key].payload, provider.compared_fields) == [], key
        assert snapshot.loc[key, "provider_event_id"] == remote[key].provider_event_id, key


def hr_changes(hr, ids: list[int]) -> list[int]:
    """Twelve edits (dates, halves, approvals), three new leaves, two cancellations."""
    for n, lid in enumerate(ids[:12]):
        if n % 3 == 0:
            hr.update_leave(lid, end_date=D + dt.timedelta(days=20 + n))
        elif n % 3 == 1:
            hr.update_leave(lid, start_half=None, end_half="AM")
        else:
            hr.update_leave(lid, status="approved")
    new = [hr.leave(i, D + dt.timedelta(days=25), start_half="PM") for i in (1, 5, 6)]
    for lid in (ids[13], ids[16]):
        hr.update_leave(lid, status="cancelled")
    return new


def drift(p: Pipeline):
    return measure_drift(
        p.plan(SCOPES), p.cfg, p.hr, p.state, p.settings.provider, uuid.uuid4().hex
    )


def test_state_store_lost_then_hr_changes_no_duplicates(home, hr, exchange):
    ids = seed(hr)
    cfg = make_config(home, hr.url, targets=[target(exchange)])
    assert sync(Pipeline(cfg))["create"] == 24
    (home / "state.sqlite").unlink()  # the state store is lost
    hr_changes(hr, ids)
    p = Pipeline(cfg)
    before = len(exchange.requests)
    assert sync(p) == {"create": 25, "update": 0, "delete": 0}
    # 22 keys were found and adopted (the 12 HR edited were rewritten): 3 items created.
    assert created_items(exchange, before) == 3
    stale = {f"leave-{ids[13]}", f"leave-{ids[16]}"}
    assert_calendars_match(p, exchange, hr, stale)
    # The two leaves cancelled while the state was lost: stale, never duplicated; drift
    # finds them in the calendars (orphans: ours, unknown to the snapshot) and deletes them.
    report = drift(p)
    repaired = report.findings[report.findings["repaired"]]
    assert set(repaired["event_key"]) == stale  # ours by tag, not in the snapshot, not wanted
    assert_calendars_match(p, exchange, hr)
    before = len(exchange.requests)
    assert sync(p) == {"create": 0, "update": 0, "delete": 0}
    assert len(exchange.requests) == before  # nothing changed: not a single request


def test_older_state_store_restored_then_hr_edits_no_duplicates(home, hr, exchange, tmp_path):
    ids = seed(hr)
    cfg = make_config(home, hr.url, targets=[target(exchange)])
    p = Pipeline(cfg)
    sync(p)
    shutil.copy(home / "state.sqlite", tmp_path / "backup.sqlite")
    new = hr_changes(hr, ids)
    sync(p)
    assert_calendars_match(p, exchange, hr)
    shutil.copy(tmp_path / "backup.sqlite", home / "state.sqlite")  # the old backup is back
    for lid in new:  # HR edits the leaves the old snapshot does not know
        hr.update_leave(lid, end_half="AM", start_half=None)
    p = Pipeline(cfg)
    before = len(exchange.requests)
    sync(p)
    assert created_items(exchange, before) == 0
    assert_calendars_match(p, exchange, hr)
    assert sync(p) == {"create": 0, "update": 0, "delete": 0}


def test_crash_between_create_and_snapshot_then_hr_edits(home, hr, exchange, monkeypatch):
    ids = seed(hr)
    cfg = make_config(home, hr.url, targets=[target(exchange)])
    fail_first_snapshot_write(monkeypatch)
    with pytest.raises(RuntimeError, match="killed"):
        sync(Pipeline(cfg))
    # Written to Exchange, unknown to the snapshot.
    assert sum(live_keys(exchange).values()) == 24
    assert Pipeline(cfg).state.snapshot_all("exchange").empty
    hr_changes(hr, ids)
    p = Pipeline(cfg)
    sync(p)
    assert created_items(exchange) == 24 + 3  # the 22 still wanted were adopted
    assert_calendars_match(p, exchange, hr, stale={f"leave-{ids[13]}", f"leave-{ids[16]}"})
    drift(p)
    assert_calendars_match(p, exchange, hr)


def test_faults_during_a_first_sync_land_every_event_once(home, hr, exchange):
    ids = seed(hr)
    exchange.fault_rate = 0.3
    exchange.back_off_ms = 5
    p = Pipeline(make_config(home, hr.url, targets=[target(exchange)]))
    result, outcome = p.sync(SCOPES)
    exchange.fault_rate = 0.0
    failed = {f["event_key"] for f in outcome.failed}
    # Whatever failed is retried by the next run; nothing is ever there twice.
    assert {k: n for k, n in live_keys(exchange).items() if n > 1} == {}
    assert sync(p)["create"] == len(failed)
    assert_calendars_match(p, exchange, hr)
    assert len(ids) == 24 and Counter(r.outcome for r in exchange.requests)["ok"] > 0
