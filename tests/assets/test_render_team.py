"""Team calendars: one shared calendar per group, events naming the person (issue 12)."""

from __future__ import annotations

import pytest

from assets.render import configured_calendars
from resources.config import ConfigError, EventRules, TargetConfig, parse_config
from tests.assets.test_render import leave, render

TEAM = TargetConfig(name="team", type="ics", kind="team")


def graph_team(**team) -> TargetConfig:
    return TargetConfig(
        name="team",
        type="microsoft_graph",
        kind="team",
        team={"calendars": {"FR": "absences-fr@example.com"}, **team},
    )


def test_one_feed_per_legal_entity_by_default_named_after_it():
    events = render(leave(), leave(leave_id="2", legal_entity="US-NY"), target=TEAM)
    assert list(events["calendar"]) == ["teams/FR", "teams/US-NY"]
    assert list(events["event_key"]) == ["team-leave-1", "team-leave-2"]


def test_team_event_names_the_person_is_free_and_public():
    ev = render(leave(), target=TEAM).iloc[0]
    assert ev["title"] == "Ann Lee – Absent"
    assert ev["show_as"] == "free"
    assert not ev["private"]
    assert ev["status"] == "confirmed"


def test_team_event_key_differs_from_the_personal_one_for_the_same_leave():
    personal = render(leave()).iloc[0]
    team = render(leave(), target=TEAM).iloc[0]
    assert personal["event_key"] != team["event_key"]
    assert personal["leave_id"] == team["leave_id"] == "1"


def test_a_sensitive_type_is_never_named_even_with_leave_type_titles():
    rules = EventRules(title_mode="leave_type")
    events = render(
        leave(),
        leave(leave_id="2", leave_type="SICK", leave_type_name="Sick leave", sensitive=True),
        rules=rules,
        target=TEAM,
    )
    assert list(events["title"]) == ["Ann Lee – Paid leave", "Ann Lee – Absent"]


def test_pending_only_when_the_team_target_says_so():
    assert render(leave(status="pending"), target=TEAM).empty
    shown = TargetConfig(name="team", type="ics", kind="team", include_pending=True)
    assert render(leave(status="pending"), target=shown).iloc[0]["status"] == "tentative"
    # Personal targets keep pending leaves unless told otherwise.
    assert len(render(leave(status="pending"))) == 1


@pytest.mark.parametrize(
    "over",
    [
        {"sync_enabled": False},
        {"active": False},
        {"status": "cancelled"},
        {"status": "rejected"},
    ],
)
def test_opted_out_departed_and_cancelled_leaves_have_no_team_event(over):
    assert render(leave(**over), target=TEAM).empty


def test_grouped_by_team_with_named_calendars_and_one_for_the_rest():
    target = TargetConfig(
        name="team",
        type="google",
        kind="team",
        team={
            "group_by": "team",
            "calendars": {"Sales": "c_sales@group.calendar.google.com"},
            "calendar": "c_all@group.calendar.google.com",
        },
    )
    events = render(
        leave(team="Sales"),
        leave(leave_id="2", team="Engineering"),
        leave(leave_id="3", team=None),
        target=target,
    )
    assert list(events["calendar"]) == [
        "c_sales@group.calendar.google.com",
        "c_all@group.calendar.google.com",
        "c_all@group.calendar.google.com",
    ]


def test_a_group_without_a_calendar_has_no_team_event():
    events = render(leave(), leave(leave_id="2", legal_entity="US"), target=graph_team())
    assert list(events["calendar"]) == ["absences-fr@example.com"]


def test_title_template_visibility_and_a_missing_name():
    target = graph_team(title="Off: {name}", visibility="private")
    ev = render(leave(employee_name=None), target=target).iloc[0]
    assert ev["title"] == "Off: Ann.Lee@Example.com"
    assert ev["private"]


def test_configured_calendars_are_the_ones_the_events_go_to():
    target = TargetConfig(name="team", type="ics", kind="team", team={"calendars": {"FR": "paris"}})
    assert configured_calendars(target) == ["teams/paris"]
    assert render(leave(), target=target).iloc[0]["calendar"] == "teams/paris"


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ({"type": "ews", "kind": "team"}, "team.calendars"),
        ({"type": "ics", "team": {}}, "only a target of kind team"),
        ({"type": "ics", "kind": "team", "team": {"title": "{leave_type}"}}, "unknown field"),
        ({"type": "ics", "kind": "team", "team": {"calendar": "../x"}}, "feed names"),
    ],
)
def test_team_configuration_errors_name_what_is_wrong(target, message):
    with pytest.raises(ConfigError, match=message):
        parse_config({"targets": [{"name": "t", **target}]})
