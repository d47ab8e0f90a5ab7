"""The Microsoft Graph provider, end to end: real msal + requests against the Graph emulator."""

from __future__ import annotations

import collections
import datetime as dt
import threading
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
from resources.providers.graph import GraphCalendarProvider, GraphSettings
from tests.emulators.graph import GraphEmulator, make_client_certificate

CLIENT_ID = "11111111-2222-3333-4444-555555555555"
SECRET = "s3cr3t-value"
ENV = "LEAVESYNC_GRAPH_CLIENT_SECRET"


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
    values: dict[str, Any] = dict(
        event_key=f"leave-{i}",
        leave_id=str(i),
        title="Absent",
        all_day=True,
        start=start,
        end=end,
        timezone="Europe/Paris",
        status="confirmed",
        show_as="oof",
    )
    values.update(kw)
    return EventPayload(**values)


def timed(
    i: int, start: str = "2025-03-03T13:00:00", end: str = "2025-03-03T17:30:00", **kw: Any
) -> EventPayload:
    values: dict[str, Any] = dict(
        timezone="America/New_York", status="tentative", show_as="tentative"
    )
    values.update(kw)
    return all_day(i, start=start, end=end, all_day=False, **values)


def create(i: int, mailbox: str, payload: EventPayload | None = None) -> EventChange:
    payload = payload or all_day(i)
    return EventChange("create", payload.event_key, mailbox, payload)


def ours(emu: GraphEmulator, mailbox: str) -> dict[str, list[dict[str, Any]]]:
    """Our events in a mailbox by event key (a list, so duplicates show)."""
    by_key: dict[str, list[dict[str, Any]]] = collections.defaultdict(list)
    for event in emu.events(mailbox):
        for prop in event["singleValueExtendedProperties"]:
            if "leavesyncKey" in prop["id"]:
                by_key[prop["value"]].append(event)
    return dict(by_key)


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
    assert result.ok and result.provider_event_id and result.version
    [event] = ours(emu, box)["leave-1"]
    assert event["id"] == result.provider_event_id and event["changeKey"] == result.version
    assert event["isAllDay"] is True and event["showAs"] == "oof"
    assert event["start"] == {"dateTime": "2025-03-03T00:00:00", "timeZone": "Europe/Paris"}
    assert event["end"] == {"dateTime": "2025-03-05T00:00:00", "timeZone": "Europe/Paris"}
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
    assert updated.version != result.version
    [event] = ours(emu, box)["leave-1"]
    assert event["start"]["dateTime"] == "2025-04-07T00:00:00"
    assert (event["subject"], event["showAs"]) == ("Absent (pending)", "tentative")

    delete = EventChange("delete", "leave-1", box, None, result.provider_event_id)
    assert [r.ok for r in provider.apply([delete])] == [True]
    assert ours(emu, box) == {}
    # Already gone (deleted by hand, or a repeated run): counts as done.
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
    assert event["start"] == {"dateTime": "2025-03-03T13:00:00", "timeZone": "America/New_York"}
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
    with emu.lock:
        emu.mailbox(box).events.clear()
    update = EventChange(
        "update", "leave-5", box, all_day(5, title="Away"), first.provider_event_id
    )
    [result] = list(provider.apply([update]))
    assert result.ok and result.provider_event_id != first.provider_event_id
    assert [e["subject"] for e in ours(emu, box)["leave-5"]] == ["Away"]


def test_many_mailboxes_go_through_full_batches(
    emu: GraphEmulator, provider: GraphCalendarProvider
) -> None:
    changes = [create(i, f"user{i % 40}@contoso.com") for i in range(400)]
    results = list(provider.apply(changes))
    assert len(results) == 400 and all(r.ok for r in results)
    assert {r.change.event_key for r in results} == {c.event_key for c in changes}
    assert max(emu.stats.batch_sizes) == 20
    assert emu.stats.sub_requests / 400 == 1.0  # no request beyond one per change
    assert emu.stats.batch_requests <= 400 / 20 * 1.5


# --------------------------------------------------------------------------- faults


def test_create_whose_response_is_lost_lands_once(
    emu: GraphEmulator, provider: GraphCalendarProvider
) -> None:
    box = "el@contoso.com"
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


def test_transaction_id_makes_a_repeated_create_land_once(
    emu: GraphEmulator, provider: GraphCalendarProvider
) -> None:
    box = "gu@contoso.com"
    change = create(8, box)
    [first] = list(provider.apply([change]))
    # A later run that never recorded the first result sends the very same create again.
    [second] = list(provider.apply([change]))
    assert second.ok and second.provider_event_id == first.provider_event_id
    assert len(ours(emu, box)["leave-8"]) == 1


def test_throttled_sub_requests_wait_for_retry_after(emu: GraphEmulator) -> None:
    seen: list[tuple[str, float]] = []
    original = emu.handle

    def spy(method: str, target: str, headers: dict[str, str], body: Any, in_batch: bool) -> Any:
        import time

        if in_batch:
            seen.append((target, time.monotonic()))
        return original(method, target, headers, body, in_batch)

    emu.handle = spy  # type: ignore[method-assign]
    emu.fault("429", in_batch=True, times=2, retry_after=0.05)
    emu.fault("429", in_batch=True, times=1, retry_after=0.3)
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


def test_thirty_percent_faults_every_change_lands_exactly_once(
    emu: GraphEmulator, provider: GraphCalendarProvider
) -> None:
    emu.fault_rate = 0.3
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
    with pytest.raises(FatalProviderError, match="Calendars.ReadWrite.*admin consent"):
        list(p.apply([create(i, f"p{i}@contoso.com") for i in range(5)]))
    report = p.check("p1@contoso.com")
    assert not report.ok
    [perm] = [s for s in report.steps if "permission" in s[0]]
    assert perm[1] is False and "Grant admin consent" in perm[2]


# --------------------------------------------------------------------------- credentials


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
        assert all(r.ok for r in p.apply([create(1, "cert@contoso.com")]))
    other_key, _, _ = make_client_certificate()
    monkeypatch.setenv("LEAVESYNC_GRAPH_CERT", other_key)
    p = GraphCalendarProvider("m365", settings(emu, client_certificate_env="LEAVESYNC_GRAPH_CERT"))
    with pytest.raises(FatalProviderError, match="certificate"):
        list(p.apply([create(2, "cert@contoso.com")]))


def test_token_is_reused_and_renewed_when_rejected(
    emu: GraphEmulator, provider: GraphCalendarProvider
) -> None:
    assert all(r.ok for r in provider.apply([create(1, "t@contoso.com")]))
    assert all(r.ok for r in provider.apply([create(2, "t@contoso.com")]))
    assert emu.stats.token_requests == 1
    emu.expire_tokens()
    assert all(r.ok for r in provider.apply([create(3, "t@contoso.com")]))
    assert emu.stats.token_requests == 2 and len(ours(emu, "t@contoso.com")) == 3


def test_tls_is_verified_and_the_ca_bundle_setting_wins(
    emu: GraphEmulator, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # A CA bundle in the environment must not replace the configured one.
    bogus = tmp_path / "other-ca.pem"
    bogus.write_text("not a certificate\n")
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(bogus))
    monkeypatch.setenv("CURL_CA_BUNDLE", str(bogus))
    assert all(
        r.ok
        for r in GraphCalendarProvider("m365", settings(emu)).apply([create(1, "tls@contoso.com")])
    )
    monkeypatch.delenv("REQUESTS_CA_BUNDLE")
    monkeypatch.delenv("CURL_CA_BUNDLE")
    untrusting = GraphCalendarProvider("m365", settings(emu, ca_bundle=None, max_attempts=2))
    with pytest.raises(FatalProviderError, match="cannot reach"):
        list(untrusting.apply([create(2, "tls@contoso.com")]))


# --------------------------------------------------------------------------- limits


def test_never_more_than_four_requests_in_flight_per_mailbox(emu: GraphEmulator) -> None:
    emu.enforce_concurrency = False  # count, do not refuse: the provider must hold back itself
    emu.latency = 0.004
    p = GraphCalendarProvider("m365", settings(emu, parallel_batches=8))
    changes = [create(i, f"busy{i % 3}@contoso.com") for i in range(150)]
    assert all(r.ok for r in p.apply(changes))
    assert 2 <= emu.stats.max_mailbox_concurrency <= 4
    assert emu.stats.throttled["concurrency"] == 0


def test_the_emulator_counts_concurrency_it_would_refuse(emu: GraphEmulator) -> None:
    # Control for the test above: 8 parallel callers on one mailbox are seen (and refused).
    emu.latency = 0.05
    token = GraphCalendarProvider("m365", settings(emu))._access_token()
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


def test_few_mailboxes_still_fill_batches_with_chains(emu: GraphEmulator) -> None:
    p = GraphCalendarProvider("m365", settings(emu))
    assert all(r.ok for r in p.apply([create(i, "solo@contoso.com") for i in range(100)]))
    assert emu.stats.batch_requests <= 100 / 20 + 2
    assert emu.stats.max_mailbox_concurrency <= 4


def test_emulator_batch_rules(emu: GraphEmulator) -> None:
    token = GraphCalendarProvider("m365", settings(emu))._access_token()
    session = requests.Session()
    session.trust_env = False
    session.verify = str(emu.pki.ca_file)
    url = f"{emu.base_url}/v1.0/$batch"
    auth = {"Authorization": f"Bearer {token}"}
    body = {
        "requests": [
            {"id": "1", "method": "DELETE", "url": "/users/z@contoso.com/events/missing"},
            {
                "id": "2",
                "method": "GET",
                "url": "/users/z@contoso.com/calendar",
                "dependsOn": ["1"],
            },
            {"id": "3", "method": "GET", "url": "/users/z@contoso.com/calendar"},
        ]
    }
    statuses = {
        r["id"]: r["status"] for r in session.post(url, json=body, headers=auth).json()["responses"]
    }
    assert statuses == {"1": 404, "2": 424, "3": 200}
    too_many = {
        "requests": [
            {"id": str(i), "method": "GET", "url": "/users/z@contoso.com/calendar"}
            for i in range(21)
        ]
    }
    assert session.post(url, json=too_many, headers=auth).status_code == 400


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
    assert emu.stats.batch_requests == 0


def test_check_names_what_is_missing(emu: GraphEmulator, provider: GraphCalendarProvider) -> None:
    emu.unknown_users.add("nobody@contoso.com")
    report = provider.check("nobody@contoso.com")
    assert not report.ok and "no such user" in report.render()
    emu.denied_mailboxes.add("vip@contoso.com")
    report = provider.check("vip@contoso.com")
    assert not report.ok and "RBAC for Applications" in report.render()
