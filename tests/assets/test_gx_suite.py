"""The GX suite on synthetic diffs: each expectation catches its fault, Data Docs are written."""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
from html.parser import HTMLParser
from pathlib import Path

import pandas as pd
import pytest

from assets import gx_suite
from assets.diff import CHANGE_COLUMNS
from assets.gx_suite import diff_frame, validate_diff

ROOT = Path(__file__).resolve().parents[2]


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


def test_an_empty_diff_passes_without_running_the_suite_or_importing_gx(tmp_path):
    code = textwrap.dedent(
        f"""
        import sys
        from pathlib import Path
        import pandas as pd
        from assets.diff import CHANGE_COLUMNS
        from assets.gx_suite import validate_diff
        base = Path({str(tmp_path)!r})
        result = validate_diff(pd.DataFrame(columns=list(CHANGE_COLUMNS)), ["feeds"], [],
                               base / "docs", base / "results", "run")
        print(result.success, result.evaluated, result.outcomes, repr(result.skipped))
        print("great_expectations" in sys.modules)
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    ).stdout.splitlines()

    assert out[0].startswith("True 0 [] 'skipped: the diff is empty")
    assert out[1] == "False"
    assert not (tmp_path / "docs").exists()


def test_the_gx_context_is_built_once_per_process_and_site(tmp_path, monkeypatch):
    built = []
    real = gx_suite._context
    monkeypatch.setattr(gx_suite, "_CHECKPOINTS", {})
    monkeypatch.setattr(gx_suite, "_context", lambda *a: built.append(a) or real(*a))

    first = run(tmp_path, diff(), name="run-1")
    second = run(tmp_path, diff(change("create", "leave-8", status="maybe")), name="run-2")

    assert len(built) == 1
    assert first.success and [o.rule for o in second.failures] == ["status_known"]
    assert first.docs_url != second.docs_url


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
    index = (tmp_path / "docs" / "index.html").read_text(encoding="utf-8")
    assert "run-3" in index and "run-2" in index and "run-1" not in index


class _Page(HTMLParser):
    """What a browser would show: text, and any resource the page would fetch."""

    def __init__(self) -> None:
        super().__init__()
        self.text: list[str] = []
        self.fetches: list[str] = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag in ("script", "img", "iframe") or (tag == "link" and attrs.get("href")):
            self.fetches.append(attrs.get("src") or attrs.get("href") or tag)

    def handle_data(self, data):
        self.text.append(data)


def test_data_docs_page_is_self_contained_escaped_and_has_true_percentages(tmp_path):
    bad = change("create", "leave-<i>9</i>", status="maybe")

    result = run(tmp_path, diff(bad))

    page = Path(result.docs_url.removeprefix("file://")).read_text(encoding="utf-8")
    parsed = _Page()
    parsed.feed(page)
    text = " ".join(parsed.text)
    assert parsed.fetches == []  # nothing from the network: it renders offline
    assert "the event key is leave-<leave id>" in text  # escaped, so the browser shows it
    assert "<i>9</i>" not in page and "leave-&lt;i&gt;9&lt;/i&gt;" in page
    assert "leave-<i>9</i>" in text
    assert "NaN" not in text
    # status_known looks at the 3 written rows (create, update, the bad create): 1 of 3.
    assert "33.3%" in text
    assert "no rows to check" not in text or "no_delete_of_quarantined" in text
    index = (tmp_path / "docs" / "index.html").read_text(encoding="utf-8")
    assert Path(result.docs_index.removeprefix("file://")).read_text(encoding="utf-8") == index


def test_frame_given_to_gx_is_plain_objects_with_every_change_column():
    frame = diff_frame(diff().astype({"fingerprint": "Int64"}))

    assert list(frame.columns) == list(CHANGE_COLUMNS)
    assert set(frame.dtypes.astype(str)) == {"object"}
    assert frame.loc[2, "fingerprint"] is None


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (apt-get install chromium)")
def test_data_docs_page_renders_in_chromium_with_the_network_off(tmp_path):
    result = run(tmp_path, diff(change("create", "leave-9", status="maybe")))

    dom = subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            # No network: every host is unresolvable and every proxy dead.
            "--host-resolver-rules=MAP * ~NOTFOUND",
            "--proxy-server=127.0.0.1:9",
            f"--user-data-dir={tmp_path / 'profile'}",
            "--dump-dom",
            result.docs_url,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout

    parsed = _Page()
    parsed.feed(dom)
    text = " ".join(parsed.text)
    for outcome in result.outcomes:
        assert outcome.description in text
    assert "the event key is leave-<leave id>" in text and "33.3%" in text
