"""Team calendars on Google Workspace: secondary calendars shared with one writing user,
on the strict Calendar API emulator; what each calendar holds is read from its own store."""

from __future__ import annotations

import json

import pytest

from tests.emulators.google_calendar import GoogleCalendarEmulator, make_service_account
from tests.harness import Pipeline, make_config
from tests.pipelines.team_scenario import SCOPES, day, play, team_target
from tests.pipelines.test_google_pipeline import KEY_ENV
from tests.pipelines.test_google_pipeline import target as google_target

WRITER = "leavesync-bot@example.com"  # has "Make changes to events" on the team calendars
READER = "manager@example.com"
SALES = "c_sales0123@group.calendar.google.com"
ENG = "c_engineering0123@group.calendar.google.com"
PEOPLE = ["claire@example.com", "bob@example.com", "dan@example.com"]


@pytest.fixture
def google(monkeypatch):
    info, public_key = make_service_account()
    users = {WRITER, READER, *PEOPLE}
    emulator = GoogleCalendarEmulator(info["client_email"], public_key, users)
    for calendar in (SALES, ENG):
        emulator.add_calendar(calendar, {WRITER: "writer", READER: "reader"})
    emulator.start()
    monkeypatch.setenv(KEY_ENV, json.dumps(info))
    yield emulator
    emulator.stop()


def key_of(event: dict) -> str:
    return event["extendedProperties"]["private"]["leavesyncKey"]


def test_google_team_calendars_follow_hr(home, hr, google):
    settings = google_target(google, write_as=WRITER)["settings"]
    p = Pipeline(
        make_config(home, hr.url, targets=[team_target("team", "google", SALES, ENG, settings)])
    )

    def held() -> dict[str, list[str]]:
        out = {}
        for calendar in (SALES, ENG, WRITER, *PEOPLE):
            keys = sorted(key_of(e) for e in google.events(calendar))
            if keys:
                out[calendar] = keys
        return out

    ids = play(p, hr, held, SALES, ENG)
    events = {key_of(e): e for e in google.events(ENG)}
    assert events[f"team-leave-{ids.sick}"]["summary"] == "Bob Stone – Absent"
    for event in events.values():
        assert event["transparency"] == "transparent"
        assert event.get("visibility", "default") in ("default", "public")
        assert event["eventType"] == "default"  # never out-of-office in a shared calendar
        assert event["reminders"] == {"useDefault": False}
        assert not event.get("attendees")
    assert "dateTime" in events[f"team-leave-{ids.half}"]["start"]
    assert google.stats["writes_without_send_updates_none"] == 0


def test_check_tells_a_reader_from_a_writer(home, hr, google):
    provider_ok = Pipeline(
        make_config(
            home,
            hr.url,
            targets=[
                team_target(
                    "team", "google", SALES, ENG, google_target(google, write_as=WRITER)["settings"]
                ),
                {
                    **team_target(
                        "ro",
                        "google",
                        SALES,
                        ENG,
                        google_target(google, write_as=READER)["settings"],
                    )
                },
            ],
        )
    )
    ok = provider_ok.settings.provider("team").check(SALES)
    assert ok.ok, ok.render()
    refused = provider_ok.settings.provider("ro").check(SALES)
    assert not refused.ok
    assert "reader" in refused.render() and "Make changes to events" in refused.render()


def test_a_user_who_may_only_read_the_team_calendar_writes_nothing(home, hr, google):
    settings = google_target(google, write_as=READER)["settings"]
    p = Pipeline(
        make_config(home, hr.url, targets=[team_target("team", "google", SALES, ENG, settings)])
    )
    hr.employee(1, "FR", "claire@example.com", name="Claire Martin", team="Sales")
    hr.leave(1, day(1))
    _, outcome = p.sync(SCOPES)
    assert len(outcome.failed) == 1
    assert "writer access" in str(outcome.failed[0])
    assert google.events(SALES) == []
    assert p.state.snapshot_all("team").empty
