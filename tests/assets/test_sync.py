"""calendar_sync's intent journal: a create's attempt id, journaled before it is sent."""

from __future__ import annotations

import datetime as dt

from assets.sync import apply_diff
from resources.providers.base import ChangeResult
from tests.harness import Pipeline, make_config, scope

D = dt.date.today() + dt.timedelta(days=3)
SCOPES = [scope("FR", D, D + dt.timedelta(days=20))]


class Journaled:
    """The real ics provider; it records each create's attempt id and checks that the state
    store journaled it before the create was sent. ``fail_creates``: report them failed."""

    def __init__(self, pipeline: Pipeline, fail_creates: bool = False) -> None:
        self.provider = pipeline.settings.provider("feeds")
        self.state = pipeline.state
        self.fail_creates = fail_creates
        self.sent: list[tuple[str, str, str]] = []

    def apply(self, changes):
        creates = [c for c in changes if c.op == "create"]
        journal = self.state.unresolved_intents("feeds")
        journaled = set(
            zip(journal["event_key"], journal["calendar"], journal["attempt_id"], strict=True)
        )
        for c in creates:
            assert (c.event_key, c.calendar, c.attempt_id) in journaled, c
            self.sent.append((c.event_key, c.calendar, c.attempt_id))
        if self.fail_creates:
            for c in creates:
                yield ChangeResult(c, ok=False, error="timed out")
            changes = [c for c in changes if c.op != "create"]
        yield from self.provider.apply(changes)


def sync(p: Pipeline, provider) -> list:
    result = p.plan(SCOPES)
    assert not result.refused
    return apply_diff(result, lambda name: provider, p.state, "run").failed


def test_an_unresolved_create_is_resent_with_the_same_attempt_id_then_resolved(home, hr):
    hr.employee(1, email="ann@example.com")
    a, b = hr.leave(1, D), hr.leave(1, D + dt.timedelta(days=2))
    p = Pipeline(make_config(home, hr.url))

    lost = Journaled(p, fail_creates=True)
    assert len(sync(p, lost)) == 2
    journal = p.state.unresolved_intents("feeds")
    assert sorted(journal["event_key"]) == [f"leave-{a}", f"leave-{b}"]
    assert set(journal["calendar"]) == {"ann@example.com"} and journal["attempt_id"].is_unique

    landed = Journaled(p)
    assert sync(p, landed) == []

    assert sorted(landed.sent) == sorted(lost.sent)  # the same token: Graph's transactionId
    assert p.state.unresolved_intents("feeds").empty  # resolved with the snapshot rows
    assert sorted(p.state.snapshot_all()["event_key"]) == [f"leave-{a}", f"leave-{b}"]
    assert p.state.registry_calendars("feeds", ["FR"]) == ["ann@example.com"]


def test_a_reinstated_leaves_next_create_gets_a_new_attempt_id(home, hr):
    hr.employee(1, email="ann@example.com")
    lid = hr.leave(1, D)
    p = Pipeline(make_config(home, hr.url))
    first = Journaled(p)
    assert sync(p, first) == []
    hr.update_leave(lid, status="cancelled")
    assert sync(p, Journaled(p)) == []
    hr.update_leave(lid, status="approved")

    again = Journaled(p)
    assert sync(p, again) == []

    ((key, calendar, attempt),) = again.sent
    assert (key, calendar) == (f"leave-{lid}", "ann@example.com")
    assert attempt != first.sent[0][2]
    assert p.state.unresolved_intents().empty


def test_a_journaled_create_to_another_calendar_gets_its_own_attempt_id(home, hr):
    hr.employee(1, email="ann@example.com")
    lid = hr.leave(1, D)
    p = Pipeline(make_config(home, hr.url))
    lost = Journaled(p, fail_creates=True)
    sync(p, lost)
    hr.update_employee(1, email="ann.martin@example.com")

    landed = Journaled(p)
    assert sync(p, landed) == []

    ((key, calendar, attempt),) = landed.sent
    assert (key, calendar) == (f"leave-{lid}", "ann.martin@example.com")
    assert attempt != lost.sent[0][2]
    # The first calendar may hold the lost create: it stays in the registry for drift.
    assert p.state.registry_calendars("feeds", ["FR"]) == [
        "ann.martin@example.com",
        "ann@example.com",
    ]
