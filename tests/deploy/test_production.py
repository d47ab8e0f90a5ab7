"""The README's "Production" section, followed step by step on a PostgreSQL-backed instance.

The steps come from the README itself (its install commands) and the files it installs
(deploy/): the three services are started from their systemd units' ExecStart lines. What a
test cannot do is replaced, and only that: paths live under a temporary root, the venv is
this one, `sudoedit` is the test writing the configuration, systemctl is starting the units'
commands as subprocesses.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
import yaml

from tests.conftest import POSTGRES_URL, _isolated_schema_url, _server_engine
from tests.hr_builder import HRBuilder

pytestmark = [pytest.mark.postgres]

REPO = Path(__file__).resolve().parents[2]
UNITS = ("leavesync-code", "dagster-webserver", "dagster-daemon")
ENTITIES = ("FR", "US")
WAIT_SECONDS = 600


def production_steps() -> list[str]:
    """The shell commands of the README's Production section (its first bash block)."""
    readme = (REPO / "README.md").read_text()
    section = readme.split("\n## Production\n", 1)[1].split("\n## ", 1)[0]
    block = section.split("```bash\n", 1)[1].split("```", 1)[0]
    steps, pending = [], ""
    for line in block.splitlines():
        line = re.sub(r"\s+#.*$", "", line).rstrip()
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        if (pending + line).strip():
            steps.append((pending + line).strip())
        pending = ""
    return steps


class Host:
    """A temporary root standing for the host's /etc, /var/lib and /opt."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.prefixes = {
            "/opt/leavesync/venv": str(Path(sys.executable).parent.parent),
            "/etc/leavesync": str(root / "etc/leavesync"),
            "/var/lib/leavesync": str(root / "var/lib/leavesync"),
            "/etc/systemd/system": str(root / "etc/systemd/system"),
        }

    def map(self, text: str) -> str:
        for host_path, here in self.prefixes.items():
            text = text.replace(host_path, here)
        return text

    def path(self, host_path: str) -> Path:
        return Path(self.map(host_path))

    def env(self) -> dict[str, str]:
        """/etc/leavesync/env as systemd's EnvironmentFile reads it."""
        out = {}
        for line in self.path("/etc/leavesync/env").read_text().splitlines():
            if line.strip() and not line.lstrip().startswith("#"):
                key, _, value = line.partition("=")
                out[key.strip()] = value.strip()
        return out

    def unit(self, name: str) -> dict[str, str]:
        text = self.path(f"/etc/systemd/system/{name}.service").read_text()
        return dict(
            line.split("=", 1) for line in text.splitlines() if re.match(r"^[A-Za-z]+=", line)
        )


def run_install_step(host: Host, step: str) -> bool:
    """Carry out an `install` step under the temporary root; False for the steps we skip."""
    args = shlex.split(step)
    if args[0] == "sudo":
        args = args[1:]
    if args[0] != "install":
        return False
    opts, paths, i = {}, [], 1
    while i < len(args):
        if args[i] in ("-m", "-o", "-g"):
            opts[args[i]] = args[i + 1]
            i += 2
        elif args[i] == "-d":
            opts["-d"] = ""
            i += 1
        else:
            paths.append(args[i])
            i += 1
    if "-d" in opts:
        for p in paths:
            host.path(p).mkdir(parents=True, exist_ok=True)
        return True
    *sources, dest = paths
    target = host.path(dest)
    for src in sources:
        out = target / Path(src).name if dest.endswith("/") else target
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(REPO / src, out)
        out.chmod(int(opts.get("-m", "0644"), 8))
    return True


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def graphql(port: int, query: str, variables: dict | None = None) -> dict:
    body = json.dumps({"query": query, "variables": variables or {}}).encode()
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/graphql",
        data=body,
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=60) as resp:
        payload = json.loads(resp.read())
    assert "errors" not in payload, payload
    return payload["data"]


def wait_for(what: str, check, timeout: float = WAIT_SECONDS, procs=(), status=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for name, proc in procs:
            assert proc.poll() is None, f"{name} exited with {proc.returncode}"
        value = check()
        if value:
            return value
        time.sleep(1)
    raise AssertionError(f"timed out waiting for {what}" + (f": {status()}" if status else ""))


@pytest.fixture
def pg_schemas() -> Iterator[tuple[str, str]]:
    """Two throw-away schemas: the Dagster instance's and the state store's."""
    engine = _server_engine(POSTGRES_URL, "PostgreSQL")
    dagster_url, drop_dagster = _isolated_schema_url(engine, POSTGRES_URL, "postgres")
    engine2 = _server_engine(POSTGRES_URL, "PostgreSQL")
    state_url, drop_state = _isolated_schema_url(engine2, POSTGRES_URL, "postgres")
    # dagster-postgres speaks psycopg2; leavesync's state store psycopg 3.
    yield dagster_url.replace("+psycopg://", "+psycopg2://"), state_url
    drop_dagster()
    drop_state()


def months_back(today: dt.date, n: int) -> dt.date:
    first = today.replace(day=1)
    for _ in range(n):
        first = (first - dt.timedelta(days=1)).replace(day=1)
    return first


def last_cron_time(cron: str, now: dt.datetime) -> dt.datetime:
    """The latest time at or before ``now`` of a daily "M H * * *" cron (UTC)."""
    minute, hour = (int(x) for x in cron.split()[:2])
    at = now.replace(hour=hour, minute=minute, second=0, microsecond=0)
    return at if at <= now else at - dt.timedelta(days=1)


# The README's steps a test cannot take as written, and what stands for each: the service
# user and the venv are this process's, `sudoedit` is the test setting the env file's
# values, systemctl is starting the units' ExecStart lines (the services are UNITS).
REPLACED_STEPS = {
    "sudo useradd --system --home-dir /var/lib/leavesync --create-home leavesync",
    "sudo python3.11 -m venv /opt/leavesync/venv",
    "sudo /opt/leavesync/venv/bin/pip install .",
    "sudoedit /etc/leavesync/env /etc/leavesync/leavesync.yaml",
    "sudo systemctl daemon-reload",
    "sudo systemctl enable --now leavesync-code dagster-daemon dagster-webserver",
}


def test_readme_steps_are_all_followed():
    """Every step of the section is carried out by the test or stood for, by name."""
    steps = production_steps()
    unknown = [
        s
        for s in steps
        if s not in REPLACED_STEPS and not s.startswith("sudo install ") and " sh -c " not in s
    ]
    assert not unknown, f"README steps the production test does not follow: {unknown}"
    assert REPLACED_STEPS <= set(steps), sorted(REPLACED_STEPS - set(steps))
    enable = next(s for s in steps if s.startswith("sudo systemctl enable"))
    assert sorted(enable.split()[4:]) == sorted(UNITS)


def test_production_setup_from_the_readme(tmp_path, pg_schemas):
    dagster_pg_url, state_url = pg_schemas
    host = Host(tmp_path / "host")
    steps = production_steps()
    done = [s for s in steps if run_install_step(host, s)]
    assert len(done) >= 6, steps

    # sudoedit /etc/leavesync/env: the operator's own values (leavesync.yaml, installed
    # from deploy/, is used as it is, under the temporary root).
    ui_port, code_port = free_port(), free_port()
    hr_path = host.path("/var/lib/leavesync/hr.sqlite")
    edits = {
        "DAGSTER_PG_URL": dagster_pg_url,
        "LEAVESYNC_HR_URL": f"sqlite:///{hr_path}",
        "LEAVESYNC_STATE_URL": state_url,
        "LEAVESYNC_CODE_PORT": str(code_port),
        "LEAVESYNC_UI_PORT": str(ui_port),
    }
    env_file = host.path("/etc/leavesync/env")
    lines = []
    for line in env_file.read_text().splitlines():
        key = line.partition("=")[0].strip()
        lines.append(f"{key}={edits.pop(key)}" if key in edits else host.map(line))
    assert not edits, f"the env file lacks {sorted(edits)}"
    env_file.write_text("\n".join(lines) + "\n")
    env = {**os.environ, **host.env(), "PYTHONUNBUFFERED": "1"}
    for var in ("DAGSTER_HOME", "LEAVESYNC_HOME", "LEAVESYNC_CONFIG"):
        assert env[var].startswith(str(host.root)), var

    config_path = Path(env["LEAVESYNC_CONFIG"])
    config_path.write_text(host.map(config_path.read_text()))
    config = yaml.safe_load(config_path.read_text())
    assert config["hr"] == {"url_env": "LEAVESYNC_HR_URL"}
    assert config["state"] == {"url_env": "LEAVESYNC_STATE_URL"}

    hr = HRBuilder(sa.create_engine(f"sqlite:///{hr_path}"), defaults=False)
    today = dt.datetime.now(dt.UTC).date()
    hr.leave_type("PTO", "Paid leave")
    for i, code in enumerate(ENTITIES):
        hr.entity(code, "Europe/Paris" if code != "US" else "America/New_York")
        for n in range(3):
            eid = 10 * i + n + 1
            hr.employee(eid, code)
            hr.leave(eid, today + dt.timedelta(days=3 + n))
            hr.leave(eid, months_back(today, 1) + dt.timedelta(days=n))

    # The README's check-and-register step, as the service user would run it.
    shell_steps = [s for s in steps if " sh -c " in s]
    assert shell_steps, "the README no longer checks the configuration before starting"
    for step in shell_steps:
        script = host.map(shlex.split(step)[-1])
        result = subprocess.run(
            ["sh", "-c", script], env=env, capture_output=True, text=True, timeout=300
        )
        assert result.returncode == 0, result.stdout + result.stderr
        for code in ENTITIES:
            assert code in result.stdout

    procs: list[tuple[str, subprocess.Popen]] = []
    logs = tmp_path / "logs"
    logs.mkdir()

    def start(unit: str) -> None:
        spec = host.unit(unit)
        assert spec["EnvironmentFile"] == "/etc/leavesync/env"
        command = re.sub(r"\$\{(\w+)\}", lambda m: env[m.group(1)], host.map(spec["ExecStart"]))
        cwd = host.path(spec["WorkingDirectory"])
        out = open(logs / f"{unit}.log", "w")  # noqa: SIM115 - closed with the process
        procs.append(
            (
                unit,
                subprocess.Popen(
                    shlex.split(command),
                    cwd=cwd,
                    env=env,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                ),
            )
        )

    try:
        _run_production(host, env, start, procs, ui_port, today)
    except BaseException:
        for unit in UNITS:
            path = logs / f"{unit}.log"
            if path.exists():
                print(
                    f"--- {unit} ---\n"
                    + "\n".join(
                        ln
                        for ln in path.read_text().splitlines()
                        if "Warning" not in ln and "return fn" not in ln
                    )[-40000:]
                )
        raise
    finally:
        for _, proc in reversed(procs):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for _, proc in procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def _run_production(host: Host, env: dict, start, procs, ui_port: int, today: dt.date) -> None:
    from dagster import DagsterInstance, DagsterRunStatus, RunsFilter
    from dagster._core.events import DagsterEventType
    from dagster._core.scheduler.instigation import (
        InstigatorState,
        InstigatorStatus,
        InstigatorType,
        ScheduleInstigatorData,
    )
    from dagster._core.storage.tags import SCHEDULED_EXECUTION_TIME_TAG
    from dagster._core.workspace.context import WorkspaceProcessContext
    from dagster._core.workspace.load_target import WorkspaceFileTarget

    from pipelines.run_queue import ENTITY_TAG, LegalEntityRunCoordinator, slot_tag

    start("leavesync-code")
    start("dagster-webserver")

    os.environ.update({k: env[k] for k in ("DAGSTER_PG_URL", "LEAVESYNC_CODE_PORT")})
    instance = DagsterInstance.from_config(env["DAGSTER_HOME"])
    assert type(instance.run_coordinator) is LegalEntityRunCoordinator
    assert "postgres" in type(instance.run_storage).__module__
    assert "postgres" in type(instance.event_log_storage).__module__
    assert "postgres" in type(instance.schedule_storage).__module__
    # HR's legal entities, plus `_unassigned` for leaves of employees with none.
    keys = sorted(instance.get_dynamic_partitions("legal_entity"))
    assert set(ENTITIES) <= set(keys)

    # Controlled time: each schedule is as if the daemon first saw it a minute before its
    # latest tick (02:00 for the nightly run, 05:00 for drift), so both ticks are due when
    # the daemon starts, and their runs of the same legal entities are queued together.
    workspace = host.path("/etc/leavesync/workspace.yaml")
    now = dt.datetime.now(dt.UTC)
    ticks = {}

    def code_location_loaded():
        with WorkspaceProcessContext(instance, WorkspaceFileTarget([str(workspace)])) as ctx:
            request = ctx.create_request_context()
            error = request.get_code_location_error("leavesync")
            if error is not None and "ImportError" in error.message:
                raise CodeLocationError(error.message)
            location = request.get_code_location("leavesync")
            repo = location.get_repository("__repository__")
            for name, cron in (("nightly_reconciliation", "0 2 * * *"), ("drift_report", None)):
                schedule = repo.get_schedule(name)
                assert schedule.default_status.value == "RUNNING"
                cron = schedule.cron_schedule
                ticks[name] = last_cron_time(cron, now)
                started = ticks[name] - dt.timedelta(minutes=1)
                instance.add_instigator_state(
                    InstigatorState(
                        schedule.get_remote_origin(),
                        InstigatorType.SCHEDULE,
                        InstigatorStatus.DECLARED_IN_CODE,
                        ScheduleInstigatorData(cron, started.timestamp()),
                    )
                )
        return True

    wait_for("the code server", lambda: _try(code_location_loaded), procs=procs)
    start("dagster-daemon")

    def tick_runs():
        runs = instance.get_runs(RunsFilter(tags={"leavesync/trigger": "nightly_reconciliation"}))
        drift = instance.get_runs(RunsFilter(tags={"leavesync/trigger": "drift_report"}))
        finished = [r for r in runs + drift if r.is_finished]
        complete = len(runs) == len(drift) == len(keys) and len(finished) == 2 * len(keys)
        return (runs, drift) if complete else None

    def statuses():
        with sa.create_engine(POSTGRES_URL).connect() as conn:
            activity = conn.execute(
                sa.text(
                    "SELECT pid, state, wait_event_type, wait_event, left(query, 120) "
                    "FROM pg_stat_activity WHERE datname = current_database()"
                )
            ).all()
        print("\n".join(map(str, activity)))
        return sorted(
            (r.tags.get("leavesync/trigger", "?"), r.tags.get(ENTITY_TAG, "?"), r.status.value)
            for r in instance.get_runs()
        )

    nightly, drift = wait_for("both ticks' runs", tick_runs, procs=procs, status=statuses)
    for run in nightly + drift:
        assert run.status == DagsterRunStatus.SUCCESS, (run.run_id, run.status)
    assert sorted(r.tags[ENTITY_TAG] for r in nightly) == keys
    for run in nightly:
        assert run.tags["dagster/schedule_name"] == "nightly_reconciliation"
        scheduled = dt.datetime.fromisoformat(run.tags[SCHEDULED_EXECUTION_TIME_TAG])
        assert scheduled == ticks["nightly_reconciliation"]
        # Queued, then dequeued by the daemon, which reports the run starting as it launches.
        events = [
            e.dagster_event.event_type
            for e in instance.all_logs(run.run_id)
            if e.dagster_event is not None
        ]
        queued, starting = DagsterEventType.RUN_ENQUEUED, DagsterEventType.RUN_STARTING
        assert queued in events and starting in events, events
        assert events.index(queued) < events.index(starting), events
        assert slot_tag(run.tags[ENTITY_TAG]) in run.tags
    feed_dir = host.path("/var/lib/leavesync/feeds")
    assert len(list(feed_dir.glob("*.ics"))) == 3 * len(ENTITIES)
    _assert_one_run_per_entity_at_a_time(instance, nightly + drift)

    # A backfill of two legal entities over two month partitions, as the UI launches it.
    months = [months_back(today, 1).isoformat(), months_back(today, 0).isoformat()]
    partition_keys = [f"{m}|{e}" for m in months for e in ("FR", "US")]
    launched = graphql(
        ui_port,
        """
        mutation LaunchPartitionBackfill($backfillParams: LaunchBackfillParams!) {
          launchPartitionBackfill(backfillParams: $backfillParams) {
            __typename
            ... on LaunchBackfillSuccess { backfillId }
            ... on PythonError { message stack }
          }
        }""",
        {
            "backfillParams": {
                "assetSelection": [
                    {"path": ["hr_leaves"]},
                    {"path": ["leave_diff"]},
                    {"path": ["calendar_sync"]},
                ],
                "partitionNames": partition_keys,
                "fromFailure": False,
                "tags": [],
            }
        },
    )["launchPartitionBackfill"]
    assert launched["__typename"] == "LaunchBackfillSuccess", launched
    backfill_id = launched["backfillId"]

    def backfill_done():
        data = graphql(
            ui_port,
            """query ($id: String!) { partitionBackfillOrError(backfillId: $id) {
                 ... on PartitionBackfill { status } } }""",
            {"id": backfill_id},
        )["partitionBackfillOrError"]
        return data["status"] if data["status"] not in ("REQUESTED",) else None

    status = wait_for("the backfill", backfill_done, procs=procs, status=statuses)
    assert status == "COMPLETED_SUCCESS", statuses()
    runs = instance.get_runs(RunsFilter(tags={"dagster/backfill": backfill_id}))
    assert runs and all(r.status == DagsterRunStatus.SUCCESS for r in runs)
    covered = {e for r in runs for e in r.tags[ENTITY_TAG].split(",")}
    assert covered == {"FR", "US"}
    _assert_one_run_per_entity_at_a_time(instance, nightly + drift + runs)
    materialized = instance.get_materialized_partitions(_key("calendar_sync"))
    assert set(partition_keys) <= materialized


def _key(name: str):
    from dagster import AssetKey

    return AssetKey(name)


class CodeLocationError(RuntimeError):
    """The code server answered, with an error loading the code: no use waiting."""


def _try(check):
    try:
        return check()
    except CodeLocationError:
        raise
    except Exception:  # noqa: BLE001 - not up yet
        return None


def _assert_one_run_per_entity_at_a_time(instance, runs) -> None:
    from pipelines.run_queue import ENTITY_TAG

    records = {r.dagster_run.run_id: r for r in instance.get_run_records()}
    spans: dict[str, list[tuple[float, float, str]]] = {}
    for run in runs:
        record = records[run.run_id]
        assert record.start_time and record.end_time, run.run_id
        for entity in run.tags[ENTITY_TAG].split(","):
            spans.setdefault(entity, []).append((record.start_time, record.end_time, run.run_id))
    for entity, items in spans.items():
        items.sort()
        for (_, end, first), (begin, _, second) in zip(items, items[1:], strict=False):
            assert end <= begin, f"{entity}: runs {first} and {second} overlapped"
