"""HR → diff → real CalDAV servers → snapshot, then every kind of change, drift and a crash."""

from __future__ import annotations

import datetime as dt
import itertools
import os
import uuid

import pytest
import vobject

from assets.drift import measure_drift
from tests.emulators.pki import make_test_pki
from tests.harness import Pipeline, make_config, scope, sync_in_subprocess
from tests.servers.caldav_servers import (
    SERVICE_PASSWORD,
    SERVICE_USER,
    RadicaleServer,
)
from tests.servers.icalendar_rules import problems

PASSWORD_ENV = "LEAVESYNC_TEST_CALDAV_PASSWORD"
D = dt.date(2026, 3, 2)
_people = itertools.count(1)


@pytest.fixture(scope="module")
def radicale_https(tmp_path_factory):
    pki = make_test_pki(tmp_path_factory.mktemp("pki"))
    users = [f"p{i}@example.com" for i in range(1, 120)]
    server = RadicaleServer(tmp_path_factory.mktemp("radicale"), users, pki)
    yield server.start()
    server.stop()


@pytest.fixture(params=["radicale_https", "xandikos"])
def server(request, monkeypatch):
    monkeypatch.setenv(PASSWORD_ENV, SERVICE_PASSWORD)
    return request.getfixturevalue(request.param)


def people(server, n: int) -> list[str]:
    """Fresh employees, each with the calendar the service account writes into."""
    emails = [f"p{next(_people)}@example.com" for _ in range(n)]
    for email in emails:
        server.make_calendar(email)
    return emails


def target(server) -> dict:
    settings = {
        "calendar_url": server.base_url + "/{email}/leaves/",
        "username": SERVICE_USER,
        "password_env": PASSWORD_ENV,
        "max_parallel_calendars": 3,
    }
    if server.ca_bundle:
        settings["ca_bundle"] = server.ca_bundle
    return {"name": "dav", "type": "caldav", "settings": settings}


SCOPES = [scope("FR", D, D + dt.timedelta(days=40)), scope("US", D, D + dt.timedelta(days=40))]


def reconcile(p: Pipeline) -> dict:
    result, outcome = p.sync(SCOPES)
    assert not result.refused, [r.message() for r in result.refusals]
    assert outcome is not None and not outcome.failed, outcome.failed
    return result.diff.counts()[["create", "update", "delete"]].sum().to_dict()


def stored(server, emails: list[str]) -> dict[str, dict[str, object]]:
    """Each employee's calendar as the server stores it, parsed by vobject: {key: VEVENT}."""
    out = {}
    for email in emails:
        events = {}
        for name, text in server.stored_files(email).items():
            crlf = text.replace("\r\n", "\n").replace("\n", "\r\n")
            assert problems(crlf, calendar_object_resource=True) == [], (email, name)
            event = vobject.readOne(text).vevent
            key = event.x_leavesync_key.value
            assert key not in events, f"{key} twice in {email}"
            assert name == f"{key}.ics" or name.startswith("renamed")
            events[key] = event
        out[email] = events
    return out


def test_hr_to_caldav_then_edit_cancel_move_opt_out_and_drift_repair(home, hr, server):
    ann, bob, cy = people(server, 3)
    hr.employee(1, "FR", ann)
    hr.employee(2, "US", bob)
    hr.employee(3, "FR", cy)
    ids = {
        "whole": hr.leave(1, D, D + dt.timedelta(days=2)),
        "pending": hr.leave(1, D + dt.timedelta(days=6), status="pending"),
        "half": hr.leave(2, D + dt.timedelta(days=3), start_half="PM"),
        "hourly": hr.leave(
            2, D + dt.timedelta(days=8), start_time=dt.time(14), end_time=dt.time(16)
        ),
        "cy": hr.leave(3, D + dt.timedelta(days=1)),
    }
    key = {name: f"leave-{i}" for name, i in ids.items()}
    p = Pipeline(make_config(home, hr.url, targets=[target(server)]))
    provider = p.settings.provider("dav")

    assert reconcile(p) == {"create": 5, "update": 0, "delete": 0}
    cal = stored(server, [ann, bob, cy])
    assert {e: sorted(v) for e, v in cal.items()} == {
        ann: sorted([key["whole"], key["pending"]]),
        bob: sorted([key["half"], key["hourly"]]),
        cy: [key["cy"]],
    }
    assert cal[ann][key["whole"]].dtend.value == D + dt.timedelta(days=3)  # exclusive
    assert cal[ann][key["pending"]].status.value == "TENTATIVE"
    half = cal[bob][key["half"]].dtstart.value  # 12:30 New York, the US midday
    assert half.astimezone(dt.UTC) == dt.datetime(2026, 3, 5, 17, 30, tzinfo=dt.UTC)
    snap = p.state.snapshot_all("dav").set_index("event_key")
    for email, events in cal.items():
        for k in events:
            with server.session(email) as s:
                live = s.get(server.calendar_url(email) + f"{k}.ics").headers["ETag"]
            assert snap.loc[k, "version"] == live and snap.loc[k, "calendar"] == email

    writes = provider.requests["PUT"] + provider.requests["DELETE"]
    assert reconcile(p) == {"create": 0, "update": 0, "delete": 0}
    assert provider.requests["PUT"] + provider.requests["DELETE"] == writes  # nothing sent

    hr.update_leave(ids["whole"], end_date=D + dt.timedelta(days=4))  # edit
    hr.update_leave(ids["pending"], status="cancelled")  # cancel
    hr.update_leave(
        ids["half"], start_date=D + dt.timedelta(days=20), end_date=D + dt.timedelta(days=20)
    )
    hr.update_employee(3, sync_enabled=False)  # opt-out
    assert reconcile(p) == {"create": 0, "update": 2, "delete": 2}
    cal = stored(server, [ann, bob, cy])
    assert {e: sorted(v) for e, v in cal.items()} == {
        ann: [key["whole"]],
        bob: sorted([key["half"], key["hourly"]]),
        cy: [],
    }
    assert cal[ann][key["whole"]].dtend.value == D + dt.timedelta(days=5)
    assert cal[bob][key["half"]].dtstart.value.date() == D + dt.timedelta(days=20)

    # Someone edits one of our events in the server and deletes another; drift repairs both.
    url = server.calendar_url(bob)
    with server.session(bob) as s:
        text = s.get(url + f"{key['half']}.ics").text
        edited = text.replace("SUMMARY:Absent", "SUMMARY:Gone fishing")
        assert s.put(url + f"{key['half']}.ics", data=edited.encode()).status_code in (201, 204)
        assert s.delete(url + f"{key['hourly']}.ics").status_code in (200, 204)
    report = measure_drift(
        p.plan(SCOPES), p.cfg, p.hr, p.state, p.settings.provider, uuid.uuid4().hex
    )
    found = sorted(zip(report.findings["kind"], report.findings["event_key"], report.findings["repaired"], strict=True))  # fmt: skip
    assert found == sorted([("modified", key["half"], True), ("missing", key["hourly"], True)])
    cal = stored(server, [bob])[bob]
    assert sorted(cal) == sorted([key["half"], key["hourly"]])
    assert cal[key["half"]].summary.value == "Absent"
    again = measure_drift(
        p.plan(SCOPES), p.cfg, p.hr, p.state, p.settings.provider, uuid.uuid4().hex
    )
    assert again.findings.empty
    assert reconcile(p) == {"create": 0, "update": 0, "delete": 0}


def die_after_writes(crash_after: int) -> None:
    """In the crashing run: exit once ``crash_after`` events are written, before their rows."""
    from resources.providers.caldav import apply

    original = apply.CalendarWriter._done
    written = 0

    def done_then_maybe_die(self, change, href, reply):
        nonlocal written
        result = original(self, change, href, reply)
        written += 1
        if written == crash_after:
            os._exit(9)  # the event is on the server, its snapshot row is not
        return result

    apply.CalendarWriter._done = done_then_maybe_die


@pytest.mark.parametrize("crash_after", [1, 7])
def test_killed_mid_apply_then_rerun_leaves_every_event_exactly_once(
    home, hr, radicale_https, crash_after, monkeypatch
):
    server = radicale_https
    monkeypatch.setenv(PASSWORD_ENV, SERVICE_PASSWORD)
    emails = people(server, 4)
    for i, email in enumerate(emails, 1):
        hr.employee(i, "FR", email)
        hr.leave(i, D + dt.timedelta(days=i), D + dt.timedelta(days=i + 1))
        hr.leave(i, D + dt.timedelta(days=i + 10))
        hr.leave(i, D + dt.timedelta(days=i + 20), start_half="PM")
    cfg = make_config(home, hr.url, targets=[target(server)])
    scopes = [scope("FR", D, D + dt.timedelta(days=40))]
    proc = sync_in_subprocess(cfg, scopes, die_after_writes, crash_after)
    assert proc.returncode == 9, proc.stderr
    on_server = sum(len(server.stored_files(e)) for e in emails)
    assert crash_after <= on_server < 12

    rerun = sync_in_subprocess(cfg, scopes)
    assert rerun.returncode == 0, rerun.stderr
    cal = stored(server, emails)  # fails on any key held twice
    keys = sorted(k for events in cal.values() for k in events)
    assert len(keys) == 12
    from resources.state import StateStore

    snap = StateStore(url=f"sqlite:///{home / 'state.sqlite'}").snapshot_all("dav")
    assert sorted(snap["event_key"]) == keys
    assert snap["version"].notna().all() and snap["provider_event_id"].notna().all()
