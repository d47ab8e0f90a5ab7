"""Benchmark of the EWS provider against the EWS emulator (not a test).

Run: ``.venv/bin/python -m bench.ews_bench``. Prints a table and writes bench/results/ews.json:
events applied per second and SOAP requests per event, with bulk operations full (100 items),
for creates, updates (optionally under injected faults) and deletes. The emulator runs in the
same process on loopback, so the figures measure the client side (exchangelib XML building and
parsing, our lookups), not an Exchange server's.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from bench.events import sample_payload
from resources.providers.base import EventChange
from resources.providers.ews import EwsCalendarProvider
from resources.providers.ews.settings import EwsSettings
from tests.emulators.ews import EwsEmulator

RESULTS = Path(__file__).parent / "results" / "ews.json"
PASSWORD_ENV = "LEAVESYNC_BENCH_EWS_PASSWORD"


def _phase(
    name: str, provider: EwsCalendarProvider, emulator: EwsEmulator, changes: list[EventChange]
) -> tuple[dict[str, float | int | str], list]:
    before = len(emulator.requests)
    started = time.perf_counter()
    results = list(provider.apply(changes))
    seconds = time.perf_counter() - started
    requests = emulator.requests[before:]
    ops: dict[str, int] = {}
    for record in requests:
        ops[record.op] = ops.get(record.op, 0) + 1
    row = {
        "phase": name,
        "events": len(results),
        "failed_events": sum(not r.ok for r in results),
        "seconds": round(seconds, 2),
        "events_per_second": round(len(results) / seconds, 1),
        "soap_requests": len(requests),
        "soap_requests_per_event": round(len(requests) / max(1, len(results)), 4),
        "faults_injected": sum(r.outcome not in ("ok", "401") for r in requests),
        "requests_by_operation": ops,
    }
    return row, results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mailboxes", type=int, default=20)
    parser.add_argument("--events", type=int, default=4000)
    parser.add_argument("--concurrent-mailboxes", type=int, default=4)
    parser.add_argument("--fault-rate", type=float, default=0.1)
    args = parser.parse_args()

    mailboxes = [f"user{i:03d}@example.com" for i in range(args.mailboxes)]
    emulator = EwsEmulator(mailboxes, seed=1).start()
    emulator.back_off_ms = 20
    os.environ[PASSWORD_ENV] = emulator.password
    settings = EwsSettings(
        ews_url=emulator.url,
        username=emulator.username,
        password_env=PASSWORD_ENV,
        auth_type="basic",
        version="Exchange2016",
        chunk_size=100,
        concurrent_mailboxes=args.concurrent_mailboxes,
        backoff_base=0.02,
        backoff_cap=0.5,
        max_attempts=30,
    )
    provider = EwsCalendarProvider("bench", settings)
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
        updates = [
            EventChange(
                "update",
                r.change.event_key,
                r.change.calendar,
                sample_payload(int(r.change.event_key.split("-")[1]), "Away"),
                r.provider_event_id,
                r.version,
            )
            for r in created
        ]
        row, _ = _phase("update", provider, emulator, updates)
        rows.append(row)
        emulator.fault_rate = args.fault_rate
        row, updated = _phase(f"update, {args.fault_rate:.0%} faults", provider, emulator, updates)
        rows.append(row)
        emulator.fault_rate = 0.0
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

    header = (
        f"{'phase':<22}{'events':>8}{'failed':>8}{'seconds':>9}{'events/s':>10}{'SOAP/event':>12}"
    )
    print(
        f"EWS provider vs emulator: {args.mailboxes} mailboxes, chunks of 100, "
        f"{args.concurrent_mailboxes} mailboxes at a time"
    )
    print(header)
    print("-" * len(header))
    for row in rows:
        print(
            f"{row['phase']:<22}{row['events']:>8}{row['failed_events']:>8}{row['seconds']:>9}"
            f"{row['events_per_second']:>10}{row['soap_requests_per_event']:>12}"
        )
    print(f"items left after deletes: {leftover}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(
        json.dumps(
            {
                "mailboxes": args.mailboxes,
                "events": args.events,
                "chunk_size": 100,
                "concurrent_mailboxes": args.concurrent_mailboxes,
                "fault_rate": args.fault_rate,
                "items_left_after_deletes": leftover,
                "phases": rows,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
