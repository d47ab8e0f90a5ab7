"""The Great Expectations suite on the whole diff: thin GX Core 1.x glue, Data Docs on disk."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from assets.diff import CHANGE_COLUMNS, OPS
from assets.validation import EMAIL_PATTERN

# A personal calendar is a mailbox; a team's shared calendar may also be an ics feed
# (teams/<name>) or a CalDAV collection URL (Google calendar ids are address-shaped).
CALENDAR_PATTERN = rf"(?:{EMAIL_PATTERN})|(?:^teams/[A-Za-z0-9._-]+$)|(?:^https?://\S+$)"

SUITE_NAME = "leave_diff"
ASSET_NAME = "diff"
WRITE_FIELDS = ("leave_id", "title", "start", "end", "timezone", "fingerprint")
STATUSES = ("confirmed", "tentative")
SHOW_AS = ("oof", "busy", "tentative", "free")
ISO_DATE_OR_TIME = r"^\d{4}-\d{2}-\d{2}(?:T\d{2}:\d{2}(?::\d{2})?)?$"
# How many failing event keys a failure message and the check metadata show.
SAMPLE = 10
# What a failed expectation concerns: some events (those are quarantined, the rest of the
# diff goes on) or the diff as a whole (a schema or type break: the diff is refused).
EVENT, WHOLE = "event", "diff"


@dataclass(frozen=True)
class ExpectationOutcome:
    """One expectation of the suite on one diff, in words and event keys an operator can use."""

    rule: str
    description: str
    success: bool
    unexpected: int = 0
    event_keys: tuple[str, ...] = ()
    legal_entities: tuple[str, ...] = ()
    error: str | None = None
    scope: str = EVENT
    rows: tuple[int, ...] = ()  # positions in the diff of every unexpected change
    # Rows the expectation looked at (its row condition applied): the base of its percentage.
    checked: int = 0

    @property
    def refuses(self) -> bool:
        """A failure that concerns the whole diff (or could not be evaluated)."""
        return not self.success and (self.scope == WHOLE or self.error is not None or not self.rows)

    def percent(self) -> str:
        """Share of checked rows that failed, or why there is none (never NaN)."""
        if self.error:
            return "not evaluated"
        if not self.checked:
            return "no rows to check"
        return f"{100 * self.unexpected / self.checked:.1f}%"

    def message(self) -> str:
        where = f" (legal entities {', '.join(self.legal_entities)})" if self.legal_entities else ""
        if self.error:
            return f"{self.rule}: could not be evaluated: {self.error}"
        if not self.event_keys:
            return f"{self.rule}: {self.description}: failed"
        keys = ", ".join(self.event_keys)
        more = (
            f" and {self.unexpected - len(self.event_keys)} more"
            if self.unexpected > SAMPLE
            else ""
        )
        return (
            f"{self.rule}: {self.description}: {self.unexpected} changes{where}, e.g. {keys}{more}"
        )


@dataclass
class SuiteResult:
    """The suite's verdict on one run's diff and where its Data Docs page is."""

    success: bool
    outcomes: list[ExpectationOutcome] = field(default_factory=list)
    docs_url: str | None = None
    docs_index: str | None = None
    evaluated: int = 0
    # Why the suite did not run (an empty diff proves nothing); None when it ran.
    skipped: str | None = None

    @property
    def failures(self) -> list[ExpectationOutcome]:
        return [o for o in self.outcomes if not o.success]

    @property
    def refusing(self) -> list[ExpectationOutcome]:
        """Failures that refuse the whole diff; the others quarantine their event keys."""
        return [o for o in self.failures if o.refuses]

    @property
    def refuses(self) -> bool:
        return bool(self.refusing)

    def quarantined_rows(self) -> dict[int, list[ExpectationOutcome]]:
        """Diff row position -> the per-event expectations it failed."""
        out: dict[int, list[ExpectationOutcome]] = {}
        for outcome in self.failures:
            if not outcome.refuses:
                for row in outcome.rows:
                    out.setdefault(row, []).append(outcome)
        return out

    def message(self) -> str:
        """Why the diff was refused as a whole (a refusal shown next to the blast-radius ones)."""
        lines = [
            f"the diff failed the Great Expectations suite `{SUITE_NAME}` as a whole; nothing "
            "was applied (this refusal cannot be overridden: the diff itself is wrong)"
        ]
        lines += [f"  - {o.message()}" for o in self.refusing]
        if self.docs_url:
            lines.append(f"  Data Docs: {self.docs_url}")
        return "\n".join(lines)

    def table(self) -> pd.DataFrame:
        return pd.DataFrame(
            [
                {
                    "rule": o.rule,
                    "passed": o.success,
                    "scope": o.scope,
                    "unexpected": o.unexpected,
                    "legal_entities": ", ".join(o.legal_entities),
                    "event_keys": ", ".join(o.event_keys),
                }
                for o in self.outcomes
            ],
            columns=["rule", "passed", "scope", "unexpected", "legal_entities", "event_keys"],
        )


def diff_frame(changes: pd.DataFrame) -> pd.DataFrame:
    """The diff as GX sees it: its change columns, plain objects, positional index.

    A missing column stays missing (the schema expectation refuses the diff for it)."""
    columns = [c for c in CHANGE_COLUMNS if c in changes.columns]
    extra = [c for c in changes.columns if c not in CHANGE_COLUMNS]
    frame = changes[columns + extra].reset_index(drop=True)
    # Object columns keep GX's pandas metrics away from pandas 3's string/nullable dtypes.
    return frame.astype(object).where(frame.notna(), None)


def _expectations() -> list:
    """The suite, each expectation tagged with the rule name reported to operators."""
    import great_expectations.expectations as gxe
    from great_expectations.expectations.row_conditions import Column

    writes = Column("op") != "delete"
    deletes = Column("op") == "delete"
    moves = Column("op") == "move"

    def tag(rule: str, description: str, expectation, scope: str = EVENT):
        expectation.meta = {"rule": rule, "scope": scope}
        expectation.description = description
        return expectation

    suite = [
        tag(
            "columns_as_expected",
            "the diff has exactly the change columns",
            gxe.ExpectTableColumnsToMatchSet(column_set=list(CHANGE_COLUMNS), exact_match=True),
            WHOLE,
        ),
        tag(
            "fingerprint_is_integer",
            "a written event's fingerprint is an integer",
            gxe.ExpectColumnValuesToBeInTypeList(
                column="fingerprint", type_list=["int", "int64"], row_condition=writes
            ),
            WHOLE,
        ),
        tag(
            "all_day_is_boolean",
            "a written event's all_day is a boolean",
            gxe.ExpectColumnValuesToBeInTypeList(
                column="all_day", type_list=["bool", "bool_"], row_condition=writes
            ),
            WHOLE,
        ),
        tag(
            "op_known",
            "the operation is create, update, delete or move",
            gxe.ExpectColumnValuesToBeInSet(column="op", value_set=list(OPS)),
        ),
        tag(
            "target_known",
            "the change is for a configured target",
            gxe.ExpectColumnValuesToBeInSet(column="target", value_set={"$PARAMETER": "targets"}),
        ),
        tag(
            "one_change_per_event",
            "each event key of a target changes at most once",
            gxe.ExpectCompoundColumnsToBeUnique(column_list=["target", "event_key"]),
        ),
        tag(
            "event_key_well_formed",
            "the event key is leave-<leave id> (team-leave-<leave id> in a team calendar)",
            gxe.ExpectColumnValuesToMatchRegex(column="event_key", regex=r"^(?:team-)?leave-\S.*$"),
        ),
        tag(
            "event_key_present",
            "every change has an event key",
            gxe.ExpectColumnValuesToNotBeNull(column="event_key"),
        ),
        tag(
            "calendar_present",
            "every change names its calendar",
            gxe.ExpectColumnValuesToNotBeNull(column="calendar"),
        ),
        tag(
            "calendar_well_formed",
            "the calendar is a well-formed mailbox address (or a team's shared calendar)",
            gxe.ExpectColumnValuesToMatchRegex(column="calendar", regex=CALENDAR_PATTERN),
        ),
        tag(
            "from_calendar_present",
            "a move names the calendar it leaves",
            gxe.ExpectColumnValuesToNotBeNull(column="from_calendar", row_condition=moves),
        ),
        tag(
            "from_calendar_well_formed",
            "a move leaves a well-formed mailbox address (or a team's shared calendar)",
            gxe.ExpectColumnValuesToMatchRegex(
                column="from_calendar", regex=CALENDAR_PATTERN, row_condition=moves
            ),
        ),
        tag(
            "status_known",
            "a written event is confirmed or tentative",
            gxe.ExpectColumnValuesToBeInSet(
                column="status", value_set=list(STATUSES), row_condition=writes
            ),
        ),
        tag(
            "show_as_known",
            "a written event shows as oof, busy, tentative or free",
            gxe.ExpectColumnValuesToBeInSet(
                column="show_as", value_set=list(SHOW_AS), row_condition=writes
            ),
        ),
        tag(
            "start_well_formed",
            "a written event starts at an ISO date or date-time",
            gxe.ExpectColumnValuesToMatchRegex(
                column="start", regex=ISO_DATE_OR_TIME, row_condition=writes
            ),
        ),
        tag(
            "end_well_formed",
            "a written event ends at an ISO date or date-time",
            gxe.ExpectColumnValuesToMatchRegex(
                column="end", regex=ISO_DATE_OR_TIME, row_condition=writes
            ),
        ),
        tag(
            "dates_ordered",
            "a written event ends after it starts",
            gxe.ExpectColumnPairValuesAToBeGreaterThanB(
                column_A="end",
                column_B="start",
                or_equal=False,
                ignore_row_if="either_value_is_missing",
                row_condition=writes,
            ),
        ),
        tag(
            "no_delete_of_quarantined",
            "no event of a quarantined leave is deleted",
            gxe.ExpectColumnValuesToNotBeInSet(
                column="event_key",
                value_set={"$PARAMETER": "quarantined_keys"},
                row_condition=deletes,
            ),
        ),
    ]
    for name in WRITE_FIELDS:
        suite.append(
            tag(
                f"{name}_present",
                f"a created or updated event has its {name}",
                gxe.ExpectColumnValuesToNotBeNull(column=name, row_condition=writes),
            )
        )
    return suite


# One context and checkpoint per process and site: building them costs more than a small run.
_CHECKPOINTS: dict[tuple[str, str], tuple[object, object]] = {}


def _context(docs_dir: Path, results_dir: Path):
    """An ephemeral context whose only files are its validation results and the Data Docs site."""
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    import great_expectations as gx
    from great_expectations.data_context.types.base import (
        DataContextConfig,
        InMemoryStoreBackendDefaults,
        ProgressBarsConfig,
    )

    # No GX Data Docs site: its pages load scripts and styles from public CDNs, blank on a
    # network without internet. data_docs.py renders our own self-contained pages instead.
    config = DataContextConfig(
        store_backend_defaults=InMemoryStoreBackendDefaults(init_temp_docs_sites=False),
        analytics_enabled=False,
        progress_bars=ProgressBarsConfig(globally=False),
    )
    return gx.get_context(mode="ephemeral", project_config=config)


def _checkpoint(docs_dir: Path, results_dir: Path):
    """This process's context and checkpoint for one Data Docs site, built on first use."""
    key = (str(docs_dir), str(results_dir))
    if key not in _CHECKPOINTS:
        import great_expectations as gx

        context = _context(docs_dir, results_dir)
        batch = (
            context.data_sources.add_pandas(ASSET_NAME)
            .add_dataframe_asset(SUITE_NAME)
            .add_batch_definition_whole_dataframe("whole diff")
        )
        suite = context.suites.add(
            gx.ExpectationSuite(name=SUITE_NAME, expectations=_expectations())
        )
        validation = context.validation_definitions.add(
            gx.ValidationDefinition(name=SUITE_NAME, data=batch, suite=suite)
        )
        checkpoint = context.checkpoints.add(
            gx.Checkpoint(
                name=SUITE_NAME,
                validation_definitions=[validation],
                actions=[],
                result_format={"result_format": "COMPLETE", "return_unexpected_index_query": False},
            )
        )
        _CHECKPOINTS[key] = (context, checkpoint)
    return _CHECKPOINTS[key]


EMPTY_DIFF = "skipped: the diff is empty, so there is nothing to validate and nothing to apply"


def validate_diff(
    changes: pd.DataFrame,
    targets: Iterable[str],
    quarantined_keys: Iterable[str],
    docs_dir: Path,
    results_dir: Path,
    run_name: str,
    keep: int = 100,
) -> SuiteResult:
    """Run the suite once on a run's whole diff; write its Data Docs page and return the verdict.

    An empty diff is not validated (Great Expectations is not even imported): it passes.
    """
    if changes.empty:
        return SuiteResult(success=True, skipped=EMPTY_DIFF)
    from great_expectations.core.run_identifier import RunIdentifier

    from assets import data_docs

    logging.getLogger("great_expectations").setLevel(logging.ERROR)
    _context_unused, checkpoint = _checkpoint(docs_dir, results_dir)
    frame = diff_frame(changes)
    result = checkpoint.run(
        batch_parameters={"dataframe": frame},
        expectation_parameters={
            "targets": sorted(set(targets)),
            "quarantined_keys": sorted(set(quarantined_keys)),
        },
        run_id=RunIdentifier(run_name=run_name),
    )
    _identifier, run_result = next(iter(result.run_results.items()))
    outcomes = [_outcome(r, frame) for r in run_result.results]
    verdict = SuiteResult(success=bool(result.success), outcomes=outcomes, evaluated=len(frame))
    page, index = data_docs.publish(verdict, run_name, docs_dir, results_dir, keep)
    verdict.docs_url, verdict.docs_index = page.as_uri(), index.as_uri()
    return verdict


def _outcome(result, frame: pd.DataFrame) -> ExpectationOutcome:
    config = result.expectation_config
    meta = config.meta or {}
    rule = str(meta.get("rule", config.type))
    scope = str(meta.get("scope", EVENT))
    description = str(config.description or config.type)
    error = None
    if result.exception_info and result.exception_info.get("raised_exception"):
        error = str(result.exception_info.get("exception_message") or "error").splitlines()[0]
    rows = [
        i for i in (result.result or {}).get("unexpected_index_list") or [] if isinstance(i, int)
    ]
    hit = frame.iloc[rows] if rows else frame.iloc[0:0]
    keys = tuple(str(k) for k in hit["event_key"].head(SAMPLE)) if "event_key" in hit else ()
    entities = (
        tuple(sorted({str(e) for e in hit["legal_entity"].dropna()}))
        if "legal_entity" in hit
        else ()
    )
    unexpected = int((result.result or {}).get("unexpected_count") or len(rows))
    checked = int((result.result or {}).get("element_count") or 0)
    return ExpectationOutcome(
        rule,
        description,
        bool(result.success),
        unexpected,
        keys,
        entities,
        error,
        scope,
        tuple(rows),
        checked,
    )
