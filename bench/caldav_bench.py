"""Benchmark of the CalDAV provider against a real Radicale server on loopback (not a test).

Run: ``.venv/bin/python -m bench.caldav_bench``. Prints a table and writes
bench/results/caldav.json: events applied per second and HTTP requests per event for creates,
updates, a lost-snapshot re-run (every create re-read and adopted), read-back and deletes.
Radicale runs as a subprocess with its file-system storage, so the figures include the
server's own work (one file per event, an fsync per write), on the same 2 cores as the client.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import tempfile
import time
from pathlib import Path

from bench.events import sample_payload, update_of
from resources.providers.base import EventChange
from resources.providers.caldav import CalDavProvider, CalDavSettings
from tests.emulators.pki import make_test_pki
from tests.servers.caldav_servers import SERVICE_PASSWORD, SERVICE_USER, RadicaleServer

RESULTS = Path(__file__).parent / "results" / "caldav.json"
PASSWORD_ENV = "LEAVESYNC_BENCH_CALDAV_PASSWORD"


def _phase(name: str, provider: CalDavProvider, run) -> tuple[dict, list]:
    before = sum(provider.requests.values())
    by_method_before = dict(provider.requests)
    started = time.perf_counter()
    results = list(run())
    seconds = time.perf_counter() - started
    requests = sum(provider.requests.values()) - before
    methods = {
        m: n - by_method_before.get(m, 0)
        for m, n in provider.requests.items()
        if n - by_method_before.get(m, 0)
    }
    failed = sum(not getattr(r, "ok", True) for r in results)
    row = {
        "phase": name,
        "events": len(results),
        "failed_events": failed,
        "seconds": round(seconds, 2),
        "events_per_second": round(len(results) / seconds, 1),
        "http_requests": requests,
        "http_requests_per_event": round(requests / max(1, len(results)), 3),
        "requests_by_method": methods,
    }
    return row, results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calendars", type=int, default=50)
    parser.add_argument("--events", type=int, default=2000)
    parser.add_argument("--parallel", type=int, default=4, help="max_parallel_calendars")
    parser.add_argument("--https", action="store_true", help="TLS with a test CA")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="caldav-bench-"))
    users = [f"user{i:03d}@example.com" for i in range(args.calendars)]
    pki = make_test_pki(work / "pki") if args.https else None
    server = RadicaleServer(work / "radicale", users, pki).start()
    os.environ[PASSWORD_ENV] = SERVICE_PASSWORD
    rows = []
    try:
        for user in users:
            server.make_calendar(user)
        settings = CalDavSettings(
            calendar_url=server.base_url + "/{email}/leaves/",
            username=SERVICE_USER,
            password_env=PASSWORD_ENV,
            ca_bundle=server.ca_bundle,
            max_parallel_calendars=args.parallel,
        )
        provider = CalDavProvider("bench", settings)
        creates = [
            EventChange("create", f"leave-{n}", users[n % len(users)], sample_payload(n, "Absent"))
            for n in range(args.events)
        ]
        row, created = _phase("create", provider, lambda: provider.apply(creates))
        rows.append(row)
        updates = [update_of(r, "Away") for r in created]
        row, updated = _phase("update", provider, lambda: provider.apply(updates))
        rows.append(row)
        again = [EventChange("create", u.event_key, u.calendar, u.event) for u in updates]
        row, _ = _phase(
            "create again, snapshot lost (adopt)", provider, lambda: provider.apply(again)
        )
        rows.append(row)
        window = (dt.date(2025, 7, 1), dt.date(2025, 10, 1))
        row, _ = _phase("read back", provider, lambda: provider.read_back(users, *window))
        rows.append(row)
        deletes = [
            EventChange(
                "delete",
                r.change.event_key,
                r.change.calendar,
                None,
                r.provider_event_id,
                r.version,
            )
            for r in updated
        ]
        row, _ = _phase("delete", provider, lambda: provider.apply(deletes))
        rows.append(row)
        leftover = sum(len(server.stored_files(u)) for u in users)
        provider.close()
    finally:
        server.stop()

    header = (
        f"{'phase':<38}{'events':>8}{'failed':>8}{'seconds':>9}{'events/s':>10}{'req/event':>11}"
    )
    scheme = "HTTPS" if args.https else "HTTP"
    print(
        f"CalDAV provider vs Radicale ({scheme}): {args.calendars} calendars, "
        f"{args.parallel} at a time"
    )
    print(header)
    print("-" * len(header))
    for row in rows:
        print(
            f"{row['phase']:<38}{row['events']:>8}{row['failed_events']:>8}{row['seconds']:>9}"
            f"{row['events_per_second']:>10}{row['http_requests_per_event']:>11}"
        )
    print(f"resources left after deletes: {leftover}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(
        json.dumps(
            {
                "server": "Radicale " + _version("radicale"),
                "client": "caldav " + _version("caldav"),
                "scheme": scheme,
                "calendars": args.calendars,
                "events": args.events,
                "max_parallel_calendars": args.parallel,
                "resources_left_after_deletes": leftover,
                "machine": f"{os.cpu_count()}-core sandbox, {platform.python_implementation()} "
                f"{platform.python_version()}",
                "date": dt.date.today().isoformat(),
                "phases": rows,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"wrote {RESULTS}")


def _version(package: str) -> str:
    from importlib.metadata import version

    return version(package)


if __name__ == "__main__":
    main()
