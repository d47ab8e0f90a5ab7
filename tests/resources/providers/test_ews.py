"""The ``ews`` provider: real exchangelib against the EWS emulator (tests/emulators/ews.py)."""

from __future__ import annotations

import datetime as dt
import logging
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import replace

import pytest
from lxml import etree
from pydantic import ValidationError

from resources.providers import provider_class
from resources.providers.base import (
    EventChange,
    EventPayload,
    FatalProviderError,
    changed_fields,
)
from resources.providers.ews import EwsCalendarProvider
from resources.providers.ews.mapping import KEY_PROPERTY, PROPERTY_SET_ID
from resources.providers.ews.settings import EwsSettings
from tests.emulators.ews import EwsEmulator, make_tls_files
from tests.resources.providers import payloads

ALICE, BOB, CAROL = "alice@example.com", "bob@example.com", "carol@example.com"
DENIED, GHOST = "denied@example.com", "ghost@example.com"
PASSWORD_ENV = "LEAVESYNC_TEST_EWS_PASSWORD"
M_NS = "http://schemas.microsoft.com/exchange/services/2006/messages"
T_NS = "http://schemas.microsoft.com/exchange/services/2006/types"


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
    return payloads.payload(key, start=start, end=end, **kw)


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
    # Outlook moves a deleted appointment to Deleted Items under a new id; our tag goes with it.
    trashed = emulator.user_deletes(created.provider_event_id)
    moved = all_day("leave-7", "2024-05-13", "2024-05-14")
    (result,) = provider.apply(
        [EventChange("update", "leave-7", CAROL, moved, created.provider_event_id, created.version)]
    )
    (item,) = emulator.items(CAROL)
    assert result.ok and result.provider_event_id == item.item_id != created.provider_event_id
    assert item.start == dt.datetime(2024, 5, 12, 22, tzinfo=dt.UTC)
    # The user's copy in Deleted Items is theirs: left as it is, never updated.
    (kept,) = emulator.items(CAROL, "deleteditems")
    assert kept.item_id == trashed.item_id and kept.start == dt.datetime(
        2024, 5, 5, 22, tzinfo=dt.UTC
    )


def test_hard_deleted_event_is_recreated_on_update(
    emulator: EwsEmulator, make_provider: Callable[..., EwsCalendarProvider]
) -> None:
    provider = make_provider()
    event = all_day("leave-8", "2024-05-06", "2024-05-07")
    (created,) = provider.apply([create(CAROL, event)])
    emulator.user_deletes(created.provider_event_id, how="HardDelete")
    (result,) = provider.apply(
        [EventChange("update", "leave-8", CAROL, event, created.provider_event_id, created.version)]
    )
    assert result.ok and [i.item_id for i in emulator.items(CAROL)] == [result.provider_event_id]


def test_event_restored_from_deleted_items_is_adopted_not_duplicated(
    emulator: EwsEmulator, make_provider: Callable[..., EwsCalendarProvider]
) -> None:
    provider = make_provider()
    (created,) = provider.apply([create(BOB, all_day("leave-4", "2024-05-06", "2024-05-07"))])
    restored = emulator.user_restores(emulator.user_deletes(created.provider_event_id).item_id)
    later = all_day("leave-4", "2024-05-20", "2024-05-21")
    (updated,) = provider.apply(
        [EventChange("update", "leave-4", BOB, later, created.provider_event_id, created.version)]
    )
    (item,) = emulator.items(BOB)
    assert updated.ok and updated.adopted and updated.provider_event_id == restored.item_id
    assert item.start == dt.datetime(2024, 5, 19, 22, tzinfo=dt.UTC)
    # And a delete by the old id finds it by key too: nothing of ours is left behind.
    (deleted,) = provider.apply(
        [EventChange("delete", "leave-4", BOB, None, created.provider_event_id)]
    )
    assert deleted.ok and emulator.items(BOB) == []


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


# -- a create is never blind: look-up and adoption -----------------------------------------------


def test_create_of_a_key_already_there_adopts_it_and_writes_only_if_it_differs(
    emulator: EwsEmulator, make_provider: Callable[..., EwsCalendarProvider]
) -> None:
    provider = make_provider()
    same = all_day("leave-1", "2024-05-06", "2024-05-07")
    old = all_day("leave-2", "2024-05-06", "2024-05-07")
    first = {
        r.change.event_key: r for r in provider.apply([create(ALICE, same), create(ALICE, old)])
    }
    before = len(emulator.requests)
    # The snapshot was lost: both keys come again as creates, one of them edited in HR since.
    new = all_day("leave-2", "2024-06-10", "2024-06-12", title="Vacation")
    again = {
        r.change.event_key: r for r in provider.apply([create(ALICE, same), create(ALICE, new)])
    }
    assert all(r.ok and r.adopted for r in again.values())
    assert again["leave-1"].provider_event_id == first["leave-1"].provider_event_id
    assert again["leave-1"].version == first["leave-1"].version  # identical: not rewritten
    assert again["leave-2"].provider_event_id == first["leave-2"].provider_event_id
    ops = [r.op for r in emulator.requests[before:]]
    assert ops == ["FindItem", "GetItem", "UpdateItem"]  # no CreateItem, one update
    assert [r.count for r in emulator.requests[before:]][2] == 1
    keys = by_key(emulator, ALICE)
    assert len(keys["leave-1"]) == len(keys["leave-2"]) == 1
    assert keys["leave-2"][0].text("Subject") == "Vacation"
    assert keys["leave-2"][0].start == dt.datetime(2024, 6, 9, 22, tzinfo=dt.UTC)


def test_adoption_deletes_further_copies_of_the_key(
    emulator: EwsEmulator, make_provider: Callable[..., EwsCalendarProvider]
) -> None:
    provider = make_provider()
    event = all_day("leave-3", "2024-05-06", "2024-05-07")
    (first,) = provider.apply([create(ALICE, event)])
    copies = [emulator.copy_item(first.provider_event_id) for _ in range(2)]
    emulator.edit_item(copies[1].item_id, "Subject", "Edited elsewhere")
    foreign = emulator.add_foreign_item(
        ALICE, "Lunch", "2024-05-06T10:00:00Z", "2024-05-06T11:00:00Z"
    )
    (result,) = provider.apply([create(ALICE, event)])
    (kept,) = by_key(emulator, ALICE)["leave-3"]
    assert result.ok and result.adopted and result.provider_event_id == kept.item_id
    assert kept.text("Subject") == "Absent"
    assert foreign.item_id in {i.item_id for i in emulator.items(ALICE)}  # not ours: untouched


def test_adoption_keeps_the_newest_copy_when_none_is_identical(
    emulator: EwsEmulator, make_provider: Callable[..., EwsCalendarProvider]
) -> None:
    provider = make_provider()
    (first,) = provider.apply([create(BOB, all_day("leave-5", "2024-05-06", "2024-05-07"))])
    newer = emulator.copy_item(
        first.provider_event_id, created=dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)
    )
    emulator.edit_item(first.provider_event_id, "Subject", "Old")
    emulator.edit_item(newer.item_id, "Subject", "Newer")
    wanted = all_day("leave-5", "2024-05-06", "2024-05-08")
    (result,) = provider.apply([create(BOB, wanted)])
    (kept,) = by_key(emulator, BOB)["leave-5"]
    assert result.adopted and kept.item_id == newer.item_id and kept.text("Subject") == "Absent"


def test_update_without_a_known_id_finds_the_key_and_removes_its_copies(
    emulator: EwsEmulator, make_provider: Callable[..., EwsCalendarProvider]
) -> None:
    provider = make_provider()
    (first,) = provider.apply([create(CAROL, all_day("leave-6", "2024-05-06", "2024-05-07"))])
    emulator.copy_item(first.provider_event_id)
    moved = all_day("leave-6", "2024-07-01", "2024-07-03")
    (result,) = provider.apply([EventChange("update", "leave-6", CAROL, moved)])
    (kept,) = by_key(emulator, CAROL)["leave-6"]
    assert result.ok and result.provider_event_id == kept.item_id
    assert kept.start == dt.datetime(2024, 6, 30, 22, tzinfo=dt.UTC)


def test_look_up_costs_one_find_item_per_63_keys_per_mailbox(
    emulator: EwsEmulator, make_provider: Callable[..., EwsCalendarProvider]
) -> None:
    provider = make_provider(chunk_size=200)
    day = dt.date(2024, 1, 1)
    changes = [
        create(
            mailbox,
            all_day(f"leave-{m}-{n}", str(day + dt.timedelta(n)), str(day + dt.timedelta(n + 1))),
        )
        for m, mailbox in enumerate((ALICE, BOB))
        for n in range(130)
    ]
    assert all(r.ok for r in provider.apply(changes))
    finds = [r for r in emulator.requests if r.op == "FindItem"]
    assert sorted((r.mailbox, r.count) for r in finds) == sorted(
        (m, 0) for m in (ALICE, BOB) for _ in range(3)
    )  # ceil(130 / 63) = 3 per mailbox
    assert emulator.count("CreateItem") == 2


# -- stale ChangeKeys: someone edited the event since our snapshot ------------------------------


@pytest.mark.parametrize("strict", [True, False], ids=["current-key-required", "overwrite"])
def test_stale_change_key_is_refreshed_and_hr_wins(
    make_provider: Callable[..., EwsCalendarProvider], emulator: EwsEmulator, strict: bool
) -> None:
    emulator.overwrite_needs_current_change_key = strict
    provider = make_provider()
    event = all_day("leave-1", "2024-05-06", "2024-05-07")
    (created,) = provider.apply([create(ALICE, event)])
    emulator.edit_item(created.provider_event_id, "Sensitivity", "Normal")  # in Outlook
    before = len(emulator.requests)
    moved = all_day("leave-1", "2024-05-08", "2024-05-09")
    (updated,) = provider.apply(
        [EventChange("update", "leave-1", ALICE, moved, created.provider_event_id, created.version)]
    )
    (item,) = emulator.items(ALICE)
    assert updated.ok and updated.version == item.changekey
    assert item.text("Sensitivity") == "Private" and item.start.day == 7
    ops = [(r.op, r.attributes.get("ConflictResolution")) for r in emulator.requests[before:]]
    if strict:
        assert ops == [
            ("UpdateItem", "AlwaysOverwrite"),
            ("GetItem", None),
            ("UpdateItem", "AlwaysOverwrite"),
        ]
    else:
        assert ops == [("UpdateItem", "AlwaysOverwrite")]


def test_update_whose_change_key_the_snapshot_never_learned(
    emulator: EwsEmulator, make_provider: Callable[..., EwsCalendarProvider]
) -> None:
    provider = make_provider()
    (created,) = provider.apply([create(BOB, all_day("leave-2", "2024-05-06", "2024-05-07"))])
    later = all_day("leave-2", "2024-05-10", "2024-05-11")
    (updated,) = provider.apply(
        [EventChange("update", "leave-2", BOB, later, created.provider_event_id, None)]
    )
    assert updated.ok and emulator.items(BOB)[0].start.day == 9


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


def test_item_level_throttling_and_stopped_batches_are_sent_again(
    emulator: EwsEmulator, make_provider: Callable[..., EwsCalendarProvider]
) -> None:
    provider = make_provider()
    day = dt.date(2024, 4, 1)
    events = [
        all_day(f"leave-{n}", str(day + dt.timedelta(n)), str(day + dt.timedelta(n + 1)))
        for n in range(10)
    ]
    # "EWS throttling in Exchange": HTTP 200 with ErrorInternalServerError (inner ErrorServerBusy)
    # per item; ResponseClass Warning ErrorBatchProcessingStopped for the rest of a batch.
    emulator.inject("stopped", ops=("CreateItem",))
    emulator.inject("item_busy", ops=("CreateItem",))
    created = list(provider.apply([create(ALICE, e) for e in events]))
    assert all(r.ok for r in created) and len(emulator.items(ALICE)) == 10
    emulator.inject("stopped", ops=("UpdateItem",))
    emulator.inject("item_busy", ops=("DeleteItem",))
    updates = [
        EventChange(
            "update",
            r.change.event_key,
            ALICE,
            all_day(r.change.event_key, "2024-09-02", "2024-09-03", title="Leave"),
            r.provider_event_id,
            r.version,
        )
        for r in created
    ]
    assert all(r.ok for r in provider.apply(updates))
    assert {i.text("Subject") for i in emulator.items(ALICE)} == {"Leave"}
    deletes = [
        EventChange("delete", r.change.event_key, ALICE, None, r.provider_event_id) for r in created
    ]
    assert all(r.ok for r in provider.apply(deletes)) and emulator.items(ALICE) == []
    assert emulator.count(outcome="stopped") == 2 and emulator.count(outcome="item_busy") == 2


def test_read_back_is_complete_across_partial_pages_and_stopped_batches(
    emulator: EwsEmulator, make_provider: Callable[..., EwsCalendarProvider]
) -> None:
    provider = make_provider()
    day = dt.date(2024, 1, 1)
    events = [
        all_day(
            f"leave-{n}", str(day + dt.timedelta(n % 300)), str(day + dt.timedelta(n % 300 + 1))
        )
        for n in range(1200)
    ]
    assert all(r.ok for r in provider.apply([create(ALICE, e) for e in events]))
    emulator.inject("partial", ops=("FindItem",))
    emulator.inject("stopped", ops=("GetItem",))
    remote = list(provider.read_back([ALICE], dt.date(2024, 1, 1), dt.date(2025, 1, 1)))
    assert sorted(r.event_key for r in remote) == sorted(e.event_key for e in events)
    # FindItem pages hold at most 1000 items (EWSFindCountLimit), and the partial one fewer.
    finds = [r for r in emulator.requests if r.op == "FindItem"][-4:]
    assert emulator.count(outcome="partial") == 1 and len(finds) >= 2


def test_connection_limit_of_the_service_account_is_waited_out(
    make_provider: Callable[..., EwsCalendarProvider], monkeypatch: pytest.MonkeyPatch
) -> None:
    users = [f"user{n}@example.com" for n in range(6)]
    with EwsEmulator(users, max_concurrency=2) as emulator:
        monkeypatch.setenv(PASSWORD_ENV, emulator.password)
        provider = EwsCalendarProvider(
            "limit",
            EwsSettings(
                ews_url=emulator.url,
                username=emulator.username,
                password_env=PASSWORD_ENV,
                auth_type="basic",
                concurrent_mailboxes=6,
                backoff_base=0.01,
                backoff_cap=0.1,
                max_attempts=30,
                max_wait=5,
            ),
        )
        # The first look-ups are slow, so that more than two requests are in flight at once.
        emulator.inject("slow", times=6, ops=("FindItem",), delay=0.5)
        try:
            changes = [
                create(u, all_day(f"leave-{u[:5]}-{n}", "2024-05-06", "2024-05-07"))
                for u in users
                for n in range(5)
            ]
            results = list(provider.apply(changes))
        finally:
            provider.close()
        assert len(results) == 30 and all(r.ok for r in results)
        assert sum(1 for _ in emulator.all_items()) == 30
        assert emulator.count(outcome="fault:ErrorExceededConnectionCount") > 0


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
    # No mailbox, no event: a delete there is done (the old address after a rename, #21).
    assert outcome["leave-9"].ok and not outcome["leave-9"].error


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
        # The last day is the 23-hour day itself (31 March 2024), and the 25-hour one.
        ("2024-03-30", "2024-04-01", dt.datetime(2024, 3, 29, 23), dt.datetime(2024, 3, 31, 22)),
        ("2024-10-26", "2024-10-28", dt.datetime(2024, 10, 25, 22), dt.datetime(2024, 10, 27, 23)),
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

    emulator.rename_mailbox(CAROL, "carol.new@example.com")
    proxy = make_provider().check(CAROL)
    assert not proxy.ok and "use the mailbox's primary SMTP address" in proxy.render()

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


@pytest.mark.parametrize("variable", ["REQUESTS_CA_BUNDLE", "SSL_CERT_FILE", "CURL_CA_BUNDLE"])
@pytest.mark.parametrize("version", [None, "Exchange2016"])
def test_environment_ca_variables_are_never_trusted(
    tmp_path: object, monkeypatch: pytest.MonkeyPatch, variable: str, version: str | None
) -> None:
    tls = make_tls_files(tmp_path / "pki")  # type: ignore[operator]
    with EwsEmulator([ALICE], tls=tls) as emulator:
        monkeypatch.setenv(PASSWORD_ENV, emulator.password)
        monkeypatch.setenv(variable, str(tls.ca_file))  # trusts our CA, were it honoured
        settings = EwsSettings(
            ews_url=emulator.url,
            username=emulator.username,
            password_env=PASSWORD_ENV,
            auth_type="basic",
            version=version,
        )
        provider = EwsCalendarProvider("env", settings)
        try:
            with pytest.raises(FatalProviderError) as raised:
                list(
                    provider.apply([create(ALICE, all_day("leave-1", "2024-05-06", "2024-05-07"))])
                )
            port = emulator.url.split(":")[2].split("/")[0]
            message = str(raised.value)
            assert f"127.0.0.1:{port}" in message and "ca_bundle" in message
            assert "not trusted" in message and "REQUESTS_CA_BUNDLE are not used" in message
            # Fatal at once: one TLS handshake, never an HTTP request, never a retry.
            assert _settled(lambda: emulator.connections) == 1 and emulator.requests == []
            report = provider.check(ALICE)
            assert not report.ok and "127.0.0.1 not trusted" in report.render()
        finally:
            provider.close()
        # The same environment with ca_bundle set: trusted, because the setting says so.
        trusted = EwsCalendarProvider(
            "env2", settings.model_copy(update={"ca_bundle": str(tls.ca_file)})
        )
        try:
            (result,) = trusted.apply(
                [create(ALICE, all_day("leave-1", "2024-05-06", "2024-05-07"))]
            )
            assert result.ok
        finally:
            trusted.close()


def _settled(read: Callable[[], int], seconds: float = 2.0) -> int:
    """A counter the server thread updates after the client already gave up."""
    import time

    deadline = time.monotonic() + seconds
    value = read()
    while time.monotonic() < deadline:
        time.sleep(0.05)
        if read() == value and value:
            break
        value = read()
    return value


def test_missing_ca_bundle_is_fatal_before_any_request(
    emulator: EwsEmulator,
    make_provider: Callable[..., EwsCalendarProvider],
    tmp_path: object,
) -> None:
    missing = make_provider(ca_bundle=str(tmp_path / "nowhere.pem"))  # type: ignore[operator]
    with pytest.raises(FatalProviderError, match="ca_bundle .*nowhere.pem does not exist"):
        missing.preflight()
    with pytest.raises(FatalProviderError, match="ca_bundle"):
        list(missing.apply([create(ALICE, all_day("leave-1", "2024-05-06", "2024-05-07"))]))
    report = missing.check(ALICE)
    assert not report.ok and "does not exist" in report.render()
    garbage = tmp_path / "garbage.pem"  # type: ignore[operator]
    garbage.write_text("not a certificate\n")
    with pytest.raises(FatalProviderError, match="holds no PEM certificate"):
        make_provider(ca_bundle=str(garbage)).preflight()
    assert emulator.requests == []


def test_preflight_names_the_setting_and_needs_no_network(
    emulator: EwsEmulator,
    make_provider: Callable[..., EwsCalendarProvider],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: object,
) -> None:
    tls = make_tls_files(tmp_path / "pki")  # type: ignore[operator]
    make_provider(ca_bundle=str(tls.ca_file)).preflight()  # all good: no exception
    make_provider(ca_bundle=str(tmp_path), verify_tls=False).preflight()  # type: ignore[operator]
    directory = make_provider(ca_bundle=str(tmp_path))  # type: ignore[operator]
    with pytest.raises(FatalProviderError, match="is not a file"):
        directory.preflight()
    monkeypatch.delenv(PASSWORD_ENV)
    with pytest.raises(FatalProviderError, match=PASSWORD_ENV):
        make_provider().preflight()
    assert emulator.requests == [] and emulator.connections == 0


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
    # ErrorCalendarDurationIsTooLong: Exchange refuses an item longer than 5 years.
    too_long = all_day("leave-4", "2024-05-06", "2029-05-08")
    results = {
        r.change.event_key: r
        for r in provider.apply([create(ALICE, e) for e in (backwards, no_zone, good, too_long)])
    }
    assert results["leave-3"].ok and [
        i.extended_value(KEY_PROPERTY) for i in emulator.items(ALICE)
    ] == ["leave-3"]
    assert emulator.count("CreateItem") == 1  # refused before any request, the others alone
    for key in ("leave-1", "leave-2", "leave-4"):
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


# -- the emulator's rules, on the wire (tests/emulators/README.md, "Exchange Web Services") ------

_NS = (
    'xmlns:s="http://schemas.xmlsoap.org/soap/envelope/" '
    'xmlns:m="http://schemas.microsoft.com/exchange/services/2006/messages" '
    'xmlns:t="http://schemas.microsoft.com/exchange/services/2006/types"'
)
_CAL = (
    '<t:DistinguishedFolderId Id="calendar"><t:Mailbox><t:EmailAddress>alice@example.com'
    "</t:EmailAddress></t:Mailbox></t:DistinguishedFolderId>"
)
_KEY_URI = (
    f'<t:ExtendedFieldURI PropertySetId="{PROPERTY_SET_ID}" PropertyName="leavesyncKey" '
    'PropertyType="String"/>'
)


def soap(
    emulator: EwsEmulator,
    operation: str,
    *,
    mailbox: str | None = ALICE,
    version: str | None = "Exchange2016",
    anchor: str | None = None,
    sid: str | None = None,
) -> tuple[int, list[str], etree._Element | None]:
    """POST one raw SOAP request; (HTTP status, response codes or ["fault:<code>"], body)."""
    import requests

    header = "" if version is None else f'<t:RequestServerVersion Version="{version}"/>'
    if mailbox is not None or sid is not None:
        inner = sid or f"<t:PrimarySmtpAddress>{mailbox}</t:PrimarySmtpAddress>"
        header += f"<t:ExchangeImpersonation><t:ConnectingSID>{inner}</t:ConnectingSID></t:ExchangeImpersonation>"
    envelope = (
        f"<s:Envelope {_NS}><s:Header>{header}</s:Header><s:Body>{operation}</s:Body></s:Envelope>"
    )
    headers = {"Content-Type": "text/xml; charset=utf-8"}
    if mailbox is not None:
        headers["X-AnchorMailbox"] = anchor if anchor is not None else mailbox
    answer = requests.post(
        emulator.url,
        data=envelope.encode(),
        headers=headers,
        auth=(emulator.username, emulator.password),
        timeout=10,
    )
    if not answer.content:
        return answer.status_code, [], None
    root = etree.fromstring(answer.content)
    fault = root.find(".//{http://schemas.xmlsoap.org/soap/envelope/}Fault")
    if fault is not None:
        return answer.status_code, ["fault:" + fault.findtext("faultcode").split(":")[-1]], root
    m = "{http://schemas.microsoft.com/exchange/services/2006/messages}"
    found = [
        e.findtext(f"{m}ResponseCode")
        for e in root.iter()
        if str(e.tag).endswith("ResponseMessage")
    ]
    return answer.status_code, found, root


def calendar_item_xml(
    key: str = "leave-1",
    start: str = "2024-05-06T09:00:00Z",
    end: str = "2024-05-06T12:00:00Z",
    zone: str = "Romance Standard Time",
    before: str = "",
    extended: str = "",
) -> str:
    return (
        f"<t:CalendarItem><t:Subject>Absent</t:Subject>{before}<t:ExtendedProperty>{_KEY_URI}"
        f"<t:Value>{key}</t:Value></t:ExtendedProperty>{extended}<t:Start>{start}</t:Start>"
        f'<t:End>{end}</t:End><t:StartTimeZone Id="{zone}"/></t:CalendarItem>'
    )


def create_xml(items: str, attributes: str = 'SendMeetingInvitations="SendToNone"') -> str:
    return (
        f"<m:CreateItem {attributes}><m:SavedItemFolderId>{_CAL}</m:SavedItemFolderId>"
        f"<m:Items>{items}</m:Items></m:CreateItem>"
    )


def find_xml(
    restriction: str = "", paging: str = "", traversal: str = 'Traversal="Shallow"'
) -> str:
    return (
        f"<m:FindItem {traversal}><m:ItemShape><t:BaseShape>IdOnly</t:BaseShape>"
        f"<t:AdditionalProperties>{_KEY_URI}</t:AdditionalProperties></m:ItemShape>{paging}"
        f"{restriction}<m:ParentFolderIds>{_CAL}</m:ParentFolderIds></m:FindItem>"
    )


def keys_restriction(count: int) -> str:
    equals = "".join(
        f'<t:IsEqualTo>{_KEY_URI}<t:FieldURIOrConstant><t:Constant Value="leave-{n}"/>'
        "</t:FieldURIOrConstant></t:IsEqualTo>"
        for n in range(count)
    )
    return f"<m:Restriction><t:Or>{equals}</t:Or></m:Restriction>"


def update_xml(item_id: str, change_key: str | None, updates: str, attributes: str) -> str:
    key = "" if change_key is None else f' ChangeKey="{change_key}"'
    return (
        f"<m:UpdateItem {attributes}><m:ItemChanges><t:ItemChange>"
        f'<t:ItemId Id="{item_id}"{key}/><t:Updates>{updates}</t:Updates>'
        "</t:ItemChange></m:ItemChanges></m:UpdateItem>"
    )


_SET_SUBJECT = (
    '<t:SetItemField><t:FieldURI FieldURI="item:Subject"/><t:CalendarItem>'
    "<t:Subject>Away</t:Subject></t:CalendarItem></t:SetItemField>"
)
_UPDATE_ATTRS = 'ConflictResolution="{}" SendMeetingInvitationsOrCancellations="SendToNone"'


@pytest.mark.parametrize(
    ("operation", "options", "expected"),
    [
        # SOAP header: RequestServerVersion, ExchangeImpersonation
        (find_xml(), {"version": None}, "fault:ErrorInvalidServerVersion"),
        (find_xml(), {"version": "Exchange2019"}, "fault:ErrorInvalidServerVersion"),
        (
            find_xml(),
            {
                "sid": "<t:PrimarySmtpAddress>alice@example.com</t:PrimarySmtpAddress><t:SID>S-1</t:SID>"
            },
            "fault:ErrorSchemaValidation",
        ),
        (find_xml(), {"mailbox": GHOST}, "fault:ErrorNonExistentMailbox"),
        (find_xml(), {"mailbox": DENIED}, "fault:ErrorImpersonateUserDenied"),
        # XML schema: required attributes and elements, enumerations, versions, order
        (find_xml(traversal=""), {}, "fault:ErrorSchemaValidation"),
        (find_xml(traversal='Traversal="Deep"'), {}, "fault:ErrorSchemaValidation"),
        (find_xml(paging='<m:IndexedPageItemView Offset="0"/>'), {}, "fault:ErrorSchemaValidation"),
        (
            '<m:DeleteItem SendMeetingCancellations="SendToNone"><m:ItemIds><t:ItemId Id="QUJD"/></m:ItemIds></m:DeleteItem>',
            {},
            "fault:ErrorSchemaValidation",
        ),
        (
            create_xml(calendar_item_xml(), 'SendMeetingInvitations="SendOnlyToChanged"'),
            {},
            "fault:ErrorSchemaValidation",
        ),
        (
            '<m:DeleteItem DeleteType="HardDelete" SendMeetingCancellations="SendToNone" SuppressReadReceipts="true"><m:ItemIds><t:ItemId Id="QUJD"/></m:ItemIds></m:DeleteItem>',
            {"version": "Exchange2013"},
            "fault:ErrorSchemaValidation",
        ),
        (
            create_xml(
                calendar_item_xml()
                .replace("<t:Subject>Absent</t:Subject>", "")
                .replace("<t:StartTimeZone", "<t:Subject>Late</t:Subject><t:StartTimeZone")
            ),
            {},
            "fault:ErrorSchemaValidation",
        ),
        (
            create_xml(calendar_item_xml(before="<t:ReminderIsSet>yes</t:ReminderIsSet>")),
            {},
            "fault:ErrorSchemaValidation",
        ),
        (
            f"<m:GetFolder><m:FolderIds>{_CAL}</m:FolderIds></m:GetFolder>",
            {},
            "fault:ErrorSchemaValidation",
        ),
        (
            '<m:ConvertId><m:SourceIds><t:AlternateId Id="A" Format="EwsId" Mailbox="a@b.c"/></m:SourceIds></m:ConvertId>',
            {"mailbox": None},
            "fault:ErrorSchemaValidation",
        ),
        # Per item, in ResponseMessages
        (create_xml(calendar_item_xml(), ""), {}, "ErrorSendMeetingInvitationsRequired"),
        (create_xml(calendar_item_xml(zone="Europe/Paris")), {}, "ErrorCalendarInvalidTimeZone"),
        (
            create_xml(calendar_item_xml(end="2024-05-06T08:00:00Z")),
            {},
            "ErrorCalendarEndDateIsEarlierThanStartDate",
        ),
        (
            create_xml(calendar_item_xml(end="2030-05-06T12:00:00Z")),
            {},
            "ErrorCalendarDurationIsTooLong",
        ),
        (
            create_xml(
                calendar_item_xml(
                    before="<t:DateTimeCreated>2024-01-01T00:00:00Z</t:DateTimeCreated>"
                )
            ),
            {},
            "ErrorInvalidPropertySet",
        ),
        (
            create_xml(
                calendar_item_xml(
                    extended='<t:ExtendedProperty><t:ExtendedFieldURI PropertyName="x" PropertyType="String"/><t:Value>1</t:Value></t:ExtendedProperty>'
                )
            ),
            {},
            "ErrorInvalidExtendedProperty",
        ),
        (
            create_xml(
                calendar_item_xml(
                    extended='<t:ExtendedProperty><t:ExtendedFieldURI PropertyTag="0x8001" PropertyType="String"/><t:Value>1</t:Value></t:ExtendedProperty>'
                )
            ),
            {},
            "ErrorNoPropertyTagForCustomProperties",
        ),
        (
            create_xml(
                calendar_item_xml(
                    extended=f'<t:ExtendedProperty><t:ExtendedFieldURI PropertySetId="{PROPERTY_SET_ID}" PropertyName="n" PropertyType="Integer"/><t:Value>abc</t:Value></t:ExtendedProperty>'
                )
            ),
            {},
            "ErrorInvalidExtendedPropertyValue",
        ),
        (
            '<m:GetItem><m:ItemShape><t:BaseShape>IdOnly</t:BaseShape></m:ItemShape><m:ItemIds><t:ItemId Id="***"/></m:ItemIds></m:GetItem>',
            {},
            "ErrorInvalidIdMalformed",
        ),
        (find_xml(keys_restriction(64)), {}, "ErrorRestrictionTooLong"),
        (
            find_xml(
                paging='<m:IndexedPageItemView MaxEntriesReturned="0" Offset="0" BasePoint="Beginning"/>'
            ),
            {},
            "ErrorInvalidPagingMaxRows",
        ),
        (
            find_xml(paging='<m:IndexedPageItemView Offset="-1" BasePoint="Beginning"/>'),
            {},
            "ErrorInvalidIndexedPagingParameters",
        ),
    ],
)
def test_emulator_refuses_what_exchange_refuses(
    emulator: EwsEmulator, operation: str, options: dict[str, str], expected: str
) -> None:
    status, codes, _ = soap(emulator, operation, **options)
    assert codes == [expected]
    assert status == (500 if expected.startswith("fault:") else 200)


def test_emulator_a_renamed_mailbox_keeps_its_old_address_as_a_proxy(
    emulator: EwsEmulator,
) -> None:
    _, _, root = soap(emulator, create_xml(calendar_item_xml()))
    item_id = next(root.iter(f"{{{T_NS}}}ItemId")).get("Id")
    get = f'<m:GetItem><m:ItemShape><t:BaseShape>IdOnly</t:BaseShape></m:ItemShape><m:ItemIds><t:ItemId Id="{item_id}"/></m:ItemIds></m:GetItem>'
    new = "alice.martin@example.com"
    emulator.rename_mailbox(ALICE, new)
    # ConnectingSID PrimarySmtpAddress must be the primary one: the fault names it
    # (ResponseCode, ErrorNonPrimarySmtpAddress: "The response includes the correct SMTP
    # address to use").
    status, codes, root = soap(emulator, get)
    assert (status, codes) == (500, ["fault:ErrorNonPrimarySmtpAddress"])
    assert root.findtext(f".//{{{T_NS}}}Value[@Name='Primary']") == new
    # SmtpAddress is any address of the account: the same mailbox, the same item id.
    proxy = f"<t:SmtpAddress>{ALICE}</t:SmtpAddress>"
    assert soap(emulator, get, sid=proxy)[1] == ["NoError"]
    assert soap(emulator, get, mailbox=new)[1] == ["NoError"]
    # A folder that names the mailbox by its old address (strictest reading: primary only).
    assert soap(emulator, find_xml(), sid=proxy)[1] == ["ErrorNonPrimarySmtpAddress"]
    # Renamed without keeping the old address, or deleted: nothing answers to it.
    emulator.rename_mailbox(new, "alice.b@example.com", keep_alias=False)
    assert soap(emulator, get, mailbox=new)[1] == ["fault:ErrorNonExistentMailbox"]
    emulator.remove_mailbox("alice.b@example.com")
    assert soap(emulator, get, mailbox="alice.b@example.com")[1] == [
        "fault:ErrorNonExistentMailbox"
    ]


def test_deletes_at_an_address_that_lost_its_mailbox_are_done_and_creates_adopt(
    emulator: EwsEmulator, make_provider: Callable[..., EwsCalendarProvider]
) -> None:
    provider = make_provider()
    event = all_day("leave-1", "2024-05-06", "2024-05-07")
    [made] = provider.apply([create(ALICE, event)])
    new = "alice.martin@example.com"
    emulator.rename_mailbox(ALICE, new)  # the old address is now a proxy of the same mailbox
    # A plain delete at the proxy address cannot be done there: it fails, naming the fix.
    stale = EventChange("delete", "leave-1", ALICE, provider_event_id=made.provider_event_id)
    [refused] = provider.apply([stale])
    assert not refused.ok and refused.permanent and "primary SMTP address" in refused.error
    # The delete half of a move to the primary address is done: the create there adopts it.
    [deleted] = provider.apply([replace(stale, moving_to=new)])
    assert deleted.ok and not deleted.error
    assert emulator.count("DeleteItem", outcome="ok") == 0
    [moved] = provider.apply([create(new, event)])
    assert moved.ok and moved.adopted
    assert len(by_key(emulator, new)["leave-1"]) == 1
    # A create at the proxy address fails, naming the fix.
    [refused] = provider.apply([create(ALICE, all_day("leave-2", "2024-05-07", "2024-05-08"))])
    assert not refused.ok and refused.permanent and "primary SMTP address" in refused.error


def test_emulator_accepts_a_well_formed_request_per_operation(emulator: EwsEmulator) -> None:
    status, codes, root = soap(
        emulator, create_xml(calendar_item_xml() + calendar_item_xml("leave-2", zone="Foo"))
    )
    assert (status, codes) == (200, ["NoError", "ErrorCalendarInvalidTimeZone"])  # per item
    assert soap(emulator, find_xml(keys_restriction(63)))[1] == ["NoError"]  # 253 nodes
    item_id = next(root.iter(f"{{{T_NS}}}ItemId")).get("Id")
    get = f'<m:GetItem><m:ItemShape><t:BaseShape>Default</t:BaseShape></m:ItemShape><m:ItemIds><t:ItemId Id="{item_id}"/></m:ItemIds></m:GetItem>'
    _, codes, root = soap(emulator, get)
    assert codes == ["NoError"] and root.findtext(f".//{{{T_NS}}}Start") == "2024-05-06T09:00:00Z"
    # The id names Alice's mailbox: impersonating Bob, it is "not found" (ResponseCode).
    assert soap(emulator, get, mailbox=BOB)[1] == ["ErrorItemNotFound"]
    # Without X-AnchorMailbox (or with another one) an impersonated request is not routed.
    assert soap(emulator, find_xml(), anchor="")[0] == 503
    assert soap(emulator, find_xml(), anchor=BOB)[0] == 503


@pytest.mark.parametrize(
    ("resolution", "change_key", "strict", "expected"),
    [
        ("AutoResolve", None, True, "ErrorChangeKeyRequired"),
        ("AutoResolve", "stale", True, "ErrorIrresolvableConflict"),
        ("NeverOverwrite", "stale", True, "ErrorIrresolvableConflict"),
        ("AlwaysOverwrite", "stale", True, "ErrorChangeKeyRequiredForWriteOperations"),
        ("AlwaysOverwrite", None, True, "ErrorChangeKeyRequiredForWriteOperations"),
        ("AlwaysOverwrite", "stale", False, "NoError"),
        ("AutoResolve", "###", True, "ErrorInvalidChangeKey"),
        ("AutoResolve", "current", True, "NoError"),
        ("NeverOverwrite", "current", True, "NoError"),
    ],
)
def test_emulator_change_key_rules(
    emulator: EwsEmulator, resolution: str, change_key: str | None, strict: bool, expected: str
) -> None:
    emulator.overwrite_needs_current_change_key = strict
    _, _, root = soap(emulator, create_xml(calendar_item_xml()))
    ref = next(root.iter(f"{{{T_NS}}}ItemId"))
    key = {"stale": "c3RhbGU=", "current": ref.get("ChangeKey")}.get(change_key or "", change_key)
    update = update_xml(ref.get("Id"), key, _SET_SUBJECT, _UPDATE_ATTRS.format(resolution))
    assert soap(emulator, update)[1] == [expected]


def test_emulator_update_and_delete_rules(emulator: EwsEmulator) -> None:
    _, _, root = soap(emulator, create_xml(calendar_item_xml()))
    ref = next(root.iter(f"{{{T_NS}}}ItemId"))
    item_id, key = ref.get("Id"), ref.get("ChangeKey")
    no_invites = update_xml(item_id, key, _SET_SUBJECT, 'ConflictResolution="AutoResolve"')
    assert soap(emulator, no_invites)[1] == ["ErrorSendMeetingInvitationsOrCancellationsRequired"]
    attrs = _UPDATE_ATTRS.format("AlwaysOverwrite")
    two = _SET_SUBJECT.replace("</t:Subject>", "</t:Subject><t:Sensitivity>Normal</t:Sensitivity>")
    assert soap(emulator, update_xml(item_id, key, two, attrs))[1] == [
        "ErrorIncorrectUpdatePropertyCount"
    ]
    wrong = _SET_SUBJECT.replace("item:Subject", "item:Sensitivity")
    assert soap(emulator, update_xml(item_id, key, wrong, attrs))[1] == [
        "ErrorIncorrectUpdatePropertyCount"
    ]
    delete = f'<m:DeleteItem DeleteType="HardDelete"><m:ItemIds><t:ItemId Id="{item_id}"/></m:ItemIds></m:DeleteItem>'
    assert soap(emulator, delete)[1] == ["ErrorSendMeetingCancellationsRequired"]
    assert len(emulator.items(ALICE)) == 1  # nothing of the refused requests was applied


def test_emulator_pages_at_most_1000_items(emulator: EwsEmulator) -> None:
    items = "".join(calendar_item_xml(f"leave-{n}") for n in range(1200))
    assert soap(emulator, create_xml(items))[1] == ["NoError"] * 1200
    paging = '<m:IndexedPageItemView MaxEntriesReturned="5000" Offset="0" BasePoint="Beginning"/>'
    _, codes, root = soap(emulator, find_xml(paging=paging))
    page = root.find(f".//{{{M_NS}}}RootFolder")
    assert codes == ["NoError"] and len(page.find(f"{{{T_NS}}}Items")) == 1000
    assert (page.get("IncludesLastItemInRange"), page.get("IndexedPagingOffset")) == (
        "false",
        "1000",
    )
    _, _, root = soap(emulator, find_xml())  # no paging element: still at most 1000
    assert len(root.find(f".//{{{T_NS}}}Items")) == 1000


def test_emulator_deleted_items_get_a_new_id_and_leave_the_calendar(emulator: EwsEmulator) -> None:
    _, _, root = soap(emulator, create_xml(calendar_item_xml("leave-0")))
    item_id = next(root.iter(f"{{{T_NS}}}ItemId")).get("Id")
    restriction = keys_restriction(1).replace("<t:Or>", "").replace("</t:Or>", "")
    assert len(soap(emulator, find_xml(restriction))[2].find(f".//{{{T_NS}}}Items")) == 1
    moved = emulator.user_deletes(item_id)
    assert moved.item_id != item_id and moved.folder == "deleteditems"
    assert len(soap(emulator, find_xml(restriction))[2].find(f".//{{{T_NS}}}Items")) == 0
    in_trash = find_xml(restriction).replace('Id="calendar"', 'Id="deleteditems"')
    assert len(soap(emulator, in_trash)[2].find(f".//{{{T_NS}}}Items")) == 1
    soft = find_xml(restriction, traversal='Traversal="SoftDeleted"')
    assert len(soap(emulator, soft)[2].find(f".//{{{T_NS}}}Items")) == 0  # FindItem page
    get = f'<m:GetItem><m:ItemShape><t:BaseShape>IdOnly</t:BaseShape></m:ItemShape><m:ItemIds><t:ItemId Id="{item_id}"/></m:ItemIds></m:GetItem>'
    assert soap(emulator, get)[1] == ["ErrorItemNotFound"]


def test_exchange_2013_server_is_asked_its_version_and_refuses_newer_ones(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with EwsEmulator([ALICE], build=(15, 0, 516, 32)) as emulator:
        monkeypatch.setenv(PASSWORD_ENV, emulator.password)
        common = dict(
            ews_url=emulator.url,
            username=emulator.username,
            password_env=PASSWORD_ENV,
            auth_type="basic",
            backoff_base=0.01,
            backoff_cap=0.1,
        )
        asking = EwsCalendarProvider("e2013", EwsSettings(**common))
        try:
            (created,) = asking.apply(
                [create(ALICE, all_day("leave-1", "2024-05-06", "2024-05-07"))]
            )
            (deleted,) = asking.apply(
                [EventChange("delete", "leave-1", ALICE, None, created.provider_event_id)]
            )
            assert created.ok and deleted.ok
        finally:
            asking.close()
        used = {r.version for r in emulator.requests if r.outcome == "ok"}
        assert used == {"Exchange2013"}
        # SuppressReadReceipts exists from Exchange2013_SP1 only: never sent to this server.
        assert all("SuppressReadReceipts" not in r.attributes for r in emulator.requests)
        # A version set too new is refused (ErrorInvalidServerVersion, a SOAP fault): exchangelib
        # steps down to one the server knows, and check reports what the server runs.
        newer = EwsCalendarProvider("e2016", EwsSettings(version="Exchange2016", **common))
        before = len(emulator.requests)
        try:
            (result,) = newer.apply([create(ALICE, all_day("leave-2", "2024-05-06", "2024-05-07"))])
            assert result.ok
            assert "(API Exchange2013)" in newer.check(ALICE).render()
        finally:
            newer.close()
        refused = [r.version for r in emulator.requests[before:] if r.outcome != "ok"]
        assert "Exchange2016" in refused and set(refused) == {
            "Exchange2016",
            "Exchange2015_SP1",
            "Exchange2015",
            "Exchange2013_SP1",
        }


def test_emulator_moves_all_day_times_to_midnight_in_the_items_zone(emulator: EwsEmulator) -> None:
    # "Create all-day events by using EWS in Exchange": a non-midnight start goes back to the
    # midnight before, a non-midnight end on to the midnight after, in the item's time zone.
    item = calendar_item_xml(
        start="2024-06-06T13:00:00+02:00",
        end="2024-06-07T10:00:00+02:00",
        extended="",
    ).replace("<t:StartTimeZone", "<t:IsAllDayEvent>true</t:IsAllDayEvent><t:StartTimeZone")
    assert soap(emulator, create_xml(item))[1] == ["NoError"]
    (stored,) = emulator.items(ALICE)
    assert stored.text("Start") == "2024-06-05T22:00:00Z"  # 6 June, 00:00 in Paris
    assert stored.text("End") == "2024-06-07T22:00:00Z"  # 8 June, 00:00 in Paris
