"""Benchmark of the Google provider against the emulator with quotas enforced (not a test).

Run: ``.venv/bin/python -m bench.google_bench``. Prints two tables and writes
bench/results/google.json. Quotas are Google's shape at a scaled-down rate so a run takes
seconds: the figure that matters is throughput as a share of the binding quota. The second
table is the cost of the look-up before creates (a create is never blind) on a first sync
of 10,000 events in three shapes of company, and on runs with nothing to create.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from bench.events import print_table, sample_payload
from resources.providers.base import EventChange
from resources.providers.google import GoogleCalendarProvider
from tests.emulators.google_calendar import GoogleCalendarEmulator, make_service_account

RESULTS = Path(__file__).parent / "results" / "google.json"
KEY_ENV = "LEAVESYNC_BENCH_GOOGLE_KEY"


def _phase(
    name: str,
    provider: GoogleCalendarProvider,
    emulator: GoogleCalendarEmulator,
    changes: list[EventChange],
    quota_per_second: float,
) -> dict[str, float | int | str]:
    before = dict(emulator.stats)
    started = time.perf_counter()
    results = list(provider.apply(changes))
    seconds = time.perf_counter() - started
    delta = {k: v - before.get(k, 0) for k, v in emulator.stats.items()}
    failed = sum(not r.ok for r in results)
    rate = len(results) / seconds
    return {
        "phase": name,
        "events": len(results),
        "failed_events": failed,
        "seconds": round(seconds, 2),
        "events_per_second": round(rate, 1),
        "http_requests_per_event": round(delta.get("http_requests", 0) / len(results), 3),
        "api_calls_per_event": round(delta.get("api_requests", 0) / len(results), 3),
        "lookup_http_requests": delta.get("list_only_batches", 0),
        "user_quota_rejections": delta.get("user_quota_rejections", 0),
        "project_quota_rejections": delta.get("project_quota_rejections", 0),
        "faults_injected": delta.get("faults_injected", 0),
        "share_of_quota": round(rate / quota_per_second, 3),
    }


def _provider(emulator: GoogleCalendarEmulator, **settings: float) -> GoogleCalendarProvider:
    return GoogleCalendarProvider(
        "bench",
        GoogleCalendarProvider.Settings(
            service_account_key_env=KEY_ENV,
            api_base_url=emulator.base_url,
            token_uri=emulator.token_uri,
            backoff_base_seconds=0.05,
            backoff_cap_seconds=1.0,
            max_attempts=20,
            **settings,
        ),
    )


def _look_up_cost(users: int, events: int) -> dict[str, float | int | str]:
    """A first sync of ``events`` creates over ``users`` calendars: what the look-up adds."""
    info, public_key = make_service_account()
    names = [f"user{i:05d}@example.com" for i in range(users)]
    emulator = GoogleCalendarEmulator(info["client_email"], public_key, names).start()
    os.environ[KEY_ENV] = json.dumps(info)
    # No server quota here: this counts requests, the phases above measure pacing.
    provider = _provider(
        emulator,
        per_user_requests_per_minute=600_000,
        per_project_requests_per_minute=6_000_000,
        max_parallel_users=32,
    )
    creates = [
        EventChange("create", f"leave-{n}", names[n % users], sample_payload(n, "Absent"))
        for n in range(events)
    ]
    try:
        started = time.perf_counter()
        results = list(provider.apply(creates))
        seconds = time.perf_counter() - started
        stats = dict(emulator.stats)
        lookup_http = stats.get("list_only_batches", 0)
        # A second run with nothing to create: updates only (every fifth event), then none.
        before = dict(emulator.stats)
        updates = [
            EventChange(
                "update",
                r.change.event_key,
                r.change.calendar,
                sample_payload(int(r.change.event_key[6:]), "Away"),
                r.provider_event_id,
            )
            for r in results[::5]
        ]
        assert all(r.ok for r in provider.apply(updates))
        after_updates = dict(emulator.stats)
        assert list(provider.apply([])) == []
        idle_http = emulator.stats.get("http_requests", 0) - after_updates.get("http_requests", 0)
        update_lists = after_updates.get("list_requests", 0) - before.get("list_requests", 0)
    finally:
        emulator.stop()
    return {
        "shape": f"{users} users x {events // users} events",
        "events": len(results),
        "failed_events": sum(not r.ok for r in results),
        "seconds": round(seconds, 1),
        "lookup_list_calls": stats.get("list_requests", 0),
        "lookup_http_requests": lookup_http,
        "lookup_http_per_100_events": round(100 * lookup_http / len(results), 2),
        "write_http_requests": stats.get("http_requests", 0) - lookup_http,
        "calls_per_event": round(stats.get("api_requests", 0) / len(results), 3),
        "update_run_list_calls": update_lists,
        "nothing_changed_http_requests": idle_http,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=20)
    parser.add_argument("--events", type=int, default=1000)
    parser.add_argument("--user-per-minute", type=float, default=1200.0)
    parser.add_argument("--project-per-minute", type=float, default=6000.0)
    parser.add_argument("--fault-rate", type=float, default=0.1)
    parser.add_argument("--lookup-events", type=int, default=10_000)
    args = parser.parse_args()

    info, public_key = make_service_account()
    users = [f"user{i:03d}@example.com" for i in range(args.users)]
    emulator = GoogleCalendarEmulator(info["client_email"], public_key, users).start()
    # The server enforces the quotas as token buckets holding one batch plus a fifth: Google
    # counts per minute, so arrival jitter of a few milliseconds is no excess there.
    emulator.enforce_quota(args.user_per_minute, args.project_per_minute, 60, 60)
    os.environ[KEY_ENV] = json.dumps(info)
    settings = GoogleCalendarProvider.Settings(
        service_account_key_env=KEY_ENV,
        api_base_url=emulator.base_url,
        token_uri=emulator.token_uri,
        per_user_requests_per_minute=args.user_per_minute,
        per_project_requests_per_minute=args.project_per_minute,
        backoff_base_seconds=0.05,
        backoff_cap_seconds=1.0,
        max_attempts=20,
    )
    provider = GoogleCalendarProvider("bench", settings)
    binding = min(args.project_per_minute, args.user_per_minute * args.users) / 60.0
    creates = [
        EventChange("create", f"leave-{n}", users[n % args.users], sample_payload(n, "Absent"))
        for n in range(args.events)
    ]
    updates = [
        EventChange("update", c.event_key, c.calendar, sample_payload(n, "Away"))
        for n, c in enumerate(creates)
    ]
    deletes = [EventChange("delete", c.event_key, c.calendar) for c in creates]
    rows = []
    try:
        rows.append(_phase("create", provider, emulator, creates, binding))
        emulator.fault_rate = args.fault_rate
        emulator.slow_seconds = 0.02
        rows.append(
            _phase(f"update, {args.fault_rate:.0%} faults", provider, emulator, updates, binding)
        )
        emulator.fault_rate = 0.0
        rows.append(_phase("delete", provider, emulator, deletes, binding))
    finally:
        emulator.stop()

    print(
        f"Google provider vs emulator: {args.users} users, quota {args.user_per_minute:g}/min "
        f"per user, {args.project_per_minute:g}/min per project (binding {binding:g}/s)"
    )
    print_table(rows)
    n = args.lookup_events
    lookups = [_look_up_cost(users, n) for users in (20, 1_000, n // 2)]
    print(
        f"\nLook-up before creates, first sync of {n:,} events (goal: <= 3 HTTP requests "
        "per 100 events; 0 on a run with nothing to create)"
    )
    print_table(lookups)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(
        json.dumps(
            {
                "users": args.users,
                "user_per_minute": args.user_per_minute,
                "project_per_minute": args.project_per_minute,
                "binding_quota_per_second": binding,
                "phases": rows,
                "lookup": lookups,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"written {RESULTS}")


if __name__ == "__main__":
    main()
