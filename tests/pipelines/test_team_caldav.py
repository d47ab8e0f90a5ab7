"""Team calendars on a real CalDAV server (Radicale over TLS): shared collections that the
service account may write, read back from the server's own storage with vobject."""

from __future__ import annotations

import pytest
import vobject

from tests.emulators.pki import make_test_pki
from tests.harness import Pipeline, make_config
from tests.pipelines.team_scenario import SCOPES, day, play, team_target
from tests.pipelines.test_caldav_pipeline import PASSWORD_ENV
from tests.servers.caldav_servers import SERVICE_PASSWORD, SERVICE_USER, RadicaleServer
from tests.servers.icalendar_rules import problems

SHARED = "absences@example.com"  # the account that owns the team calendars
PEOPLE = ["claire@example.com", "bob@example.com", "dan@example.com"]


@pytest.fixture
def radicale(tmp_path, monkeypatch):
    pki = make_test_pki(tmp_path / "pki")
    server = RadicaleServer(tmp_path / "radicale", [SHARED, *PEOPLE], pki, service_shared=[SHARED])
    server.start()
    monkeypatch.setenv(PASSWORD_ENV, SERVICE_PASSWORD)
    for calendar in ("sales", "engineering"):
        server.make_calendar(SHARED, calendar)
    yield server
    server.stop()


def test_caldav_team_calendars_follow_hr(home, hr, radicale):
    sales = radicale.calendar_url(SHARED, "sales")
    eng = radicale.calendar_url(SHARED, "engineering")
    settings = {
        "server_url": radicale.base_url + "/",
        "username": SERVICE_USER,
        "password_env": PASSWORD_ENV,
        "ca_bundle": radicale.ca_bundle,
    }
    p = Pipeline(
        make_config(home, hr.url, targets=[team_target("team", "caldav", sales, eng, settings)])
    )

    def stored(name: str) -> dict[str, object]:
        events = {}
        for text in radicale.stored_files(SHARED, name).values():
            crlf = text.replace("\r\n", "\n").replace("\n", "\r\n")
            assert problems(crlf, calendar_object_resource=True) == []
            event = vobject.readOne(text).vevent
            events.setdefault(event.x_leavesync_key.value, []).append(event)
        return events

    def held() -> dict[str, list[str]]:
        out = {}
        for url, name in ((sales, "sales"), (eng, "engineering")):
            keys = sorted(k for k, copies in stored(name).items() for _ in copies)
            if keys:
                out[url] = keys
        return out

    ids = play(p, hr, held, sales, eng)
    events = {k: v[0] for k, v in stored("engineering").items()}
    assert events[f"team-leave-{ids.sick}"].summary.value == "Bob Stone – Absent"
    for event in events.values():
        assert event.transp.value == "TRANSPARENT"
        assert event.contents["class"][0].value == "PUBLIC"
        assert "valarm" not in event.contents and "attendee" not in event.contents
    # Nothing went to anyone's own calendar.
    assert all(
        not (radicale.storage / "collection-root" / u).exists()
        or not list((radicale.storage / "collection-root" / u).rglob("*.ics"))
        for u in PEOPLE
    )
    provider = p.settings.provider("team")
    report = provider.check(sales)
    assert report.ok, report.render()


def test_a_team_calendar_url_on_another_server_gets_no_credentials(home, hr, radicale):
    settings = {
        "server_url": radicale.base_url + "/",
        "username": SERVICE_USER,
        "password_env": PASSWORD_ENV,
        "ca_bundle": radicale.ca_bundle,
    }
    elsewhere = "https://dav.example.net/shared/sales/"
    target = team_target("team", "caldav", elsewhere, elsewhere, settings)
    p = Pipeline(make_config(home, hr.url, targets=[target]))
    hr.employee(1, "FR", "claire@example.com", name="Claire Martin", team="Sales")
    hr.leave(1, day(1))

    _, outcome = p.sync(SCOPES)
    assert len(outcome.failed) == 1
    assert "not on the target's server" in str(outcome.failed[0])
