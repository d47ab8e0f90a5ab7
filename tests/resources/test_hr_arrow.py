"""The extract on PostgreSQL through Arrow (ADBC) gives exactly what the SQLAlchemy path gives."""

from __future__ import annotations

import datetime as dt

import pandas as pd
import pytest
import sqlalchemy as sa

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
