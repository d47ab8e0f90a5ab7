"""The diff: pure frame comparison, then the whole plan against real HR and state databases."""

from __future__ import annotations

import datetime as dt

import pandas as pd

from assets.diff import compute_diff
from assets.render import EVENT_COLUMNS
from resources.state import SNAPSHOT_COLUMNS
from tests.harness import Pipeline, make_config, scope


def desired(*rows: dict) -> pd.DataFrame:
    base = {c: "" for c in EVENT_COLUMNS}
    base.update(
        all_day=True,
        private=True,
        target="feeds",
        legal_entity="FR",
        partition_date="2026-03-02",
        calendar="a@example.com",
    )
    return pd.DataFrame([{**base, **r} for r in rows], columns=list(EVENT_COLUMNS))


def snapshot(*rows: dict) -> pd.DataFrame:
    base = {c: None for c in SNAPSHOT_COLUMNS}
    base.update(
        target="feeds",
        legal_entity="FR",
        partition_date="2026-03-02",
        calendar="a@example.com",
        provider_event_id="pid",
        version="0",
    )
    return pd.DataFrame([{**base, **r} for r in rows], columns=SNAPSHOT_COLUMNS)


def ops(diff) -> dict[str, str]:
    return dict(zip(diff.changes["event_key"], diff.changes["op"], strict=True))


def test_create_update_delete_unchanged():
    d = desired(
        {"event_key": "leave-1", "leave_id": "1", "fingerprint": 11},
        {"event_key": "leave-2", "leave_id": "2", "fingerprint": 22},
        {"event_key": "leave-3", "leave_id": "3", "fingerprint": 33},
    )
    s = snapshot(
        {"event_key": "leave-2", "leave_id": "2", "fingerprint": 22},
        {"event_key": "leave-3", "leave_id": "3", "fingerprint": 30},
        {"event_key": "leave-4", "leave_id": "4", "fingerprint": 44},
    )
    diff = compute_diff(d, s)
    assert ops(diff) == {"leave-1": "create", "leave-3": "update", "leave-4": "delete"}
    assert int(diff.unchanged["unchanged"].sum()) == 1
    update = diff.changes[diff.changes["op"] == "update"].iloc[0]
    assert update["provider_event_id"] == "pid"  # updates carry the provider's id and version


def test_large_fingerprints_are_compared_exactly():
    big = 2**62 + 1  # not representable as a float: a float comparison would call it equal
    d = desired({"event_key": "leave-1", "leave_id": "1", "fingerprint": big})
    s = snapshot({"event_key": "leave-1", "leave_id": "1", "fingerprint": big + 1})
    assert ops(compute_diff(d, s)) == {"leave-1": "update"}


def test_protected_keys_are_never_deleted():
    s = snapshot({"event_key": "leave-9", "leave_id": "9", "fingerprint": 1})
    diff = compute_diff(desired(), s, protected_keys={"leave-9"})
    assert diff.changes.empty


def test_move_to_another_partition_without_change_is_a_relocation():
    d = desired({"event_key": "leave-1", "leave_id": "1", "fingerprint": 5, "legal_entity": "US"})
    s = snapshot({"event_key": "leave-1", "leave_id": "1", "fingerprint": 5})
    diff = compute_diff(d, s)
    assert diff.changes.empty
    assert diff.relocations.to_dict("records") == [
        {
            "target": "feeds",
            "event_key": "leave-1",
            "legal_entity": "US",
            "partition_date": "2026-03-02",
        }
    ]


def test_new_calendar_is_one_move_carrying_the_old_calendar_and_its_ids():
    d = desired(
        {"event_key": "leave-1", "leave_id": "1", "fingerprint": 5, "calendar": "b@example.com"}
    )
    s = snapshot({"event_key": "leave-1", "leave_id": "1", "fingerprint": 5})
    changes = compute_diff(d, s).changes
    (move,) = changes.to_dict("records")
    assert (move["op"], move["calendar"], move["from_calendar"]) == (
        "move",
        "b@example.com",
        "a@example.com",
    )
    assert (move["provider_event_id"], move["version"], move["fingerprint"]) == ("pid", "0", 5)
    assert compute_diff(d, s).counts()[["move", "create", "delete"]].to_dict("records") == [
        {"move": 1, "create": 0, "delete": 0}
    ]


# --- the whole plan against a real HR database and state store ---------------------------

D = dt.date(2026, 3, 2)


def pipeline(home, hr) -> Pipeline:
    return Pipeline(make_config(home, hr.url))


def sync(
    p: Pipeline, *entities: str, start=D - dt.timedelta(days=10), end=D + dt.timedelta(days=60)
):
    result, outcome = p.sync([scope(e, start, end) for e in entities])
    return result


def planned(
    p: Pipeline, *entities: str, start=D - dt.timedelta(days=10), end=D + dt.timedelta(days=60)
):
    return ops(p.plan([scope(e, start, end) for e in entities]).diff)


def test_plan_cancel_optout_leaver_and_edit(home, hr):
    for i in (1, 2, 3, 4):
        hr.employee(i)
    ids = [hr.leave(i, D + dt.timedelta(days=i)) for i in (1, 2, 3, 4)]
    extra = hr.leave(1, D + dt.timedelta(days=20), D + dt.timedelta(days=22))
    p = pipeline(home, hr)
    assert set(planned(p, "FR").values()) == {"create"}
    sync(p, "FR")
    assert planned(p, "FR") == {}
    hr.update_leave(ids[0], status="cancelled")
    hr.update_employee(2, sync_enabled=False)
    hr.update_employee(3, active=False)
    hr.update_leave(extra, end_date=D + dt.timedelta(days=25))
    assert planned(p, "FR") == {
        f"leave-{ids[0]}": "delete",
        f"leave-{ids[1]}": "delete",
        f"leave-{ids[2]}": "delete",
        f"leave-{extra}": "update",
    }


def test_leave_moved_to_another_date_outside_the_scope_is_one_update(home, hr):
    hr.employee(1)
    lid = hr.leave(1, D)
    p = pipeline(home, hr)
    sync(p, "FR", start=D, end=D)
    hr.update_leave(lid, start_date=D + dt.timedelta(days=90), end_date=D + dt.timedelta(days=91))
    # Only the old day is reconciled: the leave is found where it went and updated once.
    result = p.plan([scope("FR", D, D)])
    assert ops(result.diff) == {f"leave-{lid}": "update"}
    row = result.diff.changes.iloc[0]
    assert row["partition_date"] == (D + dt.timedelta(days=90)).isoformat()
    p.sync([scope("FR", D, D)])
    # The new day's partition now holds it: nothing to do there, nothing left at the old day.
    assert planned(p, "FR", start=D + dt.timedelta(days=90), end=D + dt.timedelta(days=90)) == {}
    assert planned(p, "FR", start=D, end=D) == {}


def test_employee_moved_to_another_entity_is_one_relocation(home, hr):
    hr.employee(1, entity="FR")
    lid = hr.leave(1, D)
    p = pipeline(home, hr)
    sync(p, "FR")
    hr.update_employee(1, legal_entity="US")
    # The US time zone changes the rendered event: one update, found from the FR side.
    assert planned(p, "FR") == {f"leave-{lid}": "update"}
    assert planned(p, "US") == {f"leave-{lid}": "update"}
    sync(p, "US")
    assert planned(p, "FR") == {}
    assert planned(p, "US") == {}
    snap = p.state.snapshot_all()
    assert list(snap["legal_entity"]) == ["US"]


def test_leave_deleted_from_hr_is_deleted(home, hr):
    hr.employee(1)
    keep, gone = hr.leave(1, D), hr.leave(1, D + dt.timedelta(days=3))
    p = pipeline(home, hr)
    sync(p, "FR")
    hr.delete_leave(gone)
    assert planned(p, "FR") == {f"leave-{gone}": "delete"}
    assert keep
