"""An employee's new address moves her events, on every target, whatever became of the old one.

The same story on ics, Google, Microsoft Graph, EWS and CalDAV (Radicale): Ann's address
changes in HR while the service renames her mailbox keeping the old address as an alias, renames
it without one, or deletes it (a new account). Her events must end up in the new calendar
exactly once and nowhere else, Bob's changes of the same run must land, and a process killed
with SIGKILL between the two halves of the move must recover on the next run. The calendars
are read back from the emulators' (or Radicale's) own stores, never through our providers.
"""

from __future__ import annotations

import datetime as dt
import os
import secrets
import signal
from collections import Counter

import pytest

from assets.drift import measure_drift
from assets.sync import sync_summary
from resources.state import StateStore
from tests.harness import Pipeline, make_config, scope, sync_in_subprocess
from tests.live_targets import LiveTarget, live_targets

KINDS = ["ics", "google", "microsoft_graph", "ews", "caldav"]
HOWS = ["alias", "renamed", "deleted"]
OLD, NEW, BOB = "ann@example.com", "ann.martin@example.com", "bob@example.com"
D = dt.date.today() + dt.timedelta(days=3)
SCOPES = [scope("FR", D, D + dt.timedelta(days=30))]


def day(n: int) -> dt.date:
    return D + dt.timedelta(days=n)


@pytest.fixture(params=KINDS)
def live(request, tmp_path, monkeypatch):
    target: LiveTarget = live_targets([request.param], tmp_path / "live")[0]
    target.start([OLD, NEW, BOB], "moves" + secrets.token_hex(8))
    for name, value in target.env().items():
        monkeypatch.setenv(name, value)
    yield target
    target.stop()


def holdings(live: LiveTarget) -> Counter:
    """(calendar, event key) -> copies, for every event of ours the target holds."""
    return Counter((h.calendar, h.event_key) for h in live.held())


@pytest.fixture
def world(home, hr, live):
    """Ann (three leaves) and Bob (two) synced once to the live target."""
    hr.employee(1, "FR", OLD, name="Ann Martin")
    hr.employee(2, "FR", BOB, name="Bob Stone")
    ann = [hr.leave(1, day(1), day(2)), hr.leave(1, day(5), status="pending"), hr.leave(1, day(9))]
    bob = {"edited": hr.leave(2, day(3)), "cancelled": hr.leave(2, day(15))}
    p = Pipeline(make_config(home, hr.url, targets=[live.target()]))
    _, outcome = p.sync(SCOPES)
    assert outcome is not None and outcome.failed == []
    assert holdings(live) == Counter(
        [(OLD, f"leave-{i}") for i in ann] + [(BOB, f"leave-{i}") for i in bob.values()]
    )
    return p, ann, bob


def change_everything(hr, live: LiveTarget, how: str, bob: dict) -> int:
    """Ann's new address (in HR and on the service), and Bob's changes of the same night."""
    hr.update_employee(1, email=NEW)
    live.change_address(OLD, NEW, how)
    hr.update_leave(bob["edited"], end_date=day(4))
    hr.update_leave(bob["cancelled"], status="cancelled")
    return hr.leave(2, day(12))


def assert_settled(live: LiveTarget, ann: list[int], bob: dict, added: int) -> None:
    """Her events once each in the new calendar, Bob's changes in his, nothing else."""
    expected = [(NEW, f"leave-{i}") for i in ann]
    expected += [(BOB, f"leave-{bob['edited']}"), (BOB, f"leave-{added}")]
    assert holdings(live) == Counter(expected)
    # Bob's leave now spans two days (readers give EWS's all-day dates in UTC: compare spans).
    (edited,) = [h for h in live.held() if h.event_key == f"leave-{bob['edited']}"]
    span = dt.date.fromisoformat(edited.end) - dt.date.fromisoformat(edited.start)
    assert span == dt.timedelta(days=2)


@pytest.mark.parametrize("how", HOWS)
def test_a_new_address_moves_her_events_once_and_everyone_elses_changes_land(hr, live, world, how):
    p, ann, bob = world
    added = change_everything(hr, live, how, bob)

    result, outcome = p.sync(SCOPES)

    assert not result.refused and result.quarantine.empty
    ops = dict(zip(result.diff.changes["event_key"], result.diff.changes["op"], strict=True))
    assert ops == {
        **{f"leave-{i}": "move" for i in ann},
        f"leave-{bob['edited']}": "update",
        f"leave-{bob['cancelled']}": "delete",
        f"leave-{added}": "create",
    }
    assert outcome is not None and outcome.failed == []
    assert_settled(live, ann, bob, added)
    summary = sync_summary(result, outcome).set_index("legal_entity").loc["FR"]
    assert (summary["moved"], summary["updated"], summary["created"], summary["deleted"]) == (
        3,
        1,
        1,
        1,
    )
    snap = p.state.snapshot_all().set_index("event_key")
    assert set(snap.loc[[f"leave-{i}" for i in ann], "calendar"]) == {NEW}
    assert p.state.unresolved_intents().empty
    again, outcome = p.sync(SCOPES)
    assert again.diff.changes.empty and outcome is not None and outcome.failed == []
    assert_settled(live, ann, bob, added)
    # The drift report reads every calendar written to, the old address included: nothing
    # found, nothing failed (an address that reaches no mailbox any more is skipped).
    report = measure_drift(again, p.cfg, p.hr, p.state, p.settings.provider, "drift-1")
    found = report.findings[["kind", "event_key", "calendar"]].to_dict("records")
    assert report.errors == [] and found == []


def record_then_die(where: str) -> None:
    """In the killed run: SIGKILL around the snapshot update of the move's delete half."""
    original = StateStore.record_changes

    def record(self, target, rows, run_id):
        deletes = [r for r, snap in rows if r.change.op == "delete"]
        if deletes and where == "before-snapshot":
            os.kill(os.getpid(), signal.SIGKILL)  # deleted there, the snapshot says nothing yet
        original(self, target, rows, run_id)
        if deletes and where == "after-snapshot":
            os.kill(os.getpid(), signal.SIGKILL)  # snapshot rows gone, nothing created yet

    StateStore.record_changes = record


# The alias at both kill points (the old address still reaches the mailbox: the re-sent delete
# finds the event gone, Google's ids are taken); a rename without alias once (the create adopts).
@pytest.mark.parametrize(
    ("how", "where"),
    [("alias", "before-snapshot"), ("alias", "after-snapshot"), ("renamed", "before-snapshot")],
)
def test_killed_between_the_two_halves_of_a_move_recovers(home, hr, live, world, how, where):
    p, ann, bob = world
    added = change_everything(hr, live, how, bob)
    proc = sync_in_subprocess(p.cfg, SCOPES, record_then_die, where)
    assert proc.returncode == -9, proc.stderr[-3000:]
    # The delete halves landed (Bob's cancelled leave with them); nothing was created yet:
    # the old calendar holds nothing (a renamed mailbox still holds her events, under NEW).
    held = holdings(live)
    assert not any(cal == OLD for cal, _ in held)
    assert (BOB, f"leave-{bob['cancelled']}") not in held

    result, outcome = p.sync(SCOPES)

    assert outcome is not None and outcome.failed == []
    hers = result.diff.changes[result.diff.changes["event_key"].isin([f"leave-{i}" for i in ann])]
    assert set(hers["op"]) == {"move" if where == "before-snapshot" else "create"}
    assert_settled(live, ann, bob, added)
    assert p.state.unresolved_intents().empty
    again, _ = p.sync(SCOPES)
    assert again.diff.changes.empty
