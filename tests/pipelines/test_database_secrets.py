"""Database URLs with a password, given only through the environment, through the CLI."""

from __future__ import annotations

import contextlib
import datetime as dt
import secrets
import sqlite3
import uuid
import zlib
from pathlib import Path

import pytest
import sqlalchemy as sa
import yaml

from pipelines.cli import main
from resources.providers.ics import feed_file_name
from tests.conftest import POSTGRES_URL
from tests.hr_builder import HRBuilder

START = dt.date.today() + dt.timedelta(days=2)


@pytest.fixture
def role_with_password(postgres_url):
    """A login role with a password on the throw-away schema; dropped afterwards."""
    admin = sa.create_engine(postgres_url)
    schema = sa.make_url(postgres_url).query["options"].split("=", 1)[1]
    role = f"ls_role_{uuid.uuid4().hex[:8]}"
    password = "pw-" + secrets.token_urlsafe(18)
    with admin.begin() as conn:
        conn.execute(sa.text(f"CREATE ROLE {role} LOGIN PASSWORD '{password}'"))
        conn.execute(sa.text(f'GRANT USAGE, CREATE ON SCHEMA "{schema}" TO {role}'))
    url = (
        sa.make_url(POSTGRES_URL)
        .set(username=role, password=password)
        .update_query_dict({"options": f"-csearch_path={schema}"})
    )
    yield admin, schema, role, password, url.render_as_string(hide_password=False)
    with admin.begin() as conn:
        conn.execute(
            sa.text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = :r"),
            {"r": role},
        )
        conn.execute(sa.text(f"DROP OWNED BY {role} CASCADE"))
        conn.execute(sa.text(f"DROP ROLE {role}"))
    admin.dispose()


def _sqlite_values(path: Path) -> list[bytes]:
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


def files_containing(root: Path, secret: str) -> list[str]:
    """Files under root holding the secret: raw bytes, and inside SQLite files value by value."""
    needle = secret.encode()
    found = []
    for path in (p for p in root.rglob("*") if p.is_file()):
        data = path.read_bytes()
        if needle in data or (
            data.startswith(b"SQLite format 3") and any(needle in v for v in _sqlite_values(path))
        ):
            found.append(str(path))
    return found


@pytest.mark.postgres
def test_cli_with_database_urls_only_in_the_environment_keeps_the_password_out(
    home, tmp_path, role_with_password, monkeypatch, capsys
):
    admin, schema, role, password, url = role_with_password
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
