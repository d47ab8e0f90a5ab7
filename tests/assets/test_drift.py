"""Drift: each kind found on real .ics feeds, repaired or reported per policy; report and CLI."""

from __future__ import annotations

import copy
import datetime as dt
import uuid
from pathlib import Path

import pandas as pd
import pytest
import sqlalchemy as sa
from icalendar import Calendar

from assets.drift import KINDS, compare_target, fold_aliases, history_by_run, measure_drift
from assets.drift_report import write_report
from resources.providers.base import EventPayload, RemoteEvent
from resources.providers.ics import KEY_PROP, feed_file_name
from tests.harness import Pipeline, make_config, scope

DAY = dt.date.today() + dt.timedelta(days=5)
SCOPES = [scope("FR", DAY, DAY + dt.timedelta(days=9))]


def day(n: int) -> dt.date:
    return DAY + dt.timedelta(days=n)


class Feeds:
    """Reads and edits the feeds as a calendar user (or a broken client) would."""

    def __init__(self, home: Path) -> None:
        self.dir = home / "feeds"

    def path(self, mailbox: str) -> Path:
        return self.dir / feed_file_name(mailbox)

    def load(self, mailbox: str) -> Calendar:
        return Calendar.from_ical(self.path(mailbox).read_bytes())

    def save(self, mailbox: str, cal: Calendar) -> None:
        self.path(mailbox).write_bytes(cal.to_ical())

    def events(self, mailbox: str) -> list:
        return list(self.load(mailbox).walk("VEVENT"))

    def keys(self, mailbox: str) -> list[str]:
        return sorted(str(e.get(KEY_PROP)) for e in self.events(mailbox))

    def edit(self, mailbox: str, key: str, fn) -> None:
        cal = self.load(mailbox)
        for event in cal.walk("VEVENT"):
            if str(event.get(KEY_PROP)) == key:
                fn(cal, event)
        self.save(mailbox, cal)


@pytest.fixture
def setup(home, hr):
    hr.employee(1, email="ann@example.com")
    hr.employee(2, email="bob@example.com")
    ids = [hr.leave(1, day(0)), hr.leave(1, day(3)), hr.leave(2, day(1), day(2))]
    pipeline = Pipeline(make_config(home, hr.url))
    pipeline.sync(SCOPES)
    return pipeline, ids, Feeds(home)


def drift(pipeline: Pipeline, policy: str | None = None, allow: bool = False):
    plan = pipeline.plan(SCOPES)
    return measure_drift(
        plan, pipeline.cfg, pipeline.hr, pipeline.state, pipeline.settings.provider,
        uuid.uuid4().hex, policy, allow,
    )  # fmt: skip


def kinds(report) -> list[tuple[str, str, bool]]:
    f = report.findings
    return sorted(zip(f["kind"], f["event_key"], f["repaired"], strict=True))


def test_no_drift_right_after_a_sync_and_nothing_is_written(setup):
    pipeline, ids, feeds = setup
    before = {p.name: p.read_bytes() for p in feeds.dir.glob("*.ics")}

    report = drift(pipeline)

    assert report.findings.empty and report.errors == []
    assert set(report.counts["count"]) == {0} and set(report.counts["kind"]) == set(KINDS)
    assert {p.name: p.read_bytes() for p in feeds.dir.glob("*.ics")} == before


def test_event_deleted_in_the_calendar_is_missing_and_recreated(setup):
    pipeline, ids, feeds = setup
    feeds.edit("ann@example.com", f"leave-{ids[1]}", lambda cal, ev: cal.subcomponents.remove(ev))

    report = drift(pipeline)

    assert kinds(report) == [("missing", f"leave-{ids[1]}", True)]
    assert feeds.keys("ann@example.com") == sorted([f"leave-{ids[0]}", f"leave-{ids[1]}"])
    assert drift(pipeline).findings.empty


def test_event_edited_in_the_calendar_is_modified_and_rewritten(setup):
    pipeline, ids, feeds = setup

    def retitle(cal, ev):
        ev["SUMMARY"] = "Lunch with the CEO"

    feeds.edit("bob@example.com", f"leave-{ids[2]}", retitle)

    report = drift(pipeline)

    assert kinds(report) == [("modified", f"leave-{ids[2]}", True)]
    assert report.findings.iloc[0]["detail"] == "edited: title"
    assert [str(e["SUMMARY"]) for e in feeds.events("bob@example.com")] == ["Absent"]


def test_tagged_event_unknown_to_snapshot_and_hr_is_an_orphan_and_deleted(setup):
    pipeline, ids, feeds = setup

    def clone_as_999(cal, ev):
        stray = copy.deepcopy(ev)
        stray["UID"] = "leave-999@leavesync"
        stray[KEY_PROP] = "leave-999"
        cal.add_component(stray)

    feeds.edit("ann@example.com", f"leave-{ids[0]}", clone_as_999)

    report = drift(pipeline)

    assert kinds(report) == [("orphan", "leave-999", True)]
    assert report.findings.iloc[0]["legal_entity"] == "FR"
    assert "leave-999" not in feeds.keys("ann@example.com")


def test_orphan_that_hr_wants_is_adopted_into_the_snapshot(setup):
    pipeline, ids, feeds = setup
    with pipeline.state.engine().begin() as conn:  # the snapshot lost one row
        conn.execute(sa.text("DELETE FROM snapshot WHERE event_key = :k"), {"k": f"leave-{ids[0]}"})

    report = drift(pipeline)

    assert kinds(report) == [("orphan", f"leave-{ids[0]}", True)]
    assert f"leave-{ids[0]}" in set(pipeline.state.snapshot_all()["event_key"])
    assert feeds.keys("ann@example.com").count(f"leave-{ids[0]}") == 1
    assert pipeline.plan(SCOPES).diff.changes.empty


def test_a_copy_carrying_our_tag_and_key_is_a_duplicate_and_deleted(setup):
    pipeline, ids, feeds = setup

    def user_copy(cal, ev):
        dup = copy.deepcopy(ev)
        dup["UID"] = "copied-by-bob@client"
        cal.add_component(dup)

    feeds.edit("bob@example.com", f"leave-{ids[2]}", user_copy)

    report = drift(pipeline)

    # Our tag and our key make it ours, whoever made it twice: the snapshot's one is kept.
    assert kinds(report) == [("duplicate", f"leave-{ids[2]}", True)]
    assert "copied-by-bob@client" in report.findings.iloc[0]["detail"]
    uids = sorted(str(e["UID"]) for e in feeds.events("bob@example.com"))
    assert uids == [f"leave-{ids[2]}@leavesync"]
    snap = pipeline.state.snapshot_all().set_index("event_key")
    assert snap.loc[f"leave-{ids[2]}", "provider_event_id"] == f"leave-{ids[2]}@leavesync"
    assert drift(pipeline).findings.empty


def test_event_hr_no_longer_wants_is_stale_and_deleted(setup, hr):
    pipeline, ids, feeds = setup
    hr.update_leave(ids[1], status="cancelled")

    report = drift(pipeline)

    assert kinds(report) == [("stale", f"leave-{ids[1]}", True)]
    assert feeds.keys("ann@example.com") == [f"leave-{ids[0]}"]
    assert f"leave-{ids[1]}" not in set(pipeline.state.snapshot_all()["event_key"])


def test_report_policy_reports_and_writes_nothing(home, hr):
    hr.employee(1, email="ann@example.com")
    lid = hr.leave(1, DAY)
    targets = [{"name": "feeds", "type": "ics", "drift_policy": "report",
                "settings": {"directory": str(home / "feeds")}}]  # fmt: skip
    pipeline = Pipeline(make_config(home, hr.url, targets=targets))
    pipeline.sync(SCOPES)
    feeds = Feeds(home)
    feeds.edit("ann@example.com", f"leave-{lid}", lambda cal, ev: cal.subcomponents.remove(ev))

    report = drift(pipeline)

    assert kinds(report) == [("missing", f"leave-{lid}", False)]
    assert any("drift_policy is report" in n for n in report.notes)
    assert feeds.keys("ann@example.com") == []


def test_run_tag_report_only_overrides_a_repair_policy(setup):
    pipeline, ids, feeds = setup
    feeds.edit("ann@example.com", f"leave-{ids[0]}", lambda cal, ev: cal.subcomponents.remove(ev))

    report = drift(pipeline, policy="report")

    assert kinds(report) == [("missing", f"leave-{ids[0]}", False)]
    assert feeds.keys("ann@example.com") == [f"leave-{ids[1]}"]


def test_quarantined_leaves_event_is_reported_not_repaired_nor_deleted(setup, hr):
    pipeline, ids, feeds = setup
    hr.update_employee(2, email="bob-at-example.com")  # bob's leave is now quarantined

    def retitle(cal, ev):
        ev["SUMMARY"] = "edited"

    feeds.edit("bob@example.com", f"leave-{ids[2]}", retitle)

    report = drift(pipeline)

    assert kinds(report) == [("modified", f"leave-{ids[2]}", False)]
    assert "quarantined" in report.findings.iloc[0]["detail"]
    assert [str(e["SUMMARY"]) for e in feeds.events("bob@example.com")] == ["edited"]


def test_mass_orphan_delete_is_refused_unless_overridden(home, hr):
    hr.employee(1, email="ann@example.com")
    kept = hr.leave(1, day(0))
    ids = [hr.leave(1, day(1 + n % 9), status="pending") for n in range(10)]
    pipeline = Pipeline(make_config(home, hr.url))
    pipeline.sync(SCOPES)
    feeds = Feeds(home)
    # Ten leaves gone from HR and the snapshot reset: their events are orphans of nobody.
    hr.execute("DELETE FROM leaves WHERE id <> :kept", kept=kept)
    with pipeline.state.engine().begin() as conn:
        conn.execute(sa.text("DELETE FROM snapshot"))

    refused = drift(pipeline)

    assert kinds(refused) == sorted(
        [("orphan", f"leave-{kept}", True)] + [("orphan", f"leave-{i}", False) for i in ids]
    )
    assert any("would delete 10 of 11" in n and "--allow-mass-delete" in n for n in refused.notes)
    assert len(feeds.keys("ann@example.com")) == 11

    forced = drift(pipeline, allow=True)

    assert kinds(forced) == sorted(("orphan", f"leave-{i}", True) for i in ids)
    assert feeds.keys("ann@example.com") == [f"leave-{kept}"]


def test_unreadable_feed_is_an_error_naming_the_target(setup):
    pipeline, ids, feeds = setup
    feeds.path("ann@example.com").write_text("BEGIN:VCALENDAR\nthis is not ical", encoding="utf-8")

    report = drift(pipeline)

    assert len(report.errors) == 1 and report.errors[0].startswith("target feeds: reading back")


def test_history_is_recorded_and_the_report_and_plot_are_written(setup, tmp_path):
    pipeline, ids, feeds = setup
    drift(pipeline)
    feeds.edit("ann@example.com", f"leave-{ids[0]}", lambda cal, ev: cal.subcomponents.remove(ev))
    report = drift(pipeline)

    history = pipeline.state.drift_history()
    runs = history_by_run(history)
    page, png = write_report(
        tmp_path, runs, report.summary(), report.by_entity_and_date(), report.findings, []
    )

    assert list(runs["missing"]) == [0, 1] and list(runs["repaired"]) == [0, 1]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = page.read_text(encoding="utf-8")
    assert f"leave-{ids[0]}" in text and 'src="drift.png"' in text
    table = report.by_entity_and_date()
    assert table.to_dict("records") == [
        {"legal_entity": "FR", "date": day(0).isoformat(), "missing": 1, "modified": 0,
         "orphan": 0, "duplicate": 0, "stale": 0, "repaired": 1}
    ]  # fmt: skip


def test_remote_event_of_another_partition_is_not_an_orphan():
    payload = EventPayload("leave-7", "7", "Absent", True, "2026-03-02", "2026-03-03",
                           "Europe/Paris", "confirmed", "oof")  # fmt: skip
    remote = [RemoteEvent("leave-7", "ann@example.com", "leave-7@leavesync", payload, "0")]
    empty = pipeline_free_frame()

    elsewhere = compare_target(empty, empty, remote, {("leave-7", "ann@example.com")},
                               frozenset(), ("title",))  # fmt: skip
    unknown = compare_target(empty, empty, remote, set(), frozenset(), ("title",), "FR")

    assert elsewhere.findings == []
    assert [(f["kind"], f["legal_entity"], f["repair"]) for f in unknown.findings] == [
        ("orphan", "FR", "delete")
    ]


def pipeline_free_frame():
    import pandas as pd

    from assets.render import EVENT_COLUMNS
    from resources.state import SNAPSHOT_COLUMNS

    return pd.DataFrame(columns=sorted(set(EVENT_COLUMNS) | set(SNAPSHOT_COLUMNS)))


def summary_rows(out: str, entity: str) -> list[list[str]]:
    """Rows of the printed drift table: legal_entity, missing .. stale, repaired, status."""
    table = out.split("drift report\n", 1)[1].splitlines()
    return [line.split() for line in table[1:] if line.split()[:1] == [entity]]


def test_cli_drift_reports_then_repairs_through_dagster(home, hr, capsys):
    import yaml

    from pipelines.cli import main

    hr.employee(1, email="ann@example.com")
    lid = hr.leave(1, DAY)
    cfg_file = home / "leavesync.yaml"
    cfg_file.write_text(yaml.safe_dump({"hr": {"url": hr.url}}))
    window = ["--config", str(cfg_file), "--entity", "FR", "--from", DAY.isoformat()]
    window += ["--to", day(1).isoformat()]
    assert main(["sync", *window]) == 0
    assert main(["drift", *window]) == 0  # drift has its own job and schedule
    synced = capsys.readouterr().out
    feeds = Feeds(home)
    feeds.dir = home / "feeds" / "feeds"
    feeds.edit("ann@example.com", f"leave-{lid}", lambda cal, ev: cal.subcomponents.remove(ev))

    assert main(["drift", *window, "--report-only"]) == 0
    reported = capsys.readouterr().out
    assert feeds.keys("ann@example.com") == []
    assert main(["drift", *window]) == 0
    repaired = capsys.readouterr().out

    assert summary_rows(synced, "FR") == [["FR", "0", "0", "0", "0", "0", "0", "ok"]]
    assert summary_rows(reported, "FR") == [["FR", "1", "0", "0", "0", "0", "0", "ok"]]
    assert summary_rows(repaired, "FR") == [["FR", "1", "0", "0", "0", "0", "1", "ok"]]
    assert "drift_policy is report" in reported
    assert feeds.keys("ann@example.com") == [f"leave-{lid}"]
    report = home / "reports" / "drift.html"
    assert f"drift report: {report}" in repaired and report.is_file()


def test_google_target_drift_modified_repaired_and_copy_deleted(home, hr, monkeypatch):
    import json

    from tests.emulators.google_calendar import GoogleCalendarEmulator, make_service_account

    info, public_key = make_service_account()
    emulator = GoogleCalendarEmulator(info["client_email"], public_key, {"ann@example.com"})
    emulator.start()
    monkeypatch.setenv("LEAVESYNC_TEST_GOOGLE_KEY", json.dumps(info))
    try:
        settings = {
            "service_account_key_env": "LEAVESYNC_TEST_GOOGLE_KEY",
            "api_base_url": emulator.base_url,
            "token_uri": emulator.token_uri,
            "batch_uri": emulator.batch_uri,
        }
        targets = [{"name": "workspace", "type": "google", "settings": settings}]
        hr.employee(1, email="ann@example.com")
        edited, copied = hr.leave(1, day(0)), hr.leave(1, day(3))
        pipeline = Pipeline(make_config(home, hr.url, targets=targets))
        pipeline.sync(SCOPES)
        by_key = {
            e["extendedProperties"]["private"]["leavesyncKey"]: e
            for e in emulator.events("ann@example.com")
        }
        emulator.edit_event("ann@example.com", by_key[f"leave-{edited}"]["id"], summary="Golf")
        user_copy = {k: v for k, v in by_key[f"leave-{copied}"].items() if k not in ("id", "etag")}
        emulator.put_event("ann@example.com", user_copy)

        report = drift(pipeline)

        assert kinds(report) == [
            ("duplicate", f"leave-{copied}", True),
            ("modified", f"leave-{edited}", True),
        ]
        events = emulator.events("ann@example.com")
        keys = sorted(e["extendedProperties"]["private"]["leavesyncKey"] for e in events)
        assert keys == sorted([f"leave-{edited}", f"leave-{copied}"])
        assert by_key[f"leave-{copied}"]["id"] in {e["id"] for e in events}  # the snapshot's
        assert "Golf" not in {e["summary"] for e in events}
    finally:
        emulator.stop()


# --- every calendar we ever wrote to: the registry, and a full read-back for a new store ----


class ReadBackRecorder:
    """The real provider; remembers which calendars each read_back asked for."""

    def __init__(self, provider) -> None:
        self.provider, self.read = provider, []

    def read_back(self, calendars, start, end):
        calendars = list(calendars)
        self.read.append(sorted(calendars))
        return self.provider.read_back(calendars, start, end)

    def __getattr__(self, name):
        return getattr(self.provider, name)


def drift_recorded(pipeline: Pipeline):
    recorder = ReadBackRecorder(pipeline.settings.provider("feeds"))
    plan = pipeline.plan(SCOPES)
    report = measure_drift(
        plan, pipeline.cfg, pipeline.hr, pipeline.state, lambda name: recorder, uuid.uuid4().hex
    )
    return report, sorted({c for call in recorder.read for c in call})


def test_stale_event_only_the_registry_knows_of_is_deleted(setup, hr):
    pipeline, ids, feeds = setup
    drift(pipeline)  # the first drift of a store reads every employee HR knows, once
    hr.update_leave(ids[2], status="cancelled")  # bob's only leave
    with pipeline.state.engine().begin() as conn:  # ... and its snapshot row is lost
        conn.execute(sa.text("DELETE FROM snapshot WHERE event_key = :k"), {"k": f"leave-{ids[2]}"})

    report, read = drift_recorded(pipeline)

    assert "bob@example.com" in read  # neither the snapshot nor HR points there any more
    assert kinds(report) == [("orphan", f"leave-{ids[2]}", True)]
    assert feeds.keys("bob@example.com") == []


def test_a_new_state_store_makes_drift_read_back_every_employee_hr_knows_once(home, hr):
    hr.employee(1, email="ann@example.com")
    hr.employee(2, email="bob@example.com")
    kept = hr.leave(1, day(0))
    gone = hr.leave(2, day(1))
    Pipeline(make_config(home, hr.url)).sync(SCOPES)
    hr.update_leave(gone, status="cancelled")
    (home / "state.sqlite").unlink()  # the state store is lost
    pipeline = Pipeline(make_config(home, hr.url))

    report, read = drift_recorded(pipeline)

    assert read == ["ann@example.com", "bob@example.com"]
    assert kinds(report) == sorted(
        [("orphan", f"leave-{gone}", True), ("orphan", f"leave-{kept}", True)]
    )
    feeds = Feeds(home)
    assert feeds.keys("bob@example.com") == [] and feeds.keys("ann@example.com") == [
        f"leave-{kept}"
    ]
    again, read = drift_recorded(pipeline)
    assert again.findings.empty and read == ["ann@example.com"]  # no second full read-back


def test_duplicates_none_of_which_the_snapshot_knows_keep_one_as_hr_wants_it(setup):
    pipeline, ids, feeds = setup
    with pipeline.state.engine().begin() as conn:
        conn.execute(sa.text("DELETE FROM snapshot WHERE event_key = :k"), {"k": f"leave-{ids[0]}"})

    def two_copies(cal, ev):
        for uid in ("copy-1@client", "copy-2@client"):
            dup = copy.deepcopy(ev)
            dup["UID"] = uid
            dup["SUMMARY"] = "edited copy"
            cal.add_component(dup)

    feeds.edit("ann@example.com", f"leave-{ids[0]}", two_copies)

    report = drift(pipeline)

    assert kinds(report) == sorted(
        [("duplicate", f"leave-{ids[0]}", True)] * 2 + [("orphan", f"leave-{ids[0]}", True)]
    )
    events = [e for e in feeds.events("ann@example.com") if str(e[KEY_PROP]) == f"leave-{ids[0]}"]
    assert [(str(e["UID"]), str(e["SUMMARY"])) for e in events] == [
        (f"leave-{ids[0]}@leavesync", "Absent")
    ]
    assert drift(pipeline).findings.empty


def test_one_event_read_through_an_alias_counts_once_where_hr_places_it():
    payload = EventPayload("leave-1", "1", "Absent", True, "2030-01-02", "2030-01-03", "UTC",
                           "confirmed", "oof")  # fmt: skip
    old, new = "ann@example.com", "ann.martin@example.com"
    seen = [RemoteEvent("leave-1", old, "id-1", payload, "v1"),
            RemoteEvent("leave-1", new, "id-1", payload, "v1")]  # fmt: skip
    assert [e.calendar for e in fold_aliases(seen, {("leave-1", new)})] == [new]
    # Two copies (another version) are two events: drift judges each.
    copies = [seen[0], RemoteEvent("leave-1", new, "id-1", payload, "v2")]
    assert fold_aliases(copies, {("leave-1", new)}) == copies
    # A deleted event (Google lists cancelled ones, payload None) is not in the calendar.
    deleted = RemoteEvent("leave-1", old, "id-1", None, "v3")
    empty = compare_target(
        pd.DataFrame(columns=["event_key", "calendar", "legal_entity", "partition_date",
                              "provider_event_id", "version", "leave_id", "payload"]),
        pd.DataFrame(columns=["event_key", "calendar", "legal_entity", "partition_date",
                              "fingerprint"]),
        [deleted], set(), frozenset(), ("title",),
    )  # fmt: skip
    assert empty.findings == []


def test_report_has_a_section_per_legal_entity_with_its_own_latest_run(home, hr, tmp_path):
    """A run of US writes the report last; FR's section still shows FR's own latest run."""
    import re

    from assets.drift import latest_per_entity

    hr.employee(1, email="ann@example.com")
    hr.employee(2, "US", email="joe@example.com")
    fr_leave = hr.leave(1, day(0))
    hr.leave(2, day(1))
    us_scopes = [scope("US", DAY, day(9))]
    pipeline = Pipeline(make_config(home, hr.url))
    pipeline.sync(SCOPES + us_scopes)
    feeds = Feeds(home)
    measure_drift(pipeline.plan(SCOPES), pipeline.cfg, pipeline.hr, pipeline.state,
                  pipeline.settings.provider, "run-fr-1", "repair", False)  # fmt: skip
    feeds.edit("ann@example.com", f"leave-{fr_leave}", lambda cal, ev: cal.subcomponents.remove(ev))
    measure_drift(pipeline.plan(SCOPES), pipeline.cfg, pipeline.hr, pipeline.state,
                  pipeline.settings.provider, "run-fr-2", "report", False)  # fmt: skip
    us = measure_drift(pipeline.plan(us_scopes), pipeline.cfg, pipeline.hr, pipeline.state,
                       pipeline.settings.provider, "run-us", "repair", False)  # fmt: skip
    history = pipeline.state.drift_history()

    per_entity = latest_per_entity(history)
    page, _ = write_report(tmp_path, history_by_run(history), us.summary(),
                           us.by_entity_and_date(), us.findings, [],
                           per_entity=per_entity, run_id="run-us")  # fmt: skip

    assert per_entity[["legal_entity", "run_id", "missing", "repaired"]].to_dict("records") == [
        {"legal_entity": "FR", "run_id": "run-fr-2", "missing": 1, "repaired": 0},
        {"legal_entity": "US", "run_id": "run-us", "missing": 0, "repaired": 0},
    ]
    found = re.findall(r'<section class="entity" id="([^"]+)">(.*?)</section>',
                       page.read_text(encoding="utf-8"), re.S)  # fmt: skip
    sections = {key: " ".join(re.sub(r"<[^>]+>", " ", body).split()) for key, body in found}
    assert list(sections) == ["entity-FR", "entity-US"]
    assert "run run-fr-2:" in sections["entity-FR"] and "1 drifted events" in sections["entity-FR"]
    assert "(this run)" not in sections["entity-FR"]
    assert "run run-us (this run): 0 drifted events" in sections["entity-US"]
