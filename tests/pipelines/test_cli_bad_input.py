"""Bad input through the real `leavesync` command, as an operator meets it.

Each case runs the installed console script in its own process (no capsys, no in-process
`main`), so what is asserted is exactly what a terminal shows: the exit code the README's
table promises, the cause named, and no Python or Dagster stack trace.
"""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

START = dt.date.today() + dt.timedelta(days=1)
END = START + dt.timedelta(days=20)
LEAVESYNC = str(Path(sys.executable).with_name("leavesync"))
TRACE_MARKERS = ("Traceback", 'File "', "dagster._core", "DagsterExecutionStepExecutionError")


def day(n: int) -> dt.date:
    return START + dt.timedelta(days=n)


def run(home: Path, config: dict | str | None, *args: str, env: dict | None = None):
    cmd = [LEAVESYNC, "sync", "--from", START.isoformat(), "--to", END.isoformat(), *args]
    if config is not None:
        path = home / "leavesync.yaml"
        path.write_text(config if isinstance(config, str) else yaml.safe_dump(config))
        cmd += ["--config", str(path)]
    full_env = {**os.environ, **(env or {})}
    proc = subprocess.run(cmd, env=full_env, capture_output=True, text=True, timeout=600)
    text = proc.stdout + proc.stderr
    for marker in TRACE_MARKERS:
        assert marker not in text, f"stack trace in CLI output:\n{text}"
    return proc.returncode, proc.stdout, proc.stderr


def one_target(name: str, kind: str, **settings: str) -> dict:
    """A configuration's ``targets`` section holding this one target."""
    return {"targets": [{"name": name, "type": kind, "settings": settings}]}


def graph(secret_env: str, **settings: str) -> dict:
    """One Microsoft Graph target whose client secret is in ``secret_env``."""
    return one_target(
        "m365",
        "microsoft_graph",
        tenant_id="t",
        client_id="c",
        client_secret_env=secret_env,
        **settings,
    )


def feeds(home: Path) -> dict:
    return one_target("feeds", "ics", directory=str(home / "feeds"))


def test_bad_rows_are_quarantined_named_and_the_good_rows_land(home, hr):
    good = hr.employee(1, "FR", "ann@example.com")
    hr.leave(1, day(1))
    hr.employee(2, "FR", "not-an-address")  # email_malformed
    hr.leave(2, day(2))
    hr.employee(3, "FR", None)  # email_missing
    hr.leave(3, day(3))
    hr.leave(1, day(9), end=day(8))  # end_before_start
    hr.leave(1, day(5), status="maybe")  # status_unknown
    hr.leave(99, day(6))  # employee_unknown

    code, out, err = run(home, {"hr": {"url": hr.url}, **feeds(home)})

    assert code == 0, out + err  # the valid row's change was written: nothing failed
    assert (home / "feeds").exists() and good
    written = "".join(p.read_text() for p in (home / "feeds").rglob("*.ics"))
    assert written.count("BEGIN:VEVENT") == 1
    summary = out.split("reconciliation summary", 1)[1].split("\n\n", 1)[0].splitlines()[2:]
    rows = {line.split()[0]: line.split() for line in summary}
    assert rows["FR"][1:3] == ["ok", "1"] and rows["FR"][-1] == "4", out
    assert rows["(unassigned)"][-1] == "1", out  # an unknown employee has no legal entity
    for rule in (
        "email_malformed",
        "email_missing",
        "end_before_start",
        "status_unknown",
        "employee_unknown",
    ):
        assert rule in out, f"{rule} not reported:\n{out}"


@pytest.mark.parametrize(
    "case, config, env, expected",
    [
        ("unknown key", {"window": {"lookbak_days": 3}}, {}, "window.lookbak_days"),
        ("YAML syntax", "targets: [\n  - name: x\n", {}, "leavesync.yaml"),
        (
            "missing secret variable",
            graph("LEAVESYNC_TEST_UNSET_SECRET"),
            {},
            "LEAVESYNC_TEST_UNSET_SECRET",
        ),
        (
            "CA file missing",
            graph("LEAVESYNC_TEST_SECRET", ca_bundle="/nonexistent/ca.pem"),
            {"LEAVESYNC_TEST_SECRET": "s3cret"},
            "ca_bundle",
        ),
        (
            "service account key not JSON",
            one_target("workspace", "google", service_account_key_env="LEAVESYNC_TEST_GOOGLE_KEY"),
            {"LEAVESYNC_TEST_GOOGLE_KEY": "{not json"},
            "LEAVESYNC_TEST_GOOGLE_KEY",
        ),
        (
            "HR unreachable",
            {"hr": {"url": "postgresql+psycopg://nobody@127.0.0.1:1/hr"}},
            {},
            "hr.url",
        ),
        (
            "custom query without the canonical columns",
            {"hr": {"query": "SELECT id AS leave_id FROM leaves"}},
            {},
            "missing",
        ),
    ],
)
def test_configuration_problems_exit_2_once_before_any_write(home, hr, case, config, env, expected):
    hr.employee(1, "FR", "ann@example.com")
    hr.leave(1, day(1))
    if isinstance(config, dict):
        config = {"hr": {"url": hr.url}, **feeds(home), **config}
        if "url" not in config["hr"]:
            config["hr"]["url"] = hr.url
    os.environ.pop("LEAVESYNC_TEST_UNSET_SECRET", None)

    code, out, err = run(home, config, env=env)

    assert code == 2, f"{case}: exit {code}\n{out}{err}"
    assert expected in err, f"{case}: the cause should name {expected!r}:\n{err}"
    assert not (home / "feeds").exists(), f"{case}: something was written"
    assert "reconcile" not in out  # stopped before any entity run


def test_to_before_from_is_refused_with_both_dates(home, hr):
    code, out, err = run(home, None, "--to", START.isoformat(), "--from", END.isoformat())

    assert code == 2
    assert START.isoformat() in err and END.isoformat() in err
