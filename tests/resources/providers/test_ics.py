"""The ics feeds: every file a valid RFC 5545 calendar, read by vobject (not the writer's library)."""

from __future__ import annotations

import datetime as dt

import vobject

from resources.providers.base import EventChange
from resources.providers.ics import IcsProvider, IcsSettings
from tests.resources.providers.payloads import TIMED, payload
from tests.servers.icalendar_rules import problems

ANN = "ann@example.com"


def apply(provider: IcsProvider, *changes: EventChange) -> None:
    results = list(provider.apply(changes))
    assert all(r.ok for r in results), [r.error for r in results]


def feed_text(provider: IcsProvider) -> str:
    return provider.path_for(ANN).read_bytes().decode("utf-8")


def test_a_feed_whose_events_are_all_deleted_is_still_a_valid_calendar(tmp_path):
    provider = IcsProvider("feeds", IcsSettings(directory=str(tmp_path)))
    a, b = payload("leave-1"), payload("leave-2", **TIMED)
    apply(
        provider,
        EventChange("create", a.event_key, ANN, a),
        EventChange("create", b.event_key, ANN, b),
    )
    assert problems(feed_text(provider)) == []

    apply(provider, *(EventChange("delete", k, ANN) for k in ("leave-1", "leave-2")))
    text = feed_text(provider)
    assert problems(text) == []
    cal = vobject.readOne(text)
    assert getattr(cal, "vevent_list", []) == []
    # The one component left is the zone of the events it held: no invented event.
    assert [c.name for c in cal.getChildren() if isinstance(c, vobject.base.Component)] == [
        "VTIMEZONE"
    ]
    assert cal.vtimezone.tzid.value == "Europe/Paris"
    assert list(provider.read_back([ANN], dt.date(2026, 1, 1), dt.date(2027, 1, 1))) == []

    # Events back: the placeholder zone goes (timed events are in UTC), the feed stays valid.
    apply(provider, EventChange("create", a.event_key, ANN, a))
    cal = vobject.readOne(feed_text(provider))
    assert problems(feed_text(provider)) == []
    assert not hasattr(cal, "vtimezone") and len(cal.vevent_list) == 1


def test_every_kind_of_event_is_valid_rfc5545_and_reads_back_unchanged(tmp_path):
    provider = IcsProvider("feeds", IcsSettings(directory=str(tmp_path)))
    events = [
        payload("leave-1"),
        payload("leave-2", **TIMED, status="tentative", show_as="tentative"),
        payload("leave-3", title="Training", show_as="busy", categories="HR,Leave"),
        payload("leave-4", description="Back on Monday; ask Bob", private=False, timezone="UTC"),
        payload("leave-5", **TIMED, timezone="America/New_York", show_as="free"),
    ]
    apply(provider, *(EventChange("create", p.event_key, ANN, p) for p in events))
    text = feed_text(provider)
    assert problems(text) == []
    cal = vobject.readOne(text)
    by_uid = {e.uid.value: e for e in cal.vevent_list}
    assert by_uid["leave-1@leavesync"].dtstart.value == dt.date(2026, 3, 2)
    assert by_uid["leave-1@leavesync"].dtend.value == dt.date(2026, 3, 5)  # exclusive
    assert by_uid["leave-1@leavesync"].contents["class"][0].value == "PRIVATE"
    timed = by_uid["leave-2@leavesync"]
    assert timed.dtstart.value == dt.datetime(2026, 3, 30, 11, 0, tzinfo=dt.UTC)  # CEST
    assert timed.status.value == "TENTATIVE"
    for event in cal.vevent_list:
        assert "valarm" not in event.contents and "attendee" not in event.contents
    back = {
        r.event_key: r.payload
        for r in provider.read_back([ANN], dt.date(2026, 1, 1), dt.date(2027, 1, 1))
    }
    assert {k: p.fingerprint for k, p in back.items()} == {
        p.event_key: p.fingerprint for p in events
    }


def test_a_delete_for_a_calendar_that_has_no_feed_writes_nothing(tmp_path):
    provider = IcsProvider("feeds", IcsSettings(directory=str(tmp_path)))
    apply(provider, EventChange("delete", "leave-9", ANN))
    assert not provider.path_for(ANN).exists()
