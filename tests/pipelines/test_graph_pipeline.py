"""The Microsoft Graph target in the pipeline, against the strict Graph emulator.

Lost, restored or interrupted state never duplicates an event (#20, the Graph column); a
cancelled leave reinstated with the same content is created again (#18); an event the
employee deleted in Outlook comes back (#18); timed events in legal entities around the
world read back without drift (#16); a run with nothing to change sends nothing.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import signal
import subprocess
import time
from collections import Counter

import pytest

from resources.providers.base import EventPayload, changed_fields
from resources.state import StateStore
from tests.emulators.graph import GraphEmulator
from tests.harness import (
    REPO,
    Pipeline,
    child_env,
    make_config,
    scope,
    sync_command,
    wanted_keys,
)

D = dt.date(2026, 3, 2)
SPAN = (D, D + dt.timedelta(days=60))
CLIENT_ID = "11111111-2222-3333-4444-555555555555"
SECRET_ENV = "LEAVESYNC_TEST_GRAPH_SECRET"
SECRET = "s3cret-value"
EMPLOYEES = {i: f"emp{i}@example.com" for i in range(1, 21)}


@pytest.fixture
def graph(tmp_path, monkeypatch):
    emulator = GraphEmulator.start(tmp_path / "pki")
    emulator.register_app(CLIENT_ID, SECRET)
    # Graph's transactionId guards a client's quick retries only: no help across runs here.
    emulator.transaction_window = 0
    monkeypatch.setenv(SECRET_ENV, SECRET)
    yield emulator
    emulator.stop()


def target(emulator: GraphEmulator) -> dict:
    return {
        "name": "m365",
        "type": "microsoft_graph",
        "settings": {
            "tenant_id": emulator.tenant_id,
            "client_id": CLIENT_ID,
            "client_secret_env": SECRET_ENV,
            "authority": emulator.base_url,
            "graph_url": emulator.base_url,
            "ca_bundle": str(emulator.pki.ca_file),
            "backoff_base_seconds": 0.01,
            "backoff_cap_seconds": 0.2,
        },
    }


def seed(hr) -> list[int]:
    """20 employees in two entities, 40 leaves: whole days, half days, pending ones."""
    for i, email in EMPLOYEES.items():
        hr.employee(i, "FR" if i <= 10 else "US", email)
    ids = []
    for i in EMPLOYEES:
        day = D + dt.timedelta(days=i)
        ids.append(hr.leave(i, day, day + dt.timedelta(days=1)))
        if i % 2:
            ids.append(hr.leave(i, day + dt.timedelta(days=20), start_half="PM"))
        else:
            ids.append(hr.leave(i, day + dt.timedelta(days=22), status="pending"))
    return ids


def sync(p: Pipeline, entities=("FR", "US")) -> dict:
    result, outcome = p.sync([scope(e, *SPAN) for e in entities])
    assert outcome is not None and not outcome.failed, outcome and outcome.failed
    return result.diff.counts()[["create", "update", "delete"]].sum().to_dict()


def held(emulator: GraphEmulator, mailboxes=None) -> Counter:
    """Our event keys in the calendars, counted: a key held twice is a duplicate."""
    return Counter(
        p["value"]
        for user in mailboxes or EMPLOYEES.values()
        for e in emulator.events(user)
        for p in e["singleValueExtendedProperties"]
        if p["id"].endswith("leavesyncKey")
    )


def assert_calendars_match(p: Pipeline, emulator: GraphEmulator, hr, stale=()) -> None:
    """Every leave HR wants is there exactly once, as the snapshot says it was written."""
    keys = held(emulator)
    assert {k: n for k, n in keys.items() if n > 1} == {}, "duplicates"
    assert set(keys) == wanted_keys(hr) | set(stale)
    provider = p.settings.provider("m365")
    remote = {
        r.event_key: r
        for r in provider.read_back(EMPLOYEES.values(), SPAN[0], SPAN[1] + dt.timedelta(days=1))
    }
    snapshot = p.state.snapshot_all("m365").set_index("event_key")
    for key in wanted_keys(hr):
        written = EventPayload.from_dict(json.loads(snapshot.loc[key, "payload"]))
        assert changed_fields(written, remote[key].payload, provider.compared_fields) == [], key
        assert snapshot.loc[key, "provider_event_id"] == remote[key].provider_event_id, key


def hr_changes(hr, ids: list[int]) -> tuple[list[int], list[int]]:
    """HR edits 12 leaves, adds 10 and cancels 5 (the case of issue #20)."""
    for n, lid in enumerate(ids[:12]):
        employee = n // 2 + 1
        if n % 2 == 0:  # a whole-day leave gets longer
            hr.update_leave(lid, end_date=D + dt.timedelta(days=employee + 3))
        else:  # the second leave flips between pending and approved
            hr.update_leave(lid, status="pending" if employee % 2 else "approved")
    new = [hr.leave(i, D + dt.timedelta(days=30 + i), start_half="PM") for i in range(1, 11)]
    cancelled = ids[30:35]
    for lid in cancelled:
        hr.update_leave(lid, status="cancelled")
    return new, cancelled


def test_state_store_deleted_then_hr_changes_no_duplicates(home, hr, graph):
    ids = seed(hr)
    cfg = make_config(home, hr.url, targets=[target(graph)])
    assert sync(Pipeline(cfg)) == {"create": 40, "update": 0, "delete": 0}
    (home / "state.sqlite").unlink()  # the state store is lost
    _, cancelled = hr_changes(hr, ids)
    p = Pipeline(cfg)
    # Every key HR wants is a create for the new snapshot: each is looked up and adopted.
    assert sync(p) == {"create": 45, "update": 0, "delete": 0}
    # The 5 leaves cancelled while the state was lost are unknown to the new snapshot: they
    # stay until drift finds them (stale, never duplicated).
    assert_calendars_match(p, graph, hr, stale={f"leave-{lid}" for lid in cancelled})
    assert sync(p) == {"create": 0, "update": 0, "delete": 0}


def test_older_backup_restored_then_hr_edits_no_duplicates(home, hr, graph, tmp_path):
    ids = seed(hr)
    cfg = make_config(home, hr.url, targets=[target(graph)])
    p = Pipeline(cfg)
    sync(p)
    shutil.copy(home / "state.sqlite", tmp_path / "backup.sqlite")
    new, _ = hr_changes(hr, ids)
    sync(p)
    assert_calendars_match(p, graph, hr)
    shutil.copy(tmp_path / "backup.sqlite", home / "state.sqlite")  # the old backup is back
    for lid in new:  # HR edits the 10 leaves the old snapshot does not know
        hr.update_leave(lid, start_half=None, end_half="AM")
    p = Pipeline(cfg)
    sync(p)
    assert_calendars_match(p, graph, hr)
    assert sync(p) == {"create": 0, "update": 0, "delete": 0}


@pytest.mark.parametrize("kill_after", [6, 23])
def test_kill_9_during_apply_then_hr_edits_no_duplicates(home, hr, graph, kill_after):
    ids = seed(hr)
    graph.latency = 0.03  # slow enough to be killed in the middle of the writes
    cfg = make_config(home, hr.url, targets=[target(graph)])
    proc = subprocess.Popen(
        sync_command(cfg, [scope("FR", *SPAN), scope("US", *SPAN)]),
        cwd=REPO,
        env=child_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 240
    while graph.stats.methods["POST"] < kill_after and proc.poll() is None:
        assert time.monotonic() < deadline, "the run never got to its writes"
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)  # kill -9, wherever it is
    assert proc.wait(timeout=30) == -signal.SIGKILL, proc.stderr.read() if proc.stderr else ""
    proc.stderr.close()
    # Graph finishes the batches already sent; the snapshot knows few of them, if any.
    assert sum(held(graph).values()) >= kill_after
    recorded = StateStore(url=f"sqlite:///{home / 'state.sqlite'}").snapshot_all("m365")
    assert len(recorded) < 40
    graph.latency = 0.0
    # HR edits 30% of the leaves while the sync is down, then the next run.
    for lid in ids[::3][:12]:
        hr.update_leave(lid, end_date=D + dt.timedelta(days=45))
    p = Pipeline(make_config(home, hr.url, targets=[target(graph)]))
    sync(p)
    assert_calendars_match(p, graph, hr)
    assert sync(p) == {"create": 0, "update": 0, "delete": 0}


def test_cancelled_then_reinstated_with_the_same_content_is_created_again(home, hr, graph):
    graph.transaction_window = 3600  # even if Graph remembered every transactionId
    hr.employee(1, "FR", EMPLOYEES[1])
    lid = hr.leave(1, D + dt.timedelta(days=3), start_half="PM")
    p = Pipeline(make_config(home, hr.url, targets=[target(graph)]))
    key = f"leave-{lid}"
    for status in ("approved", "cancelled", "approved", "cancelled", "approved"):
        hr.update_leave(lid, status=status)
        sync(p, ["FR"])
        assert held(graph, [EMPLOYEES[1]])[key] == (0 if status == "cancelled" else 1), status
    assert sync(p, ["FR"]) == {"create": 0, "update": 0, "delete": 0}


def test_event_deleted_in_outlook_comes_back_on_the_next_change(home, hr, graph):
    hr.employee(1, "FR", EMPLOYEES[1])
    lid = hr.leave(1, D + dt.timedelta(days=3), D + dt.timedelta(days=4))
    p = Pipeline(make_config(home, hr.url, targets=[target(graph)]))
    sync(p, ["FR"])
    [event] = graph.events(EMPLOYEES[1])
    graph.user_deletes(EMPLOYEES[1], event["id"])  # the employee deletes it in Outlook
    hr.update_leave(lid, end_date=D + dt.timedelta(days=5))
    assert sync(p, ["FR"]) == {"create": 0, "update": 1, "delete": 0}
    [back] = graph.events(EMPLOYEES[1])
    assert back["id"] != event["id"] and back["end"]["dateTime"] == "2026-03-08T00:00:00"
    assert p.state.snapshot_all("m365")["provider_event_id"].tolist() == [back["id"]]


ENTITIES = {
    "IN": "Asia/Kolkata",
    "NP": "Asia/Kathmandu",
    "AU": "Australia/Adelaide",
    "NL": "America/St_Johns",
    "NZ": "Pacific/Chatham",
    "UA": "Europe/Kyiv",
    "GL": "America/Nuuk",
    "VN": "Asia/Ho_Chi_Minh",
    "BE": "Europe/Brussels",
    "IR": "Asia/Tehran",
    "MA": "Africa/Casablanca",
}


def test_timed_events_in_eleven_time_zones_read_back_without_drift(home, hr, graph):
    mailboxes = []
    for n, (code, zone) in enumerate(ENTITIES.items(), start=1):
        hr.entity(code, zone, (8, 30), (12, 45), (17, 15))
        mailboxes.append(hr.employee(n, code, f"tz{n}@example.com"))
        hr.leave(n, D + dt.timedelta(days=n), start_half="PM")  # afternoon off
        hr.leave(n, D + dt.timedelta(days=n + 30), end_half="AM")  # morning off, after DST
        hr.leave(n, D + dt.timedelta(days=n + 2), D + dt.timedelta(days=n + 3))  # all-day
    p = Pipeline(make_config(home, hr.url, targets=[target(graph)]))
    assert sync(p, ENTITIES) == {"create": 33, "update": 0, "delete": 0}
    provider = p.settings.provider("m365")
    remote = {
        r.event_key: r.payload
        for r in provider.read_back(mailboxes, SPAN[0], SPAN[1] + dt.timedelta(days=1))
    }
    snapshot = p.state.snapshot_all("m365")
    assert len(snapshot) == len(remote) == 33
    zones = set()
    for row in snapshot.itertuples():
        written = EventPayload.from_dict(json.loads(row.payload))
        assert changed_fields(written, remote[row.event_key], provider.compared_fields) == []
        assert remote[row.event_key].timezone == written.timezone
        zones.add(written.timezone)
    assert zones == set(ENTITIES.values())
    assert sync(p, ENTITIES) == {"create": 0, "update": 0, "delete": 0}


def test_a_run_with_nothing_to_change_sends_nothing(home, hr, graph):
    seed(hr)
    p = Pipeline(make_config(home, hr.url, targets=[target(graph)]))
    sync(p)
    before = (graph.stats.http_requests, graph.stats.token_requests)
    assert sync(p) == {"create": 0, "update": 0, "delete": 0}
    assert (graph.stats.http_requests, graph.stats.token_requests) == before
