"""Feeds changed in place: one change re-renders one event; the others keep their bytes."""

from __future__ import annotations

import vobject

from resources.providers.base import EventChange
from resources.providers.ics import IcsProvider, IcsSettings
from tests.resources.providers.test_ics import TIMED, payload
from tests.servers.icalendar_rules import problems

TEAM = "teams/sales"


def test_one_change_rewrites_only_its_event_and_the_feed_stays_valid(tmp_path):
    provider = IcsProvider("team", IcsSettings(directory=str(tmp_path)))
    events = [payload(f"team-leave-{n}", **(TIMED if n % 3 == 0 else {})) for n in range(30)]
    list(provider.apply([EventChange("create", p.event_key, TEAM, p) for p in events]))
    path = provider.path_for(TEAM)
    assert path == tmp_path / "teams" / "sales.ics"
    before = path.read_bytes()

    changed = payload("team-leave-7", title="Claire Martin – Absent")
    (result,) = provider.apply([EventChange("update", changed.event_key, TEAM, changed)])
    assert result.ok and result.version == "1"
    after = path.read_bytes()
    old_blocks = before.split(b"BEGIN:VEVENT")
    new_blocks = after.split(b"BEGIN:VEVENT")
    differing = [i for i, (a, b) in enumerate(zip(old_blocks, new_blocks, strict=True)) if a != b]
    assert len(differing) == 1, "only the changed event's bytes differ"
    text = after.decode("utf-8")
    assert problems(text) == []
    cal = vobject.readOne(text)
    titles = {e.uid.value: e.summary.value for e in cal.vevent_list}
    assert titles["team-leave-7@leavesync"] == "Claire Martin – Absent"
    assert len(titles) == 30


def test_keys_with_escaped_and_folded_text_are_found_again(tmp_path):
    provider = IcsProvider("team", IcsSettings(directory=str(tmp_path)))
    key = "team-leave-" + "x,y;z\\" + "9" * 90  # escaped characters, a line folded twice
    event = payload(key)
    list(provider.apply([EventChange("create", key, TEAM, event)]))
    (result,) = provider.apply([EventChange("update", key, TEAM, payload(key, title="Off"))])
    assert result.version == "1", "found again: its SEQUENCE went up, no second copy"
    cal = vobject.readOne(provider.path_for(TEAM).read_text(encoding="utf-8"))
    assert [e.uid.value for e in cal.vevent_list] == [f"{key}@leavesync"]
    (gone,) = provider.apply([EventChange("delete", key, TEAM)])
    assert gone.ok
    cal = vobject.readOne(provider.path_for(TEAM).read_text(encoding="utf-8"))
    assert getattr(cal, "vevent_list", []) == []


def test_a_feed_that_is_not_ours_is_reported_never_overwritten(tmp_path):
    provider = IcsProvider("team", IcsSettings(directory=str(tmp_path)))
    path = provider.path_for(TEAM)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"BEGIN:VCALENDAR\r\nBEGIN:VTODO\r\nEND:VTODO\r\nEND:VCALENDAR\r\n")
    event = payload("team-leave-1")
    (result,) = provider.apply([EventChange("create", event.event_key, TEAM, event)])
    assert not result.ok and result.permanent and "unreadable feed" in result.error
    assert path.read_bytes().startswith(b"BEGIN:VCALENDAR\r\nBEGIN:VTODO")
