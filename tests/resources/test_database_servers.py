"""The extract and the state store on SQLite, PostgreSQL and MariaDB (real servers)."""

from __future__ import annotations

import datetime as dt
import json

import pandas as pd
import pytest
import sqlalchemy as sa

from resources.hr import UNASSIGNED, HRDatabase
from resources.providers.base import ChangeResult, EventChange, EventPayload
from resources.state import SnapshotRow, StateStore
from tests.hr_builder import HRBuilder

D = dt.date(2026, 3, 2)


@pytest.fixture(params=["sqlite", "postgres", "mariadb"])
def db_url(request, home) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{home / 'db.sqlite'}"
    return request.getfixturevalue(f"{request.param}_url")


def test_extract_brings_every_row_through_in_canonical_form(db_url):
    hr = HRBuilder(sa.create_engine(db_url))
    hr.employee(1, "FR", "Ann@Example.com", name="Ann O'Neil; DROP TABLE leaves;--")
    hr.employee(2, "FR", None)  # no email: still extracted, for validation to report
    hr.employee(3, "ZZ", "zed@example.com")  # legal entity HR does not know
    whole = hr.leave(1, D, D + dt.timedelta(days=2))
    hourly = hr.leave(1, D, start_time=dt.time(9, 30), end_time=dt.time(11, 0))
    half = hr.leave(2, D, start_half="PM", status="pending")
    dangling = hr.leave(999, D)  # unknown employee
    unknown_entity = hr.leave(3, D)
    hr.leave(1, D + dt.timedelta(days=40))  # outside the range
    db = HRDatabase(url=db_url)

    assert db.legal_entities() == ["FR", "US"]
    assert db.partition_keys() == ["FR", "US", UNASSIGNED]
    fr = db.extract("FR", D, D + dt.timedelta(days=10)).set_index("leave_id")
    assert sorted(fr.index) == sorted(str(i) for i in (whole, hourly, half))
    row = fr.loc[str(whole)]
    assert (row["start_date"], row["end_date"]) == ("2026-03-02", "2026-03-04")
    assert row["employee_email"] == "Ann@Example.com"
    assert row["employee_name"] == "Ann O'Neil; DROP TABLE leaves;--"
    assert (row["timezone"], row["workday_start"], row["midday"]) == (
        "Europe/Paris",
        "09:00:00",
        "13:00:00",
    )
    assert row["status"] == "approved" and bool(row["sync_enabled"]) and bool(row["active"])
    assert (fr.loc[str(hourly), "start_time"], fr.loc[str(hourly), "end_time"]) == (
        "09:30:00",
        "11:00:00",
    )
    assert fr.loc[str(half), "start_half"] == "PM"
    assert pd.isna(fr.loc[str(half), "employee_email"])

    unassigned = db.extract(UNASSIGNED, D, D).set_index("leave_id")
    assert sorted(unassigned.index) == sorted([str(dangling), str(unknown_entity)])
    assert not unassigned.loc[str(dangling), "employee_known"]
    assert unassigned.loc[str(unknown_entity), "employee_known"]
    assert not unassigned.loc[str(unknown_entity), "legal_entity_known"]

    moved = db.leaves_by_id([str(whole), str(dangling), "424242"])
    assert sorted(moved["leave_id"]) == sorted([str(whole), str(dangling)])


def test_custom_select_replaces_the_default_query(db_url):
    hr = HRBuilder(sa.create_engine(db_url))
    hr.employee(1, "FR", "ann@example.com")
    lid = hr.leave(1, D)
    query = """
        SELECT l.id AS leave_id, e.id AS employee_id, e.email AS employee_email,
               e.display_name AS employee_name, e.legal_entity AS legal_entity,
               'Europe/Paris' AS timezone, l.leave_type AS leave_type, 'Leave' AS leave_type_name,
               0 AS {sensitive}, l.status AS status, l.start_date AS start_date,
               l.end_date AS end_date, l.start_half AS start_half, l.end_half AS end_half,
               l.start_time AS start_time, l.end_time AS end_time, l.updated_at AS updated_at,
               e.sync_enabled AS sync_enabled
        FROM leaves l JOIN employees e ON e.id = l.employee_id
    """
    # SENSITIVE is reserved in MariaDB: a custom SELECT quotes it the server's way.
    quote = hr.engine.dialect.identifier_preparer.quote_identifier
    db = HRDatabase(url=db_url, query=query.format(sensitive=quote("sensitive")))
    assert db.legal_entities() == ["FR"]
    rows = db.extract("FR", D, D)
    assert list(rows["leave_id"]) == [str(lid)]
    assert rows.iloc[0]["leave_type_name"] == "Leave"
    assert bool(rows.iloc[0]["employee_known"]) and bool(rows.iloc[0]["legal_entity_known"])


def test_custom_select_missing_a_column_is_named(db_url):
    HRBuilder(sa.create_engine(db_url))
    db = HRDatabase(url=db_url, query="SELECT id AS leave_id FROM leaves")
    with pytest.raises(Exception, match="missing employee_id"):
        db.extract("FR", D, D)


def _payload(key: str, title: str = "Absent") -> EventPayload:
    return EventPayload(
        key,
        key.removeprefix("leave-"),
        title,
        True,
        "2026-03-02",
        "2026-03-03",
        "Europe/Paris",
        "confirmed",
        "oof",
    )


def test_state_store_records_changes_one_by_one(db_url):
    store = StateStore(url=db_url)
    rows = []
    for i in range(3):
        p = _payload(f"leave-{i}")
        change = EventChange("create", p.event_key, "ann@example.com", p)
        rows.append(
            (
                ChangeResult(change, True, f"id-{i}", "v1"),
                SnapshotRow(
                    "feeds",
                    p.event_key,
                    p.leave_id,
                    "ann@example.com",
                    "FR",
                    "2026-03-02",
                    p.fingerprint,
                    None,
                    None,
                    p,
                ),
            )
        )
    store.record_changes("feeds", rows, "run-1")
    snap = store.snapshot_in_scope(["FR"], D, D)
    assert sorted(snap["event_key"]) == ["leave-0", "leave-1", "leave-2"]
    assert set(snap["provider_event_id"]) == {"id-0", "id-1", "id-2"}
    assert json.loads(snap.iloc[0]["payload"])["title"] == "Absent"
    assert (
        int(snap.set_index("event_key").loc["leave-1", "fingerprint"])
        == _payload("leave-1").fingerprint
    )

    updated = _payload("leave-1", "Away")
    upd = EventChange("update", "leave-1", "ann@example.com", updated, "id-1", "v1")
    delete = EventChange("delete", "leave-2", "ann@example.com", None, "id-2", "v1")
    store.record_changes(
        "feeds",
        [
            (
                ChangeResult(upd, True, "id-1", "v2"),
                SnapshotRow(
                    "feeds",
                    "leave-1",
                    "1",
                    "ann@example.com",
                    "FR",
                    "2026-03-02",
                    updated.fingerprint,
                    None,
                    None,
                    updated,
                ),
            ),
            (ChangeResult(delete, True), None),
        ],
        "run-2",
    )
    snap = store.snapshot_all("feeds").set_index("event_key")
    assert sorted(snap.index) == ["leave-0", "leave-1"]
    assert snap.loc["leave-1", "version"] == "v2"
    assert int(snap.loc["leave-1", "fingerprint"]) == updated.fingerprint

    store.relocate(
        pd.DataFrame(
            [
                {
                    "target": "feeds",
                    "event_key": "leave-0",
                    "legal_entity": "US",
                    "partition_date": "2026-04-01",
                }
            ]
        )
    )
    assert list(
        store.snapshot_in_scope(["US"], dt.date(2026, 4, 1), dt.date(2026, 4, 1))["event_key"]
    ) == ["leave-0"]
    assert list(store.snapshot_for_keys(["leave-0", "leave-9"])["event_key"]) == ["leave-0"]


def test_state_store_keeps_quarantined_rows_with_unicode(db_url):

    store = StateStore(url=db_url)
    findings = pd.DataFrame(
        [
            {
                "leave_id": "7",
                "legal_entity": "FR",
                "start_date": "1900-01-01",
                "rule": "date_out_of_range",
                "severity": "error",
                "message": "a date lies outside the configured sane range",
                "row": json.dumps({"employee_name": "שרה כהן — Zoë"}, ensure_ascii=False),
            }
        ]
    )
    store.record_quarantine("run-1", "FR", findings)
    back = store.quarantine_for_run("run-1")
    assert back.iloc[0]["rule"] == "date_out_of_range"
    assert json.loads(back.iloc[0]["row"])["employee_name"] == "שרה כהן — Zoë"
