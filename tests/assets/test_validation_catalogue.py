"""The bad-input catalogue: each kind of bad row or situation and its exact outcome.

Outcomes: quarantined with which rule (valid rows go on), refused (nothing applied), or synced.
Most cases run the fast harness (extract → plan → apply) on a real SQLite HR database; the
cases whose behaviour is Dagster's (the blocking check, the CLI) run through Dagster.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import pytest
import sqlalchemy as sa
from icalendar import Calendar

from assets.gx_suite import SuiteResult
from assets.validation import (
    DATE_MISSING,
    DATE_OUT_OF_RANGE,
    DUPLICATE_LEAVE_ID,
    EMAIL_MALFORMED,
    EMAIL_MISSING,
    EMPLOYEE_UNKNOWN,
    END_BEFORE_START,
    HALF_DAY_INVALID,
    HOURLY_INVALID,
    LEAVE_TYPE_UNKNOWN,
    LEGAL_ENTITY_UNKNOWN,
    OVERLAP,
    STATUS_UNKNOWN,
    TEXT_TOO_LONG,
    TIMEZONE_INVALID,
    WORKDAY_HOURS_INVALID,
    BlastRadius,
)
from pipelines.demo import leaves as leaves_table
from resources.hr import DEFAULT_QUERY, UNASSIGNED, HRExtractError
from resources.providers.ics import KEY_PROP, feed_file_name
from tests.harness import Pipeline, make_config, scope

# The reference query with its dialect placeholder filled in for SQLite.
QUERY = DEFAULT_QUERY.format(sensitive="sensitive")
DAY = dt.date.today() + dt.timedelta(days=5)
LAST = DAY + dt.timedelta(days=19)
ENTITIES = ("FR", "US", UNASSIGNED)


def scopes(first: dt.date = DAY, last: dt.date = LAST, entities=ENTITIES):
    return [scope(e, first, last) for e in entities]


def day(n: int) -> dt.date:
    return DAY + dt.timedelta(days=n)


def feed_events(home: Path) -> dict[str, set[str]]:
    """Event keys per feed file, parsed from the files themselves."""
    out = {}
    for path in sorted((home / "feeds").glob("*.ics")):
        cal = Calendar.from_ical(path.read_bytes())
        out[path.name] = {str(c.get(KEY_PROP)) for c in cal.walk("VEVENT")}
    return out


def all_keys(home: Path) -> set[str]:
    return set().union(*feed_events(home).values()) if feed_events(home) else set()


def digests(home: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in (home / "feeds").glob("*")}


def errors_of(result) -> set[tuple[str, str]]:
    q = result.quarantine
    return {(str(r.leave_id), r.rule) for r in q[q["severity"] == "error"].itertuples()}


def warnings_of(result) -> set[tuple[str, str]]:
    q = result.quarantine
    return {(str(r.leave_id), r.rule) for r in q[q["severity"] == "warn"].itertuples()}


@pytest.fixture
def pipeline(home, hr) -> Pipeline:
    return Pipeline(make_config(home, hr.url))


# --- row rules: the bad row is quarantined with its rule, the good row is synced ----------

RowCase = Callable[..., tuple[int, set[str]]]


def null_email(hr):
    hr.employee(2, email=None)
    return hr.leave(2, DAY), {EMAIL_MISSING}


def blank_email(hr):
    hr.employee(2, email="   ")
    return hr.leave(2, DAY), {EMAIL_MISSING}


def email_without_at(hr):
    hr.employee(2, email="ann.example.com")
    return hr.leave(2, DAY), {EMAIL_MALFORMED}


def email_with_space(hr):
    hr.employee(2, email="ann smith@example.com")
    return hr.leave(2, DAY), {EMAIL_MALFORMED}


def email_of_10000_chars(hr):
    hr.employee(2, email="a" * 9988 + "@example.com")
    return hr.leave(2, DAY), {TEXT_TOO_LONG}


def email_climbing_out_of_the_feed_folder(hr):
    hr.employee(2, email="../../x/pwned@example.com")
    return hr.leave(2, DAY), {EMAIL_MALFORMED}


def email_of_two_dots(hr):
    hr.employee(2, email="..@example.com")
    return hr.leave(2, DAY), {EMAIL_MALFORMED}


def email_with_a_nul_byte(hr):
    hr.employee(2, email="ann\x00smith@example.com")
    return hr.leave(2, DAY), {EMAIL_MALFORMED}


def email_with_two_ats(hr):
    hr.employee(2, email="ann@smith@example.com")
    return hr.leave(2, DAY), {EMAIL_MALFORMED}


def null_start_date(hr):
    hr.employee(2)
    return hr.leave(2, None, DAY), {DATE_MISSING}


def null_end_date(hr):
    hr.employee(2)
    lid = hr.leave(2, DAY)
    hr.update_leave(lid, end_date=None)
    return lid, {DATE_MISSING}


def midday_after_workday_end(hr):
    hr.entity("ZZ", "Europe/Berlin", (9, 0), (13, 0), (12, 0))
    hr.employee(2, entity="ZZ")
    return hr.leave(2, DAY), {WORKDAY_HOURS_INVALID}


def unknown_employee(hr):
    return hr.leave(999, DAY), {EMPLOYEE_UNKNOWN}


def unknown_legal_entity(hr):
    hr.employee(2, entity="XX")
    return hr.leave(2, DAY), {LEGAL_ENTITY_UNKNOWN}


def unknown_leave_type(hr):
    hr.employee(2)
    return hr.leave(2, DAY, type="NOPE"), {LEAVE_TYPE_UNKNOWN}


def unknown_status(hr):
    hr.employee(2)
    return hr.leave(2, DAY, status="approvedd"), {STATUS_UNKNOWN}


def null_status(hr):
    hr.employee(2)
    return hr.leave(2, DAY, status=None), {STATUS_UNKNOWN}


def end_before_start(hr):
    hr.employee(2)
    return hr.leave(2, day(3), day(1)), {END_BEFORE_START}


def pm_start_am_end_one_day(hr):
    hr.employee(2)
    return hr.leave(2, DAY, start_half="PM", end_half="AM"), {HALF_DAY_INVALID}


def unknown_half_day_marker(hr):
    hr.employee(2)
    return hr.leave(2, DAY, day(1), start_half="XX"), {HALF_DAY_INVALID}


def hourly_over_two_days(hr):
    hr.employee(2)
    lid = hr.leave(2, DAY, day(1), start_time=dt.time(9), end_time=dt.time(11))
    return lid, {HOURLY_INVALID}


def start_time_after_end_time(hr):
    hr.employee(2)
    return hr.leave(2, DAY, start_time=dt.time(15), end_time=dt.time(10)), {HOURLY_INVALID}


def start_time_without_end_time(hr):
    hr.employee(2)
    return hr.leave(2, DAY, start_time=dt.time(15)), {HOURLY_INVALID}


def end_in_year_9999(hr):
    hr.employee(2)
    return hr.leave(2, DAY, dt.date(9999, 12, 31)), {DATE_OUT_OF_RANGE}


def end_in_year_1900(hr):
    hr.employee(2)
    return hr.leave(2, DAY, dt.date(1900, 1, 1)), {DATE_OUT_OF_RANGE, END_BEFORE_START}


def leave_type_name_of_10000_chars(hr):
    hr.leave_type("LONG", "x" * 10_000)
    hr.employee(2)
    return hr.leave(2, DAY, type="LONG"), {TEXT_TOO_LONG}


def invalid_time_zone(hr):
    hr.entity("MARS", "Mars/Olympus_Mons")
    hr.employee(2, entity="MARS")
    return hr.leave(2, DAY), {TIMEZONE_INVALID}


ROW_CASES = [
    null_email,
    blank_email,
    email_without_at,
    email_with_space,
    email_of_10000_chars,
    email_climbing_out_of_the_feed_folder,
    email_of_two_dots,
    email_with_a_nul_byte,
    email_with_two_ats,
    null_start_date,
    null_end_date,
    midday_after_workday_end,
    unknown_employee,
    unknown_legal_entity,
    unknown_leave_type,
    unknown_status,
    null_status,
    end_before_start,
    pm_start_am_end_one_day,
    unknown_half_day_marker,
    hourly_over_two_days,
    start_time_after_end_time,
    start_time_without_end_time,
    end_in_year_9999,
    end_in_year_1900,
    leave_type_name_of_10000_chars,
    invalid_time_zone,
]


@pytest.mark.parametrize("case", ROW_CASES, ids=[c.__name__ for c in ROW_CASES])
def test_bad_row_is_quarantined_with_its_rule_and_the_good_row_is_synced(
    case: RowCase, home, hr, pipeline
):
    hr.employee(1, email="ann@example.com")
    good = hr.leave(1, DAY)
    bad, rules = case(hr)
    extra = {invalid_time_zone: ("MARS",), midday_after_workday_end: ("ZZ",)}.get(case, ())
    entities = (*ENTITIES, *extra)

    result, outcome = pipeline.sync(scopes(entities=entities))

    assert not result.refused, [r.message() for r in result.refusals]
    assert errors_of(result) == {(str(bad), rule) for rule in rules}
    stored = result.quarantine[result.quarantine["leave_id"] == str(bad)]
    assert all(json.loads(row)["leave_id"] == str(bad) for row in stored["row"])
    assert outcome is not None and outcome.failed == []
    assert all_keys(home) == {f"leave-{good}"}


def test_start_dates_in_year_1900_and_9999_are_quarantined_not_crashing(home, hr, pipeline):
    hr.employee(1)
    old = hr.leave(1, dt.date(1900, 1, 10))
    future = hr.leave(1, dt.date(9999, 12, 10))

    first, _ = pipeline.sync([scope("FR", dt.date(1900, 1, 1), dt.date(1900, 1, 31))])
    last, _ = pipeline.sync([scope("FR", dt.date(9999, 12, 1), dt.date(9999, 12, 31))])

    assert errors_of(first) == {(str(old), DATE_OUT_OF_RANGE)}
    assert errors_of(last) == {(str(future), DATE_OUT_OF_RANGE)}
    assert all_keys(home) == set()


def test_duplicate_leave_id_quarantines_both_copies(home, hr):
    hr.employee(1)
    hr.employee(2)
    good = hr.leave(1, DAY)
    dup = hr.leave(2, day(2))
    # A broken HR view that returns one leave twice (a bad join is the usual cause).
    query = f"{QUERY} UNION ALL {QUERY} WHERE l.id = {dup}"
    pipeline = Pipeline(make_config(home, hr.url, hr={"url": hr.url, "query": query}))

    result, outcome = pipeline.sync(scopes())

    assert errors_of(result) == {(str(dup), DUPLICATE_LEAVE_ID)}
    assert (result.quarantine["leave_id"] == str(dup)).sum() == 2
    assert all_keys(home) == {f"leave-{good}"}


def test_overlapping_leaves_of_one_employee_warn_and_both_are_synced(home, hr, pipeline):
    hr.employee(1)
    first = hr.leave(1, DAY, day(4))
    second = hr.leave(1, day(2), day(6))

    result, _ = pipeline.sync(scopes())

    assert errors_of(result) == set()
    assert warnings_of(result) == {(str(first), OVERLAP), (str(second), OVERLAP)}
    assert all_keys(home) == {f"leave-{first}", f"leave-{second}"}


def test_unicode_and_right_to_left_names_are_synced(home, hr):
    hr.leave_type("CONGE", "Congé payé — 有給休暇")
    hr.employee(1, email="chloé.dupont@example.com", name="Chloé Dupont")
    hr.employee(2, email="sara@example.com", name="\u200fשרה כהן\u200f محمد")
    a = hr.leave(1, DAY, type="CONGE")
    b = hr.leave(2, DAY, type="CONGE")
    cfg = make_config(home, hr.url, events={"title_mode": "leave_type"})

    result, _ = Pipeline(cfg).sync(scopes())

    assert errors_of(result) == set()
    assert feed_events(home) == {
        feed_file_name("chloé.dupont@example.com"): {f"leave-{a}"},
        feed_file_name("sara@example.com"): {f"leave-{b}"},
    }
    text = (home / "feeds" / feed_file_name("sara@example.com")).read_bytes().decode()
    assert "Congé payé — 有給休暇" in text.replace("\r\n ", "")


def test_sql_metacharacters_in_names_are_data_not_sql(home, hr, pipeline):
    hr.leave_type("Q'T", "Robert'); DROP TABLE leaves;--")
    hr.employee(1, email="o'brien@example.com", name="Robert'); DROP TABLE employees;--")
    lid = hr.leave(1, DAY, type="Q'T")

    result, _ = pipeline.sync(scopes())

    assert errors_of(result) == set()
    assert feed_events(home) == {feed_file_name("o'brien@example.com"): {f"leave-{lid}"}}
    with hr.engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM leaves")).scalar() == 1
        assert conn.execute(sa.text("SELECT count(*) FROM employees")).scalar() == 1


def test_email_in_capitals_with_spaces_goes_to_the_one_lowercase_calendar(home, hr, pipeline):
    hr.employee(1, email="  Ann@Example.COM ")
    lid = hr.leave(1, DAY)

    result, _ = pipeline.sync(scopes())

    assert errors_of(result) == set()
    assert feed_events(home) == {feed_file_name("ann@example.com"): {f"leave-{lid}"}}


def test_display_name_of_10000_chars_is_synced(home, hr, pipeline):
    hr.employee(1, name="n" * 10_000)
    lid = hr.leave(1, DAY)

    result, _ = pipeline.sync(scopes())

    assert errors_of(result) == set()
    assert all_keys(home) == {f"leave-{lid}"}


# --- exported events of leaves that go bad, cancelled or opted out ------------------------


def test_exported_leave_that_turns_bad_keeps_its_event(home, hr, pipeline):
    hr.employee(1, email="ann@example.com")
    lid = hr.leave(1, DAY)
    pipeline.sync(scopes())
    before = digests(home)
    hr.update_leave(lid, end_date=day(-3))

    result, _ = pipeline.sync(scopes())

    assert errors_of(result) == {(str(lid), END_BEFORE_START)}
    assert result.diff.changes.empty
    assert digests(home) == before


def test_cancelled_leave_and_opted_out_employee_lose_their_events(home, hr, pipeline):
    hr.employee(1)
    hr.employee(2)
    cancelled = hr.leave(1, DAY)
    opted_out = hr.leave(2, DAY)
    kept = hr.leave(1, day(3))
    pipeline.sync(scopes())
    hr.update_leave(cancelled, status="cancelled")
    hr.update_employee(2, sync_enabled=False)

    result, _ = pipeline.sync(scopes())

    assert not result.refused
    assert sorted(result.diff.changes["event_key"]) == sorted(
        [f"leave-{cancelled}", f"leave-{opted_out}"]
    )
    assert set(result.diff.changes["op"]) == {"delete"}
    assert all_keys(home) == {f"leave-{kept}"}


# --- legal-entity settings: checked at the extract, the entity's leaves quarantined -------


def test_workday_hours_out_of_order_quarantine_that_entitys_leaves_with_the_reason(
    home, hr, pipeline
):
    hr.entity("ZZ", "Europe/Berlin", (9, 0), (13, 0), (12, 0))  # midday after workday end
    hr.employee(1)
    hr.employee(2, entity="ZZ", email="zed@example.com")
    good = hr.leave(1, DAY)
    half = hr.leave(2, DAY, start_half="PM")
    whole = hr.leave(2, day(2))

    result, outcome = pipeline.sync(scopes(entities=(*ENTITIES, "ZZ")))

    assert not result.refused and outcome is not None and outcome.failed == []
    assert errors_of(result) == {
        (str(half), WORKDAY_HOURS_INVALID),
        (str(whole), WORKDAY_HOURS_INVALID),
    }
    (message,) = set(result.quarantine["message"])
    assert "legal entity ZZ has start 09:00:00, midday 13:00:00, end 12:00:00" in message
    assert all_keys(home) == {f"leave-{good}"}
    summary = result.summary().set_index("legal_entity")
    assert summary.loc["ZZ", "quarantined"] == 2 and summary.loc["FR", "create"] == 1


def test_time_zone_unknown_quarantines_the_entitys_leaves_naming_the_zone(home, hr, pipeline):
    hr.entity("MARS", "Mars/Olympus_Mons")
    hr.employee(1)
    hr.employee(2, entity="MARS")
    good = hr.leave(1, DAY)
    bad = hr.leave(2, DAY)

    result, _ = pipeline.sync(scopes(entities=(*ENTITIES, "MARS")))

    assert errors_of(result) == {(str(bad), TIMEZONE_INVALID)}
    assert "'Mars/Olympus_Mons'" in result.quarantine.iloc[0]["message"]
    assert all_keys(home) == {f"leave-{good}"}


def test_malformed_email_says_what_is_wrong_with_it(home, hr, pipeline):
    hr.employee(1, email="../../x/pwned@example.com")
    lid = hr.leave(1, DAY)

    result, _ = pipeline.sync(scopes())

    (row,) = result.quarantine.itertuples()
    assert (row.leave_id, row.rule, row.employee_email) == (
        str(lid),
        EMAIL_MALFORMED,
        "../../x/pwned@example.com",
    )
    assert "cannot start with a period" in row.message
    assert not (home / "feeds").exists() or not any((home / "feeds").iterdir())


def test_an_active_directory_local_domain_is_a_valid_address(home, hr, pipeline):
    """On-premises Exchange mailboxes often keep their forest's .local domain."""
    hr.employee(1, email="jane.doe@corp.local")
    hr.employee(2, email="john@example.invalid")
    good = hr.leave(1, DAY)
    bad = hr.leave(2, DAY)

    result, _ = pipeline.sync(scopes())

    assert errors_of(result) == {(str(bad), EMAIL_MALFORMED)}
    assert all_keys(home) == {f"leave-{good}"}


def test_a_leave_without_start_date_is_extracted_by_every_range_and_quarantined(home, hr):
    hr.employee(1)
    lid = hr.leave(1, None, DAY)
    far = dt.date(2030, 1, 1)
    pipeline = Pipeline(make_config(home, hr.url))

    result, _ = pipeline.sync([scope("FR", far, far + dt.timedelta(days=3))])

    assert errors_of(result) == {(str(lid), DATE_MISSING)}
    stored = result.quarantine.iloc[0]
    assert stored["message"] == "the start or end date is missing (NULL)"
    assert result.summary().set_index("legal_entity").loc["FR", "quarantined"] == 1


# --- the GX suite: what concerns the whole diff refuses it -------------------------------


def test_a_type_break_in_the_diff_refuses_it_whole_even_with_allow_mass_delete(
    home, hr, pipeline, monkeypatch
):
    import assets.leave_diff as leave_diff

    original = leave_diff.compute_diff

    def floats(*args, **kwargs):  # a regression that turns fingerprints into floats
        diff = original(*args, **kwargs)
        diff.changes = diff.changes.astype({"fingerprint": "float64"})
        return diff

    monkeypatch.setattr(leave_diff, "compute_diff", floats)
    hr.employee(1)
    hr.leave(1, DAY)

    result, outcome = pipeline.sync(scopes(), allow_mass_delete=True)

    assert result.refused and outcome is None and all_keys(home) == set()
    (suite,) = [r for r in result.refusals if isinstance(r, SuiteResult)]
    assert [o.rule for o in suite.refusing] == ["fingerprint_is_integer"]
    assert "as a whole" in suite.message() and "cannot be overridden" in suite.message()
    assert result.quarantine.empty


# --- blast radius: refused, nothing deleted, and how to override ----------------------------


def bulk_leaves(hr, employees: int, days: int) -> list[int]:
    """employees × days one-day leaves in the FR entity (one insert)."""
    for e in range(1, employees + 1):
        hr.employee(e)
    rows = [
        {
            "id": e * 1000 + d,
            "employee_id": e,
            "leave_type": "PTO",
            "status": "approved",
            "start_date": day(d),
            "end_date": day(d),
            "updated_at": dt.datetime(2026, 1, 1),
        }
        for e in range(1, employees + 1)
        for d in range(days)
    ]
    with hr.engine.begin() as conn:
        conn.execute(leaves_table.insert(), rows)
    return [r["id"] for r in rows]


def test_extract_of_one_row_against_a_snapshot_of_1000_is_refused_until_overridden(
    home, hr, pipeline
):
    ids = bulk_leaves(hr, 50, 20)
    first, _ = pipeline.sync(scopes())
    assert len(all_keys(home)) == 1000 and not first.refused
    before = digests(home)
    hr.execute("DELETE FROM leaves WHERE id <> :keep", keep=ids[0])

    refused, outcome = pipeline.sync(scopes())

    assert outcome is None and digests(home) == before
    messages = [r.message() for r in refused.refusals]
    assert any("would delete 999 of 1000 exported events" in m for m in messages)
    assert all("Nothing was deleted" in m and "--allow-mass-delete" in m for m in messages)
    assert all("leavesync/allow_mass_delete=true" in m for m in messages)

    forced, outcome = pipeline.sync(scopes(), allow_mass_delete=True)

    assert not forced.refused and len(forced.overridden) == len(messages)
    assert all_keys(home) == {f"leave-{ids[0]}"}


def test_empty_extract_against_a_full_snapshot_deletes_nothing_and_says_why(home, hr, pipeline):
    bulk_leaves(hr, 3, 4)
    pipeline.sync(scopes())
    before = digests(home)
    hr.execute("DELETE FROM leaves")

    result, outcome = pipeline.sync(scopes())

    assert outcome is None and digests(home) == before
    fr = [r for r in result.refusals if isinstance(r, BlastRadius) and "FR" in r.scope]
    assert [r.reason for r in fr] == [
        "the HR extract is empty while 12 events are exported; it would delete all 12 of them"
    ]


@pytest.mark.parametrize(("deleted", "refused"), [(10, False), (11, True)])
def test_delete_share_boundary_is_twenty_percent(home, hr, pipeline, deleted, refused):
    ids = bulk_leaves(hr, 5, 10)  # 50 exported events
    pipeline.sync(scopes())
    hr.execute(f"DELETE FROM leaves WHERE id IN ({','.join(map(str, ids[:deleted]))})")

    result, _ = pipeline.sync(scopes())

    assert result.refused is refused
    assert len(all_keys(home)) == (50 if refused else 50 - deleted)


def test_a_few_deletes_below_the_minimum_are_applied_whatever_the_share(home, hr, pipeline):
    ids = bulk_leaves(hr, 1, 4)
    pipeline.sync(scopes())
    hr.execute(f"DELETE FROM leaves WHERE id IN ({ids[0]}, {ids[1]}, {ids[2]})")

    result, _ = pipeline.sync(scopes())

    assert not result.refused
    assert all_keys(home) == {f"leave-{ids[3]}"}


# --- the HR database itself fails --------------------------------------------------------


def test_hr_view_raising_mid_read_stops_the_run_and_loses_nothing(home, hr, pipeline):
    bulk_leaves(hr, 2, 3)
    pipeline.sync(scopes())
    before, snapshot = digests(home), len(pipeline.state.snapshot_all())
    # SQLite raises "integer overflow" on the row where the view evaluates abs(min int64).
    boom = QUERY.replace(
        "SELECT l.id AS leave_id,",
        "SELECT CASE WHEN l.id = 2001 THEN abs(-9223372036854775808) END AS boom, "
        "l.id AS leave_id,",
    )
    broken = Pipeline(make_config(home, hr.url, hr={"url": hr.url, "query": boom}))

    with pytest.raises(HRExtractError, match=r"extract of FR .* failed: integer overflow"):
        broken.sync(scopes())

    assert digests(home) == before
    assert len(broken.state.snapshot_all()) == snapshot == 6


def test_hr_query_missing_a_column_names_it(home, hr):
    hr.employee(1)
    hr.leave(1, DAY)
    query = QUERY.replace("e.email AS employee_email,", "")
    pipeline = Pipeline(make_config(home, hr.url, hr={"url": hr.url, "query": query}))

    with pytest.raises(HRExtractError, match="missing employee_email"):
        pipeline.sync(scopes())
    assert all_keys(home) == set()


# --- through Dagster: the blocking check stops calendar_sync; the CLI says why ------------


def dagster_events(run_id: str, event_type) -> list:
    from dagster import DagsterInstance

    return [e.dagster_event for e in DagsterInstance.get().all_logs(run_id, of_type=event_type)]


def check_evaluations(run_id: str) -> dict:
    from dagster import DagsterEventType

    events = dagster_events(run_id, DagsterEventType.ASSET_CHECK_EVALUATION)
    return {e.event_specific_data.check_name: e.event_specific_data for e in events}


def materialized(run_id: str) -> set[str]:
    from dagster import DagsterEventType

    events = dagster_events(run_id, DagsterEventType.ASSET_MATERIALIZATION)
    return {e.asset_key.to_user_string() for e in events}


def test_dagster_quarantine_is_stored_and_shown_and_valid_rows_are_synced(home, hr):
    from pipelines.runner import reconcile
    from resources.state import StateStore

    hr.employee(1, email="ann@example.com")
    hr.employee(2, email="not-an-address")
    good = hr.leave(1, DAY)
    bad = hr.leave(2, DAY)
    cfg = make_config(home, hr.url)

    (run,) = reconcile(cfg, ["FR"], DAY, day(2), progress=lambda m: None)

    assert run.status == "ok" and "calendar_sync" in materialized(run.run_id)
    stored = StateStore(url=cfg.state_url()).quarantine_for_run(run.run_id)
    assert [(r.leave_id, r.rule, r.partition) for r in stored.itertuples()] == [
        (str(bad), EMAIL_MALFORMED, "FR")
    ]
    assert json.loads(stored.iloc[0]["row"])["employee_email"] == "not-an-address"
    rows_check = check_evaluations(run.run_id)["rows_are_valid"]
    assert not rows_check.passed and rows_check.metadata["quarantined_rows"].value == 1
    quarantined = rows_check.metadata["quarantine"].value.records
    assert [(r.data["leave_id"], r.data["rule"]) for r in quarantined] == [
        (str(bad), EMAIL_MALFORMED)
    ]
    safety = check_evaluations(run.run_id)["diff_is_safe"]
    assert safety.passed and safety.metadata["gx_suite_passed"].value is True
    docs = safety.metadata["data_docs"].value
    assert Path(docs.removeprefix("file://")).is_file()
    assert all_keys(home) == {f"leave-{good}"}


def test_cli_empty_extract_against_full_snapshot_is_blocked_and_says_why(home, hr, capsys):
    import yaml

    from pipelines.cli import main
    from pipelines.runner import reconcile

    hr.employee(1, email="ann@example.com")
    for n in range(3):
        hr.leave(1, day(n))
    cfg_file = home / "leavesync.yaml"
    cfg_file.write_text(yaml.safe_dump({"hr": {"url": hr.url}}))
    args = ["sync", "--config", str(cfg_file), "--entity", "FR"]
    args += ["--from", DAY.isoformat(), "--to", day(2).isoformat()]
    assert main(args) == 0
    feeds = home / "feeds" / "feeds"
    before = {p.name: p.read_bytes() for p in feeds.glob("*.ics")}
    hr.execute("DELETE FROM leaves")

    assert main(args) == 1

    out = capsys.readouterr().out
    # The embedded default targets: each employee's feed and the team feed (3 events each).
    assert "the HR extract is empty while 6 events are exported" in out
    assert "Nothing was deleted" in out and "--allow-mass-delete" in out
    assert {p.name: p.read_bytes() for p in feeds.glob("*.ics")} == before
    from resources.config import load_config

    (run,) = reconcile(load_config(cfg_file), ["FR"], DAY, day(2), progress=lambda m: None)
    assert run.status == "blocked"
    assert "calendar_sync" not in materialized(run.run_id)
    safety = check_evaluations(run.run_id)["diff_is_safe"]
    assert not safety.passed and safety.metadata["deletes"].value == 6
    assert safety.metadata["by_partition"].value["FR"].startswith("refused: the HR extract")


def without_workday_rule(monkeypatch) -> None:
    """Row rules that miss bad workday hours: the GX suite on the diff is the net behind them."""
    import assets.validation as validation

    original = validation.rule_violations

    def missing_one_rule(*args, **kwargs):
        masks = original(*args, **kwargs)
        masks[WORKDAY_HOURS_INVALID] = masks[WORKDAY_HOURS_INVALID] & False
        return masks

    monkeypatch.setattr(validation, "rule_violations", missing_one_rule)


def test_dagster_gx_failure_of_one_key_quarantines_it_and_the_entity_goes_on(home, hr, monkeypatch):
    from pipelines.runner import reconcile
    from resources.state import StateStore

    without_workday_rule(monkeypatch)
    hr.entity("ZZ", "Europe/Berlin", (9, 0), (13, 0), (12, 0))
    hr.employee(1, entity="ZZ", email="zoe@example.com")
    half = hr.leave(1, DAY, start_half="PM")
    whole = hr.leave(1, day(1))
    cfg = make_config(home, hr.url)

    (run,) = reconcile(cfg, ["ZZ"], DAY, day(1), progress=lambda m: None)

    assert run.status == "ok" and "calendar_sync" in materialized(run.run_id)
    safety = check_evaluations(run.run_id)["diff_is_safe"]
    assert safety.passed and safety.metadata["gx_suite_passed"].value is False
    held = safety.metadata["quarantined_keys"].value
    assert f"leave-{half}" in held and "zoe@example.com" in held and "dates_ordered" in held
    page = Path(safety.metadata["data_docs"].value.removeprefix("file://"))
    assert "a written event ends after it starts" in page.read_text(encoding="utf-8")
    rows_check = check_evaluations(run.run_id)["rows_are_valid"]
    assert not rows_check.passed
    quarantined = rows_check.metadata["quarantine"].value.records
    assert [(r.data["leave_id"], r.data["employee"], r.data["rule"]) for r in quarantined] == [
        (str(half), "zoe@example.com", "dates_ordered")
    ]
    stored = StateStore(url=cfg.state_url()).quarantine_for_run(run.run_id)
    assert [(r.event_key, r.rule, r.employee_email, r.partition) for r in stored.itertuples()] == [
        (f"leave-{half}", "dates_ordered", "zoe@example.com", "ZZ")
    ]
    assert all_keys(home) == {f"leave-{whole}"}
