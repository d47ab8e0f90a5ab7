"""Rendering a leave into the event it should be (DESIGN.md "From a leave to an event")."""

from __future__ import annotations

import pandas as pd
import pytest

from assets.render import render_events
from resources.config import EventRules, TargetConfig
from resources.providers.base import EventPayload

TARGET = TargetConfig(name="feeds", type="ics")


def leave(**over) -> dict:
    row = {
        "leave_id": "1",
        "employee_id": "10",
        "employee_email": "Ann.Lee@Example.com",
        "employee_name": "Ann Lee",
        "legal_entity": "FR",
        "timezone": "Europe/Paris",
        "leave_type": "PTO",
        "leave_type_name": "Paid leave",
        "sensitive": False,
        "status": "approved",
        "start_date": "2026-03-02",
        "end_date": "2026-03-04",
        "start_half": None,
        "end_half": None,
        "start_time": None,
        "end_time": None,
        "updated_at": "2026-01-01",
        "sync_enabled": True,
        "active": True,
        "workday_start": "09:00:00",
        "midday": "13:00:00",
        "workday_end": "18:00:00",
    }
    row.update(over)
    return row


def render(
    *rows: dict, rules: EventRules | None = None, target: TargetConfig = TARGET
) -> pd.DataFrame:
    return render_events(pd.DataFrame(list(rows)), target, rules or EventRules())


def test_whole_days_are_all_day_with_exclusive_end():
    ev = render(leave()).iloc[0]
    assert ev["all_day"]
    assert (ev["start"], ev["end"]) == ("2026-03-02", "2026-03-05")
    assert ev["timezone"] == "Europe/Paris"
    assert ev["event_key"] == "leave-1"
    assert ev["calendar"] == "ann.lee@example.com"
    assert ev["partition_date"] == "2026-03-02"


def test_title_is_absent_by_default_and_private():
    ev = render(leave()).iloc[0]
    assert ev["title"] == "Absent"
    assert ev["private"]
    assert ev["description"] == ""


def test_leave_type_title_when_configured_but_never_for_sensitive_types():
    rules = EventRules(title_mode="leave_type")
    events = render(
        leave(),
        leave(leave_id="2", leave_type="SICK", leave_type_name="Sick leave", sensitive=True),
        rules=rules,
    )
    assert list(events["title"]) == ["Paid leave", "Absent"]


def test_per_type_title_override_does_not_name_a_sensitive_type():
    rules = EventRules(leave_types={"SICK": {"title": "Sick"}, "PTO": {"title": "Vacation"}})
    events = render(leave(), leave(leave_id="2", leave_type="SICK", sensitive=True), rules=rules)
    assert list(events["title"]) == ["Vacation", "Absent"]


def test_pending_is_tentative_and_approved_is_confirmed_out_of_office():
    events = render(leave(), leave(leave_id="2", status="pending"))
    assert list(events["status"]) == ["confirmed", "tentative"]
    assert list(events["show_as"]) == ["oof", "tentative"]


def test_approved_show_as_busy_where_configured():
    ev = render(leave(), rules=EventRules(approved_show_as="busy")).iloc[0]
    assert ev["show_as"] == "busy"


@pytest.mark.parametrize(
    "over",
    [
        {"status": "rejected"},
        {"status": "cancelled"},
        {"sync_enabled": False},
        {"active": False},
    ],
)
def test_leaves_without_an_event(over):
    assert render(leave(**over)).empty


def test_leave_type_excluded_from_sync():
    assert render(leave(), rules=EventRules(leave_types={"PTO": {"sync": False}})).empty


def test_afternoon_start_is_a_timed_event_from_midday():
    ev = render(leave(start_half="PM")).iloc[0]
    assert not ev["all_day"]
    assert (ev["start"], ev["end"]) == ("2026-03-02T13:00:00", "2026-03-04T18:00:00")


def test_morning_only_day_ends_at_midday():
    ev = render(leave(end_date="2026-03-02", end_half="AM")).iloc[0]
    assert (ev["start"], ev["end"]) == ("2026-03-02T09:00:00", "2026-03-02T13:00:00")


def test_hourly_leave_uses_its_own_times():
    ev = render(leave(end_date="2026-03-02", start_time="14:00:00", end_time="16:30:00")).iloc[0]
    assert not ev["all_day"]
    assert (ev["start"], ev["end"]) == ("2026-03-02T14:00:00", "2026-03-02T16:30:00")


def test_entity_workday_hours_missing_fall_back_to_configured_hours():
    ev = render(leave(start_half="PM", workday_start=None, midday=None, workday_end=None)).iloc[0]
    assert (ev["start"], ev["end"]) == ("2026-03-02T13:00:00", "2026-03-04T17:30:00")


def test_hour_range_instead_of_all_day_per_target():
    target = TargetConfig(name="exchange", type="ics", hours_instead_of_all_day=True)
    ev = render(leave(), target=target).iloc[0]
    assert not ev["all_day"]
    assert (ev["start"], ev["end"]) == ("2026-03-02T09:00:00", "2026-03-04T18:00:00")


def test_multi_day_leave_across_dst_keeps_local_dates_and_hours():
    # Europe/Paris moves to summer time on 2026-03-29: local dates and hours do not move.
    ev = render(leave(start_date="2026-03-27", end_date="2026-03-31")).iloc[0]
    assert (ev["start"], ev["end"]) == ("2026-03-27", "2026-04-01")
    timed = render(leave(start_date="2026-03-27", end_date="2026-03-31", start_half="PM")).iloc[0]
    payload = EventPayload(**{k: timed[k] for k in EventPayload.__dataclass_fields__})
    assert payload.start_datetime().utcoffset().total_seconds() == 3600
    assert payload.end_datetime().utcoffset().total_seconds() == 7200
    assert payload.end_datetime().hour == 18


def test_target_serves_by_entity_and_domain():
    rows = [
        leave(),
        leave(leave_id="2", legal_entity="US", employee_email="bo@example.org"),
        leave(leave_id="3", legal_entity="FR", employee_email="cy@example.org"),
    ]
    by_entity = TargetConfig(name="t", type="ics", serves={"legal_entities": ["FR"]})
    assert list(render(*rows, target=by_entity)["leave_id"]) == ["1", "3"]
    by_domain = TargetConfig(name="t", type="ics", serves={"email_domains": ["example.org"]})
    assert list(render(*rows, target=by_domain)["leave_id"]) == ["2", "3"]
    both = TargetConfig(
        name="t", type="ics", serves={"legal_entities": ["FR"], "email_domains": ["@Example.org"]}
    )
    assert list(render(*rows, target=both)["leave_id"]) == ["3"]


def test_fingerprint_equals_the_payload_fingerprint_and_changes_with_any_field():
    events = render(leave(), leave(leave_id="2", end_date="2026-03-05"))
    first = events.iloc[0]
    payload = EventPayload(**{k: first[k] for k in EventPayload.__dataclass_fields__})
    assert payload.fingerprint == first["fingerprint"]
    assert events.iloc[0]["fingerprint"] != events.iloc[1]["fingerprint"]
    again = render(leave(), leave(leave_id="2", end_date="2026-03-05"))
    assert list(again["fingerprint"]) == list(events["fingerprint"])


def test_categories_are_written_as_calendars_read_them_back():
    """ "HR, Leave" is stored as a list and read back "HR,Leave": configured the same way."""
    from resources.config import parse_config

    cfg = parse_config({"events": {"categories": " HR,  Leave ,, Away "}})
    assert cfg.events.categories == "HR,Leave,Away"
    assert parse_config({}).events.categories == ""
