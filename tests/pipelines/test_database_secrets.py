"""Database URLs with a password, given only through the environment, through the CLI."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
import sqlalchemy as sa
import yaml

from pipelines.cli import main
from resources.providers.ics import feed_file_name
from tests.harness import sqlite_values
from tests.hr_builder import HRBuilder

START = dt.date.today() + dt.timedelta(days=2)


def files_containing(root: Path, secret: str) -> list[str]:
    """Files under root holding the secret: raw bytes, and inside SQLite files value by value."""
    needle = secret.encode()
    found = []
    for path in (p for p in root.rglob("*") if p.is_file()):
        data = path.read_bytes()
        if needle in data or (
            data.startswith(b"SQLite format 3") and any(needle in v for v in sqlite_values(path))
        ):
            found.append(str(path))
    return found


@pytest.mark.postgres
def test_cli_with_database_urls_only_in_the_environment_keeps_the_password_out(
    home, tmp_path, postgres_role, monkeypatch, capsys
):
    admin, schema, role, password = (
        postgres_role.admin,
        postgres_role.schema,
        postgres_role.name,
        postgres_role.password,
    )
    url = postgres_role.url()
    hr = HRBuilder(admin)
    with admin.begin() as conn:
        conn.execute(sa.text(f'GRANT SELECT ON ALL TABLES IN SCHEMA "{schema}" TO {role}'))
    hr.employee(1, "FR", "ann@example.com")
    lid = hr.leave(1, START, START + dt.timedelta(days=1))
    monkeypatch.setenv("LEAVESYNC_TEST_HR_URL", url)
    monkeypatch.setenv("LEAVESYNC_TEST_STATE_URL", url)
    config = home / "leavesync.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "hr": {"url_env": "LEAVESYNC_TEST_HR_URL"},
                "state": {"url_env": "LEAVESYNC_TEST_STATE_URL"},
                "targets": [
                    {"name": "feeds", "type": "ics", "settings": {"directory": str(home / "f")}}
                ],
            }
        )
    )
    window = ["--config", str(config), "--entity", "FR", "--from", START.isoformat()]
    window += ["--to", (START + dt.timedelta(days=5)).isoformat()]

    assert main(["sync", *window, "--dry-run"]) == 0
    assert main(["sync", *window]) == 0
    assert main(["drift", *window]) == 0
    assert main(["check", "--config", str(config)]) == 0
    assert main(["entities", "--config", str(config)]) == 0

    out = capsys.readouterr()
    feed = home / "f" / feed_file_name("ann@example.com")
    assert f"leave-{lid}" in feed.read_text(encoding="utf-8")
    with admin.connect() as conn:  # the state store was made by the role from the environment
        owner = conn.execute(
            sa.text("SELECT tableowner FROM pg_tables WHERE schemaname = :s AND tablename = :t"),
            {"s": schema, "t": "snapshot"},
        ).scalar()
        rows = conn.execute(sa.text(f'SELECT count(*) FROM "{schema}".snapshot')).scalar()
    assert owner == role and rows == 1
    # The canary: nowhere in Dagster's storage (run config, job snapshots, event logs), the
    # pickled outputs, the reports and feeds, or what the CLI printed.
    assert files_containing(tmp_path, password) == []
    assert password not in out.out + out.err
