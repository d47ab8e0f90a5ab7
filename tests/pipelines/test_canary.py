"""The canary: a recognisable secret for every target and database, followed through whole runs.

Runs that succeed and runs that fail on bad credentials, through the CLI; then nothing they
leave anywhere (Dagster's run storage, event logs and job snapshots, asset and check
metadata, pickled outputs, reports, Data Docs, feeds, the state store's tables, logs, what
the CLI printed) may hold any secret, raw, URL-quoted or base64-encoded.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import json
import logging
import secrets
import urllib.parse
import zlib
from pathlib import Path

import pytest
import sqlalchemy as sa
import yaml

from pipelines.cli import main
from tests.harness import sqlite_values
from tests.hr_builder import HRBuilder
from tests.live_targets import live_targets

START = dt.date.today() + dt.timedelta(days=2)
END = START + dt.timedelta(days=20)
CANARY = "cnry" + secrets.token_hex(6)
KINDS = ["ics", "google", "microsoft_graph", "ews", "caldav"]
PEOPLE = ["ann@example.com", "bob@example.com", "cy@example.com"]


def needles(secret: str) -> set[bytes]:
    """The forms a secret can take once written: raw, URL-quoted, base64 at each alignment."""
    out = {secret.encode(), urllib.parse.quote(secret, safe="").encode()}
    raw = secret.encode()
    for pad in range(3):
        encoded = base64.b64encode(b"\0" * pad + raw)
        out.add(encoded[4 : len(encoded) - 4])  # the part that does not depend on neighbours
    return {n for n in out if len(n) >= 12}


def leaks_in_files(root: Path, found: set[bytes]) -> list[str]:
    """Files under root holding one of the needles (bytewise, and SQLite value by value)."""
    hits = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        data = path.read_bytes()
        blobs = [data]
        if data.startswith(b"SQLite format 3"):
            blobs += sqlite_values(path)
        with contextlib.suppress(zlib.error):
            blobs.append(zlib.decompress(data))
        hits += [f"{path}: {n.decode()}" for n in found if any(n in b for b in blobs)]
    return hits


def leaks_in_postgres(engine: sa.Engine, schema: str, found: set[bytes]) -> list[str]:
    """Rows of every table of the schema holding one of the needles."""
    hits = []
    with engine.connect() as conn:
        tables = conn.execute(
            sa.text("SELECT tablename FROM pg_tables WHERE schemaname = :s"), {"s": schema}
        ).scalars()
        for table in list(tables):
            rows = conn.execute(sa.text(f'SELECT t::text FROM "{schema}"."{table}" t')).scalars()
            for row in rows:
                hits += [f"{schema}.{table}: {n.decode()}" for n in found if n in row.encode()]
    return hits


@pytest.fixture
def postgres_role_password() -> str:
    """The database role's password is a canary too."""
    return f"{CANARY}-database"


@pytest.mark.postgres
def test_no_secret_reaches_anything_a_run_leaves(
    home, tmp_path, postgres_role, monkeypatch, capfd, caplog
):
    admin, schema, db_password = postgres_role.admin, postgres_role.schema, postgres_role.password
    hr_url, bad_hr_url = postgres_role.url(), postgres_role.url(postgres_role.name + "_nobody")
    hr = HRBuilder(sa.create_engine(hr_url))
    for i, email in enumerate(PEOPLE, start=1):
        hr.employee(i, "FR", email)
        hr.leave(i, START + dt.timedelta(days=i), START + dt.timedelta(days=i + 1))
    hr.leave(1, START + dt.timedelta(days=9), type="SICK")

    work = tmp_path / "targets"
    targets = live_targets(KINDS, work)
    secret_of = {t.kind: f"{CANARY}-{t.name}-secret" for t in targets}
    for t in targets:
        t.start(PEOPLE, secret_of[t.kind])
    try:
        good = {k: v for t in targets for k, v in t.env().items()}
        google_key = json.loads(good["LEAVESYNC_LIVE_GOOGLE_KEY"])
        pem_lines = google_key["private_key"].splitlines()[1:-1]
        found: set[bytes] = set()
        for secret in [*secret_of.values(), db_password, hr_url]:
            found |= needles(secret)
        found |= {line.encode() for line in pem_lines[2:6]}  # the key itself, not its id

        config = home / "leavesync.yaml"
        config.write_text(
            yaml.safe_dump(
                {
                    "hr": {"url_env": "LEAVESYNC_CANARY_HR_URL"},
                    "state": {"url_env": "LEAVESYNC_CANARY_STATE_URL"},
                    "targets": [t.target() for t in targets],
                }
            )
        )
        window = ["--config", str(config), "--from", START.isoformat(), "--to", END.isoformat()]
        for name, value in good.items():
            monkeypatch.setenv(name, value)
        monkeypatch.setenv("LEAVESYNC_CANARY_HR_URL", hr_url)
        monkeypatch.setenv("LEAVESYNC_CANARY_STATE_URL", hr_url)
        caplog.set_level(logging.DEBUG)

        # Runs that succeed.
        assert main(["sync", *window]) == 0, capfd.readouterr()
        assert main(["drift", *window]) == 0, capfd.readouterr()
        assert main(["check", "--config", str(config), "--sample", PEOPLE[0]]) == 0
        held = {t.kind: {h.event_key for h in t.held()} for t in targets}
        assert all(len(keys) == 4 for keys in held.values()), held

        # Runs that fail on bad credentials: every target's, then the database's.
        hr.leave(2, START + dt.timedelta(days=12))
        for t in targets:
            for name in t.env():
                if t.kind == "google":
                    wrong = dict(google_key, private_key=_other_private_key())
                    monkeypatch.setenv(name, json.dumps(wrong))
                elif t.kind != "ics":
                    monkeypatch.setenv(name, f"{CANARY}-{t.name}-wrong")
                    found |= needles(f"{CANARY}-{t.name}-wrong")
        assert main(["check", "--config", str(config), "--sample", PEOPLE[0]]) == 1
        assert main(["sync", *window]) == 1
        monkeypatch.setenv("LEAVESYNC_CANARY_HR_URL", bad_hr_url)
        assert main(["sync", *window]) == 2
        out = capfd.readouterr()
    finally:
        for t in targets:
            t.stop()

    printed = out.out + out.err + caplog.text
    assert [n.decode() for n in found if n in printed.encode()] == []
    left = leaks_in_files(home, found) + leaks_in_files(tmp_path / "dagster", found)
    assert left == []
    assert leaks_in_postgres(admin, schema, found) == []


def _other_private_key() -> str:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode("ascii")
