"""HR and state database failures: one typed error, one line naming which, where and why."""

from __future__ import annotations

import datetime as dt
import socket

import pytest
import sqlalchemy as sa
import yaml

from resources.config import ConfigError, parse_config
from resources.database import DatabaseError
from resources.hr import DEFAULT_QUERY, HRDatabase, HRExtractError
from resources.state import StateStore
from tests.conftest import POSTGRES_URL

D = dt.date(2026, 3, 2)
PASSWORD = "s3cret-Pa55"


def closed_port() -> int:
    """A TCP port nothing listens on (the OS picks it, then it is closed again)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def hr_error(**resource) -> DatabaseError:
    with pytest.raises(DatabaseError) as caught:
        HRDatabase(**resource).extract("FR", D, D)
    return caught.value


def state_error(**resource) -> DatabaseError:
    with pytest.raises(DatabaseError) as caught:
        StateStore(**resource).snapshot_all()
    return caught.value


def one_line(err: DatabaseError) -> str:
    text = str(err)
    assert "\n" not in text and PASSWORD not in text
    assert isinstance(err, ConfigError)  # the CLI exits 2 on it
    assert err.__context__ is None or err.__suppress_context__  # raised once, nothing chained
    return text


def test_hr_database_unreachable_names_it_its_host_and_the_reason():
    port = closed_port()
    err = hr_error(url=f"postgresql+psycopg://hr_reader:{PASSWORD}@127.0.0.1:{port}/hr")

    text = one_line(err)
    assert isinstance(err, HRExtractError)
    assert text.startswith(f"HR database hr_reader@127.0.0.1:{port}/hr (postgresql+psycopg): ")
    assert "Connection refused" in text


def test_hr_database_host_unknown():
    text = one_line(hr_error(url="postgresql+psycopg://hr@no-such-host.invalid/hr"))
    assert "no-such-host.invalid" in text and "resolve" in text


@pytest.mark.postgres
def test_hr_database_missing_on_the_server(postgres_url):
    url = sa.make_url(POSTGRES_URL).set(database="no_such_hr_db", password=PASSWORD)
    text = one_line(hr_error(url=url.render_as_string(hide_password=False)))
    assert 'database "no_such_hr_db" does not exist' in text


def test_hr_sqlite_file_in_a_missing_folder(tmp_path):
    path = tmp_path / "nowhere" / "hr.sqlite"
    text = one_line(hr_error(url=f"sqlite:///{path}"))
    assert text.startswith(f"HR database SQLite file {path}: ")
    assert f"unable to open database file (folder {path.parent} does not exist)" in text


def test_hr_tables_missing_names_them(tmp_path):
    text = one_line(hr_error(url=f"sqlite:///{tmp_path / 'empty.sqlite'}"))
    assert "no such table" in text
    assert "leaves, employees, legal_entities, leave_types" in text and "hr.query" in text


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("postgresql+nodriver://hr@db/hr", "unknown database driver 'postgresql+nodriver'"),
        ("oracle+nope://hr@db/hr", "unknown database driver 'oracle+nope'"),
        ("mysql+mysqldb://hr@db/hr", "driver module 'MySQLdb' is not installed"),
        ("not a url at all", "not a SQLAlchemy URL"),
    ],
)
def test_unknown_driver_or_bad_url(url, expected):
    assert expected in one_line(hr_error(url=url))
    assert expected in one_line(state_error(url=url))


def test_custom_query_missing_a_column_names_it(hr):
    query = DEFAULT_QUERY.format(sensitive="sensitive").replace("e.email AS employee_email,", "")
    text = one_line(hr_error(url=hr.url, query=query))
    assert "hr.query does not return the canonical columns: missing employee_email" in text


def test_custom_query_syntax_error(hr):
    text = one_line(hr_error(url=hr.url, query="SELEC * FROM leaves"))
    assert text.startswith("HR database SQLite file") and "syntax error" in text


def test_unset_url_env_names_the_variable_once(monkeypatch):
    monkeypatch.delenv("LEAVESYNC_TEST_UNSET_HR_URL", raising=False)
    monkeypatch.delenv("LEAVESYNC_TEST_UNSET_STATE_URL", raising=False)

    hr_text = one_line(hr_error(url_env="LEAVESYNC_TEST_UNSET_HR_URL"))
    state_text = one_line(state_error(url_env="LEAVESYNC_TEST_UNSET_STATE_URL"))

    assert hr_text.count("LEAVESYNC_TEST_UNSET_HR_URL") == 1
    assert hr_text.startswith("HR database: environment variable LEAVESYNC_TEST_UNSET_HR_URL")
    assert "(hr.url_env) is not set" in hr_text
    assert state_text.startswith("state database: environment variable")
    assert "(state.url_env) is not set" in state_text


def test_state_store_unreachable_and_in_a_missing_folder(tmp_path):
    port = closed_port()
    text = one_line(state_error(url=f"postgresql+psycopg://ls:{PASSWORD}@127.0.0.1:{port}/ls"))
    assert text.startswith(f"state database ls@127.0.0.1:{port}/ls (postgresql+psycopg): ")
    assert "Connection refused" in text
    path = tmp_path / "gone" / "state.sqlite"
    text = one_line(state_error(url=f"sqlite:///{path}"))
    assert f"folder {path.parent} does not exist" in text


def test_a_password_in_the_configuration_file_is_refused_pointing_to_url_env():
    for section in ("hr", "state"):
        with pytest.raises(ConfigError) as caught:
            parse_config({section: {"url": f"postgresql+psycopg://u:{PASSWORD}@db/x"}})
        text = str(caught.value)
        assert f"{section}.url" in text and "url_env" in text and PASSWORD not in text
    assert parse_config({"hr": {"url": "postgresql+psycopg://u@db/x"}}).hr.url


def test_cli_exits_2_with_one_line_when_the_hr_database_is_unreachable(home, capsys):
    from pipelines.cli import main

    port = closed_port()
    config = home / "leavesync.yaml"
    config.write_text(yaml.safe_dump({"hr": {"url_env": "LEAVESYNC_TEST_HR_URL"}}))
    url = f"postgresql+psycopg://hr:{PASSWORD}@127.0.0.1:{port}/hr"
    with pytest.MonkeyPatch.context() as env:
        env.setenv("LEAVESYNC_TEST_HR_URL", url)
        code = main(["sync", "--config", str(config)])

    captured = capsys.readouterr()
    assert code == 2
    lines = [line for line in captured.err.splitlines() if "HR database" in line]
    assert len(lines) == 1 and "Connection refused" in lines[0] and f":{port}/hr" in lines[0]
    assert PASSWORD not in captured.out + captured.err
