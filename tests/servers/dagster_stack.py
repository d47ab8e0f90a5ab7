"""A real Dagster daemon (or `dagster dev`: webserver and daemon) on a temporary instance, for
the tests and benchmarks that need the sensor, the run queue and daemon-launched runs."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
BIN = Path(os.environ.get("VIRTUAL_ENV") or REPO / ".venv") / "bin"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def instance_yaml(
    postgres_url: str | None = None,
    max_concurrent_runs: int = 2,
    dequeue_interval_seconds: int = 2,
) -> str:
    """A dagster.yaml: SQLite (or PostgreSQL) storage, the per-legal-entity run queue."""
    storage = f"storage:\n  postgres:\n    postgres_url: {postgres_url}\n" if postgres_url else ""
    return (
        storage + "run_coordinator:\n"
        "  module: pipelines.run_queue\n"
        "  class: LegalEntityRunCoordinator\n"
        "  config:\n"
        f"    max_concurrent_runs: {max_concurrent_runs}\n"
        "    max_concurrent_runs_per_legal_entity: 1\n"
        f"    dequeue_interval_seconds: {dequeue_interval_seconds}\n"
        "telemetry:\n  enabled: false\nnux:\n  enabled: false\n"
    )


def stack_env(leavesync_home: Path, dagster_home: Path, config: Path | None) -> dict[str, str]:
    """The environment `make ui` gives the webserver, the daemon and their runs."""
    env = {
        **os.environ,
        "LEAVESYNC_HOME": str(leavesync_home),
        "DAGSTER_HOME": str(dagster_home),
        "DAGSTER_EMIT_PARTITION_SUBSET_IN_PLANNED_EVENTS": "true",
        "DAGSTER_EVENT_BATCH_SIZE": "1000",
        "GX_ANALYTICS_ENABLED": "false",
        "PYTHONUNBUFFERED": "1",
    }
    env.pop("LEAVESYNC_CONFIG", None)
    if config is not None:
        env["LEAVESYNC_CONFIG"] = str(config)
    return env


class DagsterStack:
    """`dagster-daemon run` (``ui=False``) or `dagster dev` on this repository's workspace.

    Started in its own process group, stopped with SIGINT as Ctrl-C would (`dagster dev`
    ignores SIGTERM), then SIGKILL: the code server and run workers it started go with it.
    """

    def __init__(self, env: Mapping[str, str], log: Path, ui: bool = False) -> None:
        self.env = dict(env)
        self.log = log
        self.ui = ui
        self.port = free_port() if ui else None
        self.proc: subprocess.Popen | None = None

    def command(self) -> list[str]:
        workspace = str(REPO / "workspace.yaml")
        if self.ui:
            return [
                str(BIN / "dagster"),
                *("dev", "-w", workspace, "-h", "127.0.0.1", "-p", str(self.port)),
            ]
        return [str(BIN / "dagster-daemon"), "run", "-w", workspace]

    def start(self) -> DagsterStack:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                self.command(),
                cwd=REPO,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 20) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        pgid = os.getpgid(self.proc.pid)
        os.killpg(pgid, signal.SIGINT)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(pgid, signal.SIGKILL)
            self.proc.wait(10)
        # Run workers the code server started may outlive it by a moment.
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                os.killpg(pgid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.2)
        else:
            os.killpg(pgid, signal.SIGKILL)

    def tail(self, lines: int = 40) -> str:
        try:
            text = self.log.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        keep = [ln for ln in text if "Warning" not in ln and "return fn(" not in ln and ln.strip()]
        return "\n".join(keep[-lines:])

    def __enter__(self) -> DagsterStack:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def wait_for(
    what: str, check: Callable[[], Any], timeout: float, stack: DagsterStack | None = None
):
    """Poll ``check`` until it returns something truthy; fail with the daemon's log."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        if stack is not None and not stack.alive():
            raise AssertionError(f"the daemon exited while waiting for {what}:\n{stack.tail()}")
        time.sleep(0.5)
    tail = stack.tail() if stack is not None else ""
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}\n{tail}")


def sensor_cursor(instance: Any, name: str) -> str | None:
    """The cursor Dagster stores for a sensor (None before its first tick)."""
    from dagster._core.scheduler.instigation import InstigatorType

    for state in instance.all_instigator_state(instigator_type=InstigatorType.SENSOR):
        if state.name == name and state.instigator_data is not None:
            return state.instigator_data.cursor
    return None
