"""Team calendars in shared mailboxes: Microsoft Graph and EWS, on their strict emulators.

The shared calendar of each team is a shared mailbox's calendar; what each mailbox holds is
read from the emulator's own store, not through the provider.
"""

from __future__ import annotations

from collections import defaultdict

import pytest

from resources.providers.ews.mapping import KEY_PROPERTY
from tests.emulators.ews import EwsEmulator
from tests.emulators.graph import GraphEmulator
from tests.harness import Pipeline, make_config
from tests.pipelines.team_scenario import play, team_target
from tests.pipelines.test_ews_pipeline import PASSWORD_ENV
from tests.pipelines.test_ews_pipeline import target as ews_target
from tests.pipelines.test_graph_pipeline import CLIENT_ID, SECRET, SECRET_ENV
from tests.pipelines.test_graph_pipeline import target as graph_target

SALES, ENG = "absences-sales@example.com", "absences-engineering@example.com"
PEOPLE = ["claire@example.com", "bob@example.com", "dan@example.com"]


@pytest.fixture
def graph(tmp_path, monkeypatch):
    emulator = GraphEmulator.start(tmp_path / "pki")
    emulator.register_app(CLIENT_ID, SECRET)
    monkeypatch.setenv(SECRET_ENV, SECRET)
    yield emulator
    emulator.stop()


def graph_keys(event: dict) -> str | None:
    return next(
        (
            p["value"]
            for p in event.get("singleValueExtendedProperties", [])
            if p["id"].endswith("leavesyncKey")
        ),
        None,
    )


def test_graph_team_calendars_in_shared_mailboxes(home, hr, graph):
    settings = graph_target(graph)["settings"]
    team = team_target("team", "microsoft_graph", SALES, ENG, settings)
    p = Pipeline(make_config(home, hr.url, targets=[team]))

    def held() -> dict[str, list[str]]:
        out = {}
        for box in (SALES, ENG, *PEOPLE):
            found = sorted(k for e in graph.events(box) if (k := graph_keys(e)))
            if found:
                out[box] = found
        return out

    ids = play(p, hr, held, SALES, ENG)
    events = {graph_keys(e): e for e in graph.events(ENG)}
    sick = events[f"team-leave-{ids.sick}"]
    assert sick["subject"] == "Bob Stone – Absent"
    for event in events.values():
        assert event["showAs"] == "free"
        assert event["sensitivity"] == "normal"
        assert event["isReminderOn"] is False
        assert not event.get("attendees")
    assert not events[f"team-leave-{ids.half}"]["isAllDay"]


@pytest.fixture
def exchange(monkeypatch):
    with EwsEmulator([SALES, ENG, *PEOPLE]) as emulator:
        monkeypatch.setenv(PASSWORD_ENV, emulator.password)
        yield emulator


def test_ews_team_calendars_in_shared_mailboxes(home, hr, exchange):
    settings = ews_target(exchange)["settings"]
    team = team_target("team", "ews", SALES, ENG, settings)
    p = Pipeline(make_config(home, hr.url, targets=[team]))

    def held() -> dict[str, list[str]]:
        out: dict[str, list[str]] = defaultdict(list)
        for box in (SALES, ENG, *PEOPLE):
            for item in exchange.items(box):
                if key := item.extended_value(KEY_PROPERTY):
                    out[box].append(key)
        return {box: sorted(keys) for box, keys in out.items()}

    ids = play(p, hr, held, SALES, ENG)
    items = {i.extended_value(KEY_PROPERTY): i for i in exchange.items(ENG)}
    assert items[f"team-leave-{ids.claire}"].text("Subject") == "Claire Martin – Absent"
    for item in items.values():
        assert item.text("LegacyFreeBusyStatus") == "Free"
        assert item.text("Sensitivity") == "Normal"
        assert item.text("ReminderIsSet") == "false"
    assert items[f"team-leave-{ids.half}"].text("IsAllDayEvent") in (None, "false")


def test_drift_in_a_shared_mailbox_is_found_and_repaired(home, hr, graph):
    """Someone deletes a team event in the shared mailbox: the drift job reads the shared
    calendars back and puts it back, touching nobody else's events there."""
    import uuid

    from assets.drift import measure_drift
    from tests.pipelines.team_scenario import SCOPES, fill

    settings = graph_target(graph)["settings"]
    team = team_target("team", "microsoft_graph", SALES, ENG, settings)
    p = Pipeline(make_config(home, hr.url, targets=[team]))
    ids = fill(hr)
    p.sync(SCOPES)
    foreign = graph.add_foreign_event(
        ENG, "Team offsite", "2026-06-01T09:00:00", "2026-06-01T17:00:00"
    )
    events = {graph_keys(e): e for e in graph.events(SALES)}
    graph.user_deletes(SALES, events[f"team-leave-{ids.claire}"]["id"])

    report = measure_drift(
        p.plan(SCOPES), p.cfg, p.hr, p.state, p.settings.provider, uuid.uuid4().hex
    )
    found = report.findings[["kind", "event_key", "repaired"]].values.tolist()
    assert found == [["missing", f"team-leave-{ids.claire}", True]]
    assert sorted(graph_keys(e) for e in graph.events(SALES)) == sorted(
        f"team-leave-{i}" for i in (ids.claire, ids.cancelled, ids.opted_out)
    )
    assert foreign in {e["id"] for e in graph.events(ENG)}, "never touches others' events"
