"""calendar_sync: the intent journal (a create's attempt id, journaled before it is sent) and
the rounds that send a change again after a transient failure."""

from __future__ import annotations

import datetime as dt

import pandas as pd
import sqlalchemy as sa

from assets.sync import apply_diff
from resources.providers.base import ChangeResult
from resources.providers.retry import RetryRounds
from resources.state import change_failures_table
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


class SaysLater:
    """The real ics provider, except that each create fails ``times`` times with a transient
    error first (a 503 that outlasted the provider's own retries); ``permanent``: a refusal."""

    def __init__(self, pipeline: Pipeline, times: int, permanent: bool = False) -> None:
        self.provider = pipeline.settings.provider("feeds")
        self.left: dict[str, int] = {}
        self.times, self.permanent = times, permanent
        self.sends: list[tuple[str, str]] = []

    def apply(self, changes):
        passing = []
        for c in changes:
            self.sends.append((c.op, c.event_key))
            left = self.left.setdefault(c.event_key, self.times)
            if c.op == "create" and left:
                self.left[c.event_key] = left - 1
                yield ChangeResult(c, ok=False, error="HTTP 503", permanent=self.permanent)
            else:
                passing.append(c)
        yield from self.provider.apply(passing)


def _failures(p: Pipeline) -> pd.DataFrame:
    with p.state.engine().connect() as conn:
        return pd.DataFrame(conn.execute(sa.select(change_failures_table)).mappings().all())


def _apply_with_rounds(p: Pipeline, provider, rounds: int, **kwargs):
    return apply_diff(
        p.plan(SCOPES),
        lambda name: provider,
        p.state,
        "run",
        retry_for=lambda name: RetryRounds(rounds=rounds, pause_seconds=0),
        **kwargs,
    )


def _two_leaves(home, hr) -> tuple[Pipeline, list[str]]:
    hr.employee(1, email="ann@example.com")
    keys = [f"leave-{hr.leave(1, D)}", f"leave-{hr.leave(1, D + dt.timedelta(days=2))}"]
    return Pipeline(make_config(home, hr.url)), keys


def test_a_change_that_failed_with_a_transient_error_is_sent_again_and_lands(home, hr):
    p, keys = _two_leaves(home, hr)
    later = SaysLater(p, times=1)
    progress: list[tuple[int, int]] = []

    outcome = _apply_with_rounds(
        p, later, rounds=1, on_progress=lambda target, done, total: progress.append((done, total))
    )

    assert outcome.failed == [] and outcome.resent == 2
    assert sorted(later.sends) == sorted([("create", k) for k in keys] * 2)
    assert sorted(p.state.snapshot_all()["event_key"]) == sorted(keys)
    assert p.state.unresolved_intents("feeds").empty
    assert _failures(p).empty
    assert progress[-1] == (2, 2)  # each change counted done once, not once per send


def test_the_rounds_end_and_what_still_fails_is_reported_once(home, hr):
    p, keys = _two_leaves(home, hr)
    later = SaysLater(p, times=3)

    outcome = _apply_with_rounds(p, later, rounds=2)

    assert sorted(f["event_key"] for f in outcome.failed) == sorted(keys)
    assert len(later.sends) == 3 * 2  # the first send and two rounds, no more
    assert len(_failures(p)) == 2 and p.state.snapshot_all().empty


def test_a_permanent_failure_is_never_sent_again(home, hr):
    p, keys = _two_leaves(home, hr)
    refused = SaysLater(p, times=1, permanent=True)

    outcome = _apply_with_rounds(p, refused, rounds=3)

    assert sorted(f["event_key"] for f in outcome.failed) == sorted(keys)
    assert outcome.resent == 0 and len(refused.sends) == 2


def test_a_target_sends_transient_failures_again_once_by_default(home, hr):
    p, _ = _two_leaves(home, hr)
    assert p.settings.retry_rounds("feeds") == RetryRounds(rounds=1, pause_seconds=10.0)
