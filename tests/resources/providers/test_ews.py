"""The ``ews`` provider: real exchangelib against the EWS emulator (tests/emulators/ews.py)."""

from __future__ import annotations

import datetime as dt
import logging
from collections import Counter
from collections.abc import Callable, Iterator

import pytest
from pydantic import ValidationError

from resources.providers import provider_class
from resources.providers.base import (
    EventChange,
    EventPayload,
    FatalProviderError,
    changed_fields,
)
from resources.providers.ews import EwsCalendarProvider
from resources.providers.ews.mapping import KEY_PROPERTY
from resources.providers.ews.settings import EwsSettings
from tests.emulators.ews import EwsEmulator, make_tls_files

ALICE, BOB, CAROL = "alice@example.com", "bob@example.com", "carol@example.com"
DENIED, GHOST = "denied@example.com", "ghost@example.com"
PASSWORD_ENV = "LEAVESYNC_TEST_EWS_PASSWORD"


@pytest.fixture
def emulator() -> Iterator[EwsEmulator]:
    # DENIED has a mailbox outside the ApplicationImpersonation scope; GHOST has none.
    with EwsEmulator([ALICE, BOB, CAROL, DENIED], impersonable=[ALICE, BOB, CAROL]) as emu:
        yield emu


@pytest.fixture
def make_provider(
    emulator: EwsEmulator, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Callable[..., EwsCalendarProvider]]:
    monkeypatch.setenv(PASSWORD_ENV, emulator.password)
    made: list[EwsCalendarProvider] = []

    def make(**overrides: object) -> EwsCalendarProvider:
        values: dict[str, object] = {
            "ews_url": emulator.url,
            "username": emulator.username,
            "password_env": PASSWORD_ENV,
            "auth_type": "basic",
            "backoff_base": 0.01,
            "backoff_cap": 0.2,
            "max_wait": 5,
        }
        values.update(overrides)
        provider = EwsCalendarProvider("exchange", EwsSettings(**values))
        made.append(provider)
        return provider

    yield make
    for provider in made:
        provider.close()


def all_day(key: str, start: str, end: str, **kw: object) -> EventPayload:
    values: dict[str, object] = dict(
        event_key=key,
        leave_id=key.removeprefix("leave-"),
        title="Absent",
        all_day=True,
        start=start,
        end=end,
        timezone="Europe/Paris",
        status="confirmed",
        show_as="oof",
    )
    values.update(kw)
    return EventPayload(**values)  # type: ignore[arg-type]


def timed(key: str, start: str, end: str, **kw: object) -> EventPayload:
    return all_day(key, start, end, all_day=False, **kw)


def create(calendar: str, event: EventPayload) -> EventChange:
    return EventChange("create", event.event_key, calendar, event)


def by_key(emulator: EwsEmulator, mailbox: str) -> dict[str, list]:
    found: dict[str, list] = {}
    for item in emulator.items(mailbox):
        found.setdefault(item.extended_value(KEY_PROPERTY), []).append(item)
    return found


# -- settings and registry ------------------------------------------------------------------------


def test_registry_and_settings_defaults() -> None:
    assert provider_class("ews") is EwsCalendarProvider
    settings = EwsSettings(ews_url="https://mail.example.com/EWS/Exchange.asmx", username="svc")
    assert settings.password_env == "LEAVESYNC_EWS_PASSWORD"
    assert (settings.auth_type, settings.chunk_size, settings.verify_tls) == ("NTLM", 100, True)
    with pytest.raises(ValidationError):
        EwsSettings(username="svc")  # neither ews_url nor autodiscover
    with pytest.raises(ValidationError):
        EwsSettings(ews_url="https://x/EWS/Exchange.asmx", username="svc", password="inline")


# -- create / update / move / cancel / delete -----------------------------------------------------


def test_create_writes_private_oof_items_without_invitations(
    emulator: EwsEmulator, make_provider: Callable[..., EwsCalendarProvider]
) -> None:
    provider = make_provider()
    event = all_day("leave-1", "2024-05-06", "2024-05-09")
    half = timed("leave-2", "2024-05-10T13:00:00", "2024-05-10T17:30:00", show_as="busy")
    results = list(provider.apply([create(ALICE, event), create(BOB, half)]))

    assert [r.ok for r in results] == [True, True]
    (item,) = emulator.items(ALICE)
    result = next(r for r in results if r.change.calendar == ALICE)
    assert (result.provider_event_id, result.version) == (item.item_id, item.changekey)
    assert item.extended_value(KEY_PROPERTY) == "leave-1"
    assert item.text("Subject") == "Absent"
    assert item.text("Sensitivity") == "Private"
    assert item.text("LegacyFreeBusyStatus") == "OOF"
    assert item.text("ReminderIsSet") == "false"
    assert item.text("IsAllDayEvent") == "true"
    assert "RequiredAttendees" not in item.fields and "OptionalAttendees" not in item.fields
    assert item.timezone_id() == "Romance Standard Time"
    # All-day: midnight Paris (UTC+2 in May) to the exclusive end's midnight.
    assert item.start == dt.datetime(2024, 5, 5, 22, tzinfo=dt.UTC)
    assert item.end == dt.datetime(2024, 5, 8, 22, tzinfo=dt.UTC)
    (timed_item,) = emulator.items(BOB)
    assert timed_item.start == dt.datetime(2024, 5, 10, 11, tzinfo=dt.UTC)
    assert timed_item.text("LegacyFreeBusyStatus") == "Busy"
    creates = [r for r in emulator.requests if r.op == "CreateItem"]
    assert {r.attributes["SendMeetingInvitations"] for r in creates} == {"SendToNone"}
    assert {r.mailbox for r in creates} == {ALICE, BOB}  # impersonation header per mailbox


def test_update_move_cancel_and_delete(
    emulator: EwsEmulator, make_provider: Callable[..., EwsCalendarProvider]
) -> None:
    provider = make_provider()
    first = all_day("leave-1", "2024-05-06", "2024-05-09")
    second = all_day("leave-2", "2024-06-03", "2024-06-04")
    created = {r.change.event_key: r for r in provider.apply([create(ALICE, first)])}
    created |= {r.change.event_key: r for r in provider.apply([create(ALICE, second)])}
    item_id = created["leave-1"].provider_event_id

    # Update: approved, type name shown; move: the leave now starts in another month.
    moved = all_day("leave-1", "2024-07-01", "2024-07-05", title="Vacation", show_as="oof")
    (updated,) = provider.apply(
        [EventChange("update", "leave-1", ALICE, moved, item_id, created["leave-1"].version)]
    )
    assert updated.ok and updated.provider_event_id == item_id
    assert updated.version != created["leave-1"].version
    (item,) = by_key(emulator, ALICE)["leave-1"]
    assert item.text("Subject") == "Vacation"
    assert item.start == dt.datetime(2024, 6, 30, 22, tzinfo=dt.UTC)
    assert item.end == dt.datetime(2024, 7, 4, 22, tzinfo=dt.UTC)

    # An update whose id the snapshot never learned finds the event by its key.
    pending = all_day(
        "leave-2", "2024-06-03", "2024-06-04", status="tentative", show_as="tentative"
    )
    (result,) = provider.apply([EventChange("update", "leave-2", ALICE, pending)])
    assert result.ok and result.provider_event_id == created["leave-2"].provider_event_id
    assert by_key(emulator, ALICE)["leave-2"][0].text("LegacyFreeBusyStatus") == "Tentative"

    # Cancel (no id known: looked up by key) and delete (by id); deleting again is done too.
    results = list(
        provider.apply(
            [
                EventChange("delete", "leave-2", ALICE),
                EventChange("delete", "leave-1", ALICE, None, item_id),
            ]
        )
    )
    assert all(r.ok for r in results) and emulator.items(ALICE) == []
    again = list(
        provider.apply(
            [
                EventChange("delete", "leave-1", ALICE, None, item_id),
                EventChange("delete", "leave-2", ALICE),
            ]
        )
    )
    assert [r.ok for r in again] == [True, True]


def test_update_of_event_deleted_in_outlook_recreates_it(
    emulator: EwsEmulator, make_provider: Callable[..., EwsCalendarProvider]
) -> None:
    provider = make_provider()
    event = all_day("leave-7", "2024-05-06", "2024-05-07")
    (created,) = provider.apply([create(CAROL, event)])
    emulator.mailboxes[CAROL].clear()  # the employee deleted it
    (result,) = provider.apply(
        [EventChange("update", "leave-7", CAROL, event, created.provider_event_id, created.version)]
    )
    (item,) = emulator.items(CAROL)
    assert result.ok and result.provider_event_id == item.item_id != created.provider_event_id


def test_foreign_events_are_never_touched(
    emulator: EwsEmulator, make_provider: Callable[..., EwsCalendarProvider]
) -> None:
    provider = make_provider()
    foreign = emulator.add_foreign_item(
        ALICE, "Team lunch", "2024-05-06T10:00:00Z", "2024-05-06T11:00:00Z"
    )
    list(provider.apply([create(ALICE, all_day("leave-1", "2024-05-06", "2024-05-07"))]))
    list(provider.apply([EventChange("delete", "leave-1", ALICE)]))
    assert [i.item_id for i in emulator.items(ALICE)] == [foreign.item_id]
    assert list(provider.read_back([ALICE], dt.date(2024, 5, 1), dt.date(2024, 6, 1))) == []


def test_bulk_operations_in_chunks_of_100(
    emulator: EwsEmulator, make_provider: Callable[..., EwsCalendarProvider]
) -> None:
    provider = make_provider()
    day = dt.date(2024, 1, 1)
    events = [
        all_day(f"leave-{n}", str(day + dt.timedelta(n)), str(day + dt.timedelta(n + 1)))
        for n in range(250)
    ]
    results = list(provider.apply([create(ALICE, e) for e in events]))
    assert len(results) == 250 and all(r.ok for r in results)
    assert len({r.provider_event_id for r in results}) == 250
    assert [r.count for r in emulator.requests if r.op == "CreateItem"] == [100, 100, 50]
    # Look-ups: at most 63 keys per FindItem (a restriction has at most 255 nodes): 2 + 2 + 1.
    assert emulator.count("FindItem") == 5
    remote = list(provider.read_back([ALICE], dt.date(2024, 1, 1), dt.date(2025, 1, 1)))
    assert sorted(r.event_key for r in remote) == sorted(e.event_key for e in events)  # paged
    deletes = [
        EventChange("delete", r.change.event_key, ALICE, None, r.provider_event_id) for r in results
    ]
    assert all(r.ok for r in provider.apply(deletes))
    assert [r.count for r in emulator.requests if r.op == "DeleteItem"] == [100, 100, 50]
    assert emulator.items(ALICE) == []


def test_nothing_to_change_sends_nothing(
    emulator: EwsEmulator, make_provider: Callable[..., EwsCalendarProvider]
) -> None:
    assert list(make_provider().apply([])) == []
    assert emulator.requests == []


# -- idempotency and faults -----------------------------------------------------------------------


def test_create_whose_answer_was_lost_lands_once(
    emulator: EwsEmulator, make_provider: Callable[..., EwsCalendarProvider]
) -> None:
    provider = make_provider()
    emulator.inject("lost", ops=("CreateItem",))
    events = [all_day(f"leave-{n}", "2024-05-06", "2024-05-07") for n in range(3)]
    results = list(provider.apply([create(ALICE, e) for e in events]))
    assert emulator.count("CreateItem", outcome="lost") == 1
    assert all(r.ok for r in results)
    keys = by_key(emulator, ALICE)
    assert sorted(keys) == ["leave-0", "leave-1", "leave-2"]
    assert all(len(items) == 1 for items in keys.values())
    assert {r.provider_event_id for r in results} == {i.item_id for i in emulator.items(ALICE)}
    # A later run that never learned the outcome creates again: still one event.
    again = list(provider.apply([create(ALICE, events[0])]))
    assert again[0].ok and len(by_key(emulator, ALICE)["leave-0"]) == 1


def test_server_busy_back_off_is_honoured(
    emulator: EwsEmulator, make_provider: Callable[..., EwsCalendarProvider]
) -> None:
    provider = make_provider()
    emulator.inject("busy", ops=("CreateItem",), back_off_ms=300)
    emulator.inject("busy", ops=("FindItem",), back_off_ms=300)
    results = list(provider.apply([create(ALICE, all_day("leave-1", "2024-05-06", "2024-05-07"))]))
    assert results[0].ok and len(emulator.items(ALICE)) == 1
    for op in ("FindItem", "CreateItem"):
        busy, retried = [r for r in emulator.requests if r.op == op][:2]
        assert busy.outcome == "busy"
        # The next request came only after the advised BackOffMilliseconds.
        assert retried.at - busy.at >= 0.29


def test_http_503_with_retry_after_is_honoured(
    emulator: EwsEmulator, make_provider: Callable[..., EwsCalendarProvider]
) -> None:
    provider = make_provider()
    emulator.inject("503", ops=("DeleteItem",), retry_after=1)
    (created,) = provider.apply([create(ALICE, all_day("leave-1", "2024-05-06", "2024-05-07"))])
    (deleted,) = provider.apply(
        [EventChange("delete", "leave-1", ALICE, None, created.provider_event_id)]
    )
    assert deleted.ok and emulator.items(ALICE) == []
    failed, retried = [r for r in emulator.requests if r.op == "DeleteItem"]
    assert failed.outcome == "503" and retried.at - failed.at >= 0.99


def test_soap_500_and_dropped_connections_are_retried(
    emulator: EwsEmulator, make_provider: Callable[..., EwsCalendarProvider]
) -> None:
    provider = make_provider()
    emulator.inject("fault500", ops=("CreateItem",))
    emulator.inject("drop", ops=("UpdateItem",))
    emulator.inject("slow", ops=("FindItem",), delay=0.05)
    (created,) = provider.apply([create(ALICE, all_day("leave-1", "2024-05-06", "2024-05-07"))])
    moved = all_day("leave-1", "2024-05-13", "2024-05-14")
    (updated,) = provider.apply(
        [EventChange("update", "leave-1", ALICE, moved, created.provider_event_id, created.version)]
    )
    assert created.ok and updated.ok
    assert emulator.count(outcome="fault500") == emulator.count(outcome="drop") == 1
    (item,) = emulator.items(ALICE)
    assert item.start == dt.datetime(2024, 5, 12, 22, tzinfo=dt.UTC)


def test_persisting_faults_give_a_retryable_failure(
    emulator: EwsEmulator, make_provider: Callable[..., EwsCalendarProvider]
) -> None:
    provider = make_provider(max_attempts=2)
    emulator.inject("fault500", times=10, ops=("FindItem", "CreateItem"), mailbox=BOB)
    results = list(
        provider.apply(
            [
                create(BOB, all_day("leave-1", "2024-05-06", "2024-05-07")),
                create(ALICE, all_day("leave-2", "2024-05-06", "2024-05-07")),
            ]
        )
    )
    outcome = {r.change.calendar: r for r in results}
    assert outcome[ALICE].ok
    assert not outcome[BOB].ok and not outcome[BOB].permanent and "2 times" in outcome[BOB].error


def test_thirty_percent_faults_every_change_lands_exactly_once(
    emulator: EwsEmulator, make_provider: Callable[..., EwsCalendarProvider]
) -> None:
    provider = make_provider(max_attempts=30, chunk_size=25)
    emulator.fault_rate = 0.3
    emulator.back_off_ms = 5
    day = dt.date(2024, 3, 1)
    events = {
        (mailbox, n): all_day(
            f"leave-{i}-{n}", str(day + dt.timedelta(n)), str(day + dt.timedelta(n + 2))
        )
        for i, mailbox in enumerate((ALICE, BOB, CAROL))
        for n in range(60)
    }
    results = list(provider.apply([create(m, e) for (m, _), e in events.items()]))
    assert len(results) == 180 and all(r.ok for r in results), [
        r.error for r in results if not r.ok
    ]
    for mailbox in (ALICE, BOB, CAROL):
        keys = by_key(emulator, mailbox)
        assert len(keys) == 60 and all(len(v) == 1 for v in keys.values())
    updates = [
        EventChange(
            "update",
            r.change.event_key,
            r.change.calendar,
            all_day(r.change.event_key, "2024-09-02", "2024-09-03", title="Leave"),
            r.provider_event_id,
            r.version,
        )
        for r in results
    ]
    updated = list(provider.apply(updates))
    assert len(updated) == 180 and all(r.ok for r in updated)
    assert {i.text("Subject") for i in emulator.all_items()} == {"Leave"}
    assert sum(1 for _ in emulator.all_items()) == 180
    deleted = list(
        provider.apply(
            [
                EventChange(
                    "delete", r.change.event_key, r.change.calendar, None, r.provider_event_id
                )
                for r in updated
            ]
        )
    )
    assert len(deleted) == 180 and all(r.ok for r in deleted)
    assert list(emulator.all_items()) == []
    kinds = Counter(r.outcome for r in emulator.requests)
    assert all(kinds[k] > 0 for k in ("busy", "503", "fault500", "drop", "lost")), kinds


# -- mailbox and target failures ------------------------------------------------------------------


def test_impersonation_denied_fails_that_mailbox_only(
    emulator: EwsEmulator, make_provider: Callable[..., EwsCalendarProvider]
) -> None:
    provider = make_provider()
    changes = [
        create(DENIED, all_day("leave-1", "2024-05-06", "2024-05-07")),
        create(ALICE, all_day("leave-2", "2024-05-06", "2024-05-07")),
        create(DENIED, all_day("leave-3", "2024-05-06", "2024-05-07")),
    ]
    results = {r.change.event_key: r for r in provider.apply(changes)}
    assert results["leave-2"].ok and len(emulator.items(ALICE)) == 1
    for key in ("leave-1", "leave-3"):
        assert not results[key].ok and results[key].permanent
        assert "ApplicationImpersonation" in results[key].error and DENIED in results[key].error
    assert emulator.items(DENIED) == []


def test_unknown_mailbox_fails_its_events_only(
    emulator: EwsEmulator, make_provider: Callable[..., EwsCalendarProvider]
) -> None:
    provider = make_provider(concurrent_mailboxes=1)
    results = list(
        provider.apply(
            [
                create(GHOST, all_day("leave-1", "2024-05-06", "2024-05-07")),
                EventChange("delete", "leave-9", GHOST),
                create(BOB, all_day("leave-2", "2024-05-06", "2024-05-07")),
            ]
        )
    )
    outcome = {r.change.event_key: r for r in results}
    assert outcome["leave-2"].ok
    assert not outcome["leave-1"].ok and outcome["leave-1"].permanent
    assert "ErrorNonExistentMailbox" in outcome["leave-1"].error
    assert not outcome["leave-9"].ok and outcome["leave-9"].permanent


def test_bad_password_is_fatal_and_not_retried(
    emulator: EwsEmulator,
    make_provider: Callable[..., EwsCalendarProvider],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setenv(PASSWORD_ENV, "wrong-password-123")
    provider = make_provider(version="Exchange2016")
    caplog.set_level(logging.DEBUG, logger="resources")
    with pytest.raises(FatalProviderError) as raised:
        list(provider.apply([create(ALICE, all_day("leave-1", "2024-05-06", "2024-05-07"))]))
    message = str(raised.value)
    assert "HTTP 401" in message and PASSWORD_ENV in message and emulator.username in message
    assert "wrong-password-123" not in message and "wrong-password-123" not in caplog.text
    assert emulator.count(outcome="401") == 1


def test_missing_password_variable_is_fatal(
    make_provider: Callable[..., EwsCalendarProvider], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(PASSWORD_ENV)
    with pytest.raises(FatalProviderError, match=PASSWORD_ENV):
        list(make_provider().apply([create(ALICE, all_day("leave-1", "2024-05-06", "2024-05-07"))]))


def test_configured_version_skips_discovery(
    emulator: EwsEmulator, make_provider: Callable[..., EwsCalendarProvider]
) -> None:
    provider = make_provider(version="Exchange2016")
    list(provider.apply([create(ALICE, all_day("leave-1", "2024-05-06", "2024-05-07"))]))
    assert emulator.count("ConvertId") == 0
    unset = make_provider(ews_url=emulator.url.replace("/EWS/", "/ews/"))
    list(unset.apply([create(BOB, all_day("leave-2", "2024-05-06", "2024-05-07"))]))
    list(unset.apply([create(BOB, all_day("leave-3", "2024-05-06", "2024-05-07"))]))
    assert emulator.count("ConvertId") == 1  # discovered once


# -- time zones and read-back ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("start", "end", "utc_start", "utc_end"),
    [
        # Spring forward in Paris on 31 March 2024; fall back on 27 October 2024.
        ("2024-03-29", "2024-04-02", dt.datetime(2024, 3, 28, 23), dt.datetime(2024, 4, 1, 22)),
        ("2024-10-25", "2024-10-29", dt.datetime(2024, 10, 24, 22), dt.datetime(2024, 10, 28, 23)),
    ],
)
def test_all_day_events_across_dst_land_on_the_right_dates(
    emulator: EwsEmulator,
    make_provider: Callable[..., EwsCalendarProvider],
    start: str,
    end: str,
    utc_start: dt.datetime,
    utc_end: dt.datetime,
) -> None:
    provider = make_provider()
    event = all_day("leave-1", start, end)
    assert provider.apply([create(ALICE, event)]).__next__().ok
    (item,) = emulator.items(ALICE)
    assert (item.start, item.end) == (
        utc_start.replace(tzinfo=dt.UTC),
        utc_end.replace(tzinfo=dt.UTC),
    )
    (remote,) = provider.read_back([ALICE], dt.date(2024, 1, 1), dt.date(2025, 1, 1))
    assert (remote.payload.start, remote.payload.end) == (start, end)
    assert changed_fields(event, remote.payload, provider.compared_fields) == []


def test_read_back_round_trips_and_reports_edits(
    emulator: EwsEmulator, make_provider: Callable[..., EwsCalendarProvider]
) -> None:
    provider = make_provider()
    written = {
        "leave-1": all_day("leave-1", "2024-05-06", "2024-05-09", categories="Leave,HR"),
        "leave-2": timed(
            "leave-2",
            "2024-05-10T09:00:00",
            "2024-05-10T13:00:00",
            timezone="America/New_York",
            status="tentative",
            show_as="tentative",
            description="Half day",
        ),
        "leave-3": all_day("leave-3", "2024-08-01", "2024-08-02"),
    }
    list(provider.apply([create(BOB, e) for e in written.values()]))
    remote = {
        r.event_key: r for r in provider.read_back([BOB], dt.date(2024, 5, 1), dt.date(2024, 6, 1))
    }
    assert sorted(remote) == ["leave-1", "leave-2"]  # leave-3 is outside the window
    for key, event in remote.items():
        assert changed_fields(written[key], event.payload, provider.compared_fields) == []
        assert event.payload.leave_id == key.removeprefix("leave-")
    # Someone moves the half day and makes the other event public in Outlook.
    emulator.edit_item(remote["leave-2"].provider_event_id, "Start", "2024-05-10T14:00:00Z")
    emulator.edit_item(remote["leave-1"].provider_event_id, "Sensitivity", "Normal")
    again = {
        r.event_key: r for r in provider.read_back([BOB], dt.date(2024, 5, 1), dt.date(2024, 6, 1))
    }
    assert changed_fields(
        written["leave-2"], again["leave-2"].payload, provider.compared_fields
    ) == ["start"]
    assert changed_fields(
        written["leave-1"], again["leave-1"].payload, provider.compared_fields
    ) == ["private"]
    assert again["leave-1"].version != remote["leave-1"].version


def test_read_back_skips_a_mailbox_it_cannot_read(
    emulator: EwsEmulator, make_provider: Callable[..., EwsCalendarProvider]
) -> None:
    provider = make_provider()
    list(provider.apply([create(ALICE, all_day("leave-1", "2024-05-06", "2024-05-07"))]))
    remote = list(provider.read_back([DENIED, ALICE], dt.date(2024, 5, 1), dt.date(2024, 6, 1)))
    assert [r.calendar for r in remote] == [ALICE]


# -- check ----------------------------------------------------------------------------------------


def test_check_passes_and_changes_nothing(
    emulator: EwsEmulator, make_provider: Callable[..., EwsCalendarProvider]
) -> None:
    report = make_provider().check(ALICE)
    assert report.ok, report.render()
    assert not {"CreateItem", "UpdateItem", "DeleteItem"} & {r.op for r in emulator.requests}
    assert any(r.op == "GetFolder" and r.mailbox == ALICE for r in emulator.requests)


def test_check_reports_what_to_fix(
    emulator: EwsEmulator,
    make_provider: Callable[..., EwsCalendarProvider],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    denied = make_provider().check(DENIED)
    assert not denied.ok and "New-ManagementRoleAssignment" in denied.render()

    unknown = make_provider().check(GHOST)
    assert not unknown.ok and "no mailbox" in unknown.render()

    wrong_url = make_provider(ews_url=emulator.url.rsplit(":", 1)[0] + ":1/EWS/Exchange.asmx")
    assert "cannot reach" in wrong_url.check(ALICE).render()

    monkeypatch.setenv(PASSWORD_ENV, "nope")
    bad = make_provider(ews_url=emulator.url).check(ALICE)
    assert not bad.ok and "credentials rejected" in bad.render() and "nope" not in bad.render()

    monkeypatch.delenv(PASSWORD_ENV)
    missing = make_provider(ews_url=emulator.url).check(ALICE)
    assert not missing.ok and PASSWORD_ENV in missing.render()


# -- TLS ------------------------------------------------------------------------------------------


def test_tls_with_custom_ca_bundle_and_untrusted_certificate(
    tmp_path: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    tls = make_tls_files(tmp_path / "pki")  # type: ignore[operator]
    with EwsEmulator([ALICE], tls=tls) as emulator:
        monkeypatch.setenv(PASSWORD_ENV, emulator.password)
        common = dict(username=emulator.username, password_env=PASSWORD_ENV, auth_type="basic")
        trusted = EwsCalendarProvider(
            "tls", EwsSettings(ews_url=emulator.url, ca_bundle=str(tls.ca_file), **common)
        )
        try:
            assert trusted.check(ALICE).ok
            (result,) = trusted.apply(
                [create(ALICE, all_day("leave-1", "2024-05-06", "2024-05-07"))]
            )
            assert result.ok
        finally:
            trusted.close()
        # Same server under another name: the default trust store does not know our CA.
        other_url = emulator.url.replace("127.0.0.1", "localhost")
        untrusted = EwsCalendarProvider("tls2", EwsSettings(ews_url=other_url, **common))
        try:
            report = untrusted.check(ALICE)
            assert not report.ok and "not trusted" in report.render()
            with pytest.raises(FatalProviderError, match="ca_bundle"):
                list(
                    untrusted.apply([create(ALICE, all_day("leave-2", "2024-05-06", "2024-05-07"))])
                )
        finally:
            untrusted.close()


@pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning")
def test_verify_tls_off_works_only_with_a_loud_warning(
    tmp_path: object, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    tls = make_tls_files(tmp_path / "pki")  # type: ignore[operator]
    with EwsEmulator([ALICE], tls=tls) as emulator:
        monkeypatch.setenv(PASSWORD_ENV, emulator.password)
        url = emulator.url.replace("127.0.0.1", "localhost")
        caplog.set_level(logging.WARNING, logger="resources.providers.ews")
        settings = EwsSettings(
            ews_url=url,
            username=emulator.username,
            password_env=PASSWORD_ENV,
            auth_type="basic",
            verify_tls=False,
        )
        provider = EwsCalendarProvider("insecure", settings)
        try:
            assert "VERIFICATION IS OFF" in caplog.text
            (result,) = provider.apply(
                [create(ALICE, all_day("leave-1", "2024-05-06", "2024-05-07"))]
            )
            assert result.ok
        finally:
            provider.close()


def test_debug_logs_of_exchangelib_never_show_the_password(
    emulator: EwsEmulator,
    make_provider: Callable[..., EwsCalendarProvider],
    caplog: pytest.LogCaptureFixture,
) -> None:
    import base64

    caplog.set_level(logging.DEBUG)
    provider = make_provider()
    list(provider.apply([create(ALICE, all_day("leave-1", "2024-05-06", "2024-05-07"))]))
    basic = base64.b64encode(f"{emulator.username}:{emulator.password}".encode()).decode()
    assert "Request headers" in caplog.text  # exchangelib did log its request headers
    assert basic not in caplog.text and emulator.password not in caplog.text


def test_an_unwritable_event_fails_alone(
    emulator: EwsEmulator, make_provider: Callable[..., EwsCalendarProvider]
) -> None:
    provider = make_provider()
    backwards = all_day("leave-1", "2024-05-09", "2024-05-06")
    no_zone = timed(
        "leave-2", "2024-05-06T09:00:00", "2024-05-06T12:00:00", timezone="Mars/Olympus"
    )
    good = all_day("leave-3", "2024-05-06", "2024-05-07")
    results = {
        r.change.event_key: r
        for r in provider.apply([create(ALICE, e) for e in (backwards, no_zone, good)])
    }
    assert results["leave-3"].ok and [
        i.extended_value(KEY_PROPERTY) for i in emulator.items(ALICE)
    ] == ["leave-3"]
    for key in ("leave-1", "leave-2"):
        assert not results[key].ok and results[key].permanent and key in results[key].error


def test_server_busy_pool_shrink_cannot_deadlock(
    make_provider: Callable[..., EwsCalendarProvider],
) -> None:
    import threading

    from exchangelib.protocol import Protocol

    provider = make_provider(concurrent_mailboxes=4)
    protocol = Protocol(config=provider.connection.configuration())
    held = [protocol.get_session(), protocol.get_session()]  # two mailboxes in flight
    # exchangelib shrinks its pool on ErrorServerBusy; with every session busy it used to
    # re-take its own lock and hang for ever.
    shrink = threading.Thread(target=protocol.decrease_poolsize, daemon=True)
    shrink.start()
    shrink.join(10)
    assert not shrink.is_alive()
    for session in held:
        protocol.release_session(session)
