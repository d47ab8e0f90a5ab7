"""What one change costs in a large team feed (issue 12): a 5,000-person team's year, about
20,000 events in one .ics file; time one leave's update, and a run that changes nothing."""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from icalendar import Calendar

from bench.events import sample_payload
from resources.providers.base import EventChange
from resources.providers.ics import IcsProvider, IcsSettings

CALENDAR = "teams/everyone"


def measure(events: int, repeats: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="leavesync-team-feed-") as tmp:
        provider = IcsProvider("team", IcsSettings(directory=tmp))
        payloads = [
            replace(sample_payload(n, f"Employee {n} – Absent"), show_as="free", private=False)
            for n in range(events)
        ]
        started = time.perf_counter()
        list(provider.apply([EventChange("create", p.event_key, CALENDAR, p) for p in payloads]))
        fill = time.perf_counter() - started
        path = provider.path_for(CALENDAR)
        one_change, one_change_cpu = [], []
        for i in range(repeats):
            moved = replace(payloads[i], title=f"Employee {i} – Absent (changed {i})")
            change = EventChange("update", moved.event_key, CALENDAR, moved)
            started, cpu = time.perf_counter(), time.process_time()
            (result,) = provider.apply([change])
            one_change.append(time.perf_counter() - started)
            one_change_cpu.append(time.process_time() - cpu)
            assert result.ok, result.error
        # What a change cost before feeds were changed in place: parse and re-serialise it all.
        cpu = time.process_time()
        Calendar.from_ical(path.read_bytes()).to_ical()
        full_cpu = time.process_time() - cpu
        return {
            "events": events,
            "full_reparse_cpu_seconds": round(full_cpu, 2),
            "feed_bytes": path.stat().st_size,
            "fill_seconds": round(fill, 2),
            "one_change_seconds_median": round(statistics.median(one_change), 3),
            "one_change_seconds_max": round(max(one_change), 3),
            # CPU time of this process: what the wall time is on an idle machine, less I/O.
            "one_change_cpu_seconds_median": round(statistics.median(one_change_cpu), 3),
            "repeats": repeats,
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path("bench/results/team_feed.json"))
    args = parser.parse_args()
    result = measure(args.events, args.repeats)
    result["machine"] = (
        f"{platform.machine()}, {platform.python_implementation()} {platform.python_version()}"
    )
    result["load_average_1min"] = round(os.getloadavg()[0], 1)
    result["cores"] = os.cpu_count()
    result["date"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    print(json.dumps(result, indent=2))
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
