"""Scale benchmark (not a test): a large HR database reconciled through Dagster.

Run: ``make bench`` (full scale: 20 entities, 50,000 employees, 1,000,000 leaves over three
years) or ``make bench-smoke`` (seconds). ``--hr-url postgresql+psycopg://...`` loads and
reads the HR database on PostgreSQL; ``--dagster-postgres postgresql://...`` puts the
Dagster instance there too. Each scenario runs in its own process (peak RSS per scenario);
stage times come from timing wrappers around the pipeline's own functions, and Dagster's
overhead is the run's wall time minus those stages. Prints one table and writes
bench/results/scale.json (or --out).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parent / "results" / "scale.json"
STAGES = ("extract", "validate", "render", "diff", "gx", "snapshot_read", "apply", "snapshot_write")


# --- data -----------------------------------------------------------------------------------
def load_hr(url: str, today: dt.date, entities: int, employees: int, leaves: int) -> dict[str, int]:
    """Generate the reference schema at scale and write it (COPY on PostgreSQL)."""
    import sqlalchemy as sa

    from pipelines import demo

    per_employee = leaves / employees
    scale = demo.Scale(entities, employees, per_employee, days_back=550, days_ahead=545)
    data = demo.generate(today, scale, seed=11)
    engine = sa.create_engine(url)
    demo.hr_metadata.drop_all(engine)
    demo.create_reference_schema(engine)
    if engine.dialect.name == "postgresql":
        with engine.begin() as conn:
            cursor = conn.connection.driver_connection.cursor()
            for table in (demo.legal_entities, demo.leave_types, demo.employees, demo.leaves):
                cols = [c.name for c in table.columns]
                with cursor.copy(f"COPY {table.name} ({', '.join(cols)}) FROM STDIN") as copy:
                    for row in data[table.name]:
                        copy.write_row([row[c] for c in cols])
    else:
        with engine.begin() as conn:
            for table in (demo.legal_entities, demo.leave_types, demo.employees, demo.leaves):
                rows = data[table.name]
                for i in range(0, len(rows), 20000):
                    conn.execute(table.insert(), rows[i : i + 20000])
    analyze(engine)
    engine.dispose()
    return {name: len(rows) for name, rows in data.items()}


def analyze(engine: Any) -> None:
    """Planner statistics, as a live HR database has: without them PostgreSQL picks nested
    loops for the extract's joins and one entity's extract takes minutes instead of 0.3 s."""
    import sqlalchemy as sa

    with engine.begin() as conn:
        conn.execute(sa.text("ANALYZE"))


def change_one_percent(url: str, today: dt.date, seed: int = 5) -> dict[str, int]:
    """Edit, cancel, move and add leaves: 1% of all leaves, a quarter each."""
    import random

    import sqlalchemy as sa

    from pipelines import demo

    engine = sa.create_engine(url)
    rng = random.Random(seed)
    with engine.begin() as conn:
        n = conn.execute(sa.select(sa.func.count()).select_from(demo.leaves)).scalar_one()
        max_id = conn.execute(sa.select(sa.func.max(demo.leaves.c.id))).scalar_one()
        employees = conn.execute(
            sa.select(sa.func.count()).select_from(demo.employees)
        ).scalar_one()
        quarter = max(1, n // 400)
        ids = rng.sample(range(1, max_id + 1), 3 * quarter)
        edits, cancels, moves = ids[:quarter], ids[quarter : 2 * quarter], ids[2 * quarter :]
        t = demo.leaves
        conn.execute(
            t.update().where(t.c.id == sa.bindparam("b_id")).values(status="cancelled"),
            [{"b_id": i} for i in cancels],
        )
        shift = sa.bindparam("b_s"), sa.bindparam("b_e")
        move = (
            t.update()
            .where(t.c.id == sa.bindparam("b_id"))
            .values(start_date=shift[0], end_date=shift[1])
        )
        rows = conn.execute(
            sa.select(t.c.id, t.c.start_date, t.c.end_date).where(t.c.id.in_(edits))
        ).all()
        conn.execute(
            move,
            [
                {
                    "b_id": r.id,
                    "b_s": _d(r.start_date),
                    "b_e": _d(r.end_date) + dt.timedelta(days=1),
                }
                for r in rows
            ],
        )
        rows = conn.execute(
            sa.select(t.c.id, t.c.start_date, t.c.end_date).where(t.c.id.in_(moves))
        ).all()
        conn.execute(
            move,
            [
                {
                    "b_id": r.id,
                    "b_s": _d(r.start_date) + dt.timedelta(days=d),
                    "b_e": _d(r.end_date) + dt.timedelta(days=d),
                }
                for r, d in ((r, rng.randint(7, 60)) for r in rows)
            ],
        )
        new = [
            {
                "id": max_id + 1 + i,
                "employee_id": rng.randint(1, employees),
                "leave_type": "PTO",
                "status": "approved",
                "start_date": today + dt.timedelta(days=rng.randint(-20, 300)),
                "end_date": None,
                "updated_at": dt.datetime.combine(today, dt.time(7)),
            }
            for i in range(quarter)
        ]
        for r in new:
            r["end_date"] = r["start_date"] + dt.timedelta(days=rng.randint(0, 4))
        conn.execute(t.insert(), new)
    analyze(engine)
    engine.dispose()
    return {"edited": len(edits), "cancelled": len(cancels), "moved": len(moves), "new": len(new)}


def _d(value: Any) -> dt.date:
    return value if isinstance(value, dt.date) else dt.date.fromisoformat(str(value)[:10])


# --- one scenario, in its own process -----------------------------------------------------------
class StageClock:
    """Wraps the pipeline's own functions with timers; what is left of a run is Dagster's."""

    def __init__(self) -> None:
        self.seconds = dict.fromkeys(STAGES, 0.0)
        self.files_written = 0
        self.changes_sent = 0

    def wrap(self, owner: Any, name: str, stage: str) -> None:
        original = getattr(owner, name)

        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.seconds[stage] += time.perf_counter() - start

        setattr(owner, name, timed)

    def wrap_generator(self, owner: Any, name: str, stage: str) -> None:
        original = getattr(owner, name)
        clock = self

        def timed(self_: Any, changes: Any) -> Any:
            clock.changes_sent += len(changes)
            iterator = original(self_, changes)
            while True:
                start = time.perf_counter()
                try:
                    item = next(iterator)
                except StopIteration:
                    clock.seconds[stage] += time.perf_counter() - start
                    return
                clock.seconds[stage] += time.perf_counter() - start
                yield item

        setattr(owner, name, timed)

    def install(self) -> None:
        import assets.extract as extract
        import assets.leave_diff as leave_diff
        from resources.providers import ics
        from resources.state import StateStore

        self.wrap(extract, "extract_scope", "extract")
        self.wrap(leave_diff, "validate_rows", "validate")
        self.wrap(leave_diff, "render_events", "render")
        self.wrap(leave_diff, "compute_diff", "diff")
        for name in ("run_gx_suite", "validate_diff"):
            if hasattr(leave_diff, name):
                self.wrap(leave_diff, name, "gx")
        self.wrap(StateStore, "snapshot_in_scope", "snapshot_read")
        self.wrap(StateStore, "snapshot_for_keys", "snapshot_read")
        self.wrap(StateStore, "record_changes", "snapshot_write")
        self.wrap_generator(ics.IcsProvider, "apply", "apply")
        original_write = ics._write_atomically

        def counted(path: Path, data: bytes) -> None:
            self.files_written += 1
            original_write(path, data)

        ics._write_atomically = counted


def run_scenario(args: argparse.Namespace) -> None:
    """Child process: one reconciliation; prints its figures as JSON on the last line."""
    from pipelines.runner import reconcile
    from resources.config import load_config

    clock = StageClock()
    clock.install()
    cfg = load_config(args.config)
    entities = args.entity or None
    start = time.perf_counter()
    runs = reconcile(
        cfg,
        entities,
        dt.date.fromisoformat(args.date_from),
        dt.date.fromisoformat(args.date_to),
        progress=lambda m: None,
        workers=args.workers,
    )
    wall = time.perf_counter() - start
    import resource

    # Linux reports KiB. With worker processes, count each worker at the largest one's peak
    # (an upper bound of what ran at once).
    peak_rss_mib = (
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        + (args.workers if args.workers > 1 else 0)
        * resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    ) / 1024
    stages = sum(clock.seconds.values())
    from dagster import DagsterInstance

    instance = DagsterInstance.get()
    events = [len(instance.all_logs(r.run_id)) for r in runs]
    # The floor: what any reconciliation must do (read HR, read the snapshot, diff).
    floor = sum(clock.seconds[k] for k in ("extract", "snapshot_read", "diff"))
    summary = [r.summary for r in runs if r.summary is not None]
    totals = {
        "created": 0,
        "updated": 0,
        "deleted": 0,
        "unchanged": 0,
        "quarantined": 0,
        "failed": 0,
    }
    for frame in summary:
        for col in totals:
            if col in frame:
                totals[col] += int(frame[col].sum())
    print(
        json.dumps(
            {
                "wall_s": wall,
                "runs": len(runs),
                "failed_runs": sum(r.status != "ok" for r in runs),
                "stages_s": clock.seconds,
                "dagster_s": max(0.0, wall - stages),
                "dagster_s_per_run": max(0.0, wall - stages) / max(1, len(runs)),
                "peak_rss_mib": peak_rss_mib,
                "dagster_events_per_run": max(events) if events else 0,
                "floor_s": floor,
                "floor_ratio": wall / floor if floor else None,
                "files_written": clock.files_written,
                "changes_sent": clock.changes_sent,
                **totals,
            }
        )
    )


def spawn(
    config: Path,
    date_from: dt.date,
    date_to: dt.date,
    entities: list[str],
    env: dict,
    workers: int = 1,
) -> dict:
    """Run one scenario in a child process; its figures come back as JSON."""
    cmd = [
        sys.executable,
        "-m",
        "bench.scale",
        "--run-scenario",
        "--config",
        str(config),
        "--from",
        date_from.isoformat(),
        "--to",
        date_to.isoformat(),
        "--workers",
        str(workers),
    ]
    for e in entities:
        cmd += ["--entity", e]
    proc = subprocess.run(cmd, capture_output=True, env=env, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"scenario failed ({' '.join(cmd)}):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# --- the diff alone -----------------------------------------------------------------------------
def diff_throughput(rows: int) -> dict[str, float]:
    """compute_diff on ``rows`` desired events against a snapshot of the same size (1% differ)."""
    import numpy as np
    import pandas as pd

    from assets.diff import compute_diff
    from assets.render import EVENT_COLUMNS
    from resources.providers.base import fingerprint_texts
    from resources.state import SNAPSHOT_COLUMNS

    keys = pd.Series(np.arange(rows)).astype(str)
    desired = pd.DataFrame({c: "x" for c in EVENT_COLUMNS}, index=range(rows))
    desired["target"] = "feeds"
    desired["event_key"] = "leave-" + keys
    desired["leave_id"] = keys
    desired["calendar"] = "e" + (keys.astype(int) % 50000).astype(str) + "@example.com"
    desired["legal_entity"] = "FR"
    desired["partition_date"] = "2026-03-02"
    start = time.perf_counter()
    desired["fingerprint"] = fingerprint_texts(("t\x1f" + keys).to_numpy(dtype=object))
    fp_seconds = time.perf_counter() - start
    snap = pd.DataFrame({c: None for c in SNAPSHOT_COLUMNS}, index=range(rows))
    for c in (
        "target",
        "event_key",
        "leave_id",
        "calendar",
        "legal_entity",
        "partition_date",
        "fingerprint",
    ):
        snap[c] = desired[c]
    snap.loc[snap.index % 100 == 0, "fingerprint"] = 0
    start = time.perf_counter()
    diff = compute_diff(desired, snap)
    seconds = time.perf_counter() - start
    return {
        "rows": rows,
        "diff_s": seconds,
        "diff_rows_per_s": rows / seconds,
        "fingerprint_rows_per_s": rows / fp_seconds,
        "updates_found": int((diff.changes["op"] == "update").sum()),
    }


# --- main ---------------------------------------------------------------------------------------
def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true", help="tiny scale, seconds long")
    p.add_argument("--entities", type=int, default=20)
    p.add_argument("--employees", type=int, default=50_000)
    p.add_argument("--leaves", type=int, default=1_000_000)
    p.add_argument("--hr-url", help="HR database URL (default: SQLite in the work folder)")
    p.add_argument("--dagster-postgres", help="postgresql:// URL for the Dagster instance storage")
    p.add_argument("--work", default=".leavesync-bench", help="work folder (wiped)")
    p.add_argument("--out", default=str(RESULTS))
    p.add_argument("--lookback", type=int, default=30, help="nightly window: days back")
    p.add_argument("--horizon", type=int, default=365, help="nightly window: days ahead")
    p.add_argument("--backfill-days", type=int, default=3 * 365, help="scenario 4: days back")
    p.add_argument(
        "--workers",
        type=int,
        default=1,
        help="entity runs at once (>1: stage times are not measured, runs are in other processes)",
    )
    p.add_argument("--skip", action="append", default=[], help="scenario numbers to skip")
    p.add_argument("--run-scenario", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--config", help=argparse.SUPPRESS)
    p.add_argument("--from", dest="date_from", help=argparse.SUPPRESS)
    p.add_argument("--to", dest="date_to", help=argparse.SUPPRESS)
    p.add_argument("--entity", action="append", default=[], help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.run_scenario:
        run_scenario(args)
        return
    if args.smoke:
        args.entities, args.employees, args.leaves = 2, 60, 600
        args.lookback, args.horizon, args.backfill_days = 3, 14, 60
        args.out = str(Path(args.work) / "scale-smoke.json")

    import shutil

    import yaml

    work = Path(args.work).resolve()
    shutil.rmtree(work, ignore_errors=True)
    (work / "dagster").mkdir(parents=True)
    dagster_yaml = ""
    if args.dagster_postgres:
        dagster_yaml = f"storage:\n  postgres:\n    postgres_url: {args.dagster_postgres}\n"
    (work / "dagster" / "dagster.yaml").write_text(dagster_yaml)
    today = dt.date.today()
    hr_url = args.hr_url or f"sqlite:///{work / 'hr.sqlite'}"
    cfg = {
        "hr": {"url": hr_url},
        "state": {"url": f"sqlite:///{work / 'state.sqlite'}"},
        "window": {
            "lookback_days": args.lookback,
            "horizon_days": args.horizon,
            "partitions_start": (today - dt.timedelta(days=args.backfill_days)).isoformat(),
        },
        "safety": {"max_delete_share": 1.0},
    }
    config = work / "config.yaml"
    config.write_text(yaml.safe_dump(cfg))
    env = {
        **os.environ,
        "LEAVESYNC_HOME": str(work),
        "DAGSTER_HOME": str(work / "dagster"),
        "DAGSTER_EMIT_PARTITION_SUBSET_IN_PLANNED_EVENTS": "true",
        "DAGSTER_EVENT_BATCH_SIZE": "1000",
        "PYTHONWARNINGS": "ignore",
    }

    print(
        f"loading HR: {args.entities} entities, {args.employees} employees, {args.leaves} leaves "
        f"into {hr_url.split('@')[-1]}",
        flush=True,
    )
    t0 = time.perf_counter()
    counts = load_hr(hr_url, today, args.entities, args.employees, args.leaves)
    load_s = time.perf_counter() - t0
    print(f"  loaded in {load_s:.1f}s: {counts}", flush=True)

    window = (today - dt.timedelta(days=args.lookback), today + dt.timedelta(days=args.horizon))
    results: dict[str, Any] = {}
    plan = [
        ("1 first nightly", window, []),
        ("2 nothing changed", window, []),
        ("3 1% changed", window, []),
        (
            "4 one entity backfill",
            (
                today - dt.timedelta(days=args.backfill_days),
                today + dt.timedelta(days=args.horizon),
            ),
            ["FR"],
        ),
    ]
    for name, (date_from, date_to), entities in plan:
        if name[0] in args.skip:
            continue
        if name.startswith("3"):
            results["changes_made"] = change_one_percent(hr_url, today)
        print(f"scenario {name} ...", flush=True)
        results[name] = spawn(config, date_from, date_to, entities, env, args.workers)
        r = results[name]
        print(
            f"  {r['wall_s']:.1f}s, {r['peak_rss_mib']:.0f} MiB, {r['runs']} runs, "
            f"changes {r['created']}/{r['updated']}/{r['deleted']}",
            flush=True,
        )
    diff_rows = 20_000 if args.smoke else 1_000_000
    results["diff"] = diff_throughput(diff_rows)
    results["machine"] = {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "hr": hr_url.split(":")[0],
        "dagster_storage": "postgres" if args.dagster_postgres else "sqlite",
    }
    results["scale"] = {
        "entities": args.entities,
        "employees": args.employees,
        "leaves": args.leaves,
        "load_s": load_s,
        "date": today.isoformat(),
    }
    print_table(results)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2, default=str))
    print(f"figures written to {out}")


def print_table(results: dict[str, Any]) -> None:
    rows = []
    for name, r in results.items():
        if not (isinstance(r, dict) and "wall_s" in r):
            continue
        touched = r["created"] + r["updated"] + r["deleted"] + r["unchanged"]
        stages = r["stages_s"]
        slowest = max(stages, key=stages.get)
        rows.append(
            (
                name,
                f"{r['wall_s']:.1f}",
                f"{r['peak_rss_mib']:.0f}",
                f"{touched / r['wall_s']:.0f}",
                str(r["files_written"]),
                str(r["changes_sent"]),
                f"{r['created']}/{r['updated']}/{r['deleted']}",
                f"{r['dagster_s_per_run']:.1f}",
                str(r.get("dagster_events_per_run", "")),
                f"{r['floor_ratio']:.2f}" if r.get("floor_ratio") else "",
                f"{slowest} {stages[slowest]:.1f}s",
            )
        )
    head = (
        "scenario",
        "wall s",
        "peak MiB",
        "calendar events/s",
        "files written",
        "changes sent",
        "c/u/d",
        "dagster s/run",
        "dagster events/run",
        "wall / floor",
        "slowest stage",
    )
    widths = [
        max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(head)
    ]
    print()
    print("  ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)))
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)))
    d = results["diff"]
    print(
        f"\ndiff alone: {d['rows']} rows in {d['diff_s']:.2f}s = {d['diff_rows_per_s']:,.0f} rows/s; "
        f"fingerprints {d['fingerprint_rows_per_s']:,.0f} rows/s"
    )
    s2, s3 = results.get("2 nothing changed"), results.get("3 1% changed")
    if s2 and s3:
        print(f"scenario 3 / scenario 2 wall time: {s3['wall_s'] / s2['wall_s']:.2f}")
    if s2 and s2.get("floor_ratio"):
        print(
            f"scenario 2 / its floor (extract + snapshot read + diff, {s2['floor_s']:.1f}s): "
            f"{s2['floor_ratio']:.2f}"
        )
    for name, r in results.items():
        if isinstance(r, dict) and "stages_s" in r:
            parts = ", ".join(f"{k} {v:.1f}" for k, v in r["stages_s"].items() if v >= 0.05)
            print(f"{name}: stages (s): {parts}; dagster {r['dagster_s']:.1f}")


if __name__ == "__main__":
    main()
