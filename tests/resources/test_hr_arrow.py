"""The extract on PostgreSQL through Arrow (ADBC) gives exactly what the SQLAlchemy path gives."""

from __future__ import annotations

import datetime as dt

import adbc_driver_manager.dbapi as adbc_dbapi
import pandas as pd
import pytest
import sqlalchemy as sa

import resources.hr as hr_module
from resources.hr import HRDatabase, HRExtractError
from tests.hr_builder import HRBuilder

D = dt.date(2026, 3, 2)
KEYS = ("FR", "US", "DE_B2B", "_unassigned")


@pytest.fixture
def pg_hr(postgres_url) -> str:
    hr = HRBuilder(sa.create_engine(postgres_url))
    hr.entity("DE|B2B", "Europe/Berlin")
    hr.employee(1, "FR", "ann@example.com")
    hr.employee(2, "US", None)
    hr.employee(3, "DE|B2B", "o'brien@example.com", name="Zoë O'Brien")
    hr.employee(4, "XX", "ghost@example.com")
    hr.leave(1, D, D + dt.timedelta(days=2))
    hr.leave(2, D, start_half="PM")
    hr.leave(1, D, start_time=dt.time(14), end_time=dt.time(16), status="pending")
    hr.leave(3, D + dt.timedelta(days=40))
    hr.leave(4, D)
    return postgres_url


def test_arrow_extract_matches_the_sqlalchemy_path(pg_hr, monkeypatch):
    arrow_reads = []
    real = HRDatabase._read_arrow
    monkeypatch.setattr(
        HRDatabase, "_read_arrow", lambda self, *a: arrow_reads.append(a) or real(self, *a)
    )
    db = HRDatabase(url=pg_hr)
    through_arrow = {k: db.extract(k, D, D + dt.timedelta(days=60)) for k in KEYS}
    assert len(arrow_reads) == len(KEYS)

    monkeypatch.setattr(HRDatabase, "_arrow", lambda self: False)
    plain = HRDatabase(url=pg_hr)
    for key in KEYS:
        pd.testing.assert_frame_equal(
            through_arrow[key], plain.extract(key, D, D + dt.timedelta(days=60))
        )
    assert through_arrow["DE_B2B"]["employee_name"].tolist() == ["Zoë O'Brien"]
    assert len(through_arrow["_unassigned"]) == 1


def test_sqlite_keeps_the_sqlalchemy_path(tmp_path):
    assert not HRDatabase(url=f"sqlite:///{tmp_path / 'hr.sqlite'}")._arrow()


def test_a_failed_extract_names_the_database_and_what_failed(pg_hr):
    db = HRDatabase(url=pg_hr, query="SELECT * FROM no_such_table")
    with pytest.raises(HRExtractError, match="HR database .*no_such_table"):
        db.extract("FR", D, D)


def _sqlalchemy_path(url: str, **kwargs) -> HRDatabase:
    db = HRDatabase(url=url, **kwargs)
    object.__setattr__(db, "_arrow", lambda: False)
    return db


def _by_id(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.sort_values("leave_id").reset_index(drop=True)


def test_the_reference_schema_is_read_through_arrow_with_bound_values(pg_hr, monkeypatch):
    """The values are bound ($1, $2, ...), never written into the SQL; no silent fallback."""
    hr = HRBuilder(sa.create_engine(pg_hr), defaults=False)
    hr.entity("O'Hara", "Europe/Dublin")
    hr.employee(5, "O'Hara", "sean@example.com")
    hr.leave(5, D, id=10, updated_at=dt.datetime(2026, 3, 1, 8, 30, 15, 250000))
    hr.leave(5, D + dt.timedelta(days=1), id=11, updated_at=dt.datetime(2026, 3, 1, 8, 30))
    sent, frames = [], []
    real_execute = adbc_dbapi.Cursor.execute
    real_frame = hr_module._arrow_frame

    def execute(cursor, sql, parameters=None, **kw):
        sent.append((sql, parameters))
        return real_execute(cursor, sql, parameters, **kw)

    def frame(table):
        out = real_frame(table)
        frames.append(out)
        return out

    monkeypatch.setattr(adbc_dbapi.Cursor, "execute", execute)
    monkeypatch.setattr(hr_module, "_arrow_frame", frame)
    db = HRDatabase(url=pg_hr)
    for key in ("O'Hara", "FR", "_unassigned"):
        got = db.extract(key, D, D + dt.timedelta(days=60))
        want = _sqlalchemy_path(pg_hr).extract(key, D, D + dt.timedelta(days=60))
        pd.testing.assert_frame_equal(_by_id(got), _by_id(want))
    assert all(f is not None for f in frames) and len(frames) == 3
    assert all("O'Hara" not in sql and "$1" in sql for sql, _ in sent)
    assert ["O'Hara"] == [p for p in sent[0][1] if p == "O'Hara"]
    stamps = db.extract("O'Hara", D, D + dt.timedelta(days=60))["updated_at"].tolist()
    assert sorted(stamps) == ["2026-03-01 08:30:00", "2026-03-01 08:30:15.250000"]


def test_a_column_of_another_type_takes_the_sqlalchemy_path(pg_hr):
    """A custom query's NUMERIC id or TIMESTAMPTZ: read as psycopg reads it, not through Arrow."""
    query = (
        "SELECT CAST(l.id AS NUMERIC) AS leave_id, l.employee_id, e.email AS employee_email, "
        "e.display_name AS employee_name, e.legal_entity, le.timezone, l.leave_type, "
        "lt.name AS leave_type_name, lt.sensitive, l.status, l.start_date, l.end_date, "
        "l.start_half, l.end_half, l.start_time, l.end_time, "
        "CAST(l.updated_at AS TIMESTAMPTZ) AS updated_at, e.sync_enabled "
        "FROM leaves l JOIN employees e ON e.id = l.employee_id "
        "JOIN legal_entities le ON le.code = e.legal_entity "
        "JOIN leave_types lt ON lt.code = l.leave_type"
    )
    got = HRDatabase(url=pg_hr, query=query).extract("FR", D, D + dt.timedelta(days=60))
    want = _sqlalchemy_path(pg_hr, query=query).extract("FR", D, D + dt.timedelta(days=60))
    pd.testing.assert_frame_equal(_by_id(got), _by_id(want))
    assert len(got) == 2


def test_a_kept_connection_the_server_closed_is_opened_again(pg_hr):
    db = HRDatabase(url=pg_hr)
    first = db.extract("FR", D, D + dt.timedelta(days=60))
    uri = db.engine().url.set(drivername="postgresql").render_as_string(hide_password=False)
    assert hr_module._ADBC.kept(uri)
    with hr_module._ADBC.connection(uri).cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        pid = cursor.fetchone()[0]
    with sa.create_engine(pg_hr).connect() as conn:
        assert conn.execute(sa.text("SELECT pg_terminate_backend(:p)"), {"p": pid}).scalar()
    again = HRDatabase(url=pg_hr).extract("FR", D, D + dt.timedelta(days=60))
    pd.testing.assert_frame_equal(_by_id(first), _by_id(again))
