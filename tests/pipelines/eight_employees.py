"""The scenario of the Google and EWS pipeline tests: eight employees in two legal entities,
three leaves each (whole days, half days, pending ones), synced over 40 days."""

from __future__ import annotations

import datetime as dt

from tests.harness import Pipeline, scope

D = dt.date(2026, 3, 2)
EMPLOYEES = {i: f"emp{i}@example.com" for i in range(1, 9)}
SCOPES = [scope("FR", D, D + dt.timedelta(days=40)), scope("US", D, D + dt.timedelta(days=40))]


def seed(hr) -> list[int]:
    """Eight employees in two entities; whole days, half days (timed), pending ones."""
    for i, email in EMPLOYEES.items():
        hr.employee(i, "FR" if i <= 4 else "US", email)
    ids = []
    for i in EMPLOYEES:
        day = D + dt.timedelta(days=i)
        ids.append(hr.leave(i, day, day + dt.timedelta(days=1)))
        ids.append(hr.leave(i, day + dt.timedelta(days=10), start_half="PM"))
        ids.append(hr.leave(i, day + dt.timedelta(days=12), status="pending", end_half="AM"))
    return ids


def sync(p: Pipeline) -> dict:
    """One sync of SCOPES that must not fail: its creates, updates and deletes."""
    result, outcome = p.sync(SCOPES)
    assert outcome is not None and not outcome.failed, outcome and outcome.failed
    return result.diff.counts()[["create", "update", "delete"]].sum().to_dict()
