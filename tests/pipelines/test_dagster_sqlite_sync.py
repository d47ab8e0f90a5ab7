"""The embedded instance's SQLite files skip fsync; every other SQLite database keeps it."""

from __future__ import annotations

import sqlalchemy as sa

from pipelines.runner import ensure_dagster_home
from resources.config import load_config


def _synchronous(engine: sa.Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(sa.text("PRAGMA synchronous")).scalar())


def test_dagster_sqlite_files_are_not_synced_and_others_are(home, tmp_path):
    dagster_home = ensure_dagster_home(load_config(None))
    inside = sa.create_engine(f"sqlite:///{dagster_home / 'history' / 'x.db'}")
    (dagster_home / "history").mkdir(exist_ok=True)
    outside = sa.create_engine(f"sqlite:///{tmp_path / 'state.sqlite'}")

    assert _synchronous(inside) == 0  # OFF
    assert _synchronous(outside) == 2  # FULL, SQLite's default: our state store is untouched


def test_the_instance_run_storage_gets_it(home):
    from dagster import DagsterInstance

    ensure_dagster_home(load_config(None))
    instance = DagsterInstance.get()
    storage = instance.run_storage
    with storage.connect() as conn:
        assert int(conn.execute(sa.text("PRAGMA synchronous")).scalar()) == 0
