"""Row rules and blast-radius rules: pure functions over whole frames, no Dagster import."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from functools import cache
from zoneinfo import ZoneInfo

import pandas as pd
from email_validator import EmailNotValidError, validate_email

from resources.config import EventRules, SafetyConfig
from resources.providers.base import EVENT_KEY_PREFIX

KNOWN_STATUSES = ("pending", "approved", "rejected", "cancelled")
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
# A coarse shape, for the GX suite's net on the diff; rows are checked by email-validator.
EMAIL_PATTERN = rf"^[^@\s<>(),;:\"\[\]]+@{_LABEL}(?:\.{_LABEL})+$"
MAX_TITLE_CHARS = 255
MAX_EMAIL_CHARS = 254

# Rule names are stable: they are stored with quarantined rows and asserted on in tests.
EMPLOYEE_UNKNOWN = "employee_unknown"
LEGAL_ENTITY_UNKNOWN = "legal_entity_unknown"
TIMEZONE_INVALID = "timezone_invalid"
WORKDAY_HOURS_INVALID = "workday_hours_invalid"
EMAIL_MISSING = "email_missing"
EMAIL_MALFORMED = "email_malformed"
LEAVE_TYPE_UNKNOWN = "leave_type_unknown"
STATUS_UNKNOWN = "status_unknown"
DATE_MISSING = "date_missing"
DATE_INVALID = "date_invalid"
DATE_OUT_OF_RANGE = "date_out_of_range"
END_BEFORE_START = "end_before_start"
HALF_DAY_INVALID = "half_day_invalid"
HOURLY_INVALID = "hourly_invalid"
TEXT_TOO_LONG = "text_too_long"
DUPLICATE_LEAVE_ID = "duplicate_leave_id"
OVERLAP = "overlapping_leaves"  # a warning: both leaves are synced


@dataclass(frozen=True)
class RowRule:
    name: str
    severity: str  # "error": quarantined; "warn": reported, synced
    description: str


ROW_RULES: tuple[RowRule, ...] = (
    RowRule(EMPLOYEE_UNKNOWN, "error", "the leave's employee is not in the employees table"),
    RowRule(LEGAL_ENTITY_UNKNOWN, "error", "the employee's legal entity is not known"),
    RowRule(TIMEZONE_INVALID, "error", "the legal entity's time zone is not an IANA zone"),
    RowRule(
        WORKDAY_HOURS_INVALID,
        "error",
        "the legal entity's workday hours are not in order (start < midday < end)",
    ),
    RowRule(EMAIL_MISSING, "error", "the employee has no email (no calendar to write to)"),
    RowRule(EMAIL_MALFORMED, "error", "the employee's email is not a valid address"),
    RowRule(LEAVE_TYPE_UNKNOWN, "error", "the leave type is not in the leave_types table"),
    RowRule(STATUS_UNKNOWN, "error", "status is not pending, approved, rejected or cancelled"),
    RowRule(DATE_MISSING, "error", "the start or end date is missing (NULL)"),
    RowRule(DATE_INVALID, "error", "the start or end date is not a date"),
    RowRule(DATE_OUT_OF_RANGE, "error", "a date lies outside the configured sane range"),
    RowRule(END_BEFORE_START, "error", "the leave ends before it starts"),
    RowRule(
        HALF_DAY_INVALID,
        "error",
        "half-day markers are unknown or leave no time on a one-day leave",
    ),
    RowRule(
        HOURLY_INVALID,
        "error",
        "hourly leave spans several days, lacks a time, or ends before it starts",
    ),
    RowRule(TEXT_TOO_LONG, "error", "an email or leave type name is too long for a calendar"),
    RowRule(DUPLICATE_LEAVE_ID, "error", "the same leave id appears more than once"),
    RowRule(OVERLAP, "warn", "two leaves of the same employee overlap"),
)
RULES_BY_NAME = {r.name: r for r in ROW_RULES}


@cache
def _valid_zone(name: str) -> bool:
    try:
        ZoneInfo(name)
        return True
    except Exception:  # noqa: BLE001 - any failure means "not a zone"
        return False


@cache
def email_problem(address: str) -> str | None:
    """Why ``address`` is not a valid mailbox address (email-validator, syntax only), or None."""
    try:
        validate_email(
            address,
            check_deliverability=False,  # syntax only: no DNS look-up
            allow_quoted_local=False,
            allow_domain_literal=False,
        )
    except EmailNotValidError as err:
        return str(err)
    return None


_HHMMSS = re.compile(r"^(?:[01]\d|2[0-3]):[0-5]\d:[0-5]\d$")


def workday_hours(leaves: pd.DataFrame, events: EventRules) -> pd.DataFrame:
    """Each row's legal entity workday start, midday and end ('HH:MM:SS'; defaults filled in)."""
    defaults = {
        "workday_start": events.workday_start,
        "midday": events.midday,
        "workday_end": events.workday_end,
    }
    return pd.DataFrame(
        {
            col: leaves[col].fillna(value.strftime("%H:%M:%S")).astype(str)
            if col in leaves
            else value.strftime("%H:%M:%S")
            for col, value in defaults.items()
        },
        index=leaves.index,
    )


def rule_violations(
    leaves: pd.DataFrame, safety: SafetyConfig, events: EventRules | None = None
) -> dict[str, pd.Series]:
    """For each row rule, a boolean mask of the rows that break it."""
    employee_known = leaves["employee_known"].astype(bool)
    entity_known = employee_known & leaves["legal_entity_known"].astype(bool)
    email = leaves["employee_email"]
    email_present = email.notna() & email.fillna("").str.strip().ne("")
    candidates = email[email_present & email.fillna("").str.len().le(MAX_EMAIL_CHARS)]
    bad_emails = {e for e in pd.unique(candidates.astype(str)) if email_problem(e) is not None}
    start = pd.to_datetime(leaves["start_date"], format="%Y-%m-%d", errors="coerce")
    end = pd.to_datetime(leaves["end_date"], format="%Y-%m-%d", errors="coerce")
    dates_ok = start.notna() & end.notna()
    date_missing = leaves["start_date"].isna() | leaves["end_date"].isna()
    hours = workday_hours(leaves, events or EventRules())
    hours_ok = (
        hours["workday_start"].str.match(_HHMMSS.pattern)
        & hours["midday"].str.match(_HHMMSS.pattern)
        & hours["workday_end"].str.match(_HHMMSS.pattern)
        & (hours["workday_start"] < hours["midday"])
        & (hours["midday"] < hours["workday_end"])
    )
    lo, hi = pd.Timestamp(safety.min_date), pd.Timestamp(safety.max_date)
    start_half, end_half = leaves["start_half"], leaves["end_half"]
    one_day = leaves["start_date"] == leaves["end_date"]
    has_start_time, has_end_time = leaves["start_time"].notna(), leaves["end_time"].notna()
    hourly = has_start_time | has_end_time
    zones = leaves["timezone"].fillna("")
    long_email = email.fillna("").str.len().gt(MAX_EMAIL_CHARS)
    long_text = leaves["leave_type_name"].fillna("").str.len().gt(MAX_TITLE_CHARS) | long_email
    # Raw text that did not parse as a date, or a date pandas cannot hold (year 1677-2262).
    raw_is_date = leaves["start_date"].fillna("").str.fullmatch(r"\d{4}-\d{2}-\d{2}") & leaves[
        "end_date"
    ].fillna("").str.fullmatch(r"\d{4}-\d{2}-\d{2}")
    out_of_range = raw_is_date & (~dates_ok | (start < lo) | (start > hi) | (end < lo) | (end > hi))
    masks = {
        EMPLOYEE_UNKNOWN: ~employee_known,
        LEGAL_ENTITY_UNKNOWN: employee_known & ~leaves["legal_entity_known"].astype(bool),
        TIMEZONE_INVALID: entity_known & ~zones.map(_valid_zone).astype(bool),
        WORKDAY_HOURS_INVALID: entity_known & ~hours_ok,
        EMAIL_MISSING: employee_known & ~email_present,
        EMAIL_MALFORMED: email_present & ~long_email & email.isin(bad_emails),
        LEAVE_TYPE_UNKNOWN: ~leaves["leave_type_known"].astype(bool),
        STATUS_UNKNOWN: ~leaves["status"].isin(KNOWN_STATUSES),
        DATE_MISSING: date_missing,
        DATE_INVALID: ~dates_ok & ~out_of_range & ~date_missing,
        DATE_OUT_OF_RANGE: out_of_range,
        END_BEFORE_START: dates_ok & (end < start),
        HALF_DAY_INVALID: (start_half.notna() & ~start_half.isin(["AM", "PM"]))
        | (end_half.notna() & ~end_half.isin(["AM", "PM"]))
        | (one_day & start_half.eq("PM").fillna(False) & end_half.eq("AM").fillna(False)),
        HOURLY_INVALID: hourly
        & (
            (has_start_time != has_end_time)
            | ~one_day
            | (leaves["start_time"].fillna("") >= leaves["end_time"].fillna(""))
        ),
        TEXT_TOO_LONG: long_text,
        DUPLICATE_LEAVE_ID: leaves["leave_id"].duplicated(keep=False),
    }
    masks = {k: v.fillna(False).astype(bool) for k, v in masks.items()}
    errors = pd.Series(False, index=leaves.index)
    for mask in masks.values():
        errors |= mask
    masks[OVERLAP] = _overlaps(leaves[~errors], start, end).reindex(leaves.index, fill_value=False)
    return masks


def _overlaps(leaves: pd.DataFrame, start: pd.Series, end: pd.Series) -> pd.Series:
    """Leaves of one employee whose whole-day ranges overlap another synced leave of theirs."""
    synced = leaves[leaves["status"].isin(("pending", "approved"))]
    if synced.empty:
        return pd.Series(False, index=leaves.index)
    frame = pd.DataFrame(
        {"emp": synced["employee_id"], "s": start[synced.index], "e": end[synced.index]}
    ).sort_values(["emp", "s", "e"])
    # A leave overlaps its predecessor when it starts before the running max end of the
    # employee's earlier leaves (hourly/half days on the same day count as overlapping).
    prev_end = frame.groupby("emp")["e"].cummax().groupby(frame["emp"]).shift()
    hit = frame["s"] <= prev_end
    hit_prev = hit.groupby(frame["emp"]).shift(-1, fill_value=False).astype(bool)
    flagged = (hit | hit_prev).reindex(leaves.index, fill_value=False)
    return flagged.astype(bool)


@dataclass
class RowValidation:
    valid: pd.DataFrame
    quarantine: pd.DataFrame  # one row per (leave, rule), errors and warnings
    warnings: int = 0
    counts: dict[str, int] = field(default_factory=dict)


QUARANTINE_COLUMNS = (
    "leave_id",
    "legal_entity",
    "start_date",
    "event_key",
    "employee_id",
    "employee_email",
    "rule",
    "severity",
    "message",
    "row",
)


def _messages(name: str, rule: RowRule, hit: pd.DataFrame, events: EventRules) -> list[str]:
    """The rule's description, with the values at fault where they help to fix the row."""
    if name == EMAIL_MALFORMED:
        return [
            f"{rule.description}: {email_problem(str(e))}" for e in hit["employee_email"].tolist()
        ]
    if name == TIMEZONE_INVALID:
        return [
            f"{rule.description}: legal entity {le} has time zone {tz!r}"
            for le, tz in zip(hit["legal_entity"], hit["timezone"], strict=True)
        ]
    if name == WORKDAY_HOURS_INVALID:
        hours = workday_hours(hit, events)
        return [
            f"{rule.description}: legal entity {le} has start {a}, midday {b}, end {c}"
            for le, a, b, c in zip(
                hit["legal_entity"],
                hours["workday_start"],
                hours["midday"],
                hours["workday_end"],
                strict=True,
            )
        ]
    return [rule.description] * len(hit)


def validate_rows(
    leaves: pd.DataFrame, safety: SafetyConfig, events: EventRules | None = None
) -> RowValidation:
    """Split leaves into the rows that go on and the findings (quarantined rows and warnings)."""
    events = events or EventRules()
    masks = rule_violations(leaves, safety, events)
    findings = []
    errors = pd.Series(False, index=leaves.index)
    counts: dict[str, int] = {}
    for name, mask in masks.items():
        if not mask.any():
            continue
        rule = RULES_BY_NAME[name]
        counts[name] = int(mask.sum())
        if rule.severity == "error":
            errors |= mask
        hit = leaves[mask]
        findings.append(
            pd.DataFrame(
                {
                    "leave_id": hit["leave_id"],
                    "legal_entity": hit["legal_entity"],
                    "start_date": hit["start_date"],
                    "event_key": EVENT_KEY_PREFIX + hit["leave_id"].astype(str),
                    "employee_id": hit["employee_id"],
                    "employee_email": hit["employee_email"],
                    "rule": name,
                    "severity": rule.severity,
                    "message": _messages(name, rule, hit, events),
                    "row": [row_json(r) for r in hit.to_dict("records")],
                }
            )
        )
    quarantine = (
        pd.concat(findings, ignore_index=True)
        if findings
        else pd.DataFrame(columns=list(QUARANTINE_COLUMNS))
    )
    warnings = int((quarantine["severity"] == "warn").sum()) if len(quarantine) else 0
    return RowValidation(leaves[~errors], quarantine, warnings, counts)


def row_json(row: dict[str, object]) -> str:
    def clip(v: object) -> object:
        if isinstance(v, str) and len(v) > 200:
            return v[:200] + f"… ({len(v)} chars)"
        return v if isinstance(v, (str, int, float, bool)) or v is None else str(v)

    return json.dumps({k: clip(v) for k, v in row.items()}, ensure_ascii=False, default=str)


@dataclass(frozen=True)
class BlastRadius:
    """A refusal of the blast-radius rules, in words an operator can act on."""

    scope: str
    reason: str
    deletes: int
    exported: int

    def message(self) -> str:
        return (
            f"{self.scope}: refused: {self.reason}. Nothing was deleted. If this is intended, "
            "re-run with `leavesync sync --allow-mass-delete` or the run tag "
            "leavesync/allow_mass_delete=true."
        )


def blast_radius(
    scope: str, extracted: int, exported: int, deletes: int, safety: SafetyConfig
) -> BlastRadius | None:
    """Refuse a diff that deletes too much or follows an empty extract; None when it is safe."""
    # An empty extract is only dangerous when it would delete: leaves that moved elsewhere
    # are updates, found by id, and leave their old (now empty) scope without deleting.
    if safety.refuse_empty_extract and extracted == 0 and exported > 0 and deletes > 0:
        return BlastRadius(
            scope,
            f"the HR extract is empty while {exported} events are exported; "
            f"it would delete all {deletes} of them",
            deletes,
            exported,
        )
    if exported and deletes >= max(1, safety.min_deletes):
        share = deletes / exported
        if share > safety.max_delete_share:
            return BlastRadius(
                scope,
                f"it would delete {deletes} of {exported} exported events ({share:.0%}), "
                f"more than the allowed {safety.max_delete_share:.0%}",
                deletes,
                exported,
            )
    return None
