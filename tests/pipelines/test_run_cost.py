"""What a run costs Dagster: its event count follows what it changes, not the window's size."""

from __future__ import annotations

import datetime as dt

from dagster import DagsterInstance

from pipelines.runner import reconcile
from pipelines.schedules import nightly_window
from resources.scope import window_today
from tests.harness import make_config


def nightly_events(home, hr_url: str, entity: str, horizon_days: int) -> int:
    cfg = make_config(home, hr_url, window={"horizon_days": horizon_days})
    date_from, date_to = nightly_window(cfg, window_today(cfg.window.timezone))
    (run,) = reconcile(cfg, [entity], date_from, date_to, progress=lambda m: None)
    assert run.status == "ok", run.messages
    return len(DagsterInstance.get().all_logs(run.run_id))


def test_nightly_event_count_does_not_grow_with_the_horizon(home, hr):
    hr.employee(1, "FR")
    hr.employee(2, "US")
    soon = window_today("UTC") + dt.timedelta(days=3)
    hr.leave(1, soon)
    hr.leave(2, soon)

    short = nightly_events(home, hr.url, "FR", horizon_days=30)
    long = nightly_events(home, hr.url, "US", horizon_days=730)

    assert short == long <= 60
