"""What one evaluation of the hr_changes sensor costs on a large HR database (not a test).

Run: ``.venv/bin/python -m bench.sensor_poll`` (1,000,000 leaves in SQLite; ``--hr-url`` for
PostgreSQL). Two shapes of HR data: ``spread`` (updated_at spread over the last year, as a
live HR database has) and ``bulk`` (every row stamped in the same second, as right after an
import, before any other change). For each: the median and worst of several polls with
nothing changed, and one poll after a leave changed. Results: bench/results/sensor-poll.json.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import sqlalchemy as sa

from bench.scale import analyze, load_hr

RESULTS = Path(__file__).parent / "results" / "sensor-poll.json"


def spread_stamps(engine: sa.Engine) -> None:
    """updated_at of each leave: up to a year before the import's stamp (by its id)."""
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            conn.execute(
                sa.text(
                    "UPDATE leaves SET updated_at = updated_at "
                    "- make_interval(secs => (id * 7919) % 31536000)"
                )
            )
        else:
            conn.execute(
                sa.text(
                    "UPDATE leaves SET updated_at = strftime('%Y-%m-%d %H:%M:%f', updated_at, "
                    "'-' || ((id * 7919) % 31536000) || ' seconds')"
                )
            )
    analyze(engine)


def polls(sensor, instance, cursor: str | None, count: int) -> tuple[list[float], str | None]:
    from dagster import build_sensor_context

    times = []
    for _ in range(count):
        started = time.perf_counter()
        with build_sensor_context(instance=instance, cursor=cursor) as context:
            result = sensor.evaluate_tick(context)
        times.append(time.perf_counter() - started)
        cursor = result.cursor
    return times, cursor


def measure(cfg, engine: sa.Engine, ticks: int) -> dict[str, float]:
    from dagster import DagsterInstance

    from pipelines.definitions import build_definitions

    sensor = build_definitions(cfg).get_sensor_def("hr_changes")
    with DagsterInstance.ephemeral() as instance:
        instance.add_dynamic_partitions("legal_entity", ["FR", "US-NY", "JP", "AU", "BR"])
        first, cursor = polls(sensor, instance, None, 1)  # starts from HR's newest change
        idle, cursor = polls(sensor, instance, cursor, ticks)
        with engine.begin() as conn:
            newest = conn.execute(sa.text("SELECT MAX(updated_at) FROM leaves")).scalar()
            stamp = dt.datetime.fromisoformat(str(newest)) + dt.timedelta(seconds=30)
            lid = conn.execute(
                sa.text("SELECT MIN(id) FROM leaves WHERE start_date >= :d AND status = 'pending'"),
                {"d": dt.date.today()},
            ).scalar()
            conn.execute(
                sa.text("UPDATE leaves SET status = 'approved', updated_at = :t WHERE id = :i"),
                {"t": stamp, "i": lid},
            )
        changed, cursor = polls(sensor, instance, cursor, 1)
        after, _ = polls(sensor, instance, cursor, ticks)
    return {
        "first_poll_s": round(first[0], 3),
        "nothing_changed_p50_s": round(statistics.median(idle), 3),
        "nothing_changed_max_s": round(max(idle), 3),
        "one_leave_changed_s": round(changed[0], 3),
        "nothing_changed_after_it_p50_s": round(statistics.median(after), 3),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--leaves", type=int, default=1_000_000)
    parser.add_argument("--employees", type=int, default=50_000)
    parser.add_argument("--hr-url", default=None, help="default: a temporary SQLite file")
    parser.add_argument("--ticks", type=int, default=5)
    args = parser.parse_args()
    from resources.config import parse_config

    root = Path(tempfile.mkdtemp(prefix="leavesync-sensor-poll-"))
    url = args.hr_url or f"sqlite:///{root / 'hr.sqlite'}"
    cfg = parse_config(
        {
            "hr": {"url": url},
            "state": {"url": f"sqlite:///{root / 'state.sqlite'}"},
            "targets": [{"name": "feeds", "type": "ics", "settings": {"directory": str(root)}}],
            "realtime": {"enabled": True},
        },
        "sensor poll benchmark",
    )
    engine = sa.create_engine(url)
    today = dt.date.today()
    result = {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}; load average {os.getloadavg()[0]:.1f} (shared machine)",
        "hr": engine.dialect.name,
        "leaves": args.leaves,
    }
    for shape in ("bulk", "spread"):
        started = time.monotonic()
        load_hr(url, today, 5, args.employees, args.leaves)
        if shape == "spread":
            spread_stamps(engine)
        print(f"{shape}: {args.leaves} leaves loaded in {time.monotonic() - started:.0f} s")
        result[shape] = measure(cfg, engine, args.ticks)
        print(f"  {result[shape]}", flush=True)
    engine.dispose()
    shutil.rmtree(root, ignore_errors=True)
    result["load_average_after"] = round(os.getloadavg()[0], 1)
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(f"written to {RESULTS}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
