"""The Microsoft Graph provider, end to end: real msal + requests against the Graph emulator.

The last sections test the emulator's own rules with plain HTTP requests (what Graph refuses
must be refused here too); tests/emulators/README.md lists each rule with its source.
"""

from __future__ import annotations

import collections
import datetime as dt
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydantic
import pytest
import requests

from resources.providers import provider_class
from resources.providers.base import (
    EventChange,
    EventPayload,
    FatalProviderError,
    changed_fields,
)
from resources.providers.graph import GraphCalendarProvider, GraphSettings, mapping
from tests.emulators.graph import GraphEmulator, make_client_certificate
from tests.emulators.graph_zones import WINDOWS_ZONES
from tests.emulators.pki import make_test_pki
from tests.resources.providers import payloads

CLIENT_ID = "11111111-2222-3333-4444-555555555555"
SECRET = "s3cr3t-value"
ENV = "LEAVESYNC_GRAPH_CLIENT_SECRET"
NAMESPACE = "6f1c2a9e-4b7d-4e3a-9a51-0c8e2d7b5f41"
KEY_ID = f"String {{{NAMESPACE}}} Name leavesyncKey"


@pytest.fixture
def emu(tmp_path: Path) -> Iterator[GraphEmulator]:
    emulator = GraphEmulator.start(tmp_path / "pki")
    emulator.register_app(CLIENT_ID, SECRET)
    try:
        yield emulator
    finally:
        emulator.stop()


@pytest.fixture(autouse=True)
def secret_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV, SECRET)


def settings(emu: GraphEmulator, **overrides: Any) -> GraphSettings:
    values: dict[str, Any] = dict(
        tenant_id=emu.tenant_id,
        client_id=CLIENT_ID,
        authority=emu.base_url,
        graph_url=emu.base_url,
        ca_bundle=str(emu.pki.ca_file),
        backoff_base_seconds=0.005,
        backoff_cap_seconds=0.05,
        max_attempts=12,
        timeout_seconds=5,
    )
    values.update(overrides)
    return GraphSettings(**values)


@pytest.fixture
def provider(emu: GraphEmulator) -> Iterator[GraphCalendarProvider]:
    p = GraphCalendarProvider("m365", settings(emu))
    yield p
    p.close()


def all_day(i: int, start: str = "2025-03-03", end: str = "2025-03-05", **kw: Any) -> EventPayload:
    return payloads.payload(f"leave-{i}", start=start, end=end, **kw)


def timed(
    i: int, start: str = "2025-03-03T13:00:00", end: str = "2025-03-03T17:30:00", **kw: Any
) -> EventPayload:
    values: dict[str, Any] = dict(
        timezone="America/New_York", status="tentative", show_as="tentative"
    )
    values.update(kw)
    return all_day(i, start=start, end=end, all_day=False, **values)


def create(i: int, mailbox: str, payload: EventPayload | None = None, **kw: Any) -> EventChange:
    payload = payload or all_day(i)
    return EventChange("create", payload.event_key, mailbox, payload, **kw)


def ours(emu: GraphEmulator, mailbox: str) -> dict[str, list[dict[str, Any]]]:
    """Our events in a mailbox's calendar by event key (a list, so duplicates show)."""
    by_key: dict[str, list[dict[str, Any]]] = collections.defaultdict(list)
    for event in emu.events(mailbox):
        for prop in event["singleValueExtendedProperties"]:
            if "leavesyncKey" in prop["id"]:
                by_key[prop["value"]].append(event)
    return dict(by_key)


class Raw:
    """Plain HTTP to the emulator, as any Graph client would send it."""

    def __init__(self, emu: GraphEmulator) -> None:
        self.emu = emu
        self.token = GraphCalendarProvider("raw", settings(emu)).signin.current()
        self.session = requests.Session()
        self.session.trust_env = False
        self.session.verify = str(emu.pki.ca_file)
        self.base = f"{emu.base_url}/v1.0"

    def call(self, method: str, path: str, body: Any = None, **headers: str) -> requests.Response:
        headers = {"Authorization": f"Bearer {self.token}", **headers}
        return self.session.request(method, self.base + path, json=body, headers=headers)

    def batch(self, requests_: list[dict[str, Any]]) -> requests.Response:
        return self.call("POST", "/$batch", {"requests": requests_})

    def statuses(self, requests_: list[dict[str, Any]]) -> dict[str, int]:
        reply = self.batch(requests_)
        assert reply.status_code == 200, reply.text
        return {r["id"]: r["status"] for r in reply.json()["responses"]}


def event_json(zone: str = "UTC", **kw: Any) -> dict[str, Any]:
    body = {
        "subject": "x",
        "start": {"dateTime": "2025-03-03T09:00:00", "timeZone": zone},
        "end": {"dateTime": "2025-03-03T10:00:00", "timeZone": zone},
    }
    body.update(kw)
    return body


JSON = {"Content-Type": "application/json"}


# --------------------------------------------------------------------------- settings


def test_settings_defaults_and_registry() -> None:
    s = GraphSettings(tenant_id="t", client_id="c")
    assert s.client_secret_env == ENV
    assert s.authority == "https://login.microsoftonline.com"
    assert s.graph_url == "https://graph.microsoft.com"
    assert (s.batch_size, s.max_concurrency_per_mailbox, s.ca_bundle) == (20, 4, None)
    with pytest.raises(pydantic.ValidationError):
        GraphSettings(tenant_id="t", client_id="c", client_secret="inline secrets are refused")
    with pytest.raises(pydantic.ValidationError):
        GraphSettings(tenant_id="t", client_id="c", batch_size=21)
    assert provider_class("microsoft_graph") is GraphCalendarProvider


# --------------------------------------------------------------------------- core


def test_create_update_move_delete(emu: GraphEmulator, provider: GraphCalendarProvider) -> None:
    box = "ana@contoso.com"
    emu.add_foreign_event(box, "Team lunch", "2025-03-03T11:00:00", "2025-03-03T12:00:00")
    payload = all_day(1, categories="Leave")
    [result] = list(provider.apply([create(1, box, payload)]))
    assert result.ok and result.provider_event_id and result.version and not result.adopted
    [event] = ours(emu, box)["leave-1"]
    assert event["id"] == result.provider_event_id and event["changeKey"] == result.version
    assert event["isAllDay"] is True and event["showAs"] == "oof"
    # Graph takes Windows zone names; the IANA zone we meant is kept in our own property.
    assert event["start"] == {
        "dateTime": "2025-03-03T00:00:00",
        "timeZone": "Romance Standard Time",
    }
    assert event["end"] == {"dateTime": "2025-03-05T00:00:00", "timeZone": "Romance Standard Time"}
    assert {p["value"] for p in event["singleValueExtendedProperties"]} == {
        "leave-1",
        "Europe/Paris",
    }
    assert event["sensitivity"] == "private" and event["attendees"] == []
    assert event["isReminderOn"] is False and event["responseRequested"] is False
    assert event["categories"] == ["Leave"] and event["transactionId"]

    moved = all_day(
        1,
        start="2025-04-07",
        end="2025-04-08",
        title="Absent (pending)",
        status="tentative",
        show_as="tentative",
    )
    update = EventChange("update", "leave-1", box, moved, result.provider_event_id, result.version)
    [updated] = list(provider.apply([update]))
    assert updated.ok and updated.provider_event_id == result.provider_event_id
    assert updated.version != result.version and not updated.adopted
    [event] = ours(emu, box)["leave-1"]
    assert event["start"]["dateTime"] == "2025-04-07T00:00:00"
    assert (event["subject"], event["showAs"]) == ("Absent (pending)", "tentative")

    delete = EventChange("delete", "leave-1", box, None, result.provider_event_id)
    assert [r.ok for r in provider.apply([delete])] == [True]
    assert ours(emu, box) == {}
    # Already gone (deleted by hand, or a repeated run): counts as done.
    assert [r.ok for r in provider.apply([delete])] == [True]
    assert [r.ok for r in provider.apply([delete])] == [True]
    # Somebody else's event is never touched, and every write asked for immutable ids.
    assert [e["subject"] for e in emu.events(box)] == ["Team lunch"]
    assert emu.stats.writes_without_immutable_id == 0


def test_timed_event_keeps_its_instants(
    emu: GraphEmulator, provider: GraphCalendarProvider
) -> None:
    payload = timed(2)
    [result] = list(provider.apply([create(2, "bo@contoso.com", payload)]))
    assert result.ok
    [event] = ours(emu, "bo@contoso.com")["leave-2"]
    assert event["isAllDay"] is False
    assert event["start"] == {
        "dateTime": "2025-03-03T13:00:00",
        "timeZone": "Eastern Standard Time",
    }
    [remote] = list(
        provider.read_back(["bo@contoso.com"], dt.date(2025, 3, 1), dt.date(2025, 4, 1))
    )
    assert remote.payload is not None
    assert remote.payload.start_datetime() == payload.start_datetime()
    assert remote.payload.end_datetime() == payload.end_datetime()
    assert changed_fields(payload, remote.payload, provider.compared_fields) == []


def test_changes_without_known_ids_are_found_by_key(
    emu: GraphEmulator, provider: GraphCalendarProvider
) -> None:
    box = "cy@contoso.com"
    assert all(r.ok for r in provider.apply([create(3, box), create(4, box)]))
    # An earlier run lost the ids: the provider finds its events by the extended property.
    update = EventChange("update", "leave-3", box, all_day(3, title="Away"))
    delete = EventChange("delete", "leave-4", box)
    results = {r.change.event_key: r for r in provider.apply([update, delete])}
    assert results["leave-3"].ok and results["leave-4"].ok
    assert [e["subject"] for e in ours(emu, box)["leave-3"]] == ["Away"]
    assert "leave-4" not in ours(emu, box)
    # Delete of an event that exists nowhere: done.
    assert [r.ok for r in provider.apply([EventChange("delete", "leave-99", box)])] == [True]


def test_update_of_an_event_deleted_by_hand_recreates_it(
    emu: GraphEmulator, provider: GraphCalendarProvider
) -> None:
    box = "di@contoso.com"
    [first] = list(provider.apply([create(5, box)]))
    with emu.lock:  # purged for good (Deleted Items emptied)
        emu.mailbox(box).events.clear()
    update = EventChange(
        "update", "leave-5", box, all_day(5, title="Away"), first.provider_event_id
    )
    [result] = list(provider.apply([update]))
    assert result.ok and result.provider_event_id != first.provider_event_id
    assert [e["subject"] for e in ours(emu, box)["leave-5"]] == ["Away"]


def test_many_mailboxes_go_through_full_parallel_batches(
    emu: GraphEmulator, provider: GraphCalendarProvider
) -> None:
    changes = [create(i, f"user{i % 40}@contoso.com") for i in range(400)]
    results = list(provider.apply(changes))
    assert len(results) == 400 and all(r.ok for r in results)
    assert {r.change.event_key for r in results} == {c.event_key for c in changes}
    assert max(emu.stats.batch_sizes) == 20
    # One look-up per mailbox (its 10 keys in one listing), then one request per change.
    assert emu.stats.methods == {"GET": 40, "POST": 400}
    assert emu.stats.batch_requests <= 440 / 20 * 1.25
    assert emu.stats.batch_shapes["parallel"] >= 20


# --------------------------------------------------------------------------- batch shapes


def test_ten_creates_for_one_mailbox_use_a_shape_graph_accepts(
    emu: GraphEmulator, provider: GraphCalendarProvider
) -> None:
    # The case of issue #18: more than two changes of one mailbox in a batch.
    results = list(provider.apply([create(i, "ten@contoso.com") for i in range(10)]))
    assert all(r.ok for r in results) and len(ours(emu, "ten@contoso.com")) == 10
    assert emu.stats.max_mailbox_concurrency <= 4


def test_a_long_queue_goes_in_full_sequential_batches(emu: GraphEmulator) -> None:
    p = GraphCalendarProvider("m365", settings(emu))
    assert all(r.ok for r in p.apply([create(i, "solo@contoso.com") for i in range(100)]))
    assert len(ours(emu, "solo@contoso.com")) == 100
    # 1 look-up, 5 sequential batches of 20 creates (parallel ones would carry 4 each).
    assert emu.stats.batch_shapes["sequential"] == 5
    assert emu.stats.batch_requests <= 100 / 20 + 2
    assert emu.stats.max_mailbox_concurrency <= 4


def test_a_failure_inside_a_sequential_batch_is_retried_with_the_rest(emu: GraphEmulator) -> None:
    p = GraphCalendarProvider("m365", settings(emu))
    emu.fault("503", in_batch=True, method="POST", retry_after=None)
    emu.fault("429", in_batch=True, method="POST", retry_after=0.01)
    results = list(p.apply([create(i, "chain@contoso.com") for i in range(40)]))
    assert len(results) == 40 and all(r.ok for r in results)
    assert all(len(v) == 1 for v in ours(emu, "chain@contoso.com").values())
    assert len(ours(emu, "chain@contoso.com")) == 40
    assert emu.stats.faults["503"] == 1 and emu.stats.faults["429"] == 1


def test_never_more_than_four_requests_in_flight_per_mailbox(emu: GraphEmulator) -> None:
    emu.enforce_concurrency = False  # count, do not refuse: the provider must hold back itself
    emu.latency = 0.004
    p = GraphCalendarProvider("m365", settings(emu, parallel_batches=8))
    changes = [create(i, f"busy{i % 3}@contoso.com") for i in range(150)]
    assert all(r.ok for r in p.apply(changes))
    assert 2 <= emu.stats.max_mailbox_concurrency <= 4
    assert emu.stats.throttled["concurrency"] == 0


def test_parallel_batches_respect_each_mailboxs_free_slots(emu: GraphEmulator) -> None:
    emu.enforce_concurrency = False
    emu.latency = 0.003
    p = GraphCalendarProvider("m365", settings(emu, parallel_batches=8))
    changes = [create(i, f"few{i % 12}@contoso.com") for i in range(12 * 9)]
    assert all(r.ok for r in p.apply(changes))
    assert emu.stats.max_mailbox_concurrency <= 4 and emu.stats.batch_shapes["parallel"] > 0


# --------------------------------------------------------------------------- transactionId


def test_transaction_id_comes_from_the_attempt_never_from_the_content(
    emu: GraphEmulator, provider: GraphCalendarProvider
) -> None:
    [a] = list(provider.apply([create(1, "tx@contoso.com", attempt_id="attempt-1")]))
    assert a.ok and ours(emu, "tx@contoso.com")["leave-1"][0]["transactionId"] == "attempt-1"
    # The same content without an attempt id: a fresh id per attempt, never a derived one.
    for box in ("ty@contoso.com", "tz@contoso.com"):
        assert all(r.ok for r in provider.apply([create(1, box)]))
    ids = {
        ours(emu, box)["leave-1"][0]["transactionId"]
        for box in ("ty@contoso.com", "tz@contoso.com")
    }
    assert len(ids) == 2 and "attempt-1" not in ids


def test_cancel_then_reinstate_with_identical_content_creates_it_again(
    emu: GraphEmulator, provider: GraphCalendarProvider
) -> None:
    box = "re@contoso.com"
    emu.transaction_window = 3600  # every transactionId is remembered for the whole test
    [first] = list(provider.apply([create(7, box)]))
    delete = EventChange("delete", "leave-7", box, None, first.provider_event_id)
    assert [r.ok for r in provider.apply([delete])] == [True]
    assert ours(emu, box) == {}
    [again] = list(provider.apply([create(7, box)]))  # reinstated, same content
    assert again.ok and again.provider_event_id != first.provider_event_id
    [event] = ours(emu, box)["leave-7"]
    assert event["id"] == again.provider_event_id


def test_create_whose_response_is_lost_lands_once(
    emu: GraphEmulator, provider: GraphCalendarProvider
) -> None:
    box = "el@contoso.com"
    emu.transaction_window = 0  # the retry must not lean on Graph's transactionId
    # The batch runs, then the connection drops before the response.
    emu.fault("drop_after", method="POST", in_batch=False)
    [result] = list(provider.apply([create(6, box)]))
    assert result.ok
    [event] = ours(emu, box)["leave-6"]
    assert event["id"] == result.provider_event_id
    assert emu.stats.faults["drop_after"] == 1


def test_create_dropped_before_it_ran_is_sent_again(
    emu: GraphEmulator, provider: GraphCalendarProvider
) -> None:
    box = "fa@contoso.com"
    emu.fault("drop_before", method="POST", in_batch=False)
    [result] = list(provider.apply([create(7, box)]))
    assert result.ok and len(ours(emu, box)["leave-7"]) == 1


# --------------------------------------------------------------------------- never blind


def test_a_repeated_create_adopts_the_event_instead_of_duplicating_it(
    emu: GraphEmulator, provider: GraphCalendarProvider
) -> None:
    box = "gu@contoso.com"
    emu.transaction_window = 0  # no help from transactionId: the look-up does it
    change = create(8, box)
    [first] = list(provider.apply([change]))
    posts = emu.stats.methods["POST"]
    # A later run that never recorded the first result sends the very same create again.
    [second] = list(provider.apply([change]))
    assert second.ok and second.adopted and second.provider_event_id == first.provider_event_id
    assert len(ours(emu, box)["leave-8"]) == 1
    assert emu.stats.methods["POST"] == posts and emu.stats.methods["PATCH"] == 0


def test_lost_state_then_hr_edit_adopts_and_updates(
    emu: GraphEmulator, provider: GraphCalendarProvider
) -> None:
    box = "lo@contoso.com"
    emu.transaction_window = 0
    results = list(provider.apply([create(i, box) for i in range(5)]))
    ids = {r.change.event_key: r.provider_event_id for r in results}
    # The snapshot is gone and HR edited two leaves: every key comes back as a create.
    changed = {1: all_day(1, title="Away"), 3: all_day(3, end="2025-03-07")}
    again = [create(i, box, changed.get(i)) for i in range(5)]
    results = {r.change.event_key: r for r in provider.apply(again)}
    assert all(r.ok and r.adopted for r in results.values())
    assert {k: r.provider_event_id for k, r in results.items()} == ids
    held = ours(emu, box)
    assert all(len(v) == 1 for v in held.values()) and len(held) == 5
    assert held["leave-1"][0]["subject"] == "Away"
    assert held["leave-3"][0]["end"]["dateTime"] == "2025-03-07T00:00:00"
    assert emu.stats.methods["PATCH"] == 2  # only what differs is written


def test_further_copies_of_a_key_are_deleted(
    emu: GraphEmulator, provider: GraphCalendarProvider
) -> None:
    box = "co@contoso.com"
    raw = Raw(emu)
    for subject in ("Absent", "Absent", "Old copy"):
        body = event_json(
            "Romance Standard Time",
            subject=subject,
            isAllDay=True,
            start={"dateTime": "2025-03-03T00:00:00", "timeZone": "Romance Standard Time"},
            end={"dateTime": "2025-03-05T00:00:00", "timeZone": "Romance Standard Time"},
            singleValueExtendedProperties=[{"id": KEY_ID, "value": "leave-1"}],
        )
        assert raw.call("POST", f"/users/{box}/calendar/events", body, **JSON).status_code == 201
    emu.add_foreign_event(box, "Dentist", "2025-03-03T08:00:00", "2025-03-03T09:00:00")
    [result] = list(provider.apply([create(1, box)]))
    assert result.ok and result.adopted
    [kept] = ours(emu, box)["leave-1"]
    assert kept["id"] == result.provider_event_id and kept["subject"] == "Absent"
    assert sorted(e["subject"] for e in emu.events(box)) == ["Absent", "Dentist"]


def test_look_up_is_one_request_per_mailbox_or_per_key(
    emu: GraphEmulator, provider: GraphCalendarProvider
) -> None:
    # Three mailboxes of 30 keys (one listing each), two of one key (one eq filter each).
    changes = [create(i, f"m{i % 3}@contoso.com") for i in range(90)]
    changes += [create(100, "a@contoso.com"), create(101, "b@contoso.com")]
    assert all(r.ok for r in provider.apply(changes))
    assert emu.stats.methods == {"GET": 5, "POST": 92}


def test_look_up_asks_per_key_when_the_calendar_holds_many_of_our_events(
    emu: GraphEmulator, provider: GraphCalendarProvider
) -> None:
    box = "big@contoso.com"
    assert all(r.ok for r in provider.apply([create(i, box) for i in range(60)]))
    emu.max_page_size = 10  # 60 of our events: 6 pages
    emu.stats.methods.clear()
    # Three keys: after one page (not worth six), one eq filter per key.
    again = [create(i, box, all_day(i, title="Moved")) for i in (5, 33, 59)]
    results = list(provider.apply(again))
    assert all(r.ok and r.adopted for r in results)
    assert emu.stats.methods == {"GET": 1 + 3, "PATCH": 3}
    assert all(len(v) == 1 for v in ours(emu, box).values()) and len(ours(emu, box)) == 60


def test_look_up_adopts_only_the_exact_key(
    emu: GraphEmulator, provider: GraphCalendarProvider
) -> None:
    box = "case@contoso.com"
    upper = all_day(1, event_key="leave-AB", leave_id="AB")
    lower = all_day(2, event_key="leave-ab", leave_id="ab")
    [first] = list(provider.apply([EventChange("create", "leave-AB", box, upper)]))
    # Graph's filter finds leave-AB for leave-ab (values compare case-insensitively).
    [second] = list(provider.apply([EventChange("create", "leave-ab", box, lower)]))
    assert first.ok and second.ok and not second.adopted
    assert second.provider_event_id != first.provider_event_id
    assert sorted(ours(emu, box)) == ["leave-AB", "leave-ab"]


# --------------------------------------------------------------------------- Deleted Items


def test_update_of_an_event_the_user_moved_to_deleted_items_recreates_it(
    emu: GraphEmulator, provider: GraphCalendarProvider
) -> None:
    box = "trash@contoso.com"
    [first] = list(provider.apply([create(9, box)]))
    emu.user_deletes(box, first.provider_event_id)
    update = EventChange(
        "update", "leave-9", box, all_day(9, title="Away"), first.provider_event_id
    )
    [result] = list(provider.apply([update]))
    assert result.ok and result.provider_event_id != first.provider_event_id
    [event] = ours(emu, box)["leave-9"]
    assert event["id"] == result.provider_event_id and event["subject"] == "Away"
    # The copy in Deleted Items was left as the user left it.
    [trashed] = emu.deleted_events(box)
    assert trashed["id"] == first.provider_event_id and trashed["subject"] == "Absent"


def test_the_emulator_lets_a_patch_by_id_reach_deleted_items(emu: GraphEmulator) -> None:
    # Control for the test above: this is why a PATCH by id alone cannot be trusted.
    raw = Raw(emu)
    made = raw.call("POST", "/users/u@contoso.com/calendar/events", event_json(), **JSON).json()
    emu.user_deletes("u@contoso.com", made["id"])
    patch = raw.call("PATCH", f"/users/u@contoso.com/events/{made['id']}", {"subject": "y"}, **JSON)
    assert patch.status_code == 200
    assert raw.call("GET", "/users/u@contoso.com/calendar/events").json()["value"] == []


def test_delete_of_an_event_in_deleted_items_is_done(
    emu: GraphEmulator, provider: GraphCalendarProvider
) -> None:
    box = "gone@contoso.com"
    [first] = list(provider.apply([create(10, box)]))
    emu.user_deletes(box, first.provider_event_id)
    delete = EventChange("delete", "leave-10", box, None, first.provider_event_id)
    assert [r.ok for r in provider.apply([delete])] == [True]
    assert ours(emu, box) == {}


# --------------------------------------------------------------------------- time zones

ZONES = [
    "Asia/Kolkata",
    "Asia/Kathmandu",
    "Australia/Adelaide",
    "America/St_Johns",
    "Pacific/Chatham",
    "Europe/Kyiv",
    "America/Nuuk",
    "Asia/Ho_Chi_Minh",
    "Europe/Brussels",
    "America/Sao_Paulo",
    "Asia/Tehran",
    "Africa/Casablanca",
]


def test_timed_events_in_many_zones_read_back_without_drift(
    emu: GraphEmulator, provider: GraphCalendarProvider
) -> None:
    box = "world@contoso.com"
    written = []
    for n, zone in enumerate(ZONES):
        # Half days in March and in July: both sides of most DST changes.
        for month, i in ((3, 2 * n), (7, 2 * n + 1)):
            start, end = (
                f"2026-{month:02d}-1{n % 9}T13:30:00",
                f"2026-{month:02d}-1{n % 9}T18:00:00",
            )
            written.append(timed(i, start=start, end=end, timezone=zone))
    # All-day, in a zone that shares Romance Standard Time with Europe/Paris.
    written.append(all_day(99, start="2026-03-20", end="2026-03-21", timezone="Europe/Brussels"))
    results = list(provider.apply([create(int(p.leave_id), box, p) for p in written]))
    assert all(r.ok for r in results), [r.error for r in results if not r.ok]
    stored = {e["start"]["timeZone"] for e in emu.events(box)}
    assert stored <= set(WINDOWS_ZONES)
    remote = {
        r.event_key: r.payload
        for r in provider.read_back([box], dt.date(2026, 3, 1), dt.date(2026, 8, 1))
    }
    assert set(remote) == {p.event_key for p in written}
    for payload in written:
        assert changed_fields(payload, remote[payload.event_key], provider.compared_fields) == []
        assert remote[payload.event_key].timezone == payload.timezone
        assert remote[payload.event_key].fingerprint == payload.fingerprint or not payload.all_day


def test_events_without_our_zone_property_read_back_through_cldr(
    emu: GraphEmulator, provider: GraphCalendarProvider
) -> None:
    box = "old@contoso.com"
    raw = Raw(emu)
    body = event_json(
        "India Standard Time",
        singleValueExtendedProperties=[{"id": KEY_ID, "value": "leave-5"}],
    )
    assert raw.call("POST", f"/users/{box}/calendar/events", body, **JSON).status_code == 201
    [remote] = list(provider.read_back([box], dt.date(2025, 3, 1), dt.date(2025, 3, 31)))
    assert remote.payload is not None
    assert remote.payload.start_datetime() == dt.datetime(
        2025, 3, 3, 3, 30, tzinfo=dt.UTC
    )  # 09:00 in India is 03:30 UTC
    assert remote.payload.timezone in ("Asia/Calcutta", "Asia/Kolkata")


def test_a_zone_without_windows_name_is_written_in_utc(
    emu: GraphEmulator, provider: GraphCalendarProvider, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A zone newer than the CLDR mapping: the same instants, written in UTC.
    monkeypatch.delitem(mapping.IANA_TO_MS_TIMEZONE_MAP, "Asia/Kathmandu")
    payload = timed(11, timezone="Asia/Kathmandu")
    [result] = list(provider.apply([create(11, "utc@contoso.com", payload)]))
    assert result.ok
    [event] = ours(emu, "utc@contoso.com")["leave-11"]
    assert event["start"] == {"dateTime": "2025-03-03T07:15:00", "timeZone": "UTC"}
    [remote] = list(
        provider.read_back(["utc@contoso.com"], dt.date(2025, 3, 1), dt.date(2025, 4, 1))
    )
    assert remote.payload.timezone == "Asia/Kathmandu"
    assert changed_fields(payload, remote.payload, provider.compared_fields) == []


# --------------------------------------------------------------------------- faults


def test_throttled_sub_requests_wait_for_retry_after(emu: GraphEmulator) -> None:
    seen: list[tuple[str, float]] = []
    original = emu.handle

    def spy(method: str, target: str, headers: dict[str, str], body: Any, in_batch: bool) -> Any:
        if in_batch and method == "POST":
            seen.append((body["singleValueExtendedProperties"][0]["value"], time.monotonic()))
        return original(method, target, headers, body, in_batch)

    emu.handle = spy  # type: ignore[method-assign]
    emu.fault("429", in_batch=True, method="POST", times=2, retry_after=0.05)
    emu.fault("429", in_batch=True, method="POST", times=1, retry_after=0.3)
    p = GraphCalendarProvider("m365", settings(emu, backoff_cap_seconds=5))
    results = list(p.apply([create(i, f"u{i}@contoso.com") for i in range(3)]))
    assert all(r.ok for r in results) and emu.stats.faults["429"] == 3
    first = {t: ts for t, ts in reversed(seen)}
    last = {t: ts for t, ts in seen}
    # Each throttled request was retried no sooner than the longest Retry-After of its batch.
    assert all(last[t] - first[t] >= 0.3 for t in first if last[t] != first[t])
    assert sum(1 for t in first if last[t] != first[t]) >= 1


def test_top_level_throttling_and_outages_are_retried(
    emu: GraphEmulator, provider: GraphCalendarProvider
) -> None:
    emu.fault("429", in_batch=False, retry_after=0.01)
    emu.fault("503", in_batch=False, retry_after=None)
    emu.fault("503", in_batch=True, retry_after=None)
    emu.fault("500", in_batch=True)
    emu.fault("slow", in_batch=False, seconds=0.05)
    results = list(provider.apply([create(i, "ha@contoso.com") for i in range(10)]))
    assert all(r.ok for r in results)
    assert all(len(v) == 1 for v in ours(emu, "ha@contoso.com").values())
    assert len(ours(emu, "ha@contoso.com")) == 10


def test_thirty_percent_faults_every_change_lands_exactly_once(emu: GraphEmulator) -> None:
    emu.fault_rate = 0.3
    emu.transaction_window = 0.05  # transactionId covers quick retries only
    boxes = [f"f{i}@contoso.com" for i in range(12)]
    creates = [create(i, boxes[i % 12], timed(i) if i % 3 else all_day(i)) for i in range(240)]
    results = list(GraphCalendarProvider("m365", settings(emu, max_attempts=40)).apply(creates))
    assert len(results) == 240 and all(r.ok for r in results), [r.error for r in results][:3]
    for box in boxes:
        assert all(len(v) == 1 for v in ours(emu, box).values())
    assert sum(len(ours(emu, b)) for b in boxes) == 240
    ids = {r.change.event_key: r.provider_event_id for r in results}
    updates = [
        EventChange(
            "update",
            c.event_key,
            c.calendar,
            all_day(int(c.event_key[6:]), title="X"),
            ids[c.event_key],
        )
        for c in creates[:120]
    ]
    deletes = [
        EventChange("delete", c.event_key, c.calendar, None, ids[c.event_key])
        for c in creates[120:]
    ]
    p = GraphCalendarProvider("m365", settings(emu, max_attempts=40))
    results = list(p.apply(updates + deletes))
    assert len(results) == 240 and all(r.ok for r in results)
    remaining = {k: v for b in boxes for k, v in ours(emu, b).items()}
    assert set(remaining) == {c.event_key for c in creates[:120]}
    assert all(len(v) == 1 and v[0]["subject"] == "X" for v in remaining.values())
    assert sum(emu.stats.faults.values()) > 50  # the faults really happened


# --------------------------------------------------------------------------- per-mailbox errors


def test_unknown_user_and_mailbox_without_exchange_fail_alone(
    emu: GraphEmulator, provider: GraphCalendarProvider
) -> None:
    emu.unknown_users.add("ghost@contoso.com")
    emu.no_mailbox.add("onprem@contoso.com")
    changes = [
        create(i, box)
        for i, box in enumerate(
            ["ghost@contoso.com"] * 3 + ["onprem@contoso.com"] * 2 + ["ok@contoso.com"] * 3
        )
    ]
    results = {r.change.event_key: r for r in provider.apply(changes)}
    assert len(results) == 8
    for i in range(3):
        r = results[f"leave-{i}"]
        assert not r.ok and r.permanent and "no such user" in (r.error or "")
    for i in (3, 4):
        r = results[f"leave-{i}"]
        assert not r.ok and r.permanent and "no Exchange Online mailbox" in (r.error or "")
    assert all(results[f"leave-{i}"].ok for i in (5, 6, 7))


def test_emulator_an_alias_reaches_the_renamed_users_mailbox(emu: GraphEmulator) -> None:
    raw = Raw(emu)
    made = raw.call("POST", "/users/ana@contoso.com/events", event_json())
    assert made.status_code == 201, made.text
    event_id = made.json()["id"]
    emu.rename_user("ana@contoso.com", "ana.lima@contoso.com")
    # Both addresses reach the one mailbox: the same event, by the same id.
    for address in ("ana@contoso.com", "ana.lima@contoso.com"):
        assert raw.call("GET", f"/users/{address}/events/{event_id}").status_code == 200
    emu.rename_user("ana.lima@contoso.com", "ana.b@contoso.com", keep_alias=False)
    gone = raw.call("GET", f"/users/ana.lima@contoso.com/events/{event_id}")
    assert (gone.status_code, gone.json()["error"]["code"]) == (404, "ErrorInvalidUser")
    assert raw.call("GET", f"/users/ana@contoso.com/events/{event_id}").status_code == 200
    emu.remove_mailbox("ana.b@contoso.com")
    left = raw.call("DELETE", f"/users/ana.b@contoso.com/events/{event_id}")
    assert (left.status_code, left.json()["error"]["code"]) == (404, "MailboxNotEnabledForRESTAPI")


@pytest.mark.parametrize("how", ["alias", "renamed", "deleted"])
def test_a_delete_where_the_address_changed_is_done_and_the_create_lands_once(
    emu: GraphEmulator, provider: GraphCalendarProvider, how: str
) -> None:
    old, new = "ana@contoso.com", "ana.lima@contoso.com"
    [made] = provider.apply([create(1, old)])
    if how == "deleted":
        emu.remove_mailbox(old)
    else:
        emu.rename_user(old, new, keep_alias=how == "alias")
    # The move's delete half, then a create in the new mailbox beside it in the same calls
    # as another mailbox's changes (they go on whatever this one answers).
    gone = EventChange("delete", "leave-1", old, provider_event_id=made.provider_event_id)
    results = provider.apply([gone, create(2, old), create(3, "bo@contoso.com")])
    by_key = {r.change.event_key: r for r in results}
    assert by_key["leave-1"].ok and by_key["leave-3"].ok
    assert by_key["leave-2"].ok == (how == "alias")  # the alias still reaches a mailbox
    [moved] = provider.apply([create(1, new)])
    assert moved.ok and moved.adopted == (how == "renamed")
    assert len(ours(emu, new)["leave-1"]) == 1


def test_mailbox_outside_the_access_policy_fails_alone(
    emu: GraphEmulator, provider: GraphCalendarProvider
) -> None:
    emu.denied_mailboxes.add("ceo@contoso.com")
    changes = [create(1, "a@contoso.com"), create(2, "ceo@contoso.com"), create(3, "b@contoso.com")]
    results = {r.change.event_key: r for r in provider.apply(changes)}
    assert results["leave-1"].ok and results["leave-3"].ok
    assert not results["leave-2"].ok and results["leave-2"].permanent
    assert "application access policy" in (results["leave-2"].error or "")


def test_permission_missing_everywhere_is_fatal(emu: GraphEmulator) -> None:
    emu.register_app(CLIENT_ID, SECRET, roles=("Calendars.Read",))
    p = GraphCalendarProvider("m365", settings(emu))
    # The look-ups succeed (reading is allowed), every write is refused.
    with pytest.raises(FatalProviderError, match="Calendars.ReadWrite.*admin consent"):
        list(p.apply([create(i, f"p{i}@contoso.com") for i in range(5)]))
    deletes = [
        EventChange("delete", f"leave-{i}", f"p{i}@contoso.com", None, f"id{i}") for i in range(5)
    ]
    with pytest.raises(FatalProviderError, match="Calendars.ReadWrite.*admin consent"):
        list(p.apply(deletes))
    report = p.check("p1@contoso.com")
    assert not report.ok
    [perm] = [s for s in report.steps if "permission" in s[0]]
    assert perm[1] is False and "Grant admin consent" in perm[2]


def test_an_event_graph_refuses_fails_alone(
    emu: GraphEmulator, provider: GraphCalendarProvider
) -> None:
    bad = all_day(2, start="2025-03-05", end="2025-03-05")  # ends where it starts
    results = {
        r.change.event_key: r
        for r in provider.apply([create(1, "x@contoso.com"), create(2, "x@contoso.com", bad)])
    }
    assert results["leave-1"].ok
    assert not results["leave-2"].ok and results["leave-2"].permanent
    assert "midnight" in (results["leave-2"].error or "")


# --------------------------------------------------------------------------- credentials, TLS


def test_revoked_secret_is_fatal_and_says_what_to_fix(emu: GraphEmulator) -> None:
    emu.apps[CLIENT_ID].secret = "a-new-secret-the-app-does-not-know"
    p = GraphCalendarProvider("m365", settings(emu))
    with pytest.raises(FatalProviderError) as err:
        list(p.apply([create(1, "a@contoso.com")]))
    message = str(err.value)
    assert "invalid_client" in message and ENV in message and "Certificates & secrets" in message
    assert SECRET not in message
    report = p.check("a@contoso.com")
    assert not report.ok and ("token from Entra ID", False) == report.steps[-1][:2]
    assert SECRET not in report.render()
    assert emu.events("a@contoso.com") == []


def test_missing_secret_variable_is_fatal(
    emu: GraphEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(ENV)
    with pytest.raises(FatalProviderError, match=ENV):
        list(GraphCalendarProvider("m365", settings(emu)).apply([create(1, "a@contoso.com")]))


def test_unknown_tenant_and_unknown_app_are_fatal(emu: GraphEmulator) -> None:
    with pytest.raises(FatalProviderError, match="tenant_id"):
        list(
            GraphCalendarProvider("m365", settings(emu, tenant_id="nope")).apply(
                [create(1, "a@contoso.com")]
            )
        )
    with pytest.raises(FatalProviderError, match="client_id"):
        list(
            GraphCalendarProvider("m365", settings(emu, client_id="0000")).apply(
                [create(1, "a@contoso.com")]
            )
        )


def test_certificate_credential(emu: GraphEmulator, monkeypatch: pytest.MonkeyPatch) -> None:
    key_and_cert, cert, thumbprint = make_client_certificate()
    emu.register_app(CLIENT_ID, secret=None, certificate_pem=cert)
    monkeypatch.setenv("LEAVESYNC_GRAPH_CERT", key_and_cert)
    monkeypatch.delenv(ENV)
    for extra in ({}, {"certificate_thumbprint": thumbprint}):
        p = GraphCalendarProvider(
            "m365", settings(emu, client_certificate_env="LEAVESYNC_GRAPH_CERT", **extra)
        )
        p.preflight()
        assert all(r.ok for r in p.apply([create(1, "cert@contoso.com")]))
    other_key, _, _ = make_client_certificate()
    monkeypatch.setenv("LEAVESYNC_GRAPH_CERT", other_key)
    p = GraphCalendarProvider("m365", settings(emu, client_certificate_env="LEAVESYNC_GRAPH_CERT"))
    with pytest.raises(FatalProviderError, match="certificate"):
        list(p.apply([create(2, "cert@contoso.com")]))


def test_preflight_names_the_setting_or_variable_to_fix(
    emu: GraphEmulator, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    GraphCalendarProvider("m365", settings(emu)).preflight()  # all good: no exception
    monkeypatch.delenv(ENV)
    with pytest.raises(FatalProviderError, match=ENV):
        GraphCalendarProvider("m365", settings(emu)).preflight()
    monkeypatch.setenv("LEAVESYNC_GRAPH_CERT", "-----BEGIN PRIVATE KEY-----\ngarbage\n")
    cert_settings = settings(
        emu, client_certificate_env="LEAVESYNC_GRAPH_CERT", certificate_thumbprint="AB" * 20
    )
    with pytest.raises(FatalProviderError, match="LEAVESYNC_GRAPH_CERT.*private key"):
        GraphCalendarProvider("m365", cert_settings).preflight()
    key_and_cert, _, _ = make_client_certificate()
    monkeypatch.setenv("LEAVESYNC_GRAPH_CERT", key_and_cert)
    with pytest.raises(FatalProviderError, match="certificate_thumbprint"):
        GraphCalendarProvider(
            "m365",
            settings(
                emu, client_certificate_env="LEAVESYNC_GRAPH_CERT", certificate_thumbprint="xyz"
            ),
        ).preflight()
    monkeypatch.setenv(ENV, SECRET)
    missing = tmp_path / "no-such-ca.pem"
    with pytest.raises(FatalProviderError, match=f"ca_bundle.*{missing.name}.*does not exist"):
        GraphCalendarProvider("m365", settings(emu, ca_bundle=str(missing))).preflight()
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    with pytest.raises(FatalProviderError, match="ca_bundle.*no PEM certificate"):
        GraphCalendarProvider("m365", settings(emu, ca_bundle=str(garbage))).preflight()
    if os.geteuid() != 0:  # root reads any file
        unreadable = tmp_path / "unreadable.pem"
        unreadable.write_bytes(emu.pki.ca_file.read_bytes())
        unreadable.chmod(0)
        with pytest.raises(FatalProviderError, match="ca_bundle.*cannot be read"):
            GraphCalendarProvider("m365", settings(emu, ca_bundle=str(unreadable))).preflight()
    # Nothing was sent: preflight needs no network.
    assert emu.stats.http_requests == 0


def test_token_is_reused_and_renewed_when_rejected(
    emu: GraphEmulator, provider: GraphCalendarProvider
) -> None:
    assert all(r.ok for r in provider.apply([create(1, "t@contoso.com")]))
    assert all(r.ok for r in provider.apply([create(2, "t@contoso.com")]))
    assert emu.stats.token_requests == 1
    emu.expire_tokens()
    assert all(r.ok for r in provider.apply([create(3, "t@contoso.com")]))
    assert emu.stats.token_requests == 2 and len(ours(emu, "t@contoso.com")) == 3


def test_ca_bundle_setting_wins_over_the_environment(
    emu: GraphEmulator, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # A CA bundle in the environment must not replace the configured one.
    bogus = tmp_path / "other-ca.pem"
    bogus.write_text("not a certificate\n")
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(bogus))
    monkeypatch.setenv("SSL_CERT_FILE", str(bogus))
    p = GraphCalendarProvider("m365", settings(emu))
    assert all(r.ok for r in p.apply([create(1, "tls@contoso.com")]))


@pytest.mark.parametrize("trust", ["system store", "another CA"])
def test_an_untrusted_certificate_is_fatal_at_once(
    emu: GraphEmulator, tmp_path: Path, trust: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The emulator's CA in the environment changes nothing: only ca_bundle is trusted.
    for variable in ("REQUESTS_CA_BUNDLE", "SSL_CERT_FILE", "CURL_CA_BUNDLE"):
        monkeypatch.setenv(variable, str(emu.pki.ca_file))
    ca_bundle = None if trust == "system store" else str(make_test_pki(tmp_path / "other").ca_file)
    p = GraphCalendarProvider("m365", settings(emu, ca_bundle=ca_bundle, max_attempts=8))
    with pytest.raises(FatalProviderError) as err:
        list(p.apply([create(2, "tls@contoso.com")]))
    message = str(err.value)
    assert "127.0.0.1" in message and "ca_bundle" in message and "certificate" in message
    assert "SSLError" not in message
    assert emu.stats.connections == 1  # not retried as a network error


# --------------------------------------------------------------------------- read-back, check


def test_read_back_reports_drift_only_for_edited_events(
    emu: GraphEmulator, provider: GraphCalendarProvider
) -> None:
    emu.max_page_size = 3  # exercise @odata.nextLink paging
    box = "drift@contoso.com"
    payloads = [
        all_day(
            i,
            start=f"2025-05-{i + 1:02d}",
            end=f"2025-05-{i + 2:02d}",
            description="Back on Monday" if i == 0 else "",
        )
        for i in range(6)
    ]
    payloads.append(timed(6, start="2025-05-20T09:00:00", end="2025-05-20T12:00:00"))
    payloads.append(all_day(7, start="2025-07-01", end="2025-07-02"))  # outside the window
    results = list(provider.apply([create(int(p.event_key[6:]), box, p) for p in payloads]))
    assert all(r.ok for r in results)
    emu.add_foreign_event(box, "Dentist", "2025-05-02T08:00:00", "2025-05-02T09:00:00")
    with emu.lock:
        edited = emu.mailbox(box).events[ours(emu, box)["leave-2"][0]["id"]]
        edited["subject"], edited["showAs"] = "Holiday in Rome", "busy"
    remote = {
        r.event_key: r for r in provider.read_back([box], dt.date(2025, 5, 1), dt.date(2025, 6, 1))
    }
    assert set(remote) == {f"leave-{i}" for i in range(7)}
    written = {p.event_key: p for p in payloads}
    diffs = {
        k: changed_fields(written[k], r.payload, provider.compared_fields)
        for k, r in remote.items()
        if r.payload
    }
    assert diffs.pop("leave-2") == ["title", "show_as"]
    assert all(d == [] for d in diffs.values()), diffs
    assert remote["leave-0"].payload.fingerprint == written["leave-0"].fingerprint
    ids = {r.change.event_key: (r.provider_event_id, r.version) for r in results}
    assert (remote["leave-1"].provider_event_id, remote["leave-1"].version) == ids["leave-1"]


def test_check_passes_and_changes_nothing(
    emu: GraphEmulator, provider: GraphCalendarProvider
) -> None:
    before = emu.events("sample@contoso.com")
    report = provider.check("sample@contoso.com")
    assert report.ok, report.render()
    assert emu.events("sample@contoso.com") == before == []
    assert emu.stats.batch_requests == 0 and set(emu.stats.methods) == {"GET"}


def test_check_names_what_is_missing(emu: GraphEmulator, provider: GraphCalendarProvider) -> None:
    emu.unknown_users.add("nobody@contoso.com")
    report = provider.check("nobody@contoso.com")
    assert not report.ok and "no such user" in report.render()
    emu.denied_mailboxes.add("vip@contoso.com")
    report = provider.check("vip@contoso.com")
    assert not report.ok and "RBAC for Applications" in report.render()


def test_nothing_to_change_sends_nothing(
    emu: GraphEmulator, provider: GraphCalendarProvider
) -> None:
    assert list(provider.apply([])) == []
    assert emu.stats.http_requests == 0 and emu.stats.token_requests == 0


# --------------------------------------------------------------------------- the emulator's rules


def test_emulator_refuses_a_mixed_batch_and_stops_a_sequential_one(emu: GraphEmulator) -> None:
    raw = Raw(emu)
    url = "/users/z@contoso.com/calendar"
    missing = "/users/z@contoso.com/events/missing"
    # Two chains side by side: neither fully parallel nor fully sequential.
    mixed = raw.batch(
        [
            {"id": "1", "method": "DELETE", "url": missing},
            {"id": "2", "method": "GET", "url": url, "dependsOn": ["1"]},
            {"id": "3", "method": "GET", "url": url},
            {"id": "4", "method": "GET", "url": url, "dependsOn": ["3"]},
        ]
    )
    assert mixed.status_code == 400
    assert mixed.json()["error"]["message"] == (
        "Batch should be either fully sequential or fully parallel."
    )
    # Fully sequential: after the first failure, the rest fail with 424 without running.
    chain = [
        {"id": "1", "method": "GET", "url": url},
        {"id": "2", "method": "DELETE", "url": missing, "dependsOn": ["1"]},
        {"id": "3", "method": "GET", "url": url, "dependsOn": ["2"]},
        {"id": "4", "method": "GET", "url": url, "dependsOn": ["3"]},
    ]
    assert raw.statuses(chain) == {"1": 200, "2": 404, "3": 424, "4": 424}
    parallel = [{"id": str(i), "method": "GET", "url": url} for i in range(20)]
    assert set(raw.statuses(parallel).values()) == {200}
    assert emu.stats.batch_shapes == {"sequential": 1, "parallel": 1}


@pytest.mark.parametrize(
    "requests_, message",
    [
        ([{"id": str(i), "method": "GET", "url": "/users/z@x.com/calendar"} for i in range(21)],
         "cannot exceed 20"),
        ([{"id": "a", "method": "GET", "url": "/users/z@x.com/calendar"},
          {"id": "A", "method": "GET", "url": "/users/z@x.com/calendar"}], "unique"),
        ([{"id": "1", "method": "POST", "url": "/users/z@x.com/calendar/events", "body": {}}],
         "Content-Type"),
        ([{"id": "1", "method": "GET"}], "url"),
        ([{"id": "1", "method": "GET", "url": "/users/z@x.com/calendar", "dependsOn": ["2"]},
          {"id": "2", "method": "GET", "url": "/users/z@x.com/calendar"}], "dependsOn"),
        ([{"id": "1", "method": "GET", "url": "/users/z@x.com/calendar"},
          {"id": "2", "method": "GET", "url": "/users/z@x.com/calendar", "dependsOn": ["1"]},
          {"id": "3", "method": "GET", "url": "/users/z@x.com/calendar", "dependsOn": ["1"]}],
         "fully sequential or fully parallel"),
    ],
    ids=["more-than-20", "duplicate-ids", "body-without-content-type", "no-url",
         "depends-on-later", "fan-out"],
)  # fmt: skip
def test_emulator_refuses_malformed_batches(
    emu: GraphEmulator, requests_: list[dict[str, Any]], message: str
) -> None:
    reply = Raw(emu).batch(requests_)
    assert reply.status_code == 400 and message in reply.json()["error"]["message"]
    assert emu.stats.sub_requests == 0  # refused as a whole, nothing ran


def test_emulator_takes_windows_zones_and_the_documented_list_only(emu: GraphEmulator) -> None:
    raw = Raw(emu)
    url = "/users/tz@contoso.com/calendar/events"
    for zone in ("India Standard Time", "Asia/Kolkata", "Europe/Kyiv", "UTC"):
        assert raw.call("POST", url, event_json(zone), **JSON).status_code == 201, zone
    for zone in ("Asia/Ho_Chi_Minh", "America/Nuuk", "Pacific/Chatham", "Mars/Olympus"):
        reply = raw.call("POST", url, event_json(zone), **JSON)
        assert reply.status_code == 400, zone
        assert reply.json()["error"]["code"] == "TimeZoneNotSupportedException"
        assert zone in reply.json()["error"]["message"]
    made = raw.call("POST", url, event_json(), **JSON).json()
    patch = {"start": {"dateTime": "2025-03-03T09:00:00", "timeZone": "Asia/Saigon"}}
    reply = raw.call("PATCH", f"/users/tz@contoso.com/events/{made['id']}", patch, **JSON)
    assert reply.status_code == 400 and "Asia/Saigon" in reply.json()["error"]["message"]
    # Inside a batch the refusal is that request's own response.
    statuses = raw.statuses(
        [
            {
                "id": "1",
                "method": "POST",
                "url": url,
                "headers": JSON,
                "body": event_json("Asia/Saigon"),
            }
        ]
    )
    assert statuses == {"1": 400}


def test_emulator_event_body_rules(emu: GraphEmulator) -> None:
    raw = Raw(emu)
    url = "/users/rules@contoso.com/calendar/events"
    bad = {
        "showAs": event_json(showAs="away"),
        "sensitivity": event_json(sensitivity="secret"),
        "contentType": event_json(body={"contentType": "markdown", "content": "x"}),
        "all-day not at midnight": event_json(isAllDay=True),
        "end before start": event_json(end={"dateTime": "2025-03-03T08:00:00", "timeZone": "UTC"}),
        "property id": event_json(singleValueExtendedProperties=[{"id": "leavesyncKey", "value": "x"}]),
        "no start": {"subject": "x", "end": {"dateTime": "2025-03-03T09:00:00", "timeZone": "UTC"}},
    }  # fmt: skip
    for case, body in bad.items():
        assert raw.call("POST", url, body, **JSON).status_code == 400, case
    assert raw.call("POST", url, event_json()).status_code == 201  # requests sets Content-Type
    no_type = raw.session.post(
        raw.base + url, data=b"{}", headers={"Authorization": f"Bearer {raw.token}"}
    )
    assert no_type.status_code == 400
    made = raw.call("POST", url, event_json(transactionId="t-1"), **JSON).json()
    event_url = f"/users/rules@contoso.com/events/{made['id']}"
    assert raw.call("PATCH", event_url, {"transactionId": "t-2"}, **JSON).status_code == 400
    assert raw.call("GET", event_url).json()["subject"] == "x"
    assert raw.call("GET", url, Authorization="Bearer nope").status_code == 401
    [stored] = [e for e in emu.events("rules@contoso.com") if e["id"] == made["id"]]
    assert stored["transactionId"] == "t-1"


def test_emulator_transaction_id_guards_retries_only(emu: GraphEmulator) -> None:
    raw = Raw(emu)
    url = "/users/txn@contoso.com/calendar/events"
    emu.transaction_window = 0.3
    first = raw.call("POST", url, event_json(transactionId="t"), **JSON).json()
    raw.call("DELETE", f"/users/txn@contoso.com/events/{first['id']}")
    # A retry within the window gets the first answer and creates nothing, even now.
    again = raw.call("POST", url, event_json(transactionId="t"), **JSON)
    assert again.status_code == 201 and again.json()["id"] == first["id"]
    assert emu.events("txn@contoso.com") == []
    time.sleep(0.35)
    later = raw.call("POST", url, event_json(transactionId="t"), **JSON).json()
    assert later["id"] != first["id"] and len(emu.events("txn@contoso.com")) == 1


def test_emulator_filter_select_top_and_deleted_items(emu: GraphEmulator) -> None:
    raw = Raw(emu)
    box = "q@contoso.com"
    for value in ("leave-1", "leave-10", "LEAVE-2"):
        props = [{"id": KEY_ID, "value": value}]
        body = event_json(singleValueExtendedProperties=props)
        raw.call("POST", f"/users/{box}/calendar/events", body, **JSON)

    def keys(filter_: str, **extra: str) -> Any:
        params = {
            "$filter": filter_,
            "$expand": f"singleValueExtendedProperties($filter=id eq '{KEY_ID}')",
        }
        params.update(extra)
        reply = raw.session.get(
            f"{raw.base}/users/{box}/calendar/events",
            params=params,
            headers={"Authorization": f"Bearer {raw.token}"},
        )
        if reply.status_code != 200:
            return reply.status_code
        return sorted(e["singleValueExtendedProperties"][0]["value"] for e in reply.json()["value"])

    any_ = f"singleValueExtendedProperties/Any(ep: ep/id eq '{KEY_ID}' and "
    assert keys(any_ + "ep/value eq 'leave-1')") == ["leave-1"]
    assert keys(any_ + "ep/value eq 'leave-2')") == ["LEAVE-2"]  # values: case-insensitive
    assert keys(any_ + "startswith(ep/value, 'leave-1'))") == ["leave-1", "leave-10"]
    assert keys(any_ + "contains(ep/value, '-1'))") == ["leave-1", "leave-10"]
    assert keys(any_ + "ep/value ne 'leave-1')") == ["LEAVE-2", "leave-10"]
    assert keys(any_ + "ep/value eq 'leave-1' or ep/value eq 'leave-10')") == 400
    assert keys(any_ + "ep/value gt 'leave-1')") == 400
    assert keys(any_ + "ep/value eq 'leave-1')", **{"$select": "subject,nope"}) == 400
    assert keys(any_ + "ep/value eq 'leave-1')", **{"$top": "0"}) == 400
    emu.max_page_size = 2
    reply = raw.call("GET", f"/users/{box}/calendar/events?$top=1000&$select=subject").json()
    assert len(reply["value"]) == 2 and "@odata.nextLink" in reply
    assert set(reply["value"][0]) == {"id", "subject", "@odata.etag"}
    view = raw.call("GET", f"/users/{box}/calendarView")
    assert view.status_code == 400  # startDateTime and endDateTime are required
    # A deleted event leaves every listing, and sits in Deleted Items.
    [event] = [
        e for e in emu.events(box) if e["singleValueExtendedProperties"][0]["value"] == "leave-1"
    ]
    assert raw.call("DELETE", f"/users/{box}/events/{event['id']}").status_code == 204
    assert keys(any_ + "ep/value eq 'leave-1')") == []
    assert [e["id"] for e in emu.deleted_events(box)] == [event["id"]]
    assert raw.call("GET", f"/users/{box}/events/{event['id']}").status_code == 200


def test_the_emulator_counts_concurrency_it_would_refuse(emu: GraphEmulator) -> None:
    # Control for the concurrency tests: 8 parallel callers on one mailbox are seen (and refused).
    emu.latency = 0.05
    token = GraphCalendarProvider("m365", settings(emu)).signin.current()
    session = requests.Session()
    session.trust_env = False
    session.verify = str(emu.pki.ca_file)
    statuses: list[int] = []
    barrier = threading.Barrier(8)

    def call() -> None:
        barrier.wait()
        r = session.get(
            f"{emu.base_url}/v1.0/users/x@contoso.com/calendar",
            headers={"Authorization": f"Bearer {token}"},
        )
        statuses.append(r.status_code)

    threads = [threading.Thread(target=call) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert emu.stats.max_mailbox_concurrency > 4 and 429 in statuses


def test_rate_limits_are_respected(emu: GraphEmulator) -> None:
    emu.mailbox_limit = (40, 0.5)
    emu.app_limit = (120, 0.5)
    p = GraphCalendarProvider(
        "m365",
        settings(
            emu,
            mailbox_requests_per_window=40,
            mailbox_window_seconds=0.5,
            app_requests_per_window=120,
            app_window_seconds=0.5,
        ),
    )
    changes = [create(i, f"r{i % 2}@contoso.com") for i in range(100)]
    assert all(r.ok for r in p.apply(changes))
    assert emu.stats.throttled["mailbox"] == 0 and emu.stats.throttled["app"] == 0
