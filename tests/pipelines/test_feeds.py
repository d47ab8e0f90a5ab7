"""`leavesync feeds`: each employee's private subscription URL, CSV, rotation; and a sync."""

from __future__ import annotations

import csv
import datetime as dt
import io

import yaml

from pipelines.cli import main
from resources.providers.ics import feed_file_name

KEY = "feeds-test-key-5f0c2a"
BASE = "https://calendars.example.com/leaves"
START = dt.date.today() + dt.timedelta(days=2)


def setup(home, hr, monkeypatch, **settings):
    monkeypatch.setenv("LEAVESYNC_FEED_KEY", KEY)
    for i, entity in enumerate(["FR", "FR", "US"], start=1):
        hr.employee(i, entity, f"p{i}@example.com")
        hr.leave(i, START + dt.timedelta(days=i))
    config = home / "leavesync.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "hr": {"url": hr.url},
                "targets": [
                    {
                        "name": "feeds",
                        "type": "ics",
                        "settings": {
                            "directory": str(home / "feeds"),
                            "base_url": BASE,
                            **settings,
                        },
                    }
                ],
            }
        )
    )
    return ["--config", str(config)]


def urls(text: str) -> dict[str, str]:
    return {row["email"]: row["url"] for row in csv.DictReader(io.StringIO(text))}


def test_feeds_prints_private_urls_and_the_sync_writes_there(home, hr, monkeypatch, capsys):
    config = setup(home, hr, monkeypatch)
    window = ["--from", START.isoformat(), "--to", (START + dt.timedelta(days=9)).isoformat()]
    assert main(["sync", *config, *window]) == 0
    capsys.readouterr()

    assert main(["feeds", *config, "--csv"]) == 0
    got = urls(capsys.readouterr().out)

    people = [f"p{i}@example.com" for i in (1, 2, 3)]
    assert got == {p: f"{BASE}/{feed_file_name(p, KEY.encode())}" for p in people}
    assert not any("p1" in u.rsplit("/", 1)[1] for u in got.values())
    written = sorted(p.name for p in (home / "feeds").glob("*.ics"))
    assert written == sorted(u.rsplit("/", 1)[1] for u in got.values())
    assert main(["feeds", *config]) == 0
    table = capsys.readouterr().out
    assert all(url in table for url in got.values())


def test_rotate_gives_one_person_a_new_url_and_removes_the_old_file(home, hr, monkeypatch, capsys):
    config = setup(home, hr, monkeypatch)
    window = ["--from", START.isoformat(), "--to", (START + dt.timedelta(days=9)).isoformat()]
    assert main(["sync", *config, *window]) == 0
    capsys.readouterr()
    assert main(["feeds", *config, "--csv"]) == 0
    before = urls(capsys.readouterr().out)

    assert main(["feeds", *config, "--rotate", "P1@example.com"]) == 0
    printed = capsys.readouterr().out
    assert main(["feeds", *config, "--csv"]) == 0
    after = urls(capsys.readouterr().out)

    assert after["p1@example.com"] != before["p1@example.com"]
    assert after["p1@example.com"] in printed
    assert {k: v for k, v in after.items() if k != "p1@example.com"} == {
        k: v for k, v in before.items() if k != "p1@example.com"
    }
    names = {p.name for p in (home / "feeds").glob("*.ics")}
    assert before["p1@example.com"].rsplit("/", 1)[1] not in names
    assert after["p1@example.com"].rsplit("/", 1)[1] in names
    # The next sync keeps writing the rotated feed, and changes nothing else.
    hr.leave(1, START + dt.timedelta(days=8))
    assert main(["sync", *config, *window]) == 0
    assert {p.name for p in (home / "feeds").glob("*.ics")} == names


def test_feeds_refuses_guessable_names(home, hr, monkeypatch, capsys):
    config = setup(home, hr, monkeypatch)
    monkeypatch.delenv("LEAVESYNC_FEED_KEY")
    assert main(["feeds", *config]) == 2
    assert "LEAVESYNC_FEED_KEY" in capsys.readouterr().err
    # A served directory (base_url) without its key stops a sync before anything is written.
    assert main(["sync", *config]) == 2
    assert not (home / "feeds").exists() or not list((home / "feeds").glob("*.ics"))


def test_a_sync_with_nothing_to_change_moves_email_named_feeds(home, hr, monkeypatch, capsys):
    config = setup(home, hr, monkeypatch, base_url=None)
    monkeypatch.delenv("LEAVESYNC_FEED_KEY")
    window = ["--from", START.isoformat(), "--to", (START + dt.timedelta(days=9)).isoformat()]
    assert main(["sync", *config, *window]) == 0
    feeds = home / "feeds"
    before = {p.name: p.read_bytes() for p in feeds.glob("*.ics")}
    assert sorted(before) == [f"p{i}@example.com.ics" for i in (1, 2, 3)]

    monkeypatch.setenv("LEAVESYNC_FEED_KEY", KEY)
    capsys.readouterr()
    assert main(["sync", *config, *window]) == 0
    assert "written: 0 changes" in capsys.readouterr().out

    after = {p.name: p.read_bytes() for p in feeds.glob("*.ics")}
    assert after == {feed_file_name(n[: -len(".ics")], KEY.encode()): b for n, b in before.items()}
