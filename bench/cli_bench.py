"""CLI benchmark (not a test): what a new user waits for on the embedded defaults.

A 25-leave HR database in 5 legal entities synced twice (first, then nothing changed),
`leavesync entities`, and `leavesync demo` twice, each a fresh `leavesync` process as a
user runs it. Prints the figures with the machine's load and writes bench/results/cli.json.
Run: ``python -m bench.cli_bench``.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results" / "cli.json"


def timed(cmd: list[str], env: dict) -> float:
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode not in (0, 1):
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    return seconds


def seed_small(url: str) -> None:
    import sqlalchemy as sa

    from tests.hr_builder import HRBuilder

    hr = HRBuilder(sa.create_engine(url), defaults=False)
    hr.leave_type("PTO", "Paid leave")
    for code, tz in (
        ("FR", "Europe/Paris"),
        ("DE", "Europe/Berlin"),
        ("US", "America/New_York"),
        ("JP", "Asia/Tokyo"),
        ("BR", "America/Sao_Paulo"),
    ):
        hr.entity(code, tz)
    today = dt.date.today()
    for i in range(25):
        emp = i + 1
        hr.employee(emp, ("FR", "DE", "US", "JP", "BR")[i % 5], f"p{emp}@example.com")
        hr.leave(emp, today + dt.timedelta(days=3 * i))


def events_of_last_runs(dagster_home: Path, n: int) -> list[int]:
    os.environ["DAGSTER_HOME"] = str(dagster_home)
    from dagster import DagsterInstance

    instance = DagsterInstance.get()
    runs = instance.get_runs(limit=n)
    return [len(instance.all_logs(r.run_id)) for r in runs]


def main() -> None:
    leavesync = str(Path(sys.executable).with_name("leavesync"))
    work = Path(tempfile.mkdtemp(prefix="leavesync-cli-bench-"))
    results: dict = {}
    try:
        small = work / "small"
        small.mkdir()
        env = {**os.environ, "LEAVESYNC_HOME": str(small), "DAGSTER_HOME": str(small / "dagster")}
        env.pop("LEAVESYNC_CONFIG", None)
        seed_small(f"sqlite:///{small / 'hr.sqlite'}")
        results["sync 25 leaves, 5 entities: first"] = timed([leavesync, "sync"], env)
        results["sync 25 leaves, 5 entities: nothing changed"] = timed([leavesync, "sync"], env)
        results["dagster events per entity run (nothing changed)"] = max(
            events_of_last_runs(small / "dagster", 6)
        )
        results["entities"] = timed([leavesync, "entities"], env)
        demo = work / "demo"
        env = {**os.environ, "LEAVESYNC_HOME": str(demo), "DAGSTER_HOME": str(demo / "dagster")}
        env.pop("LEAVESYNC_CONFIG", None)
        results["demo: fresh"] = timed([leavesync, "demo"], env)
        results["demo: second run"] = timed([leavesync, "demo"], env)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    results["machine"] = {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "load_average_after": os.getloadavg(),
        "date": dt.date.today().isoformat(),
    }
    for key, value in results.items():
        print(f"{key}: {value:.1f} s" if isinstance(value, float) else f"{key}: {value}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2))
    print(f"figures written to {RESULTS}")


if __name__ == "__main__":
    main()
