"""Team calendars as .ics feeds, read back with vobject (not the library that wrote them)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import vobject

from resources.providers.ics import feed_file_name
from tests.harness import Pipeline, make_config
from tests.pipelines.team_scenario import SCOPES, day, play, team_target


def read(path: Path) -> list:
    cal = vobject.readOne(path.read_text(encoding="utf-8"))
    return list(getattr(cal, "vevent_list", []))


def held_in(directory: Path):
    def held() -> dict[str, list[str]]:
        out = {}
        for path in sorted(directory.glob("*.ics")):
            keys = sorted(e.contents["x-leavesync-key"][0].value for e in read(path))
            if keys:
                out[path.stem] = keys
        return out

    return held


def config(home: Path, hr_url: str, team: dict):
    personal = {"name": "feeds", "type": "ics", "settings": {"directory": str(home / "feeds")}}
    return make_config(home, hr_url, targets=[personal, team])


def test_team_feeds_follow_hr_approval_cancellation_move_and_opt_out(home, hr):
    team = team_target("team", "ics", "sales", "engineering", {"directory": str(home / "feeds")})
    p = Pipeline(config(home, hr.url, team))
    ids = play(p, hr, held_in(home / "feeds" / "teams"), "sales", "engineering")

    events = {
        e.contents["x-leavesync-key"][0].value: e
        for e in read(home / "feeds" / "teams" / "engineering.ics")
    }
    sick = events[f"team-leave-{ids.sick}"]
    assert sick.summary.value == "Bob Stone – Absent"  # a sensitive type is never named
    assert events[f"team-leave-{ids.claire}"].summary.value == "Claire Martin – Absent"
    for event in events.values():
        assert event.transp.value == "TRANSPARENT"  # blocks nobody's availability
        assert event.contents["class"][0].value == "PUBLIC"
        assert "attendee" not in event.contents and "valarm" not in event.contents
    half = events[f"team-leave-{ids.half}"]
    assert half.dtstart.value.hour != 0, "a half day stays a timed event"

    # The same leave is once in Claire's own feed, with its own identity.
    personal = read(home / "feeds" / feed_file_name("claire@example.com"))
    assert sorted(e.uid.value for e in personal) == sorted(
        [f"leave-{ids.claire}@leavesync", f"leave-{ids.pending}@leavesync"]
    )
    assert events[f"team-leave-{ids.claire}"].uid.value == f"team-leave-{ids.claire}@leavesync"


def test_a_feed_per_legal_entity_and_a_move_between_entities(home, hr):
    team = {
        "name": "team",
        "type": "ics",
        "kind": "team",
        "settings": {"directory": str(home / "t")},
    }
    p = Pipeline(config(home, hr.url, team))
    hr.employee(1, "FR", "claire@example.com", name="Claire Martin")
    hr.employee(2, "US", "dan@example.com", name="Dan Wu")
    a, b = hr.leave(1, day(1)), hr.leave(2, day(2))
    p.sync(SCOPES)
    held = held_in(home / "t" / "teams")
    assert held() == {"FR": [f"team-leave-{a}"], "US": [f"team-leave-{b}"]}
    digests = {f.name: hashlib.sha256(f.read_bytes()).digest() for f in (home / "t").rglob("*.ics")}

    result, _ = p.sync(SCOPES)
    assert result.diff.changes.empty
    after = {f.name: hashlib.sha256(f.read_bytes()).digest() for f in (home / "t").rglob("*.ics")}
    assert after == digests, "nothing changed: every feed byte-identical"

    hr.update_employee(1, legal_entity="US")
    result, outcome = p.sync(SCOPES)
    assert held() == {"US": sorted([f"team-leave-{a}", f"team-leave-{b}"])}
    # Her own calendar stays hers (updated in place: a new zone); the team event moves.
    changes = result.diff.changes
    assert sorted(zip(changes["op"], changes["target"], strict=True)) == [
        ("move", "team"),
        ("update", "feeds"),
    ]
    assert not outcome.failed


def test_check_tests_every_team_feed(home, hr, capsys):
    import yaml

    from pipelines.cli import main

    hr.employee(1, "FR", "claire@example.com", name="Claire Martin")
    cfg_file = home / "leavesync.yaml"
    team = {
        "name": "team",
        "type": "ics",
        "kind": "team",
        "settings": {"directory": str(home / "t")},
    }
    cfg_file.write_text(yaml.safe_dump({"hr": {"url": hr.url}, "targets": [team]}))
    assert main(["check", "--config", str(cfg_file)]) == 0
    out = capsys.readouterr().out
    # One check per legal entity's feed, in <directory>/teams.
    assert f"feed directory {home / 't' / 'teams'} is writable" in out
    assert "feed of teams/FR" in out and "feed of teams/US" in out

    (home / "t" / "teams" / "US.ics").write_text("not a calendar")
    assert main(["check", "--config", str(cfg_file)]) == 1
    assert "[FAIL] feed of teams/US parses" in capsys.readouterr().out


def test_feeds_lists_and_rotates_the_team_feeds(home, hr, monkeypatch, capsys):
    import csv
    import io

    import yaml

    from pipelines.cli import main

    key, base = "team-feeds-key-2b9e", "https://calendars.example.com/leaves"
    monkeypatch.setenv("LEAVESYNC_FEED_KEY", key)
    hr.employee(1, "FR", "claire@example.com", name="Claire Martin")
    hr.leave(1, day(1))
    settings = {"directory": str(home / "t"), "base_url": base}
    team = {"name": "team", "type": "ics", "kind": "team", "settings": settings}
    cfg_file = home / "leavesync.yaml"
    cfg_file.write_text(yaml.safe_dump({"hr": {"url": hr.url}, "targets": [team]}))
    config = ["--config", str(cfg_file)]
    window = ["--from", day(0).isoformat(), "--to", day(5).isoformat()]
    assert main(["sync", *config, *window]) == 0
    capsys.readouterr()

    assert main(["feeds", *config, "--csv"]) == 0
    rows = {r["email"]: r["url"] for r in csv.DictReader(io.StringIO(capsys.readouterr().out))}
    fr = f"{base}/teams/{feed_file_name('teams/FR', key.encode())}"
    assert rows == {
        "teams/FR": fr,
        "teams/US": f"{base}/teams/{feed_file_name('teams/US', key.encode())}",
    }
    [written] = (home / "t" / "teams").glob("*.ics")
    assert fr.endswith(written.name)

    assert main(["feeds", *config, "--rotate", "teams/FR"]) == 0
    [rotated] = (home / "t" / "teams").glob("*.ics")
    assert rotated.name != written.name
    assert rotated.name in capsys.readouterr().out
