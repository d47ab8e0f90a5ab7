"""End to end through Dagster: seed HR, reconcile, read the feeds back with another parser."""

from __future__ import annotations

import datetime as dt
import hashlib
import os
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
import vobject
import yaml

from pipelines.cli import main
from pipelines.runner import reconcile
from resources.providers.ics import feed_file_name
from tests.harness import make_config, scope, sync_in_subprocess

START = dt.date.today() + dt.timedelta(days=1)
END = START + dt.timedelta(days=20)


def day(n: int) -> dt.date:
    return START + dt.timedelta(days=n)


def read_feeds(directory: Path) -> dict[str, list]:
    """Every VEVENT of every feed, parsed by vobject (not the library that wrote them)."""
    out = {}
    for path in sorted(directory.glob("*.ics")):
        cal = vobject.readOne(path.read_text(encoding="utf-8"))
        out[path.name] = list(getattr(cal, "vevent_list", []))
    return out


def feed_digests(directory: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in directory.glob("*.ics")}


def seed(hr) -> dict[str, int]:
    hr.employee(1, "FR", "ann@example.com")
    hr.employee(2, "US", "bob@example.com")
    hr.employee(3, "FR", "cy@example.com", sync_enabled=False)
    hr.employee(4, "FR", "dee@example.com", active=False)
    return {
        "whole": hr.leave(1, day(1), day(3)),
        "pending": hr.leave(1, day(6), status="pending"),
        "sick": hr.leave(2, day(2), type="SICK"),
        "half": hr.leave(2, day(4), day(5), start_half="PM"),
        "hourly": hr.leave(2, day(8), start_time=dt.time(14, 0), end_time=dt.time(16, 0)),
        "rejected": hr.leave(1, day(9), status="rejected"),
        "cancelled": hr.leave(2, day(10), status="cancelled"),
        "opted_out": hr.leave(3, day(1)),
        "leaver": hr.leave(4, day(1)),
    }


def run(cfg, **kw):
    runs = reconcile(cfg, None, START, END, progress=lambda m: None, **kw)
    assert all(r.status == "ok" for r in runs), [(r.entity_key, r.status, r.messages) for r in runs]
    return {
        r.entity_key: r.summary.set_index("legal_entity").loc[r.entity_key].to_dict() for r in runs
    }


def total(summary: dict, col: str) -> int:
    return sum(int(v[col]) for v in summary.values())


def test_reconcile_feeds_match_hr_then_nothing_then_exact_changes(home, hr):
    ids = seed(hr)
    cfg = make_config(home, hr.url)
    feeds = home / "feeds"

    first = run(cfg)
    assert total(first, "created") == 5
    assert (first["FR"]["created"], first["US"]["created"]) == (2, 3)
    events = read_feeds(feeds)
    assert set(events) == {feed_file_name("ann@example.com"), feed_file_name("bob@example.com")}
    by_uid = {str(e.uid.value): e for evs in events.values() for e in evs}
    assert set(by_uid) == {
        f"leave-{ids[k]}@leavesync" for k in ("whole", "pending", "sick", "half", "hourly")
    }

    whole = by_uid[f"leave-{ids['whole']}@leavesync"]
    assert whole.dtstart.value == day(1) and not isinstance(whole.dtstart.value, dt.datetime)
    assert whole.dtend.value == day(4)  # exclusive end
    assert whole.summary.value == "Absent"
    assert whole.getChildValue("class") == "PRIVATE"
    assert whole.status.value == "CONFIRMED"
    assert not hasattr(whole, "valarm") and not hasattr(whole, "attendee")
    assert by_uid[f"leave-{ids['pending']}@leavesync"].status.value == "TENTATIVE"
    assert by_uid[f"leave-{ids['sick']}@leavesync"].summary.value == "Absent"

    half = by_uid[f"leave-{ids['half']}@leavesync"]
    ny = ZoneInfo("America/New_York")
    assert half.dtstart.value == dt.datetime.combine(day(4), dt.time(12, 30), ny)
    assert half.dtend.value == dt.datetime.combine(day(5), dt.time(17, 30), ny)
    hourly = by_uid[f"leave-{ids['hourly']}@leavesync"]
    assert hourly.dtstart.value == dt.datetime.combine(day(8), dt.time(14, 0), ny)
    assert hourly.dtend.value == dt.datetime.combine(day(8), dt.time(16, 0), ny)
    assert all(int(e.sequence.value) == 0 for e in by_uid.values())

    # Nothing changed in HR: nothing to do, and not one byte of any feed rewritten.
    before = feed_digests(feeds)
    second = run(cfg)
    assert sum(total(second, c) for c in ("created", "updated", "deleted")) == 0
    assert total(second, "unchanged") == 5
    assert feed_digests(feeds) == before

    # Edit, cancel, move to another day, new leave: exactly those changes.
    hr.update_leave(ids["whole"], end_date=day(4))
    hr.update_leave(ids["pending"], status="cancelled")
    hr.update_leave(ids["hourly"], start_date=day(12), end_date=day(12))
    new = hr.leave(1, day(15), day(16), status="pending")
    third = run(cfg)
    assert (total(third, "created"), total(third, "updated"), total(third, "deleted")) == (1, 2, 1)
    by_uid = {str(e.uid.value): e for evs in read_feeds(feeds).values() for e in evs}
    assert f"leave-{ids['pending']}@leavesync" not in by_uid
    assert by_uid[f"leave-{ids['whole']}@leavesync"].dtend.value == day(5)
    assert int(by_uid[f"leave-{ids['whole']}@leavesync"].sequence.value) == 1
    moved = by_uid[f"leave-{ids['hourly']}@leavesync"]
    assert moved.dtstart.value == dt.datetime.combine(day(12), dt.time(14, 0), ny)
    assert int(moved.sequence.value) == 1
    assert by_uid[f"leave-{new}@leavesync"].status.value == "TENTATIVE"
    assert len(by_uid) == 5


def test_cli_dry_run_prints_the_diff_and_writes_nothing(home, hr, capsys):
    seed(hr)
    cfg_file = home / "leavesync.yaml"
    cfg_file.write_text(
        yaml.safe_dump(
            {
                "hr": {"url": hr.url},
                "targets": [
                    {"name": "feeds", "type": "ics", "settings": {"directory": str(home / "feeds")}}
                ],
            }
        )
    )
    code = main(
        [
            "sync",
            "--config",
            str(cfg_file),
            "--entity",
            "FR",
            "--from",
            START.isoformat(),
            "--to",
            END.isoformat(),
            "--dry-run",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    assert "dry run" in out and "planned changes: 2" in out
    assert "ann@example.com" in out
    assert not (home / "feeds").exists() or not list((home / "feeds").glob("*.ics"))


def test_cli_rejects_a_bad_config_key_naming_it(home, capsys):
    cfg_file = home / "bad.yaml"
    cfg_file.write_text(
        "window:\n  lookbak_days: 3\ntargets:\n  - name: x\n    type: ics\n    settings: {folder: /tmp}\n"
    )
    assert main(["sync", "--config", str(cfg_file)]) == 2
    err = capsys.readouterr().err
    assert "window.lookbak_days: unknown key" in err


def test_cli_exit_status_is_non_zero_when_a_partition_is_blocked(home, hr, capsys):
    hr.employee(1, "FR", "ann@example.com")
    ids = [hr.leave(1, day(i)) for i in range(12)]
    cfg_file = home / "leavesync.yaml"
    cfg_file.write_text(yaml.safe_dump({"hr": {"url": hr.url}}))
    args = ["sync", "--config", str(cfg_file), "--from", START.isoformat(), "--to", END.isoformat()]
    assert main(args) == 0
    for lid in ids:
        hr.delete_leave(lid)
    assert main(args) == 1
    out = capsys.readouterr().out
    assert "refused" in out and "--allow-mass-delete" in out
    feed = home / "feeds" / "feeds" / feed_file_name("ann@example.com")
    assert len(read_feeds(feed.parent)[feed.name]) == 12  # nothing deleted
    assert main([*args, "--allow-mass-delete"]) == 0
    assert read_feeds(feed.parent)[feed.name] == []


def die_after_feeds(crash_after: int) -> None:
    """In the crashing run: exit once ``crash_after`` feeds are written, before their rows."""
    from resources.providers import ics

    original = ics._write_atomically
    written = 0

    def write_then_maybe_die(path, data):
        nonlocal written
        original(path, data)
        written += 1
        if written == crash_after:
            os._exit(9)  # the feed is written, its snapshot rows are not: the worst moment

    ics._write_atomically = write_then_maybe_die


@pytest.mark.parametrize("crash_after", [1, 3])
def test_killed_mid_apply_then_rerun_gives_exactly_the_right_events(home, hr, crash_after):
    emails = [hr.employee(i, "FR", f"p{i}@example.com") for i in range(1, 6)]
    for i in range(1, 6):
        hr.leave(i, day(i), day(i + 1))
        hr.leave(i, day(i + 5))
    cfg, scopes = make_config(home, hr.url), [scope("FR", START, END)]
    proc = sync_in_subprocess(cfg, scopes, die_after_feeds, crash_after, timeout=120)
    assert proc.returncode == 9, proc.stderr
    assert len(list((home / "feeds").glob("*.ics"))) == crash_after

    # The run after the crash: every event exactly once, the snapshot complete.
    rerun = sync_in_subprocess(cfg, scopes, timeout=120)
    assert rerun.returncode == 0, rerun.stderr
    feeds = read_feeds(home / "feeds")
    assert sorted(feeds) == sorted(feed_file_name(e) for e in emails)
    uids = [str(e.uid.value) for evs in feeds.values() for e in evs]
    assert len(uids) == len(set(uids)) == 10
    from resources.state import StateStore

    snap = StateStore(url=f"sqlite:///{home / 'state.sqlite'}").snapshot_all()
    assert sorted(snap["event_key"] + "@leavesync") == sorted(uids)


def test_entities_reconciled_two_at_a_time_give_the_same_result(home, hr):
    ids = seed(hr)
    cfg = make_config(home, hr.url)
    runs = reconcile(cfg, None, START, END, progress=lambda m: None, workers=2)
    assert sorted(r.entity_key for r in runs) == ["FR", "US", "_unassigned"]
    assert all(r.status == "ok" for r in runs), [(r.entity_key, r.messages) for r in runs]
    created = {r.entity_key: int(r.summary["created"].sum()) for r in runs}
    assert created == {"FR": 2, "US": 3, "_unassigned": 0}
    uids = {str(e.uid.value) for evs in read_feeds(home / "feeds").values() for e in evs}
    assert uids == {
        f"leave-{ids[k]}@leavesync" for k in ("whole", "pending", "sick", "half", "hourly")
    }
    again = reconcile(cfg, None, START, END, progress=lambda m: None, workers=2)
    assert (
        sum(int(r.summary[["created", "updated", "deleted"]].to_numpy().sum()) for r in again) == 0
    )
