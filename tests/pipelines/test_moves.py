"""An employee's new address moves her events; one bad event key never blocks its entity."""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

import pytest
import yaml
from icalendar import Calendar

from assets.sync import apply_diff, sync_summary
from resources.providers.base import ChangeResult
from resources.providers.ics import KEY_PROP, feed_file_name
from resources.state import StateStore
from tests.harness import Pipeline, make_config, scope, sync_in_subprocess

D = dt.date.today() + dt.timedelta(days=3)
SCOPES = [scope("FR", D, D + dt.timedelta(days=30)), scope("US", D, D + dt.timedelta(days=30))]
OLD, NEW = "ann@example.com", "ann.martin@example.com"


def day(n: int) -> dt.date:
    return D + dt.timedelta(days=n)


def holdings(home: Path) -> dict[str, list[str]]:
    """Event keys per feed, from the files (a key twice in a feed shows twice)."""
    out = {}
    for path in sorted((home / "feeds").glob("*.ics")):
        cal = Calendar.from_ical(path.read_bytes())
        out[path.name] = sorted(str(e.get(KEY_PROP)) for e in cal.walk("VEVENT"))
    return {name: keys for name, keys in out.items() if keys}


class Recording:
    """A real provider, with every apply() call recorded (which ops, which calendars)."""

    def __init__(self, provider) -> None:
        self.provider, self.calls = provider, []

    def apply(self, changes):
        self.calls.append([(c.op, c.event_key, c.calendar, c.attempt_id) for c in changes])
        yield from self.provider.apply(changes)

    def __getattr__(self, name):
        return getattr(self.provider, name)


@pytest.fixture
def ann(home, hr):
    hr.employee(1, "FR", OLD, name="Ann Martin")
    hr.employee(2, "FR", "bob@example.com")
    leaves = [
        hr.leave(1, day(1), day(2)),
        hr.leave(1, day(5), status="pending"),
        hr.leave(1, day(9)),
    ]
    bob = hr.leave(2, day(3))
    p = Pipeline(make_config(home, hr.url))
    p.sync(SCOPES)
    assert holdings(home) == {
        feed_file_name(OLD): sorted(f"leave-{i}" for i in leaves),
        feed_file_name("bob@example.com"): [f"leave-{bob}"],
    }
    return p, leaves, bob


def test_new_email_moves_her_events_and_everyone_elses_changes_land(home, hr, ann):
    p, leaves, bob = ann
    hr.update_employee(1, email=NEW)
    hr.update_leave(bob, end_date=day(4))
    extra = hr.leave(2, day(12))
    recorder = {}

    def provider_for(name):
        recorder.setdefault(name, Recording(p.settings.provider(name)))
        return recorder[name]

    result = p.plan(SCOPES)
    assert not result.refused and result.quarantine.empty
    ops = dict(zip(result.diff.changes["event_key"], result.diff.changes["op"], strict=True))
    assert ops == {**{f"leave-{i}": "move" for i in leaves}, f"leave-{bob}": "update",
                   f"leave-{extra}": "create"}  # fmt: skip
    moves = result.diff.changes[result.diff.changes["op"] == "move"]
    assert set(moves["from_calendar"]) == {OLD} and set(moves["calendar"]) == {NEW}

    outcome = apply_diff(result, provider_for, p.state, "run-1")

    assert outcome.failed == []
    assert holdings(home) == {
        feed_file_name(NEW): sorted(f"leave-{i}" for i in leaves),
        feed_file_name("bob@example.com"): sorted([f"leave-{bob}", f"leave-{extra}"]),
    }
    # The delete halves go in an earlier apply() call than any create: with an alias, the
    # new address reaches the old mailbox, where a create would adopt the old event.
    first, second = recorder["feeds"].calls
    assert {(op, cal) for op, _, cal, _ in first} == {("delete", OLD)}
    assert {(op, cal) for op, _, cal, _ in second} == {
        ("create", NEW),
        ("update", "bob@example.com"),
        ("create", "bob@example.com"),
    }
    assert all(attempt for op, _, _, attempt in second if op == "create")
    summary = sync_summary(result, outcome).set_index("legal_entity").loc["FR"]
    assert (summary["moved"], summary["updated"], summary["created"], summary["deleted"]) == (
        3,
        1,
        1,
        0,
    )
    snap = p.state.snapshot_all().set_index("event_key")
    assert set(snap.loc[[f"leave-{i}" for i in leaves], "calendar"]) == {NEW}
    assert p.state.unresolved_intents().empty
    assert set(p.state.registry_calendars("feeds", ["FR"])) == {OLD, NEW, "bob@example.com"}
    again, _ = p.sync(SCOPES)
    assert again.diff.changes.empty


class DeletesFailIn(Recording):
    """The real provider, except that deletes in one calendar fail (a 503 that outlasted the
    retries, a mailbox briefly unreachable): the result a provider reports for them."""

    def __init__(self, provider, calendar: str) -> None:
        super().__init__(provider)
        self.calendar = calendar

    def apply(self, changes):
        failing = [c for c in changes if c.op == "delete" and c.calendar == self.calendar]
        rest = [c for c in changes if c not in failing]
        for change in failing:
            yield ChangeResult(change, ok=False, error="503 Service Unavailable")
        yield from super().apply(rest)


def test_a_move_whose_delete_fails_is_not_created_and_is_retried(home, hr, ann):
    p, leaves, _ = ann
    hr.update_employee(1, email=NEW)
    flaky = DeletesFailIn(p.settings.provider("feeds"), OLD)

    result = p.plan(SCOPES)
    outcome = apply_diff(result, lambda name: flaky, p.state, "run-1")

    assert {f["op"] for f in outcome.failed} == {"move"} and len(outcome.failed) == 3
    assert all(f"the delete from {OLD} failed" in f["error"] for f in outcome.failed)
    assert all(f"not created in {NEW}" in f["error"] for f in outcome.failed)
    assert [op for call in flaky.calls for op, *_ in call] == []  # no create was sent
    assert holdings(home)[feed_file_name(OLD)] == sorted(f"leave-{i}" for i in leaves)
    assert set(p.state.snapshot_all()["calendar"]) == {OLD, "bob@example.com"}
    retry, outcome = p.sync(SCOPES)
    assert outcome.failed == [] and set(retry.diff.changes["op"]) == {"move"}
    assert holdings(home)[feed_file_name(NEW)] == sorted(f"leave-{i}" for i in leaves)
    assert feed_file_name(OLD) not in holdings(home)


def record_then_die(where: str) -> None:
    """In the killed run: exit around the snapshot update of the move's delete half."""
    original = StateStore.record_changes

    def record(self, target, rows, run_id):
        deletes = [r for r, snap in rows if r.change.op == "delete"]
        if deletes and where == "before-snapshot":
            os._exit(9)  # the old event is deleted; the snapshot still says the old calendar
        original(self, target, rows, run_id)
        if deletes and where == "after-snapshot":
            os._exit(9)  # the snapshot row is gone; the new calendar has nothing yet

    StateStore.record_changes = record


@pytest.mark.parametrize("where", ["before-snapshot", "after-snapshot"])
def test_killed_between_the_two_halves_of_a_move_recovers(home, hr, ann, where):
    p, leaves, _ = ann
    hr.update_employee(1, email=NEW)
    proc = sync_in_subprocess(
        make_config(home, hr.url), SCOPES, record_then_die, where, timeout=180
    )
    assert proc.returncode == 9, proc.stderr
    assert feed_file_name(OLD) not in holdings(home) and feed_file_name(NEW) not in holdings(home)

    result, outcome = p.sync(SCOPES)

    assert outcome is not None and outcome.failed == []
    expected = "move" if where == "before-snapshot" else "create"
    assert set(result.diff.changes["op"]) == {expected}
    keys = sorted(f"leave-{i}" for i in leaves)
    assert holdings(home)[feed_file_name(NEW)] == keys
    assert feed_file_name(OLD) not in holdings(home)
    snap = p.state.snapshot_all().set_index("event_key")
    assert list(snap.loc[keys, "calendar"]) == [NEW] * 3
    assert p.sync(SCOPES)[0].diff.changes.empty


def test_cli_dry_run_of_an_email_change_plans_moves_and_is_not_refused(home, hr, capsys):
    from pipelines.cli import main

    hr.employee(1, "FR", OLD)
    ids = [hr.leave(1, day(n)) for n in (1, 4, 8)]
    config = home / "leavesync.yaml"
    config.write_text(yaml.safe_dump({"hr": {"url": hr.url}}))
    args = ["sync", "--config", str(config), "--entity", "FR", "--from", D.isoformat()]
    args += ["--to", day(20).isoformat()]
    assert main(args) == 0
    capsys.readouterr()
    hr.update_employee(1, email=NEW)

    assert main([*args, "--dry-run"]) == 0

    out = capsys.readouterr().out
    rows = [line.split() for line in out.splitlines() if line.split()[:1] == ["move"]]
    assert sorted(r[2] for r in rows) == sorted(f"leave-{i}" for i in ids)
    assert all(r[3] == NEW and r[4] == OLD for r in rows)
    assert "refused" not in out and "planned changes: 3" in out
    assert main(args) == 0
    feeds = home / "feeds" / "feeds"
    moved = Calendar.from_ical((feeds / feed_file_name(NEW)).read_bytes())
    assert sorted(str(e.get(KEY_PROP)) for e in moved.walk("VEVENT")) == sorted(
        f"leave-{i}" for i in ids
    )
    old = Calendar.from_ical((feeds / feed_file_name(OLD)).read_bytes())
    assert list(old.walk("VEVENT")) == []


# --- one bad event key never blocks its legal entity -----------------------------------


def without_workday_rule(monkeypatch) -> None:
    """Row rules that miss bad workday hours: the GX suite on the diff is the net behind them."""
    import assets.validation as validation

    original = validation.rule_violations

    def missing_one_rule(*args, **kwargs):
        masks = original(*args, **kwargs)
        masks[validation.WORKDAY_HOURS_INVALID] &= False
        return masks

    monkeypatch.setattr(validation, "rule_violations", missing_one_rule)


def test_one_bad_key_is_quarantined_and_every_other_change_of_its_entity_applies(
    home, hr, monkeypatch
):
    without_workday_rule(monkeypatch)
    hr.entity("ZZ", "Europe/Berlin", (9, 0), (13, 0), (12, 0))  # midday after workday end
    hr.employee(1, "ZZ", "zoe@example.com", name="Zoe Zed")
    hr.employee(2, "ZZ", "yann@example.com")
    edited, cancelled = hr.leave(2, day(1)), hr.leave(2, day(2))
    p = Pipeline(make_config(home, hr.url))
    scopes = [scope("ZZ", D, day(30))]
    p.sync(scopes)
    hr.update_leave(edited, end_date=day(3))
    hr.update_leave(cancelled, status="cancelled")
    new = hr.leave(2, day(10))
    whole = hr.leave(1, day(6))
    half = hr.leave(1, day(7), start_half="PM")  # renders as ending before it starts

    result, outcome = p.sync(scopes)

    assert not result.refused and outcome is not None and outcome.failed == []
    ops = dict(zip(result.diff.changes["event_key"], result.diff.changes["op"], strict=True))
    assert ops == {f"leave-{edited}": "update", f"leave-{cancelled}": "delete",
                   f"leave-{new}": "create", f"leave-{whole}": "create"}  # fmt: skip
    (held,) = result.quarantine.itertuples()
    assert (held.event_key, held.rule, held.employee_id, held.employee_email) == (
        f"leave-{half}",
        "dates_ordered",
        "1",
        "zoe@example.com",
    )
    assert f"leave-{half}" in result.protected
    assert holdings(home) == {
        feed_file_name("zoe@example.com"): [f"leave-{whole}"],
        feed_file_name("yann@example.com"): sorted([f"leave-{edited}", f"leave-{new}"]),
    }
    assert result.summary().set_index("legal_entity").loc["ZZ", "quarantined"] == 1
