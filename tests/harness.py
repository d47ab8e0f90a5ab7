"""Runs the pipeline's logic without Dagster (fast tests), and reads what a run left."""

from __future__ import annotations

import contextlib
import datetime as dt
import importlib
import json
import os
import sqlite3
import subprocess
import sys
import uuid
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from assets.extract import extract_scope
from assets.leave_diff import LeaveDiff, plan
from assets.sync import SyncOutcome, apply_diff
from resources.config import AppConfig, parse_config
from resources.hr import HRDatabase
from resources.scope import EntityScope
from resources.settings import LeavesyncSettings
from resources.state import StateStore

REPO = Path(__file__).resolve().parents[1]


def make_config(home: Path, hr_url: str, **sections: Any) -> AppConfig:
    """A configuration on the test's home: the HR URL given, SQLite state, one ics target."""
    data: dict[str, Any] = {
        "hr": {"url": hr_url},
        "state": {"url": f"sqlite:///{home / 'state.sqlite'}"},
        "targets": [
            {"name": "feeds", "type": "ics", "settings": {"directory": str(home / "feeds")}}
        ],
    }
    data.update(sections)
    return parse_config(data, "test configuration")


def scope(entity: str, date_from: dt.date, date_to: dt.date) -> EntityScope:
    days = (date_to - date_from).days + 1
    return EntityScope(
        entity,
        date_from,
        date_to,
        frozenset((date_from + dt.timedelta(days=i)).isoformat() for i in range(days)),
    )


class Pipeline:
    """extract → plan → apply for a list of scopes, against real databases and targets."""

    def __init__(self, cfg: AppConfig) -> None:
        from pipelines.definitions import build_resources

        self.cfg = cfg
        # The very resources the Dagster jobs get (a url_env is read when first used).
        resources = build_resources(cfg)
        self.hr: HRDatabase = resources["hr"]
        self.state: StateStore = resources["state"]
        self.settings: LeavesyncSettings = resources["settings"]

    def plan(self, scopes: list[EntityScope], allow_mass_delete: bool = False) -> LeaveDiff:
        leaves = extract_scope(self.hr, scopes)
        return plan(leaves, scopes, self.cfg, self.hr, self.state, allow_mass_delete)

    def sync(
        self, scopes: list[EntityScope], allow_mass_delete: bool = False
    ) -> tuple[LeaveDiff, SyncOutcome | None]:
        result = self.plan(scopes, allow_mass_delete)
        if result.refused:
            return result, None
        return result, apply_diff(result, self.settings.provider, self.state, uuid.uuid4().hex)


def sqlite_values(path: Path) -> list[bytes]:
    """Every value of every table of a SQLite file; zlib blobs (Dagster's snapshots) inflated."""
    values: list[bytes] = []
    with contextlib.closing(sqlite3.connect(path)) as conn:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        for table in tables:
            for row in conn.execute(f'SELECT * FROM "{table}"'):
                for value in row:
                    if isinstance(value, bytes):
                        with contextlib.suppress(zlib.error):
                            value = zlib.decompress(value)
                        values.append(value)
                    elif value is not None:
                        values.append(str(value).encode())
    return values


def wanted_keys(hr: Any) -> set[str]:
    """The event keys of every leave HR wants in a calendar (pending or approved)."""
    with hr.engine.connect() as conn:
        rows = conn.exec_driver_sql(
            "SELECT id FROM leaves WHERE status IN ('pending', 'approved')"
        ).fetchall()
    return {f"leave-{r[0]}" for r in rows}


def fail_first_snapshot_write(monkeypatch: Any) -> None:
    """The next snapshot write raises (the run dies with its changes written, unrecorded)."""
    record = StateStore.record_changes
    crashed = []

    def crash_once(self, *args, **kwargs):
        if not crashed:
            crashed.append(True)
            raise RuntimeError("killed before the snapshot was written")
        return record(self, *args, **kwargs)

    monkeypatch.setattr(StateStore, "record_changes", crash_once)


def sync_command(
    cfg: AppConfig, scopes: list[EntityScope], die: Callable[..., None] | None = None, *args: Any
) -> list[str]:
    """A Python command that runs ``Pipeline(cfg).sync(scopes)``, once ``die(*args)`` has run.

    ``die``, a module-level function, patches the code so that the process ends at the point
    a test wants (SIGKILL, ``os._exit``) by then; ``args`` go through JSON.
    """
    for s in scopes:  # a scope goes as its entity and dates, and is rebuilt as scope() builds it
        assert s == scope(s.entity_key, s.date_from, s.date_to), s
    spans = [(s.entity_key, s.date_from.isoformat(), s.date_to.isoformat()) for s in scopes]
    where = f"{die.__module__}:{die.__qualname__}" if die else ""
    return [
        sys.executable,
        "-c",
        "from tests.harness import _sync; _sync()",
        cfg.model_dump_json(),
        json.dumps(spans),
        where,
        json.dumps(args),
    ]


def child_env() -> dict[str, str]:
    """This process's environment, with the project importable."""
    return {**os.environ, "PYTHONPATH": str(REPO)}


def sync_in_subprocess(
    cfg: AppConfig,
    scopes: list[EntityScope],
    die: Callable[..., None] | None = None,
    *args: Any,
    timeout: float = 300,
) -> subprocess.CompletedProcess[str]:
    """``sync_command`` run to its end (or its death), its output captured."""
    return subprocess.run(
        sync_command(cfg, scopes, die, *args),
        cwd=REPO,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _sync() -> None:
    """The child of ``sync_command``."""
    config, spans, where, args = sys.argv[1:5]
    if where:
        module, _, name = where.partition(":")
        getattr(importlib.import_module(module), name)(*json.loads(args))
    cfg = parse_config(json.loads(config), "a sync in a subprocess")
    days = [
        (e, dt.date.fromisoformat(a), dt.date.fromisoformat(b)) for e, a, b in json.loads(spans)
    ]
    Pipeline(cfg).sync([scope(*span) for span in days])
