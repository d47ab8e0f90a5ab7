"""HR change -> event in the calendar, measured with the hr_changes sensor running under a real
Dagster webserver and daemon (`dagster dev`, as `make ui`) on a temporary instance (not a test).

Run: ``.venv/bin/python -m bench.latency`` (embedded defaults: demo HR in SQLite, SQLite
instance, the ics feeds, poll every 20 s) or ``--instance postgres --google`` (Dagster's storage
in PostgreSQL, the Google Calendar emulator as a second target). It seeds the demo HR database,
reconciles it once (`leavesync sync`), starts `dagster dev`, then commits N changes (approve,
cancel, move, new, employee opt-out, each on another employee) at random moments over a few
minutes, and watches each target until the change shows: the time from the HR commit to
then. It ends with the runs the sensor launched and `leavesync drift --report-only`
(duplicates, missing or stale events against HR). Results: bench/results/latency-<name>.json.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import random
import statistics
import subprocess
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import sqlalchemy as sa
import yaml

from tests.servers.dagster_stack import BIN, DagsterStack, instance_yaml, sensor_cursor, stack_env

RESULTS = Path(__file__).parent / "results"
PG_ADMIN = os.environ.get("LEAVESYNC_BENCH_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
KINDS = {"approve": 0.25, "cancel": 0.2, "move": 0.2, "new": 0.25, "opt_out": 0.1}
KEY = "leave-{}"


@dataclass
class Change:
    kind: str
    employee: int
    email: str
    leave: int | None  # None: an opt-out (every leave of the employee)
    at: float = 0.0  # seconds after the first change, when to commit it
    start: str | None = None  # the new start date (move, new)
    keys: tuple[str, ...] = ()  # opt-out: the employee's event keys
    committed: float | None = None
    seen: dict[str, float] = field(default_factory=dict)  # target -> seconds after the commit


# --- what each target shows -----------------------------------------------------------------
_FEEDS: dict[Path, tuple[tuple[int, int], dict[str, tuple[str, str]]]] = {}


def ics_events(home: Path, email: str) -> dict[str, tuple[str, str]]:
    """Event key -> (status, start date) in an employee's feed (parsed again when written:
    feeds are replaced atomically, so a new version has a new inode or mtime)."""
    from icalendar import Calendar

    from resources.providers.ics import IcsProvider

    feeds = IcsProvider("feeds", IcsProvider.Settings(directory=str(home / "feeds" / "feeds")))
    path = feeds.path_for(email)  # <email>.ics, or its private name with LEAVESYNC_FEED_KEY
    try:
        stat = path.stat()
    except OSError:
        return {}
    version = (stat.st_ino, stat.st_mtime_ns)
    cached = _FEEDS.get(path)
    if cached and cached[0] == version:
        return cached[1]
    try:
        feed = Calendar.from_ical(path.read_bytes())
    except (OSError, ValueError):
        return {}
    _FEEDS[path] = (version, _feed_events(feed))
    return _FEEDS[path][1]


def _feed_events(feed) -> dict[str, tuple[str, str]]:
    from resources.providers.ical import KEY_PROP

    out = {}
    for event in feed.walk("VEVENT"):
        if event.get(KEY_PROP):
            start = event.decoded("DTSTART")
            out[str(event.get(KEY_PROP))] = (str(event.get("STATUS")).lower(), str(start)[:10])
    return out


def google_events(emulator, email: str) -> dict[str, tuple[str, str]]:
    out = {}
    for event in emulator.events(email):
        key = event.get("extendedProperties", {}).get("private", {}).get("leavesyncKey")
        if key:
            start = event["start"].get("date") or event["start"].get("dateTime", "")
            out[key] = (event.get("status", ""), start[:10])
    return out


def visible(change: Change, events: dict[str, tuple[str, str]]) -> bool:
    key = KEY.format(change.leave)
    if change.kind == "approve":
        return events.get(key, ("", ""))[0] == "confirmed"
    if change.kind == "cancel":
        return key not in events
    if change.kind in ("move", "new"):
        return key in events and events[key][1] == change.start
    return not set(change.keys) & set(events)  # opt-out: none of the employee's events


# --- the HR side ----------------------------------------------------------------------------
def plan_changes(engine: sa.Engine, home: Path, n: int, minutes: float, rng: random.Random):
    """N changes on N different employees, each on a leave that shows in the feed now."""
    today = dt.date.today()
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT l.id, l.employee_id, e.email, l.status, l.start_date, l.end_date "
                "FROM leaves l JOIN employees e ON e.id = l.employee_id "
                "WHERE e.active AND e.sync_enabled AND e.email LIKE '%@%' "
                "AND l.start_date >= :lo AND l.start_date <= :hi "
                "AND l.start_half IS NULL AND l.end_half IS NULL AND l.start_time IS NULL"
            ),
            {"lo": today, "hi": today + dt.timedelta(days=240)},
        ).fetchall()
    by_employee: dict[int, list] = {}
    for row in rows:
        by_employee.setdefault(row.employee_id, []).append(row)
    employees = list(by_employee)
    rng.shuffle(employees)
    kinds = rng.choices(list(KINDS), list(KINDS.values()), k=n)
    changes: list[Change] = []
    for employee in employees:
        if len(changes) == n:
            break
        kind = kinds[len(changes)]
        shown = ics_events(home, by_employee[employee][0].email)
        mine = [r for r in by_employee[employee] if KEY.format(r.id) in shown]
        if not mine:
            continue
        email = mine[0].email
        if kind == "approve":
            mine = [r for r in mine if r.status == "pending"]
        elif kind in ("cancel", "move"):
            mine = [r for r in mine if r.status == "approved"]
        if not mine:
            kinds[len(changes)] = kind = "new"
        leave = rng.choice(mine) if mine else None
        change = Change(kind, employee, email, leave.id if leave else None)
        if kind == "move":
            start = dt.date.fromisoformat(str(leave.start_date)[:10])
            change.start = (start + dt.timedelta(days=rng.randint(3, 40))).isoformat()
        elif kind == "new":
            change.start = (today + dt.timedelta(days=rng.randint(1, 200))).isoformat()
        elif kind == "opt_out":
            change.leave = None
            change.keys = tuple(KEY.format(r.id) for r in by_employee[employee])
        changes.append(change)
    moments = sorted(rng.uniform(0, minutes * 60) for _ in changes)
    for change, moment in zip(changes, moments, strict=True):
        change.at = moment
    return changes


def commit(engine: sa.Engine, change: Change, next_id: int) -> None:
    """One HR transaction, stamped with HR's clock as an HR application would."""
    now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    with engine.begin() as conn:
        if change.kind == "approve":
            conn.execute(
                sa.text("UPDATE leaves SET status = 'approved', updated_at = :t WHERE id = :i"),
                {"t": now, "i": change.leave},
            )
        elif change.kind == "cancel":
            conn.execute(
                sa.text("UPDATE leaves SET status = 'cancelled', updated_at = :t WHERE id = :i"),
                {"t": now, "i": change.leave},
            )
        elif change.kind == "move":
            start, end = conn.execute(
                sa.text("SELECT start_date, end_date FROM leaves WHERE id = :i"),
                {"i": change.leave},
            ).one()
            start, end = (dt.date.fromisoformat(str(d)[:10]) for d in (start, end))
            shift = dt.date.fromisoformat(change.start) - start
            conn.execute(
                sa.text(
                    "UPDATE leaves SET start_date = :s, end_date = :e, updated_at = :t WHERE id = :i"
                ),
                {"s": start + shift, "e": end + shift, "t": now, "i": change.leave},
            )
        elif change.kind == "new":
            change.leave = next_id
            day = dt.date.fromisoformat(change.start)
            conn.execute(
                sa.text(
                    "INSERT INTO leaves (id, employee_id, leave_type, status, start_date, "
                    "end_date, updated_at) VALUES (:i, :emp, 'PTO', 'approved', :s, :e, :t)"
                ),
                {"i": next_id, "emp": change.employee, "s": day, "e": day, "t": now},
            )
        else:
            conn.execute(
                sa.text("UPDATE employees SET sync_enabled = :f, updated_at = :t WHERE id = :i"),
                {"f": False, "t": now, "i": change.employee},
            )
    change.committed = time.time()


# --- the run --------------------------------------------------------------------------------
def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = max(0, min(len(ordered) - 1, round(share * (len(ordered) - 1))))
    return ordered[rank]


def leavesync(env: dict, *args: str, timeout: float = 1800) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BIN / "leavesync"), *args], env=env, capture_output=True, text=True, timeout=timeout
    )


def drift_totals(output: str) -> dict[str, int]:
    """The sums of `leavesync drift`'s table (missing, modified, orphan, duplicate, stale)."""
    lines = output.splitlines()
    totals: dict[str, int] = {}
    for i, line in enumerate(lines):
        cols = line.split()
        if cols[:2] == ["legal_entity", "missing"]:
            names = cols[1:6]
            for row in lines[i + 1 :]:
                cells = row.split()
                if len(cells) < 7 or not all(c.isdigit() for c in cells[-7:-2]):
                    break
                for name, cell in zip(names, cells[-7:-2], strict=True):
                    totals[name] = totals.get(name, 0) + int(cell)
    return totals


def run_summary(dagster_home: Path) -> dict:
    """The sensor's runs: how many, their outcome, queue and run times, any overlap."""
    from dagster import DagsterInstance, RunsFilter

    from pipelines.run_queue import ENTITY_TAG

    with DagsterInstance.from_config(str(dagster_home)) as instance:
        runs = instance.get_runs(RunsFilter(tags={"leavesync/trigger": "hr_changes"}))
        records = [instance.get_run_record_by_id(r.run_id) for r in runs]
    waits = [r.start_time - r.create_timestamp.timestamp() for r in records if r.start_time]
    spans = [r.end_time - r.start_time for r in records if r.start_time and r.end_time]
    by_entity: dict[str, list[tuple[float, float]]] = {}
    for run, rec in zip(runs, records, strict=True):
        if rec.start_time and rec.end_time:
            for entity in run.tags.get(ENTITY_TAG, "").split(","):
                by_entity.setdefault(entity, []).append((rec.start_time, rec.end_time))
    overlaps = sum(
        a[1] > b[0]
        for spans_of in by_entity.values()
        for a, b in zip(sorted(spans_of), sorted(spans_of)[1:], strict=False)
    )
    statuses: dict[str, int] = {}
    for run in runs:
        statuses[run.status.value] = statuses.get(run.status.value, 0) + 1
    return {
        "runs_launched": len(runs),
        "statuses": statuses,
        "queued_to_started_s_p50": round(statistics.median(waits), 1) if waits else None,
        "run_seconds_p50": round(statistics.median(spans), 1) if spans else None,
        "overlapping_runs_of_one_entity": overlaps,
    }


def drain_queue(dagster_home: Path, stack: DagsterStack, timeout: float) -> None:
    """Wait for the runs queued or in progress to end (the sensor's last ones)."""
    from dagster import DagsterInstance, DagsterRunStatus, RunsFilter

    busy = [
        DagsterRunStatus.QUEUED,
        DagsterRunStatus.NOT_STARTED,
        DagsterRunStatus.STARTING,
        DagsterRunStatus.STARTED,
    ]
    deadline = time.monotonic() + timeout
    with DagsterInstance.from_config(str(dagster_home)) as instance:
        while time.monotonic() < deadline and stack.alive():
            if not instance.get_runs(RunsFilter(statuses=busy)):
                return
            time.sleep(2)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--changes", type=int, default=50)
    parser.add_argument("--minutes", type=float, default=5.0, help="spread of the changes")
    parser.add_argument("--instance", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--google", action="store_true", help="the Google emulator too")
    parser.add_argument("--poll-seconds", type=int, default=None, help="realtime.poll_seconds")
    parser.add_argument("--timeout", type=float, default=300, help="per change, seconds")
    parser.add_argument("--name", default=None, help="results file: latency-<name>.json")
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    name = args.name or args.instance + ("-google" if args.google else "")
    root = Path(tempfile.mkdtemp(prefix="leavesync-latency-"))
    home, dagster_home = root / "home", root / "dagster"
    home.mkdir()
    dagster_home.mkdir()
    google = emulator = None
    pg_db = None
    stack = None
    load_before = os.getloadavg()
    try:
        from pipelines.demo import seed

        hr_engine = sa.create_engine(f"sqlite:///{home / 'hr.sqlite'}")
        counts = seed(hr_engine, dt.date.today(), with_bad_rows=True)
        config: dict | None = None
        if args.google or args.poll_seconds:
            config = {"targets": [{"name": "feeds", "type": "ics"}]}
            if args.poll_seconds:
                config["realtime"] = {"poll_seconds": args.poll_seconds}
        env_extra = {}
        if args.google:
            from tests.live_targets import LiveGoogle

            with hr_engine.connect() as conn:
                users = {r[0] for r in conn.execute(sa.text("SELECT email FROM employees"))}
            google = LiveGoogle().start(sorted(users - {None}), "latency-" + uuid.uuid4().hex[:8])
            emulator = google.emulator
            env_extra.update(google.env())
            workspace = google.target()
            workspace["name"] = "workspace"
            workspace["settings"]["out_of_office"] = True
            config["targets"].append(workspace)
        config_path = None
        if config is not None:
            config_path = home / "leavesync.yaml"
            config_path.write_text(yaml.safe_dump(config))
        pg_url = None
        if args.instance == "postgres":
            pg_db = f"leavesync_latency_{uuid.uuid4().hex[:8]}"
            admin = sa.create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
            with admin.connect() as conn:
                conn.execute(sa.text(f'CREATE DATABASE "{pg_db}"'))
            admin.dispose()
            base = sa.engine.make_url(PG_ADMIN).set(
                drivername="postgresql+psycopg2", database=pg_db
            )
            pg_url = base.render_as_string(hide_password=False)
            (dagster_home / "dagster.yaml").write_text(instance_yaml(pg_url))
        else:
            from pipelines.runner import ensure_instance_settings

            ensure_instance_settings(dagster_home / "dagster.yaml")  # what `make ui` gets
        env = {**stack_env(home, dagster_home, config_path), **env_extra}
        print(f"seeded {counts['leaves']} leaves; first sync (leavesync sync)", flush=True)
        started = time.monotonic()
        first = leavesync(env, "sync")
        print(f"  exit {first.returncode} in {time.monotonic() - started:.0f} s", flush=True)
        if first.returncode:
            print("\n".join((first.stdout + first.stderr).splitlines()[-25:]), flush=True)
        changes = plan_changes(hr_engine, home, args.changes, args.minutes, rng)
        targets = ["ics"] + (["google"] if emulator else [])
        for change in changes:
            if emulator:  # the Google calendar holds what the feed holds before the change
                events = google_events(emulator, change.email)
                if change.kind != "new" and not (
                    set(change.keys) | {KEY.format(change.leave)}
                ) & set(events):
                    raise SystemExit(f"{change}: not in the Google calendar after the first sync")

        stack = DagsterStack(env, root / "dagster.log", ui=True).start()
        from dagster import DagsterInstance

        with DagsterInstance.from_config(str(dagster_home)) as instance:
            deadline = time.monotonic() + 300
            while not sensor_cursor(instance, "hr_changes"):
                if time.monotonic() > deadline or not stack.alive():
                    raise SystemExit("hr_changes never ticked:\n" + stack.tail())
                time.sleep(1)
        print(
            f"dagster dev up (port {stack.port}), sensor ticking; {len(changes)} changes "
            f"over {args.minutes} min",
            flush=True,
        )

        done = threading.Event()

        def watch() -> None:
            while not done.is_set():
                for change in changes:
                    if change.committed is None:
                        continue
                    for target in targets:
                        if target in change.seen:
                            continue
                        events = (
                            ics_events(home, change.email)
                            if target == "ics"
                            else google_events(emulator, change.email)
                        )
                        if visible(change, events):
                            change.seen[target] = time.time() - change.committed
                time.sleep(0.5)  # the figures are tens of seconds: 0.5 s is their resolution

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        with hr_engine.connect() as conn:
            next_id = int(conn.execute(sa.text("SELECT MAX(id) FROM leaves")).scalar()) + 1000
        t0 = time.monotonic()
        for i, change in enumerate(changes):
            time.sleep(max(0.0, change.at - (time.monotonic() - t0)))
            commit(hr_engine, change, next_id + i)
        deadline = time.time() + args.timeout
        while time.time() < deadline and not all(len(c.seen) == len(targets) for c in changes):
            time.sleep(1)
        done.set()
        watcher.join()
        drain_queue(dagster_home, stack, 300)  # stopping would fail the runs still going
        stack.stop()
        stack = None
        runs = run_summary(dagster_home)
        drift = leavesync(env, "drift", "--report-only")
        totals = drift_totals(drift.stdout)
        result = {
            "name": name,
            "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.system()} "
            f"{platform.release()}, Python {platform.python_version()}; load average "
            f"{load_before[0]:.1f} before, {os.getloadavg()[0]:.1f} after (shared machine)",
            "instance": args.instance,
            "poll_seconds": args.poll_seconds or 20,
            "changes": len(changes),
            "minutes": args.minutes,
            "kinds": {k: sum(c.kind == k for c in changes) for k in KINDS},
            "targets": {},
            **runs,
            "drift_after": totals,
            "drift_exit": drift.returncode,
        }
        for target in targets:
            seen = [c.seen[target] for c in changes if target in c.seen]
            result["targets"][target] = {
                "seen": len(seen),
                "not_seen": len(changes) - len(seen),
                "p50_s": round(percentile(seen, 0.5), 1),
                "p95_s": round(percentile(seen, 0.95), 1),
                "max_s": round(max(seen), 1) if seen else None,
                "not_seen_changes": [
                    f"{c.kind} leave {c.leave} employee {c.employee}"
                    for c in changes
                    if target not in c.seen
                ][:10],
            }
        RESULTS.mkdir(exist_ok=True)
        out = RESULTS / f"latency-{name}.json"
        out.write_text(json.dumps(result, indent=2) + "\n")
        print(json.dumps(result, indent=2))
        print(f"written to {out}")
        return 0 if all(t["not_seen"] == 0 for t in result["targets"].values()) else 1
    finally:
        if stack is not None:
            stack.stop()
        if google is not None:
            google.stop()
        if pg_db:
            admin = sa.create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
            with admin.connect() as conn:
                conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{pg_db}" WITH (FORCE)'))
            admin.dispose()
        if not args.keep:
            import shutil

            shutil.rmtree(root, ignore_errors=True)
        else:
            print(f"kept {root}")


if __name__ == "__main__":
    raise SystemExit(main())
