"""The team-calendar scenario every provider's test plays (issue 12, "Done when").

HR fills two team calendars; then an approval, a cancellation, a move between teams and an
opt-out; each must be reflected exactly once. ``held`` reads the provider's own storage
(an emulator's state, a server, files with another parser): calendar -> sorted event keys,
a key twice in a calendar listed twice.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tests.harness import Pipeline, scope

D = dt.date.today() + dt.timedelta(days=3)
SCOPES = [scope("FR", D, D + dt.timedelta(days=30)), scope("US", D, D + dt.timedelta(days=30))]
Held = Callable[[], dict[str, list[str]]]


def day(n: int) -> dt.date:
    return D + dt.timedelta(days=n)


def team_target(name: str, type_: str, sales: str, eng: str, settings: dict) -> dict[str, Any]:
    """A team target grouped by HR's team, Sales and Engineering in their own calendars."""
    return {
        "name": name,
        "type": type_,
        "kind": "team",
        "team": {"group_by": "team", "calendars": {"Sales": sales, "Engineering": eng}},
        "settings": settings,
    }


@dataclass
class Leaves:
    claire: int  # approved, Sales; moves to Engineering with Claire
    pending: int  # Claire's, approved later
    sick: int  # Bob's, sensitive: "Bob Stone – Absent"
    half: int  # Bob's afternoon: a timed event
    cancelled: int  # Dan's, cancelled later
    opted_out: int  # Dan's, Dan opts out later


def keys(*leave_ids: int) -> list[str]:
    return sorted(f"team-leave-{i}" for i in leave_ids)


def ops(result) -> dict[str, int]:
    changes = result.diff.changes
    return changes.groupby("op").size().to_dict() if len(changes) else {}


def fill(hr) -> Leaves:
    hr.employee(1, "FR", "claire@example.com", name="Claire Martin", team="Sales")
    hr.employee(2, "FR", "bob@example.com", name="Bob Stone", team="Engineering")
    hr.employee(3, "US", "dan@example.com", name="Dan Wu", team="Sales")
    return Leaves(
        claire=hr.leave(1, day(1), day(2)),
        pending=hr.leave(1, day(5), status="pending"),
        sick=hr.leave(2, day(3), type="SICK"),
        half=hr.leave(2, day(8), start_half="PM"),
        cancelled=hr.leave(3, day(4)),
        opted_out=hr.leave(3, day(10)),
    )


def play(p: Pipeline, hr, held: Held, sales: str, eng: str, target: str = "team") -> Leaves:
    """The whole scenario; asserts every step on the provider's own storage."""
    ids = fill(hr)

    def sync() -> dict[str, int]:
        result, outcome = p.sync(SCOPES)
        assert outcome is not None, result.refusals
        assert not outcome.failed, outcome.failed
        mine = result.diff.changes[result.diff.changes["target"] == target]
        return mine.groupby("op").size().to_dict() if len(mine) else {}

    # Filled from HR: approved leaves only (the pending one is not shown), each once.
    assert sync() == {"create": 5}
    assert held() == {
        sales: keys(ids.claire, ids.cancelled, ids.opted_out),
        eng: keys(ids.sick, ids.half),
    }
    assert sync() == {}, "a second run changes nothing"

    # An approval: the pending leave appears, once.
    hr.update_leave(ids.pending, status="approved")
    assert sync() == {"create": 1}
    assert held()[sales] == keys(ids.claire, ids.pending, ids.cancelled, ids.opted_out)

    # A cancellation: its event is deleted.
    hr.update_leave(ids.cancelled, status="cancelled")
    assert sync() == {"delete": 1}
    assert held()[sales] == keys(ids.claire, ids.pending, ids.opted_out)

    # A move between teams: out of Sales, into Engineering, never in both.
    hr.update_employee(1, team="Engineering")
    assert sync() == {"move": 2}
    assert held() == {
        sales: keys(ids.opted_out),
        eng: keys(ids.sick, ids.half, ids.claire, ids.pending),
    }

    # An opt-out: Dan's events leave the team calendar.
    hr.update_employee(3, sync_enabled=False)
    assert sync() == {"delete": 1}
    assert held().get(sales, []) == []
    assert held()[eng] == keys(ids.sick, ids.half, ids.claire, ids.pending)
    assert sync() == {}
    return ids
