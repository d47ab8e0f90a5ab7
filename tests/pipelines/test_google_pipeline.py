"""The Google target in the pipeline when the state store is lost, restored or behind (#20),
and out-of-office leaves through approval, cancellation and reinstatement (#18)."""

from __future__ import annotations

import datetime as dt
import json
import shutil
from collections import Counter

import pytest

from resources.providers.base import EventPayload, changed_fields
from tests.emulators.google_calendar import GoogleCalendarEmulator, make_service_account
from tests.harness import Pipeline, fail_first_snapshot_write, make_config, wanted_keys
from tests.pipelines.eight_employees import EMPLOYEES, D, seed, sync

KEY_ENV = "LEAVESYNC_TEST_GOOGLE_KEY"


@pytest.fixture
def google(monkeypatch):
    info, public_key = make_service_account()
    emulator = GoogleCalendarEmulator(info["client_email"], public_key, set(EMPLOYEES.values()))
    emulator.start()
    monkeypatch.setenv(KEY_ENV, json.dumps(info))
    yield emulator
    emulator.stop()


def target(emulator: GoogleCalendarEmulator, **settings) -> dict:
    return {
        "name": "workspace",
        "type": "google",
        "settings": {
            "service_account_key_env": KEY_ENV,
            "api_base_url": emulator.base_url,
            "token_uri": emulator.token_uri,
            "out_of_office": True,
            "backoff_base_seconds": 0.01,
            **settings,
        },
    }


def live_keys(emulator: GoogleCalendarEmulator) -> Counter:
    return Counter(
        e["extendedProperties"]["private"]["leavesyncKey"]
        for user in EMPLOYEES.values()
        for e in emulator.events(user)
    )


def assert_calendars_match(p: Pipeline, emulator: GoogleCalendarEmulator, hr, stale=()) -> None:
    """Every leave HR wants is there exactly once, as the snapshot says it was written."""
    held = live_keys(emulator)
    assert {k: n for k, n in held.items() if n > 1} == {}, "duplicates"
    assert set(held) == wanted_keys(hr) | set(stale)
    provider = p.settings.provider("workspace")
    remote = {
        r.event_key: r
        for r in provider.read_back(EMPLOYEES.values(), D, D + dt.timedelta(days=41))
        if r.payload is not None
    }
    snapshot = p.state.snapshot_all("workspace").set_index("event_key")
    for key in wanted_keys(hr):
        written = EventPayload.from_dict(json.loads(snapshot.loc[key, "payload"]))
        assert changed_fields(written, remote[key].payload, provider.compared_fields) == [], key
    for event in (e for u in EMPLOYEES.values() for e in emulator.events(u)):
        timed_oof = "dateTime" in event["start"] and event["status"] == "confirmed"
        assert (event["eventType"] == "outOfOffice") == timed_oof, event["summary"]


def hr_changes(hr, ids: list[int]) -> list[int]:
    """Edits (dates, approval of a pending half day: a type change), new leaves, cancels."""
    hr.update_leave(ids[0], end_date=D + dt.timedelta(days=4))
    hr.update_leave(ids[2], status="approved")  # pending -> out of office
    hr.update_leave(
        ids[4], start_date=D + dt.timedelta(days=20), end_date=D + dt.timedelta(days=21)
    )
    hr.update_leave(ids[5], status="pending")  # out of office -> default
    new = [hr.leave(i, D + dt.timedelta(days=25), start_half="PM") for i in (1, 5, 6)]
    for lid in (ids[6], ids[9]):
        hr.update_leave(lid, status="cancelled")
    return new


def test_state_store_lost_then_hr_changes_no_duplicates(home, hr, google):
    ids = seed(hr)
    cfg = make_config(home, hr.url, targets=[target(google)])
    p = Pipeline(cfg)
    assert sync(p)["create"] == 24
    (home / "state.sqlite").unlink()  # the state store is lost
    hr_changes(hr, ids)
    p = Pipeline(cfg)
    counts = sync(p)
    assert counts == {"create": 25, "update": 0, "delete": 0}
    # The two leaves cancelled while the state was lost are unknown to the new snapshot:
    # they stay until drift finds them (stale, never duplicated).
    stale = {f"leave-{ids[6]}", f"leave-{ids[9]}"}
    assert_calendars_match(p, google, hr, stale)
    assert sync(p) == {"create": 0, "update": 0, "delete": 0}


def test_older_state_store_restored_then_hr_edits_no_duplicates(home, hr, google, tmp_path):
    ids = seed(hr)
    cfg = make_config(home, hr.url, targets=[target(google)])
    p = Pipeline(cfg)
    sync(p)
    shutil.copy(home / "state.sqlite", tmp_path / "backup.sqlite")
    new = hr_changes(hr, ids)
    sync(p)
    assert_calendars_match(p, google, hr)
    shutil.copy(tmp_path / "backup.sqlite", home / "state.sqlite")  # the old backup is back
    for lid in new:  # HR edits the leaves the old snapshot does not know
        hr.update_leave(lid, end_half="AM", start_half=None)
    p = Pipeline(cfg)
    sync(p)
    assert_calendars_match(p, google, hr)
    assert sync(p) == {"create": 0, "update": 0, "delete": 0}


def test_crash_between_create_and_snapshot_then_hr_edits(home, hr, google, monkeypatch):
    ids = seed(hr)
    cfg = make_config(home, hr.url, targets=[target(google)])

    fail_first_snapshot_write(monkeypatch)
    with pytest.raises(RuntimeError, match="killed"):
        sync(Pipeline(cfg))
    assert sum(live_keys(google).values()) == 24  # written, but the snapshot knows nothing
    hr_changes(hr, ids)
    p = Pipeline(cfg)
    sync(p)
    assert_calendars_match(p, google, hr, stale={f"leave-{ids[6]}", f"leave-{ids[9]}"})
    assert google.stats["events_created"] < 24 + 10  # adopted, not written again


def test_out_of_office_half_day_approved_cancelled_reinstated(home, hr, google):
    hr.employee(1, "FR", EMPLOYEES[1])
    lid = hr.leave(1, D + dt.timedelta(days=3), start_half="PM", status="pending")
    p = Pipeline(make_config(home, hr.url, targets=[target(google)]))
    key = f"leave-{lid}"
    types = []
    for status in ("pending", "approved", "cancelled", "approved", "pending"):
        hr.update_leave(lid, status=status)
        sync(p)
        events = google.events(EMPLOYEES[1])
        assert live_keys(google)[key] == (0 if status == "cancelled" else 1), status
        types += [e["eventType"] for e in events]
    assert types == ["default", "outOfOffice", "outOfOffice", "default"]
    assert google.stats["event_type_change_refused"] == 0
    assert sync(p) == {"create": 0, "update": 0, "delete": 0}
