"""What the CLI tells an operator: one row per legal entity, exit codes, causes printed once."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
import yaml

from pipelines.cli import main

START = dt.date.today() + dt.timedelta(days=1)
END = START + dt.timedelta(days=20)


def day(n: int) -> dt.date:
    return START + dt.timedelta(days=n)


def write_config(home: Path, **sections) -> Path:
    data = {
        "targets": [
            {"name": "feeds", "type": "ics", "settings": {"directory": str(home / "feeds")}}
        ]
    }
    data.update(sections)
    path = home / "leavesync.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def sync(cfg_file: Path, *extra: str) -> int:
    args = ["sync", "--config", str(cfg_file), "--from", START.isoformat(), "--to", END.isoformat()]
    return main([*args, *extra])


def summary_rows(out: str) -> list[list[str]]:
    lines = out.split("reconciliation summary", 1)[1].splitlines()[2:]
    rows = []
    for line in lines:
        if not line.strip():
            break
        rows.append(line.split())
    return rows


def test_each_legal_entity_once_by_its_code_and_written_counts_what_landed(home, hr, capsys):
    hr.entity("DE|B2B", "Europe/Berlin")
    hr.employee(1, "FR", "ann@example.com")
    hr.employee(2, "DE|B2B", "bob@example.com")
    moving = hr.leave(1, day(1))
    hr.leave(2, day(2))
    cfg_file = write_config(home, hr={"url": hr.url})
    assert sync(cfg_file) == 0
    capsys.readouterr()
    hr.execute("UPDATE employees SET legal_entity = 'DE|B2B' WHERE id = 1")
    hr.update_leave(moving, start_date=day(3), end_date=day(3))

    assert sync(cfg_file) == 0

    out = capsys.readouterr().out
    rows = summary_rows(out)
    assert [r[0] for r in rows] == ["DE|B2B", "FR", "US", "(unassigned)"]
    assert "DE_B2B" not in out.split("reconciliation summary", 1)[1]
    assert "written: 1 changes" in out


def test_a_blocked_entity_exits_1_and_writes_nothing_it_planned(home, hr, capsys):
    hr.employee(1, "FR", "ann@example.com")
    ids = [hr.leave(1, day(i)) for i in range(12)]
    cfg_file = write_config(home, hr={"url": hr.url})
    assert sync(cfg_file, "--entity", "FR") == 0
    for lid in ids:
        hr.delete_leave(lid)
    capsys.readouterr()

    assert sync(cfg_file, "--entity", "FR") == 1

    captured = capsys.readouterr()
    (row,) = summary_rows(captured.out)
    assert row[:2] == ["FR", "blocked"]
    assert row[2:8] == [
        "0",
        "0",
        "0",
        "0",
        "0",
        "12",
    ]  # created updated deleted moved failed not-applied
    assert "written: 0 changes; failed: 0; not applied: 12" in captured.out
    assert "total changes" not in captured.out
    assert "not reconciled: FR (blocked" in captured.err


def test_a_run_that_quarantines_every_row_exits_1(home, hr, capsys):
    hr.employee(1, "FR", "not-an-address")
    hr.leave(1, day(1))
    cfg_file = write_config(home, hr={"url": hr.url})

    assert sync(cfg_file, "--entity", "FR") == 1
    assert "every extracted leave was quarantined" in capsys.readouterr().err


def test_a_dry_run_plans_and_exits_0(home, hr, capsys):
    hr.employee(1, "FR", "ann@example.com")
    hr.leave(1, day(1))
    cfg_file = write_config(home, hr={"url": hr.url})

    assert sync(cfg_file, "--entity", "FR", "--dry-run") == 0
    out = capsys.readouterr().out
    assert "planned changes: 1" in out and "written:" not in out


def _no_traceback(text: str) -> None:
    assert "Traceback" not in text and "dagster._core" not in text


def test_unreachable_hr_database_exits_2_once_naming_the_setting(home, capsys):
    cfg_file = write_config(home, hr={"url": "postgresql+psycopg://nobody@127.0.0.1:1/hr"})

    assert sync(cfg_file) == 2

    captured = capsys.readouterr()
    _no_traceback(captured.out + captured.err)
    assert captured.err.count("HR database") == 1 and "hr.url" in captured.err
    assert not (home / "feeds").exists()


def test_unusable_state_store_exits_2_before_any_write(home, hr, capsys):
    hr.employee(1, "FR", "ann@example.com")
    hr.leave(1, day(1))
    missing = home / "no" / "such" / "folder" / "state.sqlite"
    cfg_file = write_config(home, hr={"url": hr.url}, state={"url": f"sqlite:///{missing}"})

    assert sync(cfg_file) == 2

    captured = capsys.readouterr()
    _no_traceback(captured.out + captured.err)
    assert str(missing.parent) in captured.err and "state.url" in captured.err
    assert captured.err.count("state database") == 1  # said once
    assert not (home / "feeds").exists()


def test_a_target_configuration_error_stops_the_sync_once_before_any_run(
    home, hr, capsys, monkeypatch
):
    monkeypatch.delenv("LEAVESYNC_TEST_NO_SUCH_KEY", raising=False)
    hr.employee(1, "FR", "ann@example.com")
    hr.leave(1, day(1))
    cfg_file = write_config(
        home,
        hr={"url": hr.url},
        targets=[
            {
                "name": "workspace",
                "type": "google",
                "settings": {"service_account_key_env": "LEAVESYNC_TEST_NO_SUCH_KEY"},
            }
        ],
    )

    assert sync(cfg_file) == 2

    captured = capsys.readouterr()
    _no_traceback(captured.out + captured.err)
    assert captured.err.count("LEAVESYNC_TEST_NO_SUCH_KEY") == 1
    assert "target workspace: target workspace" not in captured.err
    assert "reconcile" not in captured.out  # no entity run was launched


def test_verbose_shows_the_traceback_of_an_unexpected_error(home, hr, capsys, monkeypatch):
    import pipelines.runner as runner

    def boom(*a, **kw):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(runner, "run_job", boom)
    cfg_file = write_config(home, hr={"url": hr.url})

    assert sync(cfg_file) == 1
    quiet = capsys.readouterr().err
    assert "disk on fire" in quiet and "Traceback" not in quiet
    assert sync(cfg_file, "--verbose") == 1
    assert "Traceback" in capsys.readouterr().err


@pytest.mark.parametrize("tty", [False])
def test_progress_is_plain_lines_when_output_is_not_a_terminal(home, hr, capsys, tty):
    hr.employee(1, "FR", "ann@example.com")
    hr.leave(1, day(1))
    cfg_file = write_config(home, hr={"url": hr.url})

    assert sync(cfg_file, "--entity", "FR") == 0

    out = capsys.readouterr().out
    assert "FR: reconcile" in out
    assert "FR: target feeds: 1/1 changes applied" in out
    assert "\x1b[" not in out  # no terminal control sequences


def test_warnings_alone_print_no_empty_quarantine_table(home, hr, capsys):
    hr.employee(1, "FR", "ann@example.com")
    hr.leave(1, day(1), end=day(3))
    hr.leave(1, day(2), end=day(4))  # overlaps the first: a warning, both synced
    cfg_file = write_config(home, hr={"url": hr.url})

    assert sync(cfg_file) == 0

    out = capsys.readouterr().out
    assert "warnings (synced):" in out and "overlapping_leaves" in out
    assert "quarantined rows" not in out and "Empty DataFrame" not in out
