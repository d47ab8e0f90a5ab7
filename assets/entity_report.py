"""What an operator reads per legal entity: the quarantine table, and each entity's verdict.

Each run covers one legal entity, and Dagster shows a check's latest evaluation only; the
verdicts kept here let one check stay red while any entity is blocked, until that
entity's own next run passes.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pandas as pd
from dagster import MetadataValue, TableColumn, TableRecord, TableSchema

QUARANTINE_SHOWN = 50
QUARANTINE_SCHEMA = TableSchema(
    columns=[
        TableColumn("employee", "string", description="email, or employee id without one"),
        TableColumn("leave_id", "string"),
        TableColumn("legal_entity", "string"),
        TableColumn("rule", "string"),
        TableColumn("severity", "string", description="error: quarantined; warn: synced"),
        TableColumn("value", "string", description="the values the rule refused"),
    ]
)
# The fields each row rule looks at: what the "value" column shows.
RULE_FIELDS = {
    "employee_unknown": ("employee_id",),
    "legal_entity_unknown": ("legal_entity",),
    "timezone_invalid": ("timezone",),
    "email_missing": ("employee_email",),
    "email_malformed": ("employee_email",),
    "leave_type_unknown": ("leave_type",),
    "status_unknown": ("status",),
    "date_invalid": ("start_date", "end_date"),
    "date_out_of_range": ("start_date", "end_date"),
    "end_before_start": ("start_date", "end_date"),
    "half_day_invalid": ("start_half", "end_half"),
    "hourly_invalid": ("start_time", "end_time"),
    "text_too_long": ("employee_name", "leave_type_name"),
    "duplicate_leave_id": ("leave_id",),
    "overlapping_leaves": ("start_date", "end_date"),
}
VERDICT_KEY = "leavesync/verdict/"


def _text(value: object) -> str:
    """Text an operator reads: never NaN or None."""
    if value is None or (isinstance(value, float) and pd.isna(value)) or value is pd.NA:
        return ""
    return str(value)


def quarantine_rows(quarantine: pd.DataFrame) -> pd.DataFrame:
    """employee, leave id, legal entity, rule, severity, value: one row per finding."""
    rows = []
    for finding in quarantine.itertuples(index=False):
        try:
            row = json.loads(finding.row) if isinstance(finding.row, str) else {}
        except ValueError:
            row = {}
        fields = RULE_FIELDS.get(str(finding.rule), ())
        value = ", ".join(f"{f}={_text(row.get(f)) or '(empty)'}" for f in fields)
        rows.append(
            {
                "employee": _text(row.get("employee_email")) or _text(row.get("employee_id")),
                "leave_id": _text(finding.leave_id),
                "legal_entity": _text(finding.legal_entity),
                "rule": _text(finding.rule),
                "severity": _text(finding.severity),
                "value": value or _text(getattr(finding, "message", "")),
            }
        )
    return pd.DataFrame(rows, columns=[c.name for c in QUARANTINE_SCHEMA.columns])


def quarantine_table(rows: pd.DataFrame, limit: int = QUARANTINE_SHOWN) -> MetadataValue:
    return MetadataValue.table(
        records=[TableRecord(r) for r in rows.head(limit).to_dict("records")],
        schema=QUARANTINE_SCHEMA,
    )


def write_quarantine_csv(rows: pd.DataFrame, reports_dir: Path, entity_key: str) -> Path:
    """The full list of one legal entity's latest run, beside the reports."""
    path = reports_dir / "quarantine" / f"{entity_key}.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    rows.to_csv(tmp, index=False)
    tmp.replace(path)
    return path


def record_verdicts(instance, verdicts: dict[str, dict]) -> None:
    """Keep each legal entity's latest verdict (one key per entity: runs never race on it)."""
    instance.run_storage.set_cursor_values(
        {VERDICT_KEY + key: json.dumps(v) for key, v in verdicts.items()}
    )


def latest_verdicts(instance, entity_keys: list[str]) -> dict[str, dict]:
    stored = instance.run_storage.get_cursor_values({VERDICT_KEY + k for k in entity_keys})
    return {
        key.removeprefix(VERDICT_KEY): json.loads(value) for key, value in stored.items() if value
    }


def verdict(status: str, run_id: str, quarantined: int, reason: str = "") -> dict:
    return {
        "status": status,
        "run_id": run_id,
        "quarantined": quarantined,
        "reason": reason,
        "at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }


def verdicts_table(verdicts: dict[str, dict]) -> MetadataValue:
    schema = TableSchema(
        columns=[
            TableColumn("legal_entity", "string"),
            TableColumn("status", "string"),
            TableColumn("quarantined", "int"),
            TableColumn("reason", "string"),
            TableColumn("run_id", "string"),
            TableColumn("at", "string"),
        ]
    )
    records = [
        TableRecord(
            {
                "legal_entity": key,
                "status": v.get("status", ""),
                "quarantined": int(v.get("quarantined", 0)),
                "reason": _text(v.get("reason")),
                "run_id": v.get("run_id", ""),
                "at": v.get("at", ""),
            }
        )
        for key, v in sorted(verdicts.items())
    ]
    return MetadataValue.table(records=records, schema=schema)
