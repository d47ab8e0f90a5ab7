"""Private feed names: an HMAC of the address, rotatable, migrated from ``<email>.ics``."""

from __future__ import annotations

import json

import pytest
from icalendar import Calendar

from resources.providers.base import EventChange, FatalProviderError
from resources.providers.ics import ROTATIONS_FILE, IcsProvider, IcsSettings, feed_file_name
from tests.resources.providers.test_ics import apply, payload

KEY = "k3y-for-tests-0123456789abcdef"
ANN, BOB, OBRIEN = "ann@example.com", "bob@example.com", "o'brien@example.com"


def provider(tmp_path, monkeypatch, key: str | None = KEY, **settings) -> IcsProvider:
    if key is None:
        monkeypatch.delenv("LEAVESYNC_FEED_KEY", raising=False)
    else:
        monkeypatch.setenv("LEAVESYNC_FEED_KEY", key)
    return IcsProvider("feeds", IcsSettings(directory=str(tmp_path / "feeds"), **settings))


def create(p: IcsProvider, calendar: str, key: str) -> None:
    apply(p, EventChange("create", key, calendar, payload(key)))


def keys_in(path) -> set[str]:
    return {str(e["UID"]) for e in Calendar.from_ical(path.read_bytes()).walk("VEVENT")}


def test_name_is_unguessable_from_the_address_and_stable():
    name = feed_file_name(ANN, KEY.encode())
    assert len(name) == len("x" * 32 + ".ics") and name.endswith(".ics")
    assert "ann" not in name and "example" not in name
    assert feed_file_name(" Ann@Example.com ", KEY.encode()) == name  # calendars are lower-case
    assert feed_file_name(ANN, b"another key") != name
    assert feed_file_name(ANN, KEY.encode(), rotation=1) != name
    assert feed_file_name(BOB, KEY.encode()) != name


def test_feeds_are_written_and_read_back_under_private_names(tmp_path, monkeypatch):
    p = provider(tmp_path, monkeypatch, base_url="https://cal.example.com/leaves/")
    create(p, ANN, "leave-1")

    [path] = (tmp_path / "feeds").glob("*.ics")
    assert path.name == feed_file_name(ANN, KEY.encode())
    assert p.feed_url(ANN) == f"https://cal.example.com/leaves/{path.name}"
    assert [e.event_key for e in p.read_back([ANN], *_window())] == ["leave-1"]


def test_feeds_under_email_names_move_to_private_names_and_lose_nothing(tmp_path, monkeypatch):
    legacy = provider(tmp_path, monkeypatch, key=None)
    create(legacy, ANN, "leave-1")
    create(legacy, BOB, "leave-2")
    create(legacy, OBRIEN, "leave-3")
    feeds = tmp_path / "feeds"
    before = {p.name: p.read_bytes() for p in feeds.glob("*.ics")}
    assert set(before) == {"ann@example.com.ics", "bob@example.com.ics", "o_brien@example.com.ics"}

    p = provider(tmp_path, monkeypatch)
    create(p, ANN, "leave-4")  # the first apply moves every feed it can name

    names = {path.name for path in feeds.glob("*.ics")}
    assert "ann@example.com.ics" not in names and "bob@example.com.ics" not in names
    bob = feeds / feed_file_name(BOB, KEY.encode())
    assert bob.read_bytes() == before["bob@example.com.ics"]  # untouched, only renamed
    assert keys_in(feeds / feed_file_name(ANN, KEY.encode())) == {
        "leave-1@leavesync",
        "leave-4@leavesync",
    }
    # An address the old sanitising changed moves when its mailbox is next seen.
    assert "o_brien@example.com.ics" in names
    read = {(e.calendar, e.event_key) for e in p.read_back([ANN, BOB, OBRIEN], *_window())}
    assert read == {(ANN, "leave-1"), (ANN, "leave-4"), (BOB, "leave-2"), (OBRIEN, "leave-3")}
    assert not any("@" in path.name for path in feeds.glob("*.ics"))


def test_rotation_moves_one_feed_to_a_new_name(tmp_path, monkeypatch):
    p = provider(tmp_path, monkeypatch, base_url="https://cal.example.com/leaves")
    create(p, ANN, "leave-1")
    create(p, BOB, "leave-2")
    old_url, old_path, bob_url = p.feed_url(ANN), p.path_for(ANN), p.feed_url(BOB)

    new_path = p.rotate(ANN)

    assert not old_path.exists() and keys_in(new_path) == {"leave-1@leavesync"}
    assert p.feed_url(ANN) != old_url and p.feed_url(ANN).endswith(new_path.name)
    assert p.feed_url(BOB) == bob_url
    # A new process (the next sync) writes to the new name.
    again = provider(tmp_path, monkeypatch)
    create(again, ANN, "leave-3")
    assert keys_in(new_path) == {"leave-1@leavesync", "leave-3@leavesync"}
    assert not old_path.exists()
    # The rotation file tells nothing without the key: no address, no feed name.
    text = (tmp_path / "feeds" / ROTATIONS_FILE).read_text()
    assert "ann" not in text and new_path.stem not in text and old_path.stem not in text
    assert list(json.loads(text).values()) == [1]


def test_a_rotation_interrupted_before_the_move_completes_later(tmp_path, monkeypatch):
    p = provider(tmp_path, monkeypatch)
    create(p, ANN, "leave-1")
    old = p.path_for(ANN)
    rotations = {p._rotation_id(ANN): 1}  # written first; the process died before the move
    (tmp_path / "feeds" / ROTATIONS_FILE).write_text(json.dumps(rotations))

    path = provider(tmp_path, monkeypatch).path_for(ANN)

    assert path.name == feed_file_name(ANN, KEY.encode(), rotation=1)
    assert not old.exists() and keys_in(path) == {"leave-1@leavesync"}


def test_served_feeds_need_the_key(tmp_path, monkeypatch):
    served = provider(tmp_path, monkeypatch, key=None, base_url="https://cal.example.com/")
    with pytest.raises(FatalProviderError, match="LEAVESYNC_FEED_KEY.*guessable"):
        served.preflight()
    assert not served.check(ANN).ok
    with pytest.raises(FatalProviderError, match="without a key"):
        served.rotate(ANN)
    provider(tmp_path, monkeypatch, base_url="https://cal.example.com/").preflight()
    assert provider(tmp_path, monkeypatch).check(ANN).ok


def _window():
    import datetime as dt

    return dt.date(2026, 1, 1), dt.date(2027, 1, 1)


def test_team_feeds_get_private_rotatable_names_too(tmp_path, monkeypatch):
    legacy = provider(tmp_path, monkeypatch, key=None)
    create(legacy, "teams/FR", "team-leave-1")
    assert (tmp_path / "feeds" / "teams" / "FR.ics").exists()

    p = provider(tmp_path, monkeypatch, base_url="https://cal.example.com/leaves/")
    create(p, "teams/FR", "team-leave-2")
    [path] = (tmp_path / "feeds" / "teams").glob("*.ics")
    assert path.name == feed_file_name("teams/FR", KEY.encode()) and "FR" not in path.name
    assert keys_in(path) == {"team-leave-1@leavesync", "team-leave-2@leavesync"}
    assert p.feed_url("teams/FR") == f"https://cal.example.com/leaves/teams/{path.name}"

    moved = p.rotate("teams/FR")
    assert moved.parent == path.parent and moved.name != path.name and not path.exists()
    assert keys_in(moved) == {"team-leave-1@leavesync", "team-leave-2@leavesync"}


def test_a_rotation_during_a_feed_write_never_brings_the_old_name_back(tmp_path, monkeypatch):
    """A sync rewriting Ann's feed while `leavesync feeds --rotate` runs in another process:
    the rotation waits for the write, so the change lands under the new name and the old
    name (its URL) stays gone."""
    import threading
    import time

    import resources.providers.ics as ics

    p = provider(tmp_path, monkeypatch)
    create(p, ANN, "leave-1")
    old = p.path_for(ANN)
    writing, write = threading.Event(), ics._write_atomically

    def slow_write(path, data):
        writing.set()
        time.sleep(0.5)  # the rotation is asked for now, mid-write
        write(path, data)

    monkeypatch.setattr(ics, "_write_atomically", slow_write)
    sync = threading.Thread(target=create, args=(p, ANN, "leave-2"))
    sync.start()
    assert writing.wait(5)
    monkeypatch.setattr(ics, "_write_atomically", write)  # the rotation's own writes
    new = provider(tmp_path, monkeypatch).rotate(ANN)
    sync.join(5)

    assert not old.exists()
    assert sorted(path.name for path in (tmp_path / "feeds").glob("*.ics")) == [new.name]
    assert keys_in(new) == {"leave-1@leavesync", "leave-2@leavesync"}
