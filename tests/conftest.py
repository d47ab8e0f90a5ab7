"""Shared fixtures: an isolated leavesync home, a reference HR database, database servers."""

from __future__ import annotations

import datetime as dt
import os
import secrets
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import sqlalchemy as sa

from tests.hr_builder import HRBuilder

# Under CI the database servers are required: a test that needs one fails instead of skipping.
REQUIRE_SERVERS = os.environ.get("LEAVESYNC_REQUIRE_DB_SERVERS", "").lower() in ("1", "true", "yes")
POSTGRES_URL = os.environ.get(
    "LEAVESYNC_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
MARIADB_URL = os.environ.get(
    "LEAVESYNC_TEST_MARIADB_URL", "mysql+pymysql://root@127.0.0.1:3306/test"
)


@pytest.fixture
def home(tmp_path, monkeypatch) -> Iterator:
    """A fresh LEAVESYNC_HOME and DAGSTER_HOME for one test."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("LEAVESYNC_HOME", str(home))
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster"))
    monkeypatch.delenv("LEAVESYNC_CONFIG", raising=False)
    yield home


@pytest.fixture
def today() -> dt.date:
    return dt.date.today()


@pytest.fixture
def hr(home) -> HRBuilder:
    """An empty reference-schema HR database in SQLite, with a builder for rows."""
    return HRBuilder(sa.create_engine(f"sqlite:///{home / 'hr.sqlite'}"))


def _server_engine(url: str, name: str) -> sa.Engine:
    engine = sa.create_engine(url, pool_pre_ping=True)
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
    except Exception as err:  # noqa: BLE001 - any failure means the server is not there
        engine.dispose()
        message = f"{name} server not reachable at {url}: {str(err).splitlines()[0]}"
        if REQUIRE_SERVERS:
            pytest.fail(message + " (required: LEAVESYNC_REQUIRE_DB_SERVERS is set)")
        pytest.skip(message)
    return engine


def _isolated_schema_url(engine: sa.Engine, url: str, kind: str) -> tuple[str, callable]:
    """A throw-away schema/database on the server, so tests never see each other's tables."""
    name = f"ls_test_{uuid.uuid4().hex[:10]}"
    with engine.begin() as conn:
        if kind == "postgres":
            conn.execute(sa.text(f'CREATE SCHEMA "{name}"'))
        else:
            conn.execute(sa.text(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4"))
    if kind == "postgres":
        sep = "&" if "?" in url else "?"
        scoped = f"{url}{sep}options=-csearch_path%3D{name}"
    else:
        scoped = url.rsplit("/", 1)[0] + f"/{name}?charset=utf8mb4"

    def drop() -> None:
        with engine.begin() as conn:
            if kind == "postgres":
                conn.execute(sa.text(f'DROP SCHEMA "{name}" CASCADE'))
            else:
                conn.execute(sa.text(f"DROP DATABASE `{name}`"))
        engine.dispose()

    return scoped, drop


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A SQLAlchemy URL (psycopg 3) to an empty schema on the PostgreSQL server."""
    engine = _server_engine(POSTGRES_URL, "PostgreSQL")
    url, drop = _isolated_schema_url(engine, POSTGRES_URL, "postgres")
    yield url
    drop()


@pytest.fixture
def mariadb_url() -> Iterator[str]:
    """A SQLAlchemy URL (PyMySQL) to an empty database on the MariaDB server."""
    engine = _server_engine(MARIADB_URL, "MariaDB")
    url, drop = _isolated_schema_url(engine, MARIADB_URL, "mariadb")
    yield url
    drop()


@pytest.fixture(scope="module")
def xandikos(tmp_path_factory):
    """A Xandikos CalDAV server, one per test module."""
    from tests.servers.caldav_servers import XandikosServer

    server = XandikosServer(tmp_path_factory.mktemp("xandikos"))
    yield server.start()
    server.stop()


@dataclass(frozen=True)
class PostgresRole:
    """A login role with a password, allowed to use and create in a throw-away schema."""

    admin: sa.Engine  # the superuser's engine on that schema
    schema: str
    name: str
    password: str

    def url(self, user: str = "") -> str:
        """The URL of this role (or of ``user``, with this password), password included."""
        return (
            sa.make_url(POSTGRES_URL)
            .set(username=user or self.name, password=self.password)
            .update_query_dict({"options": f"-csearch_path={self.schema}"})
            .render_as_string(hide_password=False)
        )


@pytest.fixture
def postgres_role_password() -> str:
    """The password of ``postgres_role`` (a module overrides it to make it recognisable)."""
    return "pw-" + secrets.token_urlsafe(18)


@pytest.fixture
def postgres_role(postgres_url, postgres_role_password) -> Iterator[PostgresRole]:
    """A login role with a password on the throw-away schema; dropped afterwards."""
    admin = sa.create_engine(postgres_url)
    schema = sa.make_url(postgres_url).query["options"].split("=", 1)[1]
    role = PostgresRole(admin, schema, f"ls_role_{uuid.uuid4().hex[:8]}", postgres_role_password)
    with admin.begin() as conn:
        conn.execute(sa.text(f"CREATE ROLE {role.name} LOGIN PASSWORD '{role.password}'"))
        conn.execute(sa.text(f'GRANT USAGE, CREATE ON SCHEMA "{schema}" TO {role.name}'))
    yield role
    with admin.begin() as conn:
        conn.execute(
            sa.text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = :r"),
            {"r": role.name},
        )
        conn.execute(sa.text(f"DROP OWNED BY {role.name} CASCADE"))
        conn.execute(sa.text(f"DROP ROLE {role.name}"))
    admin.dispose()
