"""The Google provider, with the real client libraries, against the Calendar API emulator."""

from __future__ import annotations

import datetime as dt
import json

import pytest

from resources.providers import provider_class
from resources.providers.base import (
    EventChange,
    EventPayload,
    FatalProviderError,
    changed_fields,
)
from resources.providers.google import GoogleCalendarProvider
from resources.providers.google.mapping import event_id_for, parse_event_id
from resources.providers.google.settings import SCOPE_CALENDAR, SCOPE_EVENTS
from tests.emulators import google_calendar as emulator_module
from tests.emulators.google_calendar import GoogleCalendarEmulator, make_service_account
from tests.emulators.pki import make_test_pki

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
    base = dict(
        event_key=f"leave-{n}",
        leave_id=str(n),
        title="Absent",
        all_day=True,
        start="2025-07-01",
        end="2025-07-04",
        timezone="Europe/Paris",
        status="confirmed",
        show_as="oof",
    )
    base.update(fields)
    return EventPayload(**base)


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
    # The same calls from an unpaced client do exceed this quota.
    unpaced = make_provider(google_calendar, monkeypatch, batch_size=10, max_attempts=1)
    list(unpaced.apply([create(n, [ALICE, BOB, CAROL][n % 3]) for n in range(100, 190)]))
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
    assert google_calendar.stats["list_requests"] >= 3  # Bob's 260 events came in pages


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


def test_tls_with_a_custom_ca_bundle(monkeypatch, tmp_path):
    ca, cert, key = _test_ca(tmp_path)
    info, public_key = make_service_account()
    emulator = GoogleCalendarEmulator(
        info["client_email"], public_key, {ALICE}, tls=(str(cert), str(key))
    ).start()
    emulator.key_info = info
    try:
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
    finally:
        emulator.stop()


def _test_ca(tmp_path):
    """A throwaway CA and a certificate for 127.0.0.1 signed by it."""
    pki = make_test_pki(tmp_path / "pki")
    return pki.ca_file, pki.cert_file, pki.key_file
