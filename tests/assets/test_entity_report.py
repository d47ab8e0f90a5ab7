"""Per legal entity reports: the quarantine table, and a verdict that stays until fixed."""

from __future__ import annotations

import datetime as dt
import json

import pandas as pd

from assets.entity_report import quarantine_rows, quarantine_table
from tests.harness import make_config

DAY = dt.date.today() + dt.timedelta(days=2)


def test_quarantine_rows_name_employee_leave_rule_and_value_without_nan():
    quarantine = pd.DataFrame(
        [
            {
                "leave_id": "7",
                "legal_entity": "FR",
                "start_date": "2026-03-02",
                "rule": "email_malformed",
                "severity": "error",
                "message": "the employee's email is not a well-formed address",
                "row": json.dumps({"employee_id": "3", "employee_email": "not-an-address"}),
            },
            {
                "leave_id": "8",
                "legal_entity": float("nan"),
                "start_date": None,
                "rule": "employee_unknown",
                "severity": "error",
                "message": "the leave's employee is not in the employees table",
                "row": json.dumps({"employee_id": "99", "employee_email": None}),
            },
        ]
    )

    rows = quarantine_rows(quarantine)

    assert rows.to_dict("records") == [
        {
            "employee": "not-an-address",
            "leave_id": "7",
            "legal_entity": "FR",
            "rule": "email_malformed",
            "severity": "error",
            "value": "employee_email=not-an-address",
        },
        {
            "employee": "99",
            "leave_id": "8",
            "legal_entity": "",
            "rule": "employee_unknown",
            "severity": "error",
            "value": "employee_id=99",
        },
    ]
    table = quarantine_table(rows, limit=1)
    assert [c.name for c in table.schema.columns] == [
        "employee",
        "leave_id",
        "legal_entity",
        "rule",
        "severity",
        "value",
    ]
    assert len(table.records) == 1
    assert "nan" not in rows.to_string().lower()


def _check(run_id: str, name: str):
    from dagster import DagsterEventType, DagsterInstance

    for record in DagsterInstance.get().all_logs(
        run_id, of_type=DagsterEventType.ASSET_CHECK_EVALUATION
    ):
        evaluation = record.dagster_event.event_specific_data
        if evaluation.check_name == name:
            return evaluation
    raise AssertionError(f"no {name} evaluation in run {run_id}")


def test_a_blocked_entity_stays_red_until_its_own_next_run_passes(home, hr):
    from pipelines.runner import reconcile

    hr.employee(1, "FR", "ann@example.com")
    hr.employee(2, "US", "bob@example.com")
    fr = [hr.leave(1, DAY + dt.timedelta(days=i)) for i in range(12)]
    hr.leave(2, DAY)
    cfg = make_config(home, hr.url)

    def run(entity: str, **kw):
        (r,) = reconcile(cfg, [entity], DAY, DAY + dt.timedelta(days=20), progress=print, **kw)
        return r

    assert run("FR").status == "ok"
    for lid in fr:
        hr.delete_leave(lid)
    blocked = run("FR")
    assert blocked.status == "blocked"
    assert not _check(blocked.run_id, "every_entity_reconcilable").passed

    other = run("US")
    assert other.status == "ok" and _check(other.run_id, "diff_is_safe").passed
    still = _check(other.run_id, "every_entity_reconcilable")
    assert not still.passed and still.metadata["blocked"].value == ["FR"]
    rows = {r.data["legal_entity"]: r.data for r in still.metadata["legal_entities"].value.records}
    assert rows["FR"]["status"] == "blocked" and rows["US"]["status"] == "ok"
    assert rows["FR"]["run_id"] == blocked.run_id

    fixed = run("FR", allow_mass_delete=True)
    assert fixed.status == "ok"
    assert _check(fixed.run_id, "every_entity_reconcilable").passed


def test_quarantine_is_a_table_in_the_check_and_a_csv_beside_the_reports(home, hr):
    from pipelines.runner import reconcile

    hr.employee(1, "FR", "ann@example.com")
    hr.employee(2, "FR", "not-an-address")
    hr.leave(1, DAY)
    bad = hr.leave(2, DAY)
    cfg = make_config(home, hr.url)

    (run,) = reconcile(cfg, ["FR"], DAY, DAY, progress=print)

    check = _check(run.run_id, "rows_are_valid")
    (record,) = check.metadata["quarantine"].value.records
    assert record.data["employee"] == "not-an-address"
    assert record.data["leave_id"] == str(bad) and record.data["rule"] == "email_malformed"
    csv = pd.read_csv(check.metadata["quarantine_csv_FR"].value, dtype=str)
    assert csv["leave_id"].tolist() == [str(bad)]
