"""Benchmark of the EWS provider against the EWS emulator (not a test).

Run: ``.venv/bin/python -m bench.ews_bench``. Prints two tables and writes
bench/results/ews.json. The first: events applied per second and SOAP requests per event,
with bulk operations full (100 items), for creates, updates (plain, and under injected
faults) and deletes. The second: what the look-up before creates (a create is never blind)
costs on a first sync of 10,000 events, for several numbers of events per mailbox, and on
runs with nothing to create. The emulator runs in the same process on loopback, so the
figures measure the client side (exchangelib XML building and parsing, our look-ups) and
count requests, not an Exchange server's speed.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import time
from collections import Counter
from pathlib import Path

from bench.events import print_table, sample_payload, update_of
from resources.providers.base import ChangeResult, EventChange
from resources.providers.ews import EwsCalendarProvider
from resources.providers.ews.bulk import LOOKUP_KEYS
from resources.providers.ews.settings import EwsSettings
from tests.emulators.ews import EwsEmulator

RESULTS = Path(__file__).parent / "results" / "ews.json"
PASSWORD_ENV = "LEAVESYNC_BENCH_EWS_PASSWORD"


def _provider(emulator: EwsEmulator, concurrent_mailboxes: int) -> EwsCalendarProvider:
    os.environ[PASSWORD_ENV] = emulator.password
    settings = EwsSettings(
        ews_url=emulator.url,
        username=emulator.username,
        password_env=PASSWORD_ENV,
        auth_type="basic",
        version="Exchange2016",
        chunk_size=100,
        concurrent_mailboxes=concurrent_mailboxes,
        backoff_base=0.02,
        backoff_cap=0.5,
        max_attempts=30,
    )
    return EwsCalendarProvider("bench", settings)


def _phase(
    name: str, provider: EwsCalendarProvider, emulator: EwsEmulator, changes: list[EventChange]
) -> tuple[dict[str, float | int | str], list[ChangeResult]]:
    before = len(emulator.requests)
    started = time.perf_counter()
    results = list(provider.apply(changes))
    seconds = time.perf_counter() - started
    requests = emulator.requests[before:]
    row = {
        "phase": name,
        "events": len(results),
        "failed_events": sum(not r.ok for r in results),
        "seconds": round(seconds, 2),
        "events_per_second": round(len(results) / seconds, 1),
        "soap_requests": len(requests),
        "soap_requests_per_event": round(len(requests) / max(1, len(results)), 4),
        "faults_injected": sum(r.outcome not in ("ok", "401") for r in requests),
        "requests_by_operation": dict(Counter(r.op for r in requests)),
    }
    return row, results


def _look_up_cost(mailboxes: int, events: int, concurrent: int) -> dict[str, float | int | str]:
    """A first sync of ``events`` creates over ``mailboxes`` calendars: what the look-up adds."""
    names = [f"user{i:05d}@example.com" for i in range(mailboxes)]
    emulator = EwsEmulator(names).start()
    provider = _provider(emulator, concurrent)
    creates = [
        EventChange("create", f"leave-{n}", names[n % mailboxes], sample_payload(n, "Absent"))
        for n in range(events)
    ]
    try:
        started = time.perf_counter()
        results = list(provider.apply(creates))
        seconds = time.perf_counter() - started
        first = Counter(r.op for r in emulator.requests)
        # The next run: HR changed every fifth leave (updates by known id), then nothing.
        before = len(emulator.requests)
        updates = [update_of(r, "Away") for r in results[::5]]
        updated = list(provider.apply(updates))
        update_run = Counter(r.op for r in emulator.requests[before:])
        before = len(emulator.requests)
        assert list(provider.apply([])) == []
        idle = len(emulator.requests) - before
    finally:
        provider.close()
        emulator.stop()
    lookups = first.get("FindItem", 0)
    per_mailbox = events // mailboxes
    return {
        "shape": f"{mailboxes} mailboxes x {per_mailbox} events",
        "events": len(results),
        "failed_events": sum(not r.ok for r in results) + sum(not r.ok for r in updated),
        "seconds": round(seconds, 1),
        "lookup_requests": lookups,
        "lookup_requests_per_100_events": round(100 * lookups / len(results), 2),
        "write_requests": first.get("CreateItem", 0),
        "update_run_lookup_requests": update_run.get("FindItem", 0),
        "nothing_changed_requests": idle,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mailboxes", type=int, default=20)
    parser.add_argument("--events", type=int, default=4000)
    parser.add_argument("--concurrent-mailboxes", type=int, default=4)
    parser.add_argument("--fault-rate", type=float, default=0.1)
    parser.add_argument("--lookup-events", type=int, default=10_000)
    parser.add_argument(
        "--lookup-shapes",
        default="20,100,300,1000,5000",
        help="mailbox counts for the look-up table (events per mailbox = events / mailboxes)",
    )
    args = parser.parse_args()

    mailboxes = [f"user{i:03d}@example.com" for i in range(args.mailboxes)]
    emulator = EwsEmulator(mailboxes, seed=1).start()
    emulator.back_off_ms = 20
    provider = _provider(emulator, args.concurrent_mailboxes)
    creates = [
        EventChange(
            "create", f"leave-{n}", mailboxes[n % args.mailboxes], sample_payload(n, "Absent")
        )
        for n in range(args.events)
    ]
    rows = []
    try:
        row, created = _phase("create", provider, emulator, creates)
        rows.append(row)
        updates = [update_of(r, "Away") for r in created]
        row, updated = _phase("update", provider, emulator, updates)
        rows.append(row)
        again = [update_of(r, "Leave") for r in updated]
        emulator.fault_rate = args.fault_rate
        row, updated = _phase(f"update, {args.fault_rate:.0%} faults", provider, emulator, again)
        rows.append(row)
        emulator.fault_rate = 0.0
        # The ChangeKeys of the creates, now stale (as after edits in Outlook): each update is
        # refused, the current keys read (GetItem), the update sent again.
        row, updated = _phase("update, stale ChangeKeys", provider, emulator, updates)
        rows.append(row)
        deletes = [
            EventChange("delete", r.change.event_key, r.change.calendar, None, r.provider_event_id)
            for r in updated
        ]
        row, _ = _phase("delete", provider, emulator, deletes)
        rows.append(row)
        leftover = sum(1 for _ in emulator.all_items())
    finally:
        provider.close()
        emulator.stop()

    print(
        f"EWS provider vs emulator: {args.mailboxes} mailboxes, chunks of 100, "
        f"{args.concurrent_mailboxes} mailboxes at a time"
    )
    print_table(rows, leave_out=("requests_by_operation",))
    print(f"items left after deletes: {leftover}")
    n = args.lookup_events
    shapes = [int(s) for s in args.lookup_shapes.split(",")]
    lookups = [_look_up_cost(m, n, 8) for m in shapes]
    print(
        f"\nLook-up before creates, first sync of {n:,} events ({LOOKUP_KEYS} keys per FindItem; "
        "goal: <= 3 extra requests per 100 events; 0 on a run with nothing to create)"
    )
    print_table(lookups, leave_out=("requests_by_operation",))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(
        json.dumps(
            {
                "date": dt.date.today().isoformat(),
                "machine": "2-core sandbox, shared",
                "load_average_1min": round(os.getloadavg()[0], 1),
                "mailboxes": args.mailboxes,
                "events": args.events,
                "chunk_size": 100,
                "concurrent_mailboxes": args.concurrent_mailboxes,
                "fault_rate": args.fault_rate,
                "items_left_after_deletes": leftover,
                "phases": rows,
                "lookup_keys_per_request": LOOKUP_KEYS,
                "lookup": lookups,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
