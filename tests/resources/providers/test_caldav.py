"""The caldav target against real CalDAV servers (Radicale over HTTP and HTTPS, Xandikos)."""

from __future__ import annotations

import datetime as dt
import itertools
from types import SimpleNamespace

import pytest
import vobject

from resources.providers import provider_class
from resources.providers.base import EventChange, EventPayload, FatalProviderError
from resources.providers.caldav import CalDavProvider, CalDavSettings
from resources.providers.caldav import session as session_module
from tests.emulators.pki import make_test_pki
from tests.resources.providers.payloads import TIMED, payload
from tests.servers.caldav_servers import (
    SERVICE_PASSWORD,
    SERVICE_USER,
    RadicaleServer,
)
from tests.servers.fault_proxy import Fault, FaultProxy
from tests.servers.icalendar_rules import problems

PASSWORD_ENV = "LEAVESYNC_TEST_CALDAV_PASSWORD"
LOCKED = "locked@example.com"  # the service account may only read this one's calendar
_users = itertools.count(1)


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return make_test_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def radicale_https(tmp_path_factory, pki):
    users = [f"u{i}@example.com" for i in range(1, 200)] + [LOCKED]
    server = RadicaleServer(tmp_path_factory.mktemp("radicale-https"), users, pki, [LOCKED])
    server.start()
    server.make_calendar(LOCKED)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def radicale_http(tmp_path_factory):
    users = [f"u{i}@example.com" for i in range(1, 200)]
    server = RadicaleServer(tmp_path_factory.mktemp("radicale-http"), users)
    yield server.start()
    server.stop()


@pytest.fixture(params=["radicale_https", "radicale_http", "xandikos"])
def server(request):
    return request.getfixturevalue(request.param)


@pytest.fixture(autouse=True)
def password(monkeypatch):
    monkeypatch.setenv(PASSWORD_ENV, SERVICE_PASSWORD)


def fresh_user(server, calendar: bool = True) -> str:
    user = f"u{next(_users)}@example.com"
    if calendar:
        server.make_calendar(user)
    return user


def provider_for(server, base_url: str | None = None, **settings) -> CalDavProvider:
    values = dict(
        calendar_url=(base_url or server.base_url) + "/{email}/leaves/",
        username=SERVICE_USER,
        password_env=PASSWORD_ENV,
        ca_bundle=server.ca_bundle,
        backoff_base_seconds=0.01,
    )
    values.update(settings)
    return CalDavProvider("dav", CalDavSettings(**values))


def create(user: str, p: EventPayload) -> EventChange:
    return EventChange("create", p.event_key, user, p)


def apply_ok(provider, *changes):
    results = list(provider.apply(changes))
    assert sorted(r.change.event_key for r in results) == sorted(c.event_key for c in changes)
    assert all(r.ok for r in results), [r.error for r in results]
    return {r.change.event_key: r for r in results}


def window(provider, *users):
    return {
        r.event_key: r
        for r in provider.read_back(list(users), dt.date(2026, 1, 1), dt.date(2027, 1, 1))
    }


def test_registered_as_type_caldav():
    assert provider_class("caldav") is CalDavProvider


def test_first_sync_stores_valid_rfc4791_resources_read_back_unchanged(server):
    user = fresh_user(server)
    provider = provider_for(server)
    events = [
        payload("leave-1"),
        payload("leave-2", **TIMED, status="tentative", show_as="tentative"),
        payload("leave-3", **TIMED, timezone="UTC", show_as="free", categories="HR,Leave"),
    ]
    results = apply_ok(provider, *(create(user, p) for p in events))
    assert results["leave-1"].provider_event_id.endswith("/leaves/leave-1.ics")
    assert not any(r.adopted for r in results.values())

    files = server.stored_files(user)
    assert sorted(files) == ["leave-1.ics", "leave-2.ics", "leave-3.ics"]
    for text in files.values():
        assert problems(text.replace("\r\n", "\n").replace("\n", "\r\n"), True) == []
    whole = vobject.readOne(files["leave-1.ics"]).vevent
    assert whole.uid.value == "leave-1@leavesync"
    assert whole.dtstart.value == dt.date(2026, 3, 2) and whole.dtend.value == dt.date(2026, 3, 5)
    assert whole.contents["class"][0].value == "PRIVATE" and whole.transp.value == "OPAQUE"
    assert whole.status.value == "CONFIRMED" and whole.x_leavesync_key.value == "leave-1"
    cal = vobject.readOne(files["leave-2.ics"])
    timed = cal.vevent
    assert "DTSTART;TZID=Europe/Paris:20260330T130000" in files["leave-2.ics"]
    assert cal.vtimezone.tzid.value == "Europe/Paris"
    assert timed.dtstart.value.astimezone(dt.UTC) == dt.datetime(2026, 3, 30, 11, tzinfo=dt.UTC)
    assert timed.status.value == "TENTATIVE"
    for text in files.values():
        event = vobject.readOne(text).vevent
        assert "valarm" not in event.contents and "attendee" not in event.contents
    assert "DTSTART:20260330T130000Z" in files["leave-3.ics"]

    back = window(provider, user)
    assert {k: r.payload.fingerprint for k, r in back.items()} == {
        p.event_key: p.fingerprint for p in events
    }
    assert back["leave-2"].version == results["leave-2"].version  # the ETag


def test_a_re_sent_create_is_adopted_never_duplicated(server):
    user = fresh_user(server)
    provider = provider_for(server)
    first = apply_ok(provider, create(user, payload("leave-1")))["leave-1"]

    # Lost snapshot: the same create again, same content, then with new content.
    again = apply_ok(provider, create(user, payload("leave-1")))["leave-1"]
    assert again.adopted and again.version == first.version
    changed = apply_ok(provider, create(user, payload("leave-1", title="Away")))["leave-1"]
    assert changed.adopted and changed.version != first.version
    assert list(server.stored_files(user)) == ["leave-1.ics"]
    assert window(provider, user)["leave-1"].payload.title == "Away"


def test_our_uid_under_another_resource_name_is_adopted(server):
    user = fresh_user(server)
    provider = provider_for(server)
    body = _resource_text(payload("leave-7"))
    with server.session(user) as s:
        r = s.put(
            server.calendar_url(user) + "renamed-by-a-client.ics",
            data=body.encode(),
            headers={"Content-Type": "text/calendar"},
        )
        assert r.status_code in (201, 204)

    result = apply_ok(provider, create(user, payload("leave-7", title="Holiday")))["leave-7"]
    assert result.adopted and result.provider_event_id.endswith("/renamed-by-a-client.ics")
    assert list(server.stored_files(user)) == ["renamed-by-a-client.ics"]
    assert window(provider, user)["leave-7"].payload.title == "Holiday"


def _resource_text(p: EventPayload) -> str:
    from resources.providers.caldav.mapping import body_for

    return body_for(p, False, dt.datetime(2026, 1, 1, tzinfo=dt.UTC)).decode()


def test_update_after_an_edit_rereads_and_after_a_delete_recreates(server):
    user = fresh_user(server)
    provider = provider_for(server)
    done = apply_ok(provider, create(user, payload("leave-1")), create(user, payload("leave-2")))
    url = server.calendar_url(user)
    with server.session(user) as s:  # the employee edits one and deletes the other
        text = s.get(url + "leave-1.ics").text.replace("SUMMARY:Absent", "SUMMARY:Mine now")
        assert s.put(url + "leave-1.ics", data=text.encode()).status_code in (201, 204)
        assert s.delete(url + "leave-2.ics").status_code in (200, 204)

    updates = [
        EventChange(
            "update",
            k,
            user,
            payload(k, end="2026-03-06"),
            done[k].provider_event_id,
            done[k].version,
        )
        for k in ("leave-1", "leave-2")
    ]
    results = apply_ok(provider, *updates)
    assert results["leave-1"].version != done["leave-1"].version
    back = window(provider, user)
    assert {k: (r.payload.title, r.payload.end) for k, r in back.items()} == {
        "leave-1": ("Absent", "2026-03-06"),
        "leave-2": ("Absent", "2026-03-06"),
    }
    assert sorted(server.stored_files(user)) == ["leave-1.ics", "leave-2.ics"]


def test_a_resource_that_is_not_ours_is_never_touched(server):
    user = fresh_user(server)
    provider = provider_for(server)
    theirs = _resource_text(payload("leave-5")).replace("X-LEAVESYNC-KEY:leave-5\r\n", "")
    theirs = theirs.replace("leave-5@leavesync", "their-own-uid")
    with server.session(user) as s:
        assert (
            s.put(server.calendar_url(user) + "leave-5.ics", data=theirs.encode()).status_code
            == 201
        )
    before = server.stored_files(user)

    results = list(
        provider.apply([create(user, payload("leave-5")), EventChange("delete", "leave-5", user)])
    )
    assert [r.ok for r in results] == [False, False]
    assert all("not tagged by leavesync" in r.error and r.permanent for r in results)
    assert server.stored_files(user) == before


def test_a_delete_of_an_event_already_gone_is_done(server):
    user = fresh_user(server)
    provider = provider_for(server)
    done = apply_ok(provider, create(user, payload("leave-1")))["leave-1"]
    with server.session(user) as s:
        s.delete(server.calendar_url(user) + "leave-1.ics")
    gone = EventChange("delete", "leave-1", user, None, done.provider_event_id, done.version)
    apply_ok(provider, gone, EventChange("delete", "leave-2", user))
    assert server.stored_files(user) == {}


def test_one_calendar_missing_or_forbidden_fails_only_its_changes(radicale_https):
    server = radicale_https
    good, missing = fresh_user(server), fresh_user(server, calendar=False)
    provider = provider_for(server)
    changes = [create(u, payload(f"leave-{i}")) for i, u in enumerate([good, missing, LOCKED])]
    changes += [create(good, payload("leave-9")), create(LOCKED, payload("leave-8"))]
    results = {r.change.event_key: r for r in provider.apply(changes)}
    assert results["leave-0"].ok and results["leave-9"].ok
    assert "no calendar collection" in results["leave-1"].error and results["leave-1"].permanent
    for key in ("leave-2", "leave-8"):
        assert not results[key].ok and results[key].permanent
        assert "may not write this calendar (HTTP 403)" in results[key].error
    assert provider.requests["PUT"] == 4  # the forbidden calendar's second change was not sent


def test_bad_credentials_stop_the_run_with_the_variable_to_fix(radicale_https, monkeypatch):
    monkeypatch.setenv(PASSWORD_ENV, "wrong-token-123")
    user = fresh_user(radicale_https)
    provider = provider_for(radicale_https)
    with pytest.raises(FatalProviderError) as err:
        list(provider.apply([create(user, payload("leave-1"))]))
    assert "HTTP 401" in str(err.value) and PASSWORD_ENV in str(err.value)
    assert "wrong-token-123" not in str(err.value)
    report = provider.check(user)
    assert not report.ok and "HTTP 401" in report.render()


def test_tls_is_verified_with_ca_bundle_only_never_the_environment(
    radicale_https, monkeypatch, pki
):
    user = fresh_user(radicale_https)
    for var in ("REQUESTS_CA_BUNDLE", "SSL_CERT_FILE", "CURL_CA_BUNDLE"):
        monkeypatch.setenv(var, str(pki.ca_file))
    provider = provider_for(radicale_https, ca_bundle=None)
    with pytest.raises(FatalProviderError) as err:
        list(provider.apply([create(user, payload("leave-1"))]))
    assert "127.0.0.1" in str(err.value) and "ca_bundle" in str(err.value)
    apply_ok(provider_for(radicale_https), create(user, payload("leave-1")))


def test_preflight_names_the_variable_and_the_setting(tmp_path, monkeypatch):
    monkeypatch.delenv(PASSWORD_ENV)
    settings = dict(
        calendar_url="https://dav.example.com/{email}/leaves/",
        username=SERVICE_USER,
        password_env=PASSWORD_ENV,
    )
    with pytest.raises(FatalProviderError, match=PASSWORD_ENV):
        CalDavProvider("dav", CalDavSettings(**settings)).preflight()
    monkeypatch.setenv(PASSWORD_ENV, "x")
    missing = str(tmp_path / "nope.pem")
    with pytest.raises(FatalProviderError, match="ca_bundle"):
        CalDavProvider("dav", CalDavSettings(**settings, ca_bundle=missing)).preflight()
    with pytest.raises(ValueError, match="exactly one of calendar_url and principal_url"):
        CalDavSettings(username="x")
    with pytest.raises(ValueError, match="names no employee"):
        CalDavSettings(calendar_url="https://dav.example.com/leaves/", username="x")


def test_check_finds_the_calendar_and_reads_privileges_without_writing(radicale_https):
    server = radicale_https
    user = fresh_user(server)
    provider = provider_for(server)
    report = provider.check(user)
    assert report.ok, report.render()
    assert f"principal /{SERVICE_USER}/" in report.render() and "write" in report.render()
    locked = provider.check(LOCKED)
    assert not locked.ok and "rights file" in locked.render()
    missing = provider.check(fresh_user(server, calendar=False))
    assert not missing.ok and "create it" in missing.render()
    assert set(provider.requests) <= {"PROPFIND", "REPORT"}  # nothing written


@pytest.mark.parametrize("server", ["radicale_https", "radicale_http"], indirect=True)
def test_the_calendar_is_found_from_the_principal(server):
    """Xandikos is single-user: only its own principal has a calendar-home-set."""
    user = fresh_user(server)
    provider = provider_for(server, calendar_url=None, principal_url=server.base_url + "/{email}/")
    apply_ok(provider, create(user, payload("leave-1")))
    assert list(server.stored_files(user)) == ["leave-1.ics"]
    report = provider.check(user)
    assert report.ok, report.render()
    wrong = provider_for(
        server, calendar_url=None, principal_url=server.base_url + "/{email}/", calendar_name="Off"
    )
    [result] = wrong.apply([create(user, payload("leave-2"))])
    assert not result.ok and "no calendar named 'Off'" in result.error


def test_calendars_are_written_in_parallel_each_change_reported_once(server):
    users = [fresh_user(server) for _ in range(6)]
    provider = provider_for(server, max_parallel_calendars=3)
    changes = [create(u, payload(f"leave-{i}-{j}")) for i, u in enumerate(users) for j in range(3)]
    results = list(provider.apply(changes))
    assert sorted(r.change.event_key for r in results) == sorted(c.event_key for c in changes)
    assert all(r.ok for r in results)
    assert provider.requests["PUT"] == len(changes)  # one request per new event
    assert all(len(server.stored_files(u)) == 3 for u in users)


class _Sleeps:
    def __init__(self):
        self.waits: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.waits.append(seconds)


def test_503_429_and_dropped_connections_are_retried_to_exactly_one_event(server, monkeypatch):
    user = fresh_user(server)
    proxy = FaultProxy(server.base_url, upstream_ca=server.ca_bundle).start()
    sleeps = _Sleeps()
    monkeypatch.setattr(session_module, "time", SimpleNamespace(sleep=sleeps.sleep))
    try:
        proxy.inject(
            Fault("PUT", status=503, retry_after="2"),
            Fault("PUT", status=429, retry_after="1"),
            Fault("PUT", drop="before"),
            Fault("PUT", drop="after"),  # the server created it; the answer is lost
            Fault("PUT", status=503),  # no Retry-After: our own backoff
        )
        provider = provider_for(server, base_url=proxy.base_url, ca_bundle=None)
        results = apply_ok(
            provider, create(user, payload("leave-1")), create(user, payload("leave-2"))
        )
    finally:
        proxy.stop()
    assert sorted(server.stored_files(user)) == ["leave-1.ics", "leave-2.ics"]
    assert sleeps.waits[:2] == [2.0, 1.0]  # Retry-After honoured
    assert len(sleeps.waits) == 5
    assert [what for _, _, what in proxy.log if what.startswith("dropped")] == [
        "dropped before",
        "dropped after 201",
    ]
    assert window(provider_for(server), user).keys() == results.keys()


def test_a_server_that_stays_unavailable_fails_the_change_as_retryable(server, monkeypatch):
    user = fresh_user(server)
    proxy = FaultProxy(server.base_url, upstream_ca=server.ca_bundle).start()
    monkeypatch.setattr(session_module, "time", SimpleNamespace(sleep=lambda s: None))
    proxy.always = Fault("PUT", status=503, retry_after="0")
    try:
        provider = provider_for(server, base_url=proxy.base_url, ca_bundle=None, max_attempts=3)
        [result] = provider.apply([create(user, payload("leave-1"))])
    finally:
        proxy.stop()
    assert not result.ok and not result.permanent and "gave up after 3 attempts" in result.error
    assert server.stored_files(user) == {}
