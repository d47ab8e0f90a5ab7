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
    return pd.DataFrame([*base, *rows], columns=list(CHANGE_COLUMNS))


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
    assert rule in result.message() and result.docs_url in result.message()


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
