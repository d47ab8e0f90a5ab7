"""The Google provider, with the real client libraries, against the Calendar API emulator."""

from __future__ import annotations

import datetime as dt
import json
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import jwt
import pytest

from resources.providers import provider_class
from resources.providers.base import (
    ChangeResult,
    EventChange,
    EventPayload,
    FatalProviderError,
    changed_fields,
)
from resources.providers.google import GoogleCalendarProvider
from resources.providers.google.mapping import event_id_for, parse_event_id
from resources.providers.google.settings import SCOPE_CALENDAR, SCOPE_EVENTS
from resources.providers.retry import Backoff
from tests.emulators import google_calendar as emulator_module
from tests.emulators.google_calendar import GoogleCalendarEmulator, make_service_account
from tests.emulators.pki import make_test_pki
from tests.resources.providers import payloads

google_calendar = emulator_module.google_calendar  # the emulator fixture

ENV = "LEAVESYNC_TEST_GOOGLE_KEY"
ALICE, BOB, CAROL = "alice@example.com", "bob@example.com", "carol@example.com"


def make_provider(
    emulator: GoogleCalendarEmulator, monkeypatch, **overrides
) -> GoogleCalendarProvider:
    """The real provider pointed at the emulator, with tiny backoff and pauses."""
    monkeypatch.setenv(ENV, json.dumps(emulator.key_info))
    settings = dict(
        service_account_key_env=ENV,
        api_base_url=emulator.base_url,
        token_uri=emulator.token_uri,
        backoff_base_seconds=0.001,
        backoff_cap_seconds=0.01,
        usage_limit_pause_seconds=0.01,
        timeout_seconds=5,
        # Quota behaviour has its own tests; elsewhere the client limiter should not pace.
        per_user_requests_per_minute=600_000,
        per_project_requests_per_minute=600_000,
    )
    settings.update(overrides)
    cls = provider_class("google")
    return cls("workspace", cls.Settings(**settings))


def leave(n: int, **fields) -> EventPayload:
    return payloads.payload(f"leave-{n}", **{"start": "2025-07-01", "end": "2025-07-04", **fields})


def create(n: int, calendar: str = ALICE, **fields) -> EventChange:
    return EventChange("create", f"leave-{n}", calendar, leave(n, **fields))


def ours(emulator: GoogleCalendarEmulator, user: str) -> dict[str, dict]:
    return {
        e["extendedProperties"]["private"]["leavesyncKey"]: e
        for e in emulator.events(user)
        if "leavesync" in e.get("extendedProperties", {}).get("private", {})
    }


def test_event_id_is_base32hex_and_deterministic():
    event_id = event_id_for("leave-123")
    assert event_id == event_id_for("leave-123") != event_id_for("leave-124")
    assert set(event_id) <= set("0123456789abcdefghijklmnopqrstuv")
    assert 5 <= len(event_id) <= 1024
    assert len(event_id_for("leave-" + "x" * 5000)) <= 1024


def test_settings_forbid_unknown_keys_and_keep_defaults():
    settings = GoogleCalendarProvider.Settings()
    assert settings.calendar_id == "primary"
    assert settings.per_user_requests_per_minute == 600
    assert settings.per_project_requests_per_minute == 10_000
    assert settings.batch_size == 50 and settings.out_of_office is False
    with pytest.raises(ValueError):
        GoogleCalendarProvider.Settings(client_secret="x")
    with pytest.raises(ValueError):
        GoogleCalendarProvider.Settings(batch_size=51)


def test_create_update_move_cancel_delete(google_calendar, monkeypatch):
    provider = make_provider(google_calendar, monkeypatch)
    results = list(provider.apply([create(1), create(2, status="tentative"), create(3, BOB)]))
    assert [r.ok for r in results] == [True, True, True]
    by_key = {r.change.event_key: r for r in results}
    assert by_key["leave-1"].provider_event_id == event_id_for("leave-1")
    assert by_key["leave-1"].version
    event = ours(google_calendar, ALICE)["leave-1"]
    assert event["start"] == {"date": "2025-07-01"} and event["end"] == {"date": "2025-07-04"}
    assert event["visibility"] == "private" and event["transparency"] == "opaque"
    assert event["reminders"] == {"useDefault": False} and "attendees" not in event
    assert event["extendedProperties"]["private"]["leavesyncLeaveId"] == "1"
    assert ours(google_calendar, ALICE)["leave-2"]["status"] == "tentative"
    assert google_calendar.stats["writes_without_send_updates_none"] == 0

    # Approve leave 2 and move leave 1 to a half day (timed, in its entity's zone).
    moved = leave(1, all_day=False, start="2025-07-08T13:00:00", end="2025-07-08T18:00:00")
    updates = [
        EventChange("update", "leave-1", ALICE, moved, by_key["leave-1"].provider_event_id),
        EventChange("update", "leave-2", ALICE, leave(2), by_key["leave-2"].provider_event_id),
    ]
    results = list(provider.apply(updates))
    assert all(r.ok for r in results)
    assert results[0].version != by_key["leave-1"].version
    event = ours(google_calendar, ALICE)["leave-1"]
    assert event["start"]["timeZone"] == "Europe/Paris"
    assert dt.datetime.fromisoformat(event["start"]["dateTime"]) == dt.datetime(
        2025, 7, 8, 11, 0, tzinfo=dt.UTC
    )
    assert ours(google_calendar, ALICE)["leave-2"]["status"] == "confirmed"

    # Cancel leave 2 (delete), delete leave 3 twice: the second is already gone, still done.
    deletes = [
        EventChange("delete", "leave-2", ALICE, provider_event_id=event_id_for("leave-2")),
        EventChange("delete", "leave-3", BOB),
    ]
    assert all(r.ok for r in provider.apply(deletes))
    assert all(r.ok for r in provider.apply(deletes[1:]))
    assert set(ours(google_calendar, ALICE)) == {"leave-1"}
    assert ours(google_calendar, BOB) == {}
    assert google_calendar.stats["batch_requests"] >= 4


def test_nothing_to_change_sends_nothing(google_calendar, monkeypatch):
    provider = make_provider(google_calendar, monkeypatch)
    assert list(provider.apply([])) == []
    assert google_calendar.stats["http_requests"] == 0


def test_recreate_after_delete_takes_the_next_generation(google_calendar, monkeypatch):
    provider = make_provider(google_calendar, monkeypatch)
    assert all(r.ok for r in provider.apply([create(7)]))
    assert all(r.ok for r in provider.apply([EventChange("delete", "leave-7", ALICE)]))
    assert ours(google_calendar, ALICE) == {}
    # The deleted event keeps its id (a re-insert would answer 409): the leave that comes
    # back is a new event with the next generation's id; the deleted one stays deleted.
    [result] = provider.apply([create(7, title="Absent again")])
    assert result.ok and result.provider_event_id == event_id_for("leave-7", 1)
    assert parse_event_id(result.provider_event_id).event_key == "leave-7"
    event = ours(google_calendar, ALICE)["leave-7"]
    assert event["status"] == "confirmed" and event["summary"] == "Absent again"
    stored = google_calendar.events(ALICE, include_cancelled=True)
    assert sorted(e["status"] for e in stored) == ["cancelled", "confirmed"]


def test_lost_create_response_is_retried_without_duplicate(google_calendar, monkeypatch):
    provider = make_provider(google_calendar, monkeypatch)
    # The batch lands, then the connection drops before the answer (twice, in case
    # httplib2 resends on its own).
    google_calendar.scripted = [("batch", "drop_after"), ("batch", "drop_after")]
    results = list(provider.apply([create(n) for n in range(5)]))
    assert all(r.ok for r in results) and len(results) == 5
    assert google_calendar.stats["dropped_connections"] >= 1
    assert google_calendar.stats["events_created"] == 5
    assert len(google_calendar.events(ALICE, include_cancelled=True)) == 5


def test_fault_injection_every_change_lands_exactly_once(google_calendar, monkeypatch):
    provider = make_provider(google_calendar, monkeypatch, batch_size=10, max_attempts=30)
    google_calendar.fault_rate = 0.3
    google_calendar.slow_seconds = 0.01
    changes = [create(n, [ALICE, BOB, CAROL][n % 3]) for n in range(150)]
    results = list(provider.apply(changes))
    assert len(results) == 150 and all(r.ok for r in results), [
        r.error for r in results if not r.ok
    ]
    assert google_calendar.stats["faults_injected"] > 20
    for user in (ALICE, BOB, CAROL):
        assert len(google_calendar.events(user, include_cancelled=True)) == 50
    assert google_calendar.stats["events_created"] == 150  # no create landed twice
    updates = [
        EventChange("update", c.event_key, c.calendar, leave(int(c.event_key[6:]), title="Off"))
        for c in changes
    ]
    deletes = [EventChange("delete", c.event_key, c.calendar) for c in changes[:60]]
    assert all(r.ok for r in provider.apply(updates))
    assert all(r.ok for r in provider.apply(deletes))
    remaining = [e for u in (ALICE, BOB, CAROL) for e in google_calendar.events(u)]
    assert len(remaining) == 90 and {e["summary"] for e in remaining} == {"Off"}


def test_only_events_with_our_tag_are_touched(google_calendar, monkeypatch):
    provider = make_provider(google_calendar, monkeypatch)
    mine = google_calendar.put_event(
        ALICE,
        {"summary": "Dentist", "start": {"date": "2025-07-02"}, "end": {"date": "2025-07-03"}},
    )
    assert all(r.ok for r in provider.apply([create(1)]))
    remote = list(provider.read_back([ALICE], dt.date(2025, 6, 1), dt.date(2025, 8, 1)))
    assert [r.event_key for r in remote] == ["leave-1"]
    list(provider.apply([EventChange("delete", "leave-1", ALICE)]))
    assert [e["summary"] for e in google_calendar.events(ALICE)] == ["Dentist"]
    assert google_calendar.events(ALICE)[0]["etag"] == mine["etag"]


def test_unknown_user_fails_only_that_users_events(google_calendar, monkeypatch):
    provider = make_provider(google_calendar, monkeypatch)
    results = list(provider.apply([create(1), create(2, "ghost@example.com"), create(3, BOB)]))
    by_key = {r.change.event_key: r for r in results}
    assert by_key["leave-1"].ok and by_key["leave-3"].ok
    ghost = by_key["leave-2"]
    assert not ghost.ok and ghost.permanent and "ghost@example.com" in ghost.error


def test_delegation_not_granted_is_fatal_and_says_what_to_grant(google_calendar, monkeypatch):
    google_calendar.granted_scopes = {"https://www.googleapis.com/auth/calendar.readonly"}
    provider = make_provider(google_calendar, monkeypatch)
    with pytest.raises(FatalProviderError) as raised:
        list(provider.apply([create(1), create(2, BOB)]))
    message = str(raised.value)
    assert "Domain Wide Delegation" in message and SCOPE_EVENTS in message
    assert google_calendar.key_info["client_id"] in message
    assert google_calendar.key_info["private_key"][40:80] not in message
    assert google_calendar.stats["api_requests"] == 0


def test_missing_key_variable_is_fatal(google_calendar, monkeypatch):
    provider = make_provider(google_calendar, monkeypatch)
    monkeypatch.delenv(ENV)
    with pytest.raises(FatalProviderError, match=ENV):
        list(provider.apply([create(1)]))


def test_key_from_a_file_path(google_calendar, monkeypatch, tmp_path):
    path = tmp_path / "key.json"
    path.write_text(json.dumps(google_calendar.key_info))
    provider = make_provider(google_calendar, monkeypatch)
    monkeypatch.setenv(ENV, str(path))
    assert all(r.ok for r in provider.apply([create(1)]))


def test_wrong_key_is_fatal(google_calendar, monkeypatch):
    other, _ = make_service_account(google_calendar.service_account_email)
    provider = make_provider(google_calendar, monkeypatch)
    monkeypatch.setenv(ENV, json.dumps(other))
    with pytest.raises(FatalProviderError, match="invalid_grant"):
        list(provider.apply([create(1)]))


def test_rate_limit_errors_are_retried(google_calendar, monkeypatch):
    provider = make_provider(google_calendar, monkeypatch, batch_size=5, max_attempts=40)
    google_calendar.fault_kinds = ("429", "403rate", "503")
    google_calendar.fault_rate = 0.5
    results = list(provider.apply([create(n) for n in range(20)]))
    assert all(r.ok for r in results)
    assert google_calendar.stats["fault_429"] + google_calendar.stats["fault_403rate"] > 0
    assert len(google_calendar.events(ALICE)) == 20


def test_usage_limit_pauses_that_user_only(google_calendar, monkeypatch):
    provider = make_provider(google_calendar, monkeypatch)
    google_calendar.usage_limited[ALICE] = 3
    results = list(provider.apply([create(1), create(2, BOB)]))
    assert all(r.ok for r in results)
    assert google_calendar.stats["usage_limit_rejections"] == 3
    # Bob was never held up by Alice's limit: his result came first.
    assert results[0].change.calendar == BOB


def test_giving_up_is_not_permanent(google_calendar, monkeypatch):
    provider = make_provider(google_calendar, monkeypatch, max_attempts=2)
    google_calendar.fault_kinds = ("503",)
    google_calendar.fault_rate = 1.0
    [result] = provider.apply([create(1)])
    assert not result.ok and not result.permanent and "503" in result.error


def test_bad_event_is_permanent_and_the_rest_go_on(google_calendar, monkeypatch):
    provider = make_provider(google_calendar, monkeypatch)
    bad = create(2, start="2025-07-05", end="2025-07-01")
    results = {r.change.event_key: r for r in provider.apply([create(1), bad, create(3)])}
    assert results["leave-1"].ok and results["leave-3"].ok
    assert results["leave-2"].permanent and "time range" in results["leave-2"].error


def test_quota_is_respected(google_calendar, monkeypatch):
    # Server: 1200/min per user, 2400/min per project. Google counts per minute, so the
    # server's buckets hold three batches: a client descheduled between taking its tokens
    # and sending (a loaded CI machine) is no excess. Unpaced, these 90 calls would exceed it.
    google_calendar.enforce_quota(1200, 2400, user_burst=30, project_burst=30)
    provider = make_provider(
        google_calendar,
        monkeypatch,
        batch_size=10,
        per_user_requests_per_minute=1100,
        per_project_requests_per_minute=2200,
    )
    changes = [create(n, [ALICE, BOB, CAROL][n % 3]) for n in range(90)]
    assert all(r.ok for r in provider.apply(changes))
    assert google_calendar.stats["quota_rejections"] == 0
    # The server does refuse what is beyond its quota: a client that does not pace itself,
    # against a bucket refilled at one call a second, is refused well before 30 s.
    google_calendar.enforce_quota(60, None, user_burst=30)
    unpaced = make_provider(google_calendar, monkeypatch, batch_size=10, max_attempts=1)
    list(unpaced.apply([create(n, [ALICE, BOB, CAROL][n % 3]) for n in range(100, 280)]))
    assert google_calendar.stats["quota_rejections"] > 0


def test_quota_rejections_are_retried_when_the_client_is_too_eager(google_calendar, monkeypatch):
    google_calendar.enforce_quota(3000, None, user_burst=5)
    provider = make_provider(
        google_calendar,
        monkeypatch,
        batch_size=10,
        backoff_base_seconds=0.05,
        backoff_cap_seconds=0.3,
        max_attempts=20,
    )
    assert all(r.ok for r in provider.apply([create(n) for n in range(20)]))
    assert google_calendar.stats["quota_rejections"] > 0
    assert len(google_calendar.events(ALICE)) == 20


def test_read_back_normalises_and_reports_drift(google_calendar, monkeypatch):
    provider = make_provider(google_calendar, monkeypatch)
    written = [
        leave(1),
        leave(2, all_day=False, start="2025-07-08T13:00:00", end="2025-07-08T18:00:00"),
        leave(3, status="tentative", description="Half day"),
        leave(4, start="2025-09-01", end="2025-09-02"),  # outside the window
    ]
    changes = [EventChange("create", p.event_key, ALICE, p) for p in written]
    changes += [EventChange("create", f"leave-{n}", BOB, leave(n)) for n in range(10, 270)]
    assert all(r.ok for r in provider.apply(changes))
    google_calendar.edit_event(ALICE, event_id_for("leave-3"), summary="Holidays!")
    list(provider.apply([EventChange("delete", "leave-1", ALICE)]))

    remote = {
        r.event_key: r
        for r in provider.read_back([ALICE, BOB], dt.date(2025, 7, 1), dt.date(2025, 8, 1))
    }
    assert "leave-4" not in remote and len(remote) == 3 + 260
    assert remote["leave-1"].payload is None  # deleted: showDeleted returns it cancelled
    timed = remote["leave-2"].payload
    assert changed_fields(written[1], timed, provider.compared_fields) == []
    assert timed.start == "2025-07-08T13:00:00" and timed.timezone == "Europe/Paris"
    assert timed.fingerprint == written[1].fingerprint
    assert changed_fields(written[2], remote["leave-3"].payload, provider.compared_fields) == [
        "title"
    ]
    untouched = remote["leave-10"].payload
    assert untouched.fingerprint == leave(10).fingerprint


def test_out_of_office_events_for_timed_leaves(google_calendar, monkeypatch):
    provider = make_provider(google_calendar, monkeypatch, out_of_office=True)
    timed = leave(1, all_day=False, start="2025-07-08T09:00:00", end="2025-07-08T12:30:00")
    assert all(
        r.ok for r in provider.apply([EventChange("create", "leave-1", ALICE, timed), create(2)])
    )
    events = ours(google_calendar, ALICE)
    assert events["leave-1"]["eventType"] == "outOfOffice"
    assert events["leave-2"]["eventType"] == "default"  # all-day cannot be out of office
    [remote] = [r for r in provider.read_back([ALICE], dt.date(2025, 7, 8), dt.date(2025, 7, 9))]
    assert remote.payload.show_as == "oof"


def test_check_passes_and_changes_nothing(google_calendar, monkeypatch):
    provider = make_provider(google_calendar, monkeypatch)
    report = provider.check(ALICE)
    assert report.ok, report.render()
    assert google_calendar.stats["api_requests"] == 1
    assert (
        sum(google_calendar.stats[k] for k in ("post_requests", "put_requests", "delete_requests"))
        == 0
    )
    assert "client ID" in report.render()


@pytest.mark.parametrize(
    ("setup", "expected"),
    [
        (lambda e: setattr(e, "granted_scopes", {SCOPE_CALENDAR}), "Domain Wide Delegation"),
        (lambda e: setattr(e, "api_enabled", False), "Calendar API is disabled"),
        (lambda e: e.users.discard(ALICE), "not a user of the Workspace domain"),
    ],
    ids=["scope-not-delegated", "api-disabled", "user-unknown"],
)
def test_check_reports_what_is_missing(google_calendar, monkeypatch, setup, expected):
    setup(google_calendar)
    report = make_provider(google_calendar, monkeypatch).check(ALICE)
    assert not report.ok
    assert expected in report.render()


@pytest.fixture
def tls_google(tmp_path) -> Iterator[tuple[Path, GoogleCalendarEmulator]]:
    """The emulator over HTTPS, its certificate signed by a throwaway CA; that CA's file."""
    pki = make_test_pki(tmp_path / "pki")
    info, public_key = make_service_account()
    tls = (str(pki.cert_file), str(pki.key_file))
    emulator = GoogleCalendarEmulator(info["client_email"], public_key, {ALICE}, tls=tls).start()
    emulator.key_info = info
    yield pki.ca_file, emulator
    emulator.stop()


def test_tls_with_a_custom_ca_bundle(monkeypatch, tls_google):
    ca, emulator = tls_google
    # Without the bundle the emulator's certificate is refused: TLS is verified.
    untrusted = make_provider(emulator, monkeypatch, max_attempts=1)
    with pytest.raises(FatalProviderError, match="ca_bundle"):
        list(untrusted.apply([create(1)]))
    provider = make_provider(emulator, monkeypatch, ca_bundle=str(ca))
    assert all(r.ok for r in provider.apply([create(1)]))
    # An expired token is refreshed inside the batch execution, still over our CA.
    creds = provider.signin.credentials_for(ALICE)
    creds.token = "revoked"
    assert all(r.ok for r in provider.apply([create(2)]))
    remote = list(provider.read_back([ALICE], dt.date(2025, 7, 1), dt.date(2025, 8, 1)))
    assert sorted(r.event_key for r in remote) == ["leave-1", "leave-2"]
    assert provider.check(ALICE).ok
    assert emulator.stats["token_requests"] >= 2


# -- event types and generations (#18, #21) ----------------------------------------------


def timed(n: int, status: str = "confirmed", **fields) -> EventPayload:
    """An afternoon off: pending is tentative, approved is out of office."""
    show_as = "oof" if status == "confirmed" else "tentative"
    return leave(
        n,
        all_day=False,
        start="2025-07-08T13:00:00",
        end="2025-07-08T18:00:00",
        status=status,
        show_as=show_as,
        **fields,
    )


def live_of(emulator: GoogleCalendarEmulator, user: str, key: str) -> list[dict]:
    return [
        e
        for e in emulator.events(user)
        if e.get("extendedProperties", {}).get("private", {}).get("leavesyncKey") == key
    ]


def test_out_of_office_pending_approved_cancelled_reinstated(google_calendar, monkeypatch):
    provider = make_provider(google_calendar, monkeypatch, out_of_office=True)

    def step(change: EventChange) -> ChangeResult:
        [result] = provider.apply([change])
        assert result.ok, result.error
        return result

    pending = step(EventChange("create", "leave-1", ALICE, timed(1, "tentative")))
    [event] = live_of(google_calendar, ALICE, "leave-1")
    assert event["eventType"] == "default" and event["status"] == "tentative"

    # Approval: Google refuses a change of eventType, so the event is replaced.
    approved = step(
        EventChange(
            "update", "leave-1", ALICE, timed(1), pending.provider_event_id, pending.version
        )
    )
    [event] = live_of(google_calendar, ALICE, "leave-1")
    assert event["eventType"] == "outOfOffice" and event["id"] == approved.provider_event_id
    assert approved.provider_event_id != pending.provider_event_id
    assert event["outOfOfficeProperties"] and event["transparency"] == "opaque"

    step(EventChange("delete", "leave-1", ALICE, provider_event_id=approved.provider_event_id))
    assert live_of(google_calendar, ALICE, "leave-1") == []

    reinstated = step(EventChange("create", "leave-1", ALICE, timed(1)))
    [event] = live_of(google_calendar, ALICE, "leave-1")
    assert event["eventType"] == "outOfOffice" and event["id"] == reinstated.provider_event_id
    ids = {pending.provider_event_id, approved.provider_event_id, reinstated.provider_event_id}
    assert len(ids) == 3  # three generations; the two deleted ones stay deleted
    assert len(google_calendar.events(ALICE, include_cancelled=True)) == 3

    # Back to pending: out of office -> default, replaced again.
    back = step(
        EventChange("update", "leave-1", ALICE, timed(1, "tentative"), reinstated.provider_event_id)
    )
    [event] = live_of(google_calendar, ALICE, "leave-1")
    assert event["eventType"] == "default" and event["id"] == back.provider_event_id
    # No update ever asked Google to change a type.
    assert google_calendar.stats["event_type_change_refused"] == 0


def test_emulator_refuses_an_event_type_change_in_update_and_patch(google_calendar):
    client = RawClient(google_calendar, ALICE)
    body = event_json("lvs0000001", start={"date": "2025-07-01"}, end={"date": "2025-07-02"})
    assert client.call("POST", "/calendar/v3/calendars/primary/events", body)[0] == 200
    ooo = dict(
        body,
        eventType="outOfOffice",
        outOfOfficeProperties={},
        start={"dateTime": "2025-07-01T09:00:00Z"},
        end={"dateTime": "2025-07-01T12:00:00Z"},
    )
    for method in ("PUT", "PATCH"):
        status, answer = client.call(
            method, "/calendar/v3/calendars/primary/events/lvs0000001", ooo
        )
        assert status == 400
        assert answer["error"]["errors"][0]["reason"] == "eventTypeRestriction"
        assert answer["error"]["errors"][0]["domain"] == "calendar"


def test_event_written_before_generations_as_out_of_office_is_replaced(
    google_calendar, monkeypatch
):
    # The previous version wrote out-of-office events under the plain (generation 0) id.
    provider = make_provider(google_calendar, monkeypatch, out_of_office=True)
    [created] = provider.apply([EventChange("create", "leave-2", ALICE, timed(2))])
    assert created.ok
    old = google_calendar.events(ALICE)[0]
    google_calendar.calendars[ALICE].clear()
    google_calendar.put_event(ALICE, dict(old, id=event_id_for("leave-2")))
    [result] = provider.apply(
        [EventChange("update", "leave-2", ALICE, timed(2, "tentative"), event_id_for("leave-2"))]
    )
    assert result.ok, result.error
    [event] = live_of(google_calendar, ALICE, "leave-2")
    assert event["eventType"] == "default" and event["status"] == "tentative"
    assert google_calendar.stats["event_type_change_refused"] == 1  # seen, then replaced


# -- a create is never blind (#20) ----------------------------------------------------------


def test_lost_state_creates_adopt_our_events_and_write_only_what_differs(
    google_calendar, monkeypatch
):
    provider = make_provider(google_calendar, monkeypatch)
    assert all(r.ok for r in provider.apply([create(n, [ALICE, BOB][n % 2]) for n in range(8)]))
    before = dict(google_calendar.stats)
    # The snapshot is gone: every leave is a create again; HR edited leaves 0 and 1.
    again = [create(n, [ALICE, BOB][n % 2], title="Away" if n < 2 else "Absent") for n in range(8)]
    results = {r.change.event_key: r for r in provider.apply(again)}
    assert all(r.ok and r.adopted for r in results.values())
    assert google_calendar.stats["put_requests"] - before.get("put_requests", 0) == 2
    assert google_calendar.stats["events_created"] == 8  # nothing created twice
    for n in range(8):
        [event] = live_of(google_calendar, [ALICE, BOB][n % 2], f"leave-{n}")
        assert event["summary"] == ("Away" if n < 2 else "Absent")
        assert results[f"leave-{n}"].provider_event_id == event["id"]


def test_create_after_dates_changed_finds_the_event_at_its_old_dates(google_calendar, monkeypatch):
    provider = make_provider(google_calendar, monkeypatch)
    assert all(r.ok for r in provider.apply([create(n) for n in range(6)]))
    # State lost, and HR moved every leave to September: several keys in one calendar, so
    # one list of every event with our tag, whatever its dates.
    moved = [create(n, start="2025-09-01", end="2025-09-03") for n in range(6)]
    assert all(r.ok and r.adopted for r in provider.apply(moved))
    events = google_calendar.events(ALICE)
    assert len(events) == 6 and {e["start"]["date"] for e in events} == {"2025-09-01"}


def test_create_adopts_one_copy_and_deletes_the_others(google_calendar, monkeypatch):
    provider = make_provider(google_calendar, monkeypatch)
    [first] = provider.apply([create(3)])
    copy = google_calendar.events(ALICE)[0]
    google_calendar.put_event(
        ALICE, dict(copy, id="copy0000000001", updated="2000-01-01T00:00:00Z")
    )
    mine = google_calendar.put_event(
        ALICE,
        {"summary": "Dentist", "start": {"date": "2025-07-02"}, "end": {"date": "2025-07-03"}},
    )
    [result] = provider.apply([create(3)])
    assert result.ok and result.adopted and result.provider_event_id == first.provider_event_id
    assert [e["id"] for e in live_of(google_calendar, ALICE, "leave-3")] == [
        first.provider_event_id
    ]
    assert mine["id"] in {e["id"] for e in google_calendar.events(ALICE)}  # not ours: kept


def test_a_409_never_resurrects_a_stale_generation_beside_a_live_one(google_calendar, monkeypatch):
    provider = make_provider(google_calendar, monkeypatch)
    google_calendar.keep_deleted_details = False  # deleted events: only their id is sure
    assert all(r.ok for r in provider.apply([create(4)]))
    assert all(r.ok for r in provider.apply([EventChange("delete", "leave-4", ALICE)]))
    [back] = provider.apply([create(4, title="Back")])
    assert back.ok and back.provider_event_id == event_id_for("leave-4", 1)
    # The state is lost again, and the listing does not show generation 1 yet: the insert of
    # generation 0 answers 409, its id is read (deleted: skipped, never restored), then
    # generation 1 answers 409 and is ours and live: adopted.
    google_calendar.hidden_from_list = {back.provider_event_id}
    [again] = provider.apply([create(4, title="Back again")])
    assert again.ok and again.provider_event_id == back.provider_event_id, again
    assert google_calendar.stats["insert_conflicts"] == 3
    [event] = live_of(google_calendar, ALICE, "leave-4")
    assert event["summary"] == "Back again"
    stored = {e["id"]: e["status"] for e in google_calendar.events(ALICE, include_cancelled=True)}
    assert stored == {event_id_for("leave-4"): "cancelled", back.provider_event_id: "confirmed"}
    assert google_calendar.stats["events_restored"] == 0


def test_delete_of_a_stale_id_deletes_the_live_generation(google_calendar, monkeypatch):
    provider = make_provider(google_calendar, monkeypatch)
    provider.apply([create(5)]).__next__()
    list(provider.apply([EventChange("delete", "leave-5", ALICE)]))
    [back] = provider.apply([create(5)])
    # An older snapshot still names generation 0 for this leave, which HR now cancels.
    [deleted] = provider.apply(
        [EventChange("delete", "leave-5", ALICE, provider_event_id=event_id_for("leave-5"))]
    )
    assert deleted.ok and back.provider_event_id != event_id_for("leave-5")
    assert live_of(google_calendar, ALICE, "leave-5") == []


def test_a_new_address_kept_as_alias_moves_the_event_once(google_calendar, monkeypatch):
    # Carol is renamed Dora; the old address stays an alias of the same mailbox.
    dora = "dora@example.com"
    provider = make_provider(google_calendar, monkeypatch)
    assert all(r.ok for r in provider.apply([create(6, CAROL)]))
    google_calendar.users.add(dora)
    google_calendar.calendars[dora] = google_calendar.calendars.pop(CAROL)
    google_calendar.users.discard(CAROL)
    google_calendar.aliases[CAROL] = dora
    # The move: the delete half in an earlier call than the create half (base.py).
    assert all(r.ok for r in provider.apply([EventChange("delete", "leave-6", CAROL)]))
    [moved] = provider.apply([create(6, dora)])
    assert moved.ok
    assert len(live_of(google_calendar, dora, "leave-6")) == 1


def test_a_new_address_whose_old_one_is_gone_moves_the_event_once(google_calendar, monkeypatch):
    dora = "dora@example.com"
    provider = make_provider(google_calendar, monkeypatch)
    assert all(r.ok for r in provider.apply([create(6, CAROL)]))
    google_calendar.users.add(dora)
    google_calendar.users.discard(CAROL)  # the old mailbox is gone, and its events with it
    [deleted] = provider.apply([EventChange("delete", "leave-6", CAROL)])
    assert deleted.ok and not deleted.error
    [moved] = provider.apply([create(6, dora)])
    assert moved.ok and not moved.adopted
    assert len(live_of(google_calendar, dora, "leave-6")) == 1


def test_look_up_batches_several_users_per_request_and_costs_nothing_when_idle(
    google_calendar, monkeypatch
):
    users = [f"user{i:03d}@example.com" for i in range(60)]
    google_calendar.users.update(users)
    provider = make_provider(google_calendar, monkeypatch)
    changes = [create(n, users[n % 60]) for n in range(120)]
    assert all(r.ok for r in provider.apply(changes))
    stats = google_calendar.stats
    assert stats["list_requests"] == 60  # one list per calendar
    assert stats["multi_user_batches"] >= 2  # ... 50 of them per batch request
    assert stats["max_batch_parts"] <= 50
    assert stats["list_only_batches"] == 2 == stats["batch_requests"] - 60  # + a write each
    before = dict(stats)
    assert list(provider.apply([])) == []
    assert stats == before


def test_writes_never_exceed_fifty_calls_per_batch(google_calendar, monkeypatch):
    provider = make_provider(google_calendar, monkeypatch)
    assert all(r.ok for r in provider.apply([create(n) for n in range(130)]))
    assert google_calendar.stats["max_batch_parts"] == 50


# -- configuration checks and TLS (#22) -----------------------------------------------------


def test_preflight_names_the_key_variable(google_calendar, monkeypatch):
    provider = make_provider(google_calendar, monkeypatch)
    provider.preflight()
    monkeypatch.delenv(ENV)
    with pytest.raises(FatalProviderError, match=ENV):
        GoogleCalendarProvider("workspace", provider.settings).preflight()
    for bad in ("not json", json.dumps({"type": "authorized_user"})):
        monkeypatch.setenv(ENV, bad)
        fresh = GoogleCalendarProvider("workspace", provider.settings)
        with pytest.raises(FatalProviderError, match=ENV):
            fresh.preflight()
    monkeypatch.setenv(ENV, json.dumps(dict(google_calendar.key_info, private_key="garbage")))
    with pytest.raises(FatalProviderError, match="private key"):
        GoogleCalendarProvider("workspace", provider.settings).preflight()
    assert google_calendar.stats["http_requests"] == 0


@pytest.mark.parametrize("problem", ["missing", "directory", "not-pem"])
def test_a_bad_ca_bundle_is_fatal_at_once_and_never_retried(
    google_calendar, monkeypatch, tmp_path, problem
):
    path = tmp_path / "ca.pem"
    if problem == "directory":
        path.mkdir()
    elif problem == "not-pem":
        path.write_text("hello")
    provider = make_provider(google_calendar, monkeypatch, ca_bundle=str(path))
    with pytest.raises(FatalProviderError, match="ca_bundle") as raised:
        provider.preflight()
    assert str(path) in str(raised.value)
    with pytest.raises(FatalProviderError, match="ca_bundle"):
        list(provider.apply([create(n) for n in range(20)]))
    assert google_calendar.stats["http_requests"] == 0
    assert not make_provider(google_calendar, monkeypatch, ca_bundle=str(path)).check(ALICE).ok


def test_untrusted_certificate_is_fatal_names_the_host_and_ignores_ca_variables(
    monkeypatch, tls_google
):
    ca, emulator = tls_google
    # One TLS policy for every provider: environment CA variables are honoured by none.
    for var in ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "HTTPLIB2_CA_CERTS"):
        monkeypatch.setenv(var, str(ca))
    provider = make_provider(emulator, monkeypatch, max_attempts=8)
    host = emulator.base_url.split("//")[1].rstrip("/")
    delays = []
    real_delay = Backoff.delay
    monkeypatch.setattr(Backoff, "delay", lambda self, *a: delays.append(a) or real_delay(self, *a))
    with pytest.raises(FatalProviderError, match="ca_bundle") as raised:
        list(provider.apply([create(n) for n in range(10)]))
    assert host in str(raised.value) and "not retried" in str(raised.value)
    assert delays == []  # at once: never a retry
    with pytest.raises(FatalProviderError, match=host):
        list(provider.read_back([ALICE], dt.date(2025, 7, 1), dt.date(2025, 8, 1)))


# -- the emulator's rules, as the reference states them (tests/emulators/README.md) ---------


class RawClient:
    """Plain HTTP to the emulator with a delegated token: requests our client never sends."""

    def __init__(
        self,
        emulator: GoogleCalendarEmulator,
        user: str,
        lifetime: int = 3600,
        scope: str = SCOPE_EVENTS,
        grant_type: str = "urn:ietf:params:oauth:grant-type:jwt-bearer",
    ) -> None:
        self.emulator = emulator
        now = int(time.time())
        assertion = jwt.encode(
            {
                "iss": emulator.key_info["client_email"],
                "sub": user,
                "scope": scope,
                "aud": emulator.token_uri,
                "iat": now,
                "exp": now + lifetime,
            },
            emulator.key_info["private_key"],
            algorithm="RS256",
        )
        form = {"grant_type": grant_type, "assertion": assertion}
        self.token_status, answer = self._send("POST", emulator.token_uri, form=form)
        self.token = answer.get("access_token", "")

    def _send(self, method, url, body=None, form=None, headers=None, raw=None):
        data, head = None, dict(headers or {})
        if form is not None:
            data = urllib.parse.urlencode(form).encode()
            head["Content-Type"] = "application/x-www-form-urlencoded"
        elif body is not None:
            data = json.dumps(body).encode()
            head["Content-Type"] = "application/json"
        elif raw is not None:
            data = raw
        request = urllib.request.Request(url, data=data, method=method, headers=head)
        try:
            with urllib.request.urlopen(request, timeout=5) as answer:
                text = answer.read()
                status = answer.status
                content_type = answer.headers.get("Content-Type", "")
        except urllib.error.HTTPError as error:
            text, status, content_type = error.read(), error.code, ""
        if content_type.startswith("multipart"):
            return status, {"raw": text.decode(), "content_type": content_type}
        return status, json.loads(text) if text else {}

    def call(self, method: str, path: str, body=None):
        url = self.emulator.base_url.rstrip("/") + path
        return self._send(method, url, body=body, headers={"Authorization": f"Bearer {self.token}"})

    def batch(self, parts: list[str], content_type: str = "multipart/mixed; boundary=xyz"):
        text = "".join(f"--xyz\r\n{p}\r\n" for p in parts) + "--xyz--\r\n"
        return self._send(
            "POST",
            self.emulator.batch_uri,
            raw=text.encode(),
            headers={"Authorization": f"Bearer {self.token}", "Content-Type": content_type},
        )


def event_json(event_id: str | None = None, **fields) -> dict:
    body = {
        "summary": "Absent",
        "start": {"dateTime": "2025-07-01T09:00:00", "timeZone": "Europe/Paris"},
        "end": {"dateTime": "2025-07-01T12:00:00", "timeZone": "Europe/Paris"},
    }
    if event_id:
        body["id"] = event_id
    body.update(fields)
    return body


EVENTS = "/calendar/v3/calendars/primary/events"
OOO = {"eventType": "outOfOffice", "outOfOfficeProperties": {}}


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"id": "UPPERCASE1"}, "invalid"),  # base32hex: a-v and 0-9 only
        ({"id": "lvsw0000"}, "invalid"),
        ({"id": "a1b2"}, "invalid"),  # 5 to 1024 characters
        ({"id": "a" * 1025}, "invalid"),
        ({"start": None}, "required"),
        ({"end": {"date": "2025-07-02"}}, "invalid"),  # date with dateTime
        (
            {"end": {"dateTime": "2025-07-01T08:00:00", "timeZone": "Europe/Paris"}},
            "timeRangeEmpty",
        ),
        ({"start": {"dateTime": "2025-07-01T09:00:00"}}, "invalid"),  # no offset, no zone
        ({"start": {"dateTime": "2025-07-01T09:00:00", "timeZone": "Mars/Olympus"}}, "invalid"),
        ({"status": "maybe"}, "invalid"),
        ({"visibility": "secret"}, "invalid"),
        ({"transparency": "busy"}, "invalid"),
        ({"eventType": "fromGmail"}, "eventTypeRestriction"),
        ({"eventType": "outOfOffice"}, "required"),  # outOfOfficeProperties
        ({**OOO, "transparency": "transparent"}, "invalid"),
        (
            {**OOO, "start": {"date": "2025-07-01"}, "end": {"date": "2025-07-02"}},
            "eventTypeRestriction",
        ),
        (
            {
                "reminders": {
                    "useDefault": False,
                    "overrides": [{"method": "popup", "minutes": 1}] * 6,
                }
            },
            "invalid",
        ),
        ({"extendedProperties": {"private": {f"k{i}": "v" for i in range(301)}}}, "invalid"),
    ],
)
def test_emulator_refuses_what_the_events_reference_refuses(google_calendar, fields, reason):
    client = RawClient(google_calendar, ALICE)
    body = event_json("lvs0000002", **fields)
    body = {k: v for k, v in body.items() if v is not None}
    status, answer = client.call("POST", EVENTS, body)
    assert status == 400, answer
    assert answer["error"]["errors"][0]["reason"] == reason
    assert google_calendar.stats["events_created"] == 0


def test_emulator_out_of_office_only_on_the_primary_calendar(google_calendar):
    client = RawClient(google_calendar, ALICE)
    status, answer = client.call(
        "POST", f"/calendar/v3/calendars/{ALICE}/events", event_json(**OOO)
    )
    assert status == 400 and answer["error"]["errors"][0]["reason"] == "eventTypeRestriction"
    assert client.call("POST", EVENTS, event_json(**OOO))[0] == 200


def test_emulator_ids_deleted_events_and_restores(google_calendar):
    client = RawClient(google_calendar, ALICE)
    assert client.call("POST", EVENTS, event_json("lvs0000003"))[0] == 200
    status, answer = client.call("POST", EVENTS, event_json("lvs0000003"))
    assert status == 409 and answer["error"]["errors"][0]["reason"] == "duplicate"
    assert client.call("DELETE", f"{EVENTS}/lvs0000003")[0] == 204
    status, answer = client.call("DELETE", f"{EVENTS}/lvs0000003")
    assert status == 410 and answer["error"]["errors"][0]["reason"] == "deleted"
    # A deleted event keeps its id: inserting it again is still a duplicate ...
    assert client.call("POST", EVENTS, event_json("lvs0000003"))[0] == 409
    # ... get still returns it, cancelled, and an update restores it.
    assert client.call("GET", f"{EVENTS}/lvs0000003")[1]["status"] == "cancelled"
    status, answer = client.call("PUT", f"{EVENTS}/lvs0000003", event_json(status="confirmed"))
    assert status == 200 and answer["status"] == "confirmed"
    assert google_calendar.stats["events_restored"] == 1
    assert client.call("PUT", f"{EVENTS}/lvs0000003", {"summary": "x"})[0] == 400  # start, end


def test_emulator_extended_property_limits(google_calendar):
    client = RawClient(google_calendar, ALICE)
    props = {"k" * 45: "dropped", "long": "v" * 2000, "leavesync": "1"}
    status, answer = client.call("POST", EVENTS, event_json(extendedProperties={"private": props}))
    assert status == 200
    private = answer["extendedProperties"]["private"]
    assert "k" * 45 not in private and len(private["long"]) == 1024
    # Repeated constraints match either of them (Extended properties guide: OR'ed).
    query = "privateExtendedProperty=leavesync%3D1&privateExtendedProperty=leavesync%3D2"
    assert len(client.call("GET", f"{EVENTS}?{query}")[1]["items"]) == 1


@pytest.mark.parametrize(
    ("query", "reason"),
    [
        ("maxResults=0", "invalid"),
        ("timeMin=2025-07-01T00:00:00", "invalid"),  # the offset is mandatory
        ("timeMin=2025-07-02T00:00:00Z&timeMax=2025-07-01T00:00:00Z", "timeRangeEmpty"),
        ("privateExtendedProperty=leavesync", "invalid"),
        ("pageToken=nonsense", "invalid"),
    ],
)
def test_emulator_list_parameters(google_calendar, query, reason):
    status, answer = RawClient(google_calendar, ALICE).call("GET", f"{EVENTS}?{query}")
    assert status == 400 and answer["error"]["errors"][0]["reason"] == reason


def test_emulator_short_pages_are_followed(google_calendar, monkeypatch):
    google_calendar.max_page_size = 7  # fewer than asked for is allowed (Events: list)
    provider = make_provider(google_calendar, monkeypatch)
    assert all(r.ok for r in provider.apply([create(n) for n in range(20)]))
    google_calendar.stats.clear()
    # State lost: the tag list of 20 events comes in three pages and all are adopted.
    assert all(r.adopted for r in provider.apply([create(n) for n in range(20)]))
    assert google_calendar.stats["list_requests"] == 3
    remote = list(provider.read_back([ALICE], dt.date(2025, 6, 1), dt.date(2025, 8, 1)))
    assert len(remote) == 20


def _part(request_line: str, content_type: str = "application/http", cid: str = "<a+1>") -> str:
    return f"Content-Type: {content_type}\r\nContent-ID: {cid}\r\n\r\n{request_line}\r\n\r\n"


@pytest.mark.parametrize(
    ("parts", "content_type"),
    [
        ([_part(f"GET https://example.com{EVENTS} HTTP/1.1")], None),  # full URL
        ([_part(f"GET {EVENTS} HTTP/1.1", content_type="text/plain")], None),
        ([_part("GET /drive/v3/files HTTP/1.1")], None),  # another API
        ([_part(f"GET {EVENTS} HTTP/1.1")] * 1001, None),  # more than 1000 calls
        ([_part(f"GET {EVENTS} HTTP/1.1")], "application/json"),
    ],
    ids=["full-url", "part-not-application-http", "other-api", "1001-calls", "not-multipart"],
)
def test_emulator_refuses_a_malformed_batch(google_calendar, parts, content_type):
    client = RawClient(google_calendar, ALICE)
    args = (parts, content_type) if content_type else (parts,)
    status, _ = client.batch(*args)
    assert status == 400
    assert google_calendar.stats["api_requests"] == 0


def test_emulator_batch_answers_in_order_with_content_ids(google_calendar):
    client = RawClient(google_calendar, ALICE)
    parts = [_part(f"GET {EVENTS}/lvs000000{i} HTTP/1.1", cid=f"<x+{i}>") for i in range(5)]
    status, answer = client.batch(parts)
    assert status == 200
    ids = re.findall(r"Content-ID: <response-x\+(\d)>", answer["raw"])
    assert ids == ["0", "1", "2", "3", "4"]


def test_emulator_token_rules(google_calendar):
    assert RawClient(google_calendar, ALICE).token_status == 200
    assert RawClient(google_calendar, ALICE, lifetime=7200).token_status == 400  # > 1 hour
    assert RawClient(google_calendar, "nobody@example.com").token_status == 400
    assert RawClient(google_calendar, ALICE, grant_type="client_credentials").token_status == 400
    status, answer = RawClient(google_calendar, ALICE).call(
        "POST", f"{EVENTS}?sendUpdates=some", event_json()
    )
    assert status == 400


def test_emulator_a_read_only_token_cannot_write(google_calendar):
    readonly = SCOPE_CALENDAR + ".readonly"
    google_calendar.granted_scopes = {SCOPE_EVENTS, readonly}
    client = RawClient(google_calendar, ALICE, scope=readonly)
    assert client.call("GET", EVENTS)[0] == 200
    status, answer = client.call("POST", EVENTS, event_json())
    assert status == 403 and answer["error"]["errors"][0]["reason"] == "insufficientPermissions"


def test_update_from_an_older_snapshot_never_restores_a_stale_generation(
    google_calendar, monkeypatch
):
    provider = make_provider(google_calendar, monkeypatch)
    [old] = provider.apply([create(8)])  # what an older backup of the state store knows
    list(
        provider.apply(
            [EventChange("delete", "leave-8", ALICE, provider_event_id=old.provider_event_id)]
        )
    )
    [back] = provider.apply([create(8)])  # reinstated: the next generation
    # The old backup is restored; HR edits the leave: an update aimed at generation 0 with
    # the etag of then. That event changed since (deleted): 412, and the live one is updated.
    stale = EventChange(
        "update", "leave-8", ALICE, leave(8, title="Edited"), old.provider_event_id, old.version
    )
    [result] = provider.apply([stale])
    assert result.ok and result.provider_event_id == back.provider_event_id
    [event] = live_of(google_calendar, ALICE, "leave-8")
    assert event["summary"] == "Edited" and event["id"] == back.provider_event_id
    assert google_calendar.stats["precondition_failed"] == 1
    assert google_calendar.stats["events_restored"] == 0


def test_update_of_an_event_its_owner_deleted_recreates_it(google_calendar, monkeypatch):
    provider = make_provider(google_calendar, monkeypatch)
    [created] = provider.apply([create(9)])
    google_calendar.edit_event(ALICE, created.provider_event_id, status="cancelled")
    change = EventChange(
        "update",
        "leave-9",
        ALICE,
        leave(9, title="Still off"),
        created.provider_event_id,
        created.version,
    )
    [result] = provider.apply([change])
    assert result.ok and result.provider_event_id == event_id_for("leave-9", 1)
    [event] = live_of(google_calendar, ALICE, "leave-9")
    assert event["summary"] == "Still off"


def test_emulator_conditional_modification(google_calendar):
    client = RawClient(google_calendar, ALICE)
    status, created = client.call("POST", EVENTS, event_json("lvs0000004"))
    path = f"{EVENTS}/lvs0000004"
    url = google_calendar.base_url.rstrip("/") + path
    headers = {"Authorization": f"Bearer {client.token}", "If-Match": '"stale"'}
    assert client._send("PUT", url, body=event_json(), headers=headers)[0] == 412
    assert client._send("DELETE", url, headers=headers)[0] == 412
    headers["If-Match"] = created["etag"]
    assert client._send("DELETE", url, headers=headers)[0] == 204


def test_timed_to_all_day_changes_in_place_unless_out_of_office(google_calendar, monkeypatch):
    # The Events reference lets a regular event change between all-day and timed; an
    # out-of-office event cannot be all-day, so that change is a change of type.
    for ooo in (False, True):
        provider = make_provider(google_calendar, monkeypatch, out_of_office=ooo)
        n = 20 + ooo
        [first] = provider.apply([EventChange("create", f"leave-{n}", BOB, timed(n))])
        [second] = provider.apply(
            [EventChange("update", f"leave-{n}", BOB, leave(n), first.provider_event_id)]
        )
        [third] = provider.apply(
            [EventChange("update", f"leave-{n}", BOB, timed(n), second.provider_event_id)]
        )
        assert first.ok and second.ok and third.ok
        ids = {first.provider_event_id, second.provider_event_id, third.provider_event_id}
        assert len(ids) == (3 if ooo else 1)
        [event] = live_of(google_calendar, BOB, f"leave-{n}")
        assert event["eventType"] == ("outOfOffice" if ooo else "default")
        assert "dateTime" in event["start"]
    assert google_calendar.stats["event_type_change_refused"] == 0
