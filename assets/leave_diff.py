"""leave_diff: validate the extract, render events per target, diff against the snapshot."""

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    AssetIn,
    AssetsDefinition,
    BackfillPolicy,
    MetadataValue,
    Output,
    asset,
)

from assets.catalog import OWNERS, RECONCILE_GROUP
from assets.diff import Diff, compute_diff
from assets.entity_report import (
    QUARANTINE_SHOWN,
    latest_verdicts,
    quarantine_rows,
    quarantine_table,
    record_verdicts,
    verdict,
    verdicts_table,
    write_quarantine_csv,
)
from assets.extract import HR_LEAVES, PARTITION_COLUMN
from assets.gx_suite import SuiteResult, validate_diff
from assets.links import report_link
from assets.partition_report import PartitionIndex, planned_by_partition
from assets.render import EVENT_COLUMNS, render_events
from assets.tables import markdown_table
from assets.validation import (
    QUARANTINE_COLUMNS,
    BlastRadius,
    blast_radius,
    row_json,
    validate_rows,
)
from resources.config import AppConfig
from resources.hr import HRDatabase, entity_partition_key
from resources.providers.base import event_keys_of, leave_id_of
from resources.scope import EntityScope, month_start, run_scopes, window_today
from resources.settings import LeavesyncSettings
from resources.state import SNAPSHOT_COLUMNS, StateStore

LEAVE_DIFF = "leave_diff"
SAFETY_CHECK = "diff_is_safe"
ROWS_CHECK = "rows_are_valid"
ENTITIES_CHECK = "every_entity_reconcilable"
ALLOW_MASS_DELETE_TAG = "leavesync/allow_mass_delete"


@dataclass
class LeaveDiff:
    """Everything calendar_sync needs, and what the checks and the CLI report."""

    diff: Diff
    quarantine: pd.DataFrame
    # Blast-radius refusals, and the GX suite's verdict when it failed (never overridden).
    refusals: list[BlastRadius | SuiteResult] = field(default_factory=list)
    overridden: list[BlastRadius] = field(default_factory=list)
    scopes: list[EntityScope] = field(default_factory=list)
    suite: SuiteResult | None = None
    # The events HR says should exist now (all targets), and the keys of quarantined leaves:
    # sync_drift compares calendars with these.
    desired: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=list(EVENT_COLUMNS)))
    protected: frozenset[str] = frozenset()

    @property
    def refused(self) -> bool:
        return bool(self.refusals)

    def summary(self) -> pd.DataFrame:
        """create/update/delete/move/unchanged/quarantined per entity partition (all targets).

        A move (the event changes calendar: a new email, another team) has its own column: it
        is neither an edit in place nor a loss, and an operator wants to see address changes.
        """
        counts = self.diff.counts()
        ops = ["create", "update", "delete", "move", "unchanged"]
        per_entity = (
            counts.groupby("legal_entity")[ops].sum()
            if not counts.empty
            else pd.DataFrame(columns=ops)
        )
        errors = (
            self.quarantine[self.quarantine["severity"] == "error"]
            if len(self.quarantine)
            else self.quarantine
        )
        quarantined = (
            errors.drop_duplicates("leave_id").groupby(PARTITION_COLUMN).size()
            if len(errors)
            else pd.Series(dtype=int)
        )
        keys = sorted(
            set(per_entity.index) | set(quarantined.index) | {s.entity_key for s in self.scopes}
        )
        out = per_entity.reindex(keys, fill_value=0)
        out["quarantined"] = quarantined.reindex(keys, fill_value=0)
        return out.astype(int).rename_axis("legal_entity").reset_index()


def plan(
    leaves: pd.DataFrame,
    scopes: list[EntityScope],
    cfg: AppConfig,
    hr: HRDatabase,
    state: StateStore,
    allow_mass_delete: bool = False,
    run_id: str | None = None,
) -> LeaveDiff:
    """Validate, render and diff one run's leaves; run the GX suite on the diff, then the
    blast-radius rules per entity and for the run."""
    in_scope = snapshot_in_scope(state, hr, scopes, with_payload=False)
    # Leaves exported from this scope but no longer extracted here: moved, or gone from HR.
    extracted = leaves["leave_id"] if len(leaves) else pd.Series(dtype=object)
    missing = sorted(in_scope.loc[~in_scope["leave_id"].isin(extracted), "leave_id"].unique())
    moved = hr.leaves_by_id(missing) if missing else pd.DataFrame(columns=leaves.columns)
    if len(moved):
        moved = moved.assign(**{PARTITION_COLUMN: moved["legal_entity"].fillna("")})
    frames = [f for f in (leaves, moved) if len(f)]
    all_leaves = pd.concat(frames, ignore_index=True) if frames else leaves
    if all_leaves.empty:
        all_leaves = _empty_leaves()

    checked = validate_rows(all_leaves, cfg.safety, cfg.events)
    desired_parts = [render_events(checked.valid, t, cfg.events) for t in cfg.targets]
    desired = (
        pd.concat(desired_parts, ignore_index=True)
        if desired_parts
        else pd.DataFrame(columns=list(EVENT_COLUMNS))
    )
    # Desired events the in-scope snapshot does not hold: new, or exported from elsewhere.
    held = in_scope["target"].astype(str) + "\x1f" + in_scope["event_key"].astype(str)
    wanted = desired["target"].astype(str) + "\x1f" + desired["event_key"].astype(str)
    outside = list(desired.loc[~wanted.isin(held), "event_key"].unique())
    snapshot = in_scope
    if outside:
        extra = state.snapshot_for_keys(outside, with_payload=False)
        snapshot = pd.concat([in_scope, extra], ignore_index=True).drop_duplicates(
            ["target", "event_key"]
        )
    errors = checked.quarantine[checked.quarantine["severity"] == "error"]
    protected = {key for i in errors["leave_id"].dropna() for key in event_keys_of(str(i))}
    diff = compute_diff(desired, snapshot, protected)
    suite = validate_diff(
        diff.changes,
        [t.name for t in cfg.targets],
        protected,
        cfg.data_docs_dir(),
        cfg.reports_dir() / "gx_validations",
        run_id or dt.datetime.now(dt.UTC).strftime("plan-%Y%m%dT%H%M%S%f"),
        cfg.reports.data_docs_keep,
    )
    # One person never blocks a legal entity: the event keys of changes that failed a
    # per-event expectation are quarantined with the rule; the rest of the diff goes on.
    suite_findings = suite_quarantine(diff.changes, suite, all_leaves)
    if len(suite_findings):
        held_back = set(suite_findings["event_key"])
        diff.changes = diff.changes[~diff.changes["event_key"].isin(held_back)].reset_index(
            drop=True
        )
        protected |= held_back

    refusals = []
    deletes = diff.changes[diff.changes["op"] == "delete"]
    extracted_by_entity = (
        leaves.groupby(PARTITION_COLUMN).size() if len(leaves) else pd.Series(dtype=int)
    )
    for scope in scopes:
        codes = _codes(hr, scope)
        exported = int(in_scope["legal_entity"].isin(codes).sum())
        n_deletes = int(deletes["legal_entity"].isin(codes).sum())
        verdict = blast_radius(
            f"legal entity {scope.label()}",
            int(extracted_by_entity.get(scope.entity_key, 0)),
            exported,
            n_deletes,
            cfg.safety,
        )
        if verdict:
            refusals.append(verdict)
    if len(scopes) > 1:
        verdict = blast_radius("the run", len(leaves), len(in_scope), len(deletes), cfg.safety)
        if verdict:
            refusals.append(verdict)
    quarantine = (
        checked.quarantine.merge(
            all_leaves[["leave_id", PARTITION_COLUMN]].drop_duplicates("leave_id"),
            on="leave_id",
            how="left",
        )
        if len(checked.quarantine)
        else checked.quarantine.assign(**{PARTITION_COLUMN: []})
    )
    if len(suite_findings):
        quarantine = pd.concat([quarantine, suite_findings], ignore_index=True)
    overridden: list[BlastRadius] = []
    if allow_mass_delete:
        overridden, refusals = refusals, []
    rejected: list[BlastRadius | SuiteResult] = [*refusals, *([suite] if suite.refuses else [])]
    return LeaveDiff(
        diff, quarantine, rejected, overridden, scopes, suite, desired, frozenset(protected)
    )


def _file_path(uri: str) -> Path:
    """The local path of a file:// URI (how GX names its Data Docs pages)."""
    from urllib.parse import unquote, urlparse

    return Path(unquote(urlparse(uri).path))


def suite_quarantine(
    changes: pd.DataFrame, suite: SuiteResult, leaves: pd.DataFrame
) -> pd.DataFrame:
    """Quarantine findings for the event keys whose changes failed a per-event expectation:
    one row per (leave, rule), naming the event key and the employee."""
    failed = suite.quarantined_rows()
    if not failed:
        return pd.DataFrame(columns=[*QUARANTINE_COLUMNS, PARTITION_COLUMN])
    frame = changes.reset_index(drop=True)
    by_leave = leaves.drop_duplicates("leave_id").set_index("leave_id") if len(leaves) else None
    seen: set[tuple[str, str]] = set()
    rows = []
    for position, outcomes in sorted(failed.items()):
        change = frame.iloc[position]
        key = str(change["event_key"])
        leave_id = str(change["leave_id"]) if pd.notna(change["leave_id"]) else leave_id_of(key)
        leave = (
            by_leave.loc[leave_id] if by_leave is not None and leave_id in by_leave.index else None
        )
        entity = str(change["legal_entity"]) if pd.notna(change["legal_entity"]) else ""
        for outcome in outcomes:
            if (key, outcome.rule) in seen:
                continue
            seen.add((key, outcome.rule))
            rows.append(
                {
                    "leave_id": leave_id,
                    "legal_entity": entity,
                    "start_date": leave["start_date"]
                    if leave is not None
                    else change["partition_date"],
                    "event_key": key,
                    "employee_id": leave["employee_id"] if leave is not None else None,
                    "employee_email": leave["employee_email"]
                    if leave is not None
                    else change["calendar"],
                    "rule": outcome.rule,
                    "severity": "error",
                    "message": f"the diff's GX suite: {outcome.description}",
                    "row": row_json(
                        {**(leave.to_dict() if leave is not None else {}), **_change(change)}
                    ),
                    PARTITION_COLUMN: leave[PARTITION_COLUMN]
                    if leave is not None and PARTITION_COLUMN in leave
                    else entity_partition_key(entity),
                }
            )
    return pd.DataFrame(rows, columns=[*QUARANTINE_COLUMNS, PARTITION_COLUMN])


def _change(change: pd.Series) -> dict:
    """The change's own fields, prefixed, beside the leave's in a quarantined row's JSON."""
    return {f"change.{k}": v for k, v in change.items() if v is not None and not pd.isna(v)}


def _safety_metadata(result: LeaveDiff, cfg: AppConfig) -> dict:
    """The blocking check's metadata: refusals, overrides, the suite's verdict, Data Docs link."""
    meta: dict = {
        "refusals": MetadataValue.json([r.message() for r in result.refusals]),
        "overridden": MetadataValue.json([r.message() for r in result.overridden]),
        "deletes": int((result.diff.changes["op"] == "delete").sum()),
        "by_partition": MetadataValue.json(_verdicts(result)),
        "quarantined_keys": MetadataValue.md(markdown_table(quarantined_keys(result))),
    }
    if result.suite is not None and result.suite.skipped:
        meta["gx_suite_passed"] = True
        meta["gx_suite_skipped"] = MetadataValue.text(result.suite.skipped)
    elif result.suite is not None:
        meta["gx_suite_passed"] = result.suite.success
        meta["gx_suite"] = MetadataValue.md(markdown_table(result.suite.table()))
        if result.suite.docs_url:
            meta["data_docs"] = report_link(cfg, _file_path(result.suite.docs_url))
        if result.suite.docs_index:
            meta["data_docs_index"] = report_link(cfg, _file_path(result.suite.docs_index))
    return meta


def quarantined_keys(result: LeaveDiff) -> pd.DataFrame:
    """The event keys held back by the GX suite: key, leave, employee, rule."""
    q = result.quarantine
    if q.empty or "event_key" not in q:
        return pd.DataFrame(columns=["event_key", "leave_id", "employee_id", "employee_email"])
    suite_rules = {o.rule for o in result.suite.failures} if result.suite else set()
    held = q[q["rule"].isin(suite_rules)]
    cols = ["event_key", "leave_id", "legal_entity", "employee_id", "employee_email", "rule"]
    return held[cols].reset_index(drop=True)


def _verdicts(result: LeaveDiff) -> dict[str, str]:
    """Per legal entity partition: "ok", or why it (and so the run) was refused."""
    out = {s.entity_key: "ok" for s in result.scopes}
    for refusal in result.refusals:
        if isinstance(refusal, BlastRadius):
            keys = [s.entity_key for s in result.scopes if refusal.scope.endswith(s.label())]
            reason = f"refused: {refusal.reason}"
        else:
            codes = {entity_partition_key(e) for o in refusal.refusing for e in o.legal_entities}
            keys = [k for k in out if k in codes]
            keys = keys or list(out)
            reason = "refused: GX suite failed: " + ", ".join(o.rule for o in refusal.refusing)
        for key in keys:
            out[key] = reason if out[key] == "ok" else f"{out[key]}; {reason}"
    return out


def _codes(hr: HRDatabase, scope: EntityScope) -> list[str]:
    return hr.codes_for_key(scope.entity_key) or [scope.entity_key]


def snapshot_in_scope(
    state: StateStore, hr: HRDatabase, scopes: list[EntityScope], with_payload: bool = True
) -> pd.DataFrame:
    """Snapshot rows (all targets) of the run's legal entities and partition dates."""
    frames = []
    for scope in scopes:
        frame = state.snapshot_in_scope(
            _codes(hr, scope), scope.date_from, scope.date_to, with_payload
        )
        frames.append(frame[frame["partition_date"].isin(scope.dates)])
    frames = [f for f in frames if len(f)]
    return (
        pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=SNAPSHOT_COLUMNS)
    )


def _empty_leaves() -> pd.DataFrame:
    from resources.hr import CANONICAL_COLUMNS, normalise_extract

    return normalise_extract(pd.DataFrame(columns=list(CANONICAL_COLUMNS))).assign(
        **{PARTITION_COLUMN: pd.Series(dtype=object)}
    )


def build_leave_diff(partitions_def) -> AssetsDefinition:
    @asset(
        name=LEAVE_DIFF,
        partitions_def=partitions_def,
        backfill_policy=BackfillPolicy.single_run(),
        group_name=RECONCILE_GROUP,
        owners=OWNERS,
        kinds={"pandas", "great_expectations"},
        ins={"leaves": AssetIn(HR_LEAVES)},
        check_specs=[
            AssetCheckSpec(
                SAFETY_CHECK,
                asset=LEAVE_DIFF,
                blocking=True,
                description=(
                    "The GX suite on the whole diff and the blast-radius rules; calendar_sync "
                    "does not run if it fails."
                ),
            ),
            AssetCheckSpec(
                ROWS_CHECK,
                asset=LEAVE_DIFF,
                description="Row rules on the extract: bad rows are quarantined, valid rows go on.",
            ),
            AssetCheckSpec(
                ENTITIES_CHECK,
                asset=LEAVE_DIFF,
                description=(
                    "Each legal entity's latest verdict: fails while any entity's own latest "
                    "run was blocked, until that entity's next run passes."
                ),
            ),
        ],
        description="What must change in each target: creates, updates, deletes, quarantined rows.",
    )
    def leave_diff(
        context: AssetExecutionContext,
        leaves: pd.DataFrame,
        hr: HRDatabase,
        state: StateStore,
        settings: LeavesyncSettings,
    ):
        cfg = settings.app()
        scopes = run_scopes(context.partition_keys, context.run.tags, cfg.window)
        allow = context.run.tags.get(ALLOW_MASS_DELETE_TAG, "").lower() in ("1", "true", "yes")
        result = plan(leaves, scopes, cfg, hr, state, allow, context.run.run_id)
        for entity_key, findings in result.quarantine.groupby(PARTITION_COLUMN):
            state.record_quarantine(context.run.run_id, str(entity_key), findings)
        index = PartitionIndex(
            context.partition_keys, month_start(window_today(cfg.window.timezone))
        )
        planned = planned_by_partition(index, result.diff.changes, result.quarantine)
        for key, figures in planned.items():
            month, entity = key.split("|", 1)
            context.add_asset_metadata(
                {"legal_entity": entity, "month": month[:7], **figures}, partition_key=key
            )
        # What the run refused applies to each of its partitions; the counts are per partition.
        yield Output(
            result,
            metadata={
                "refusals": MetadataValue.json([r.message() for r in result.refusals]),
                "overridden": MetadataValue.json([r.message() for r in result.overridden]),
                "run_partitions": len(index.keys),
            },
        )
        for refusal in result.refusals:
            context.log.error(refusal.message())
        yield AssetCheckResult(
            check_name=SAFETY_CHECK,
            passed=not result.refused,
            severity=AssetCheckSeverity.ERROR,
            metadata=_safety_metadata(result, cfg),
        )
        errors = (
            result.quarantine[result.quarantine["severity"] == "error"]
            if len(result.quarantine)
            else result.quarantine
        )
        rows = quarantine_rows(result.quarantine)
        meta: dict = {
            "quarantined_rows": int(errors["leave_id"].nunique()) if len(errors) else 0,
            "legal_entities": MetadataValue.json([s.entity_key for s in scopes]),
            "by_rule": MetadataValue.json(
                result.quarantine.groupby("rule").size().astype(int).to_dict()
                if len(result.quarantine)
                else {}
            ),
            "quarantine": quarantine_table(rows),
        }
        # The rows of each entity's CSV, from the run's rows (one per finding, same order).
        partition = result.quarantine[PARTITION_COLUMN].to_numpy() if len(rows) else None
        for scope in scopes:
            mine = rows[partition == scope.entity_key] if partition is not None else rows
            path = write_quarantine_csv(mine, cfg.reports_dir(), scope.entity_key)
            meta[f"quarantine_csv_{scope.entity_key}"] = report_link(cfg, path)
        yield AssetCheckResult(
            check_name=ROWS_CHECK,
            passed=errors.empty,
            severity=AssetCheckSeverity.WARN,
            description=(
                f"{meta['quarantined_rows']} leaves quarantined in "
                + ", ".join(s.entity_key for s in scopes)
                + (
                    f" (showing {QUARANTINE_SHOWN} of {len(rows)})"
                    if len(rows) > QUARANTINE_SHOWN
                    else ""
                )
            ),
            metadata=meta,
        )
        yield _entities_check(context, result, errors)

    return leave_diff


def _entities_check(context: AssetExecutionContext, result: LeaveDiff, errors: pd.DataFrame):
    """Record this run's verdict per legal entity; judge on every entity's latest one."""
    from resources.scope import ENTITY_DIMENSION

    run_id = context.run.run_id
    per_entity = _verdicts(result)
    quarantined = (
        errors.drop_duplicates("leave_id").groupby(PARTITION_COLUMN).size()
        if len(errors)
        else pd.Series(dtype=int)
    )
    mine = {
        key: verdict(
            "ok" if why == "ok" else "blocked",
            run_id,
            int(quarantined.get(key, 0)),
            "" if why == "ok" else why,
        )
        for key, why in per_entity.items()
    }
    record_verdicts(context.instance, mine)
    known = context.instance.get_dynamic_partitions(ENTITY_DIMENSION)
    everyone = {**latest_verdicts(context.instance, sorted(set(known) | set(mine))), **mine}
    blocked = sorted(k for k, v in everyone.items() if v.get("status") != "ok")
    return AssetCheckResult(
        check_name=ENTITIES_CHECK,
        passed=not blocked,
        severity=AssetCheckSeverity.ERROR,
        description=("blocked: " + ", ".join(blocked)) if blocked else "every legal entity ok",
        metadata={
            "blocked": MetadataValue.json(blocked),
            "legal_entities": verdicts_table(everyone),
        },
    )
