"""The GX suite on synthetic diffs: each expectation catches its fault, Data Docs are written."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from assets.diff import CHANGE_COLUMNS
from assets.gx_suite import diff_frame, validate_diff


def change(op: str, key: str, entity: str = "FR", **over) -> dict:
    row = {c: None for c in CHANGE_COLUMNS}
    row.update(op=op, target="feeds", event_key=key, leave_id=key.removeprefix("leave-"))
    row.update(calendar="ann@example.com", legal_entity=entity, partition_date="2026-03-02")
    if op != "delete":
        row.update(title="Absent", all_day=True, start="2026-03-02", end="2026-03-03")
        row.update(timezone="Europe/Paris", status="confirmed", show_as="oof", private=True)
        row.update(description="", categories="", fingerprint=42)
    row.update(over)
    return row


def diff(*rows: dict) -> pd.DataFrame:
    base = [change("create", "leave-1"), change("update", "leave-2"), change("delete", "leave-3")]
    frame = pd.DataFrame([*base, *rows], columns=list(CHANGE_COLUMNS))
    # As compute_diff makes it: integer fingerprints, missing (NA) for deletes.
    return frame.astype({"fingerprint": "Int64"})


def move(key: str, **over) -> dict:
    return change("move", key, **{"from_calendar": "ann.old@example.com", **over})


def run(tmp_path: Path, changes: pd.DataFrame, quarantined=(), name="run", keep=100):
    return validate_diff(
        changes, ["feeds"], quarantined, tmp_path / "docs", tmp_path / "results", name, keep
    )


def test_a_sound_diff_passes_and_writes_its_data_docs_page(tmp_path):
    result = run(tmp_path, diff())

    assert result.success and result.failures == [] and result.evaluated == 3
    page = Path(result.docs_url.removeprefix("file://"))
    assert page.is_file() and page.is_relative_to(tmp_path / "docs")
    assert (tmp_path / "docs" / "index.html").is_file()


def test_an_empty_diff_passes(tmp_path):
    result = run(tmp_path, pd.DataFrame(columns=list(CHANGE_COLUMNS)))

    assert result.success and result.evaluated == 0
    assert all(o.error is None for o in result.outcomes)


FAULTS = [
    ("op_known", change("upsert", "leave-9")),
    ("target_known", change("create", "leave-9", target="elsewhere")),
    ("one_change_per_event", change("create", "leave-1")),
    ("event_key_well_formed", change("create", "event-9")),
    ("calendar_present", change("create", "leave-9", calendar=None)),
    ("calendar_well_formed", change("create", "leave-9", calendar="ann@@example")),
    ("status_known", change("create", "leave-9", status="maybe")),
    ("show_as_known", change("update", "leave-9", show_as="away")),
    ("start_well_formed", change("create", "leave-9", start="02/03/2026")),
    ("end_well_formed", change("create", "leave-9", end="tomorrow")),
    ("dates_ordered", change("create", "leave-9", start="2026-03-04", end="2026-03-03")),
    (
        "dates_ordered",
        change(
            "update",
            "leave-9",
            start="2026-03-02T13:00:00",
            end="2026-03-02T12:00:00",
            all_day=False,
        ),
    ),
    ("title_present", change("create", "leave-9", title=None)),
    ("timezone_present", change("update", "leave-9", timezone=None)),
    ("fingerprint_present", change("create", "leave-9", fingerprint=None)),
]


@pytest.mark.parametrize(
    ("rule", "bad"), FAULTS, ids=[f"{r}-{i}" for i, (r, _) in enumerate(FAULTS)]
)
def test_each_fault_fails_exactly_its_expectation(tmp_path, rule, bad):
    bad = {**bad, "legal_entity": "US"}

    result = run(tmp_path, diff(bad))

    assert not result.success
    assert [o.rule for o in result.failures] == [rule]
    (failure,) = result.failures
    assert bad["event_key"] in failure.event_keys and "US" in failure.legal_entities
    assert rule in failure.message()
    # One person never blocks a legal entity: the faulty change is held back, not the diff.
    assert not result.refuses
    held = {3} | ({0} if rule == "one_change_per_event" else set())
    assert set(result.quarantined_rows()) == held


def test_a_move_is_one_change_and_passes(tmp_path):
    result = run(tmp_path, diff(move("leave-4")))

    assert result.success and result.evaluated == 4


@pytest.mark.parametrize(
    ("rule", "bad"),
    [
        ("from_calendar_present", move("leave-4", from_calendar=None)),
        ("from_calendar_well_formed", move("leave-4", from_calendar="../x")),
        ("one_change_per_event", move("leave-2")),
        ("op_known", change("relocate", "leave-4")),
    ],
)
def test_a_faulty_move_is_held_back_alone(tmp_path, rule, bad):
    result = run(tmp_path, diff(bad))

    assert [o.rule for o in result.failures] == [rule] and not result.refuses
    assert 3 in result.quarantined_rows()


def test_a_missing_column_refuses_the_whole_diff(tmp_path):
    result = run(tmp_path, diff().drop(columns=["from_calendar"]))

    assert result.refuses
    assert "columns_as_expected" in [o.rule for o in result.refusing]
    assert "as a whole" in result.message() and "cannot be overridden" in result.message()
    assert result.docs_url in result.message()


def test_fingerprints_that_are_not_integers_refuse_the_whole_diff(tmp_path):
    # Floats would silently round fingerprints above 2**53 and re-write unchanged events.
    result = run(tmp_path, diff().astype({"fingerprint": "float64"}))

    assert [o.rule for o in result.refusing] == ["fingerprint_is_integer"]
    assert result.quarantined_rows() == {}


def test_delete_of_a_quarantined_leaves_event_fails(tmp_path):
    result = run(tmp_path, diff(), quarantined=["leave-3"])

    assert [(o.rule, o.event_keys) for o in result.failures] == [
        ("no_delete_of_quarantined", ("leave-3",))
    ]


def test_a_quarantined_key_may_still_be_written_only_deletes_are_refused(tmp_path):
    assert run(tmp_path, diff(), quarantined=["leave-1", "leave-2"]).success


def test_deletes_need_no_event_fields(tmp_path):
    assert run(tmp_path, diff(change("delete", "leave-7", title=None, start=None))).success


def test_many_failing_rows_are_counted_and_sampled(tmp_path):
    bad = [change("create", f"leave-{i}", status="maybe") for i in range(100, 150)]

    result = run(tmp_path, diff(*bad))

    (failure,) = result.failures
    assert failure.unexpected == 50 and len(failure.event_keys) == 10
    assert "and 40 more" in failure.message()


def test_only_the_newest_runs_are_kept_in_the_site(tmp_path):
    pages = [run(tmp_path, diff(), name=f"run-{i}", keep=2).docs_url for i in range(4)]

    kept = sorted(p.name for p in (tmp_path / "docs" / "validations").rglob("*.html"))
    assert len(kept) == 2
    assert [Path(u.removeprefix("file://")).is_file() for u in pages] == [False, False, True, True]
    assert len(list((tmp_path / "results").rglob("*.json"))) == 2


def test_frame_given_to_gx_is_plain_objects_with_every_change_column():
    frame = diff_frame(diff().astype({"fingerprint": "Int64"}))

    assert list(frame.columns) == list(CHANGE_COLUMNS)
    assert set(frame.dtypes.astype(str)) == {"object"}
    assert frame.loc[2, "fingerprint"] is None
