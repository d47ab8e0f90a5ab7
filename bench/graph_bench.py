"""Benchmark of the Microsoft Graph provider against the Graph emulator (not a test).

Run: ``.venv/bin/python -m bench.graph_bench``. Prints a table and writes
bench/results/graph.json. The emulator enforces Graph's limits in their real shape (requests
per sliding window per app and per mailbox, 4 concurrent requests per mailbox) at a
scaled-down window so a run takes seconds; the provider is configured with the same limits.
Figures: events applied per second, HTTP requests per event (goal <= 0.06) and throughput as
a share of the binding limit after the first window (goal >= 0.9, with zero failed events).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

from bench.events import sample_payload
from resources.providers.base import EventChange
from resources.providers.graph import GraphCalendarProvider, GraphSettings
from tests.emulators.graph import GraphEmulator

RESULTS = Path(__file__).parent / "results" / "graph.json"
SECRET_ENV = "LEAVESYNC_BENCH_GRAPH_SECRET"
CLIENT_ID = "bench-0000-0000-0000-000000000000"


def _scenario(
    name: str,
    mailboxes: int,
    events: int,
    app_limit: int | None,
    mailbox_limit: int | None,
    window: float,
    latency: float,
) -> dict[str, Any]:
    """Create then update ``events`` spread over ``mailboxes``; measure the two phases together."""
    emu = GraphEmulator.start()
    try:
        emu.register_app(CLIENT_ID, os.environ[SECRET_ENV])
        emu.latency = latency
        emu.app_limit = (app_limit, window) if app_limit else None
        emu.mailbox_limit = (mailbox_limit, window) if mailbox_limit else None
        settings = GraphSettings(
            tenant_id=emu.tenant_id,
            client_id=CLIENT_ID,
            client_secret_env=SECRET_ENV,
            authority=emu.base_url,
            graph_url=emu.base_url,
            ca_bundle=str(emu.pki.ca_file),
            app_requests_per_window=app_limit or 1_000_000,
            app_window_seconds=window,
            mailbox_requests_per_window=mailbox_limit or 1_000_000,
            mailbox_window_seconds=window,
            parallel_batches=8,
            backoff_base_seconds=0.01,
            backoff_cap_seconds=2.0,
        )
        provider = GraphCalendarProvider("bench", settings)
        provider._access_token()  # the token fetch is not part of the throughput
        creates = [
            EventChange(
                "create",
                f"leave-{n}",
                f"user{n % mailboxes}@contoso.com",
                sample_payload(n, "Absent", "Europe/Paris"),
            )
            for n in range(events)
        ]
        http_before = emu.stats.http_requests
        started = time.monotonic()
        results = list(provider.apply(creates))
        ids = {r.change.event_key: r.provider_event_id for r in results if r.ok}
        updates = [
            EventChange(
                "update",
                c.event_key,
                c.calendar,
                sample_payload(int(c.event_key[6:]), "Away", "Europe/Paris"),
                ids.get(c.event_key),
            )
            for c in creates
        ]
        results += list(provider.apply(updates))
        elapsed = time.monotonic() - started
        provider.close()
        applied = sum(r.ok for r in results)
        http = emu.stats.http_requests - http_before
        admitted = [t - started for t in emu.stats.admitted if t >= started]
        steady = [t for t in admitted if t >= window]
        if app_limit:
            limit_rate, binding = app_limit / window, "app"
        elif mailbox_limit:
            limit_rate, binding = mailbox_limit * mailboxes / window, "mailbox"
        else:
            limit_rate, binding = 0.0, "none"
        steady_span = max(elapsed - window, 1e-9)
        share = (len(steady) / steady_span) / limit_rate if limit_rate else None
        return {
            "scenario": name,
            "mailboxes": mailboxes,
            "changes": len(results),
            "failed": len(results) - applied,
            "seconds": round(elapsed, 2),
            "events_per_second": round(applied / elapsed, 1),
            "http_requests_per_event": round(http / len(results), 4),
            "sub_requests_per_event": round(len(admitted) / len(results), 4),
            "binding_limit": binding,
            "limit_requests_per_second": round(limit_rate, 1),
            "share_of_limit": round(share, 3) if share is not None else None,
            "throttled_429": sum(emu.stats.throttled.values()),
            "max_concurrency_per_mailbox": emu.stats.max_mailbox_concurrency,
        }
    finally:
        emu.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=1.0, help="multiply event counts")
    args = parser.parse_args()
    os.environ.setdefault(SECRET_ENV, "bench-secret")
    n = lambda count: max(1, int(count * args.scale))  # noqa: E731
    rows = [
        # Unthrottled: what the provider and the emulator manage on this machine.
        _scenario("raw", 200, n(4000), None, None, 1.0, 0.0),
        # Many mailboxes, few leaves each (the nightly run): the per-app limit binds.
        _scenario("per-app limit", 500, n(6000), 500, None, 1.0, 0.002),
        # Few mailboxes, many leaves each (an initial import): the per-mailbox limit binds.
        _scenario("per-mailbox limit", 4, n(4000), None, 120, 1.0, 0.002),
    ]
    columns = list(rows[0])
    widths = [max(len(c), *(len(str(r[c])) for r in rows)) for c in columns]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)))
    for row in rows:
        print("  ".join(str(row[c]).ljust(w) for c, w in zip(columns, widths, strict=True)))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    tmp = RESULTS.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({"provider": "microsoft_graph", "rows": rows}, indent=2) + "\n")
    tmp.replace(RESULTS)
    print(f"written {RESULTS}")


if __name__ == "__main__":
    main()
