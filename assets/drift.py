"""sync_drift: read our events back from each target, compare with the snapshot and HR, repair."""

import datetime as dt
import json
import logging
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import pandas as pd
from dagster import (
    AssetExecutionContext,
    AssetIn,
    AssetsDefinition,
    BackfillPolicy,
    Failure,
    MaterializeResult,
    MetadataValue,
    asset,
)

from assets.catalog import DRIFT_GROUP, OWNERS
from assets.diff import CHANGE_COLUMNS, Diff
from assets.drift_report import write_report
from assets.leave_diff import ALLOW_MASS_DELETE_TAG, LEAVE_DIFF, LeaveDiff, snapshot_in_scope
from assets.links import report_link
from assets.partition_report import PartitionIndex
from assets.render import EVENT_COLUMNS, configured_calendars, served_by
from assets.sync import CALENDAR_SYNC, apply_diff
from assets.tables import markdown_table
from assets.validation import blast_radius, email_problem
from resources.config import AppConfig, TargetConfig
from resources.hr import HRDatabase
from resources.providers.base import (
    CalendarProvider,
    EventChange,
    EventPayload,
    FatalProviderError,
    ProviderError,
    RemoteEvent,
    changed_fields,
    leave_id_of,
)
from resources.scope import month_start, window_today
from resources.settings import LeavesyncSettings
from resources.state import StateStore

SYNC_DRIFT = "sync_drift"
DRIFT_POLICY_TAG = "leavesync/drift_policy"
KINDS = ("missing", "modified", "orphan", "duplicate", "stale")
FINDING_COLUMNS = (
    "target",
    "kind",
    "event_key",
    "calendar",
    "legal_entity",
    "date",
    "detail",
    "repair",
    "repaired",
)


@dataclass(frozen=True)
class Place:
    """Where a finding is: the event key, its calendar, and its legal entity and date."""

    event_key: str
    calendar: str
    legal_entity: str
    date: str


@dataclass
class TargetDrift:
    """What one target's read-back shows: findings, and the changes that would repair them.

    A repair with ``direct`` set deletes one copy of ours by its provider id and leaves the
    snapshot alone (a duplicate, or an event the snapshot does not know); the others go
    through calendar_sync's apply and update the snapshot.
    """

    findings: list[dict] = field(default_factory=list)
    repairs: list[dict] = field(default_factory=list)

    def add(self, kind: str, at: Place, detail: str, repair: dict | None = None) -> None:
        self.findings.append(
            {
                "kind": kind,
                "event_key": at.event_key,
                "calendar": at.calendar,
                "legal_entity": at.legal_entity,
                "date": at.date,
                "detail": detail,
                "repair": repair["op"] if repair else "",
                "_repair": len(self.repairs) if repair else -1,
            }
        )
        if repair:
            self.repairs.append({"direct": False, **repair, "kind": kind})


def _payload(row) -> EventPayload | None:
    try:
        return EventPayload.from_dict(json.loads(row.payload))
    except (TypeError, ValueError, KeyError):
        return None


def _write(op: str, want, remote: RemoteEvent | None) -> dict:
    row = {c: getattr(want, c) for c in EVENT_COLUMNS}
    row.update(
        op=op,
        from_calendar=None,
        provider_event_id=remote.provider_event_id if remote else None,
        version=remote.version if remote else None,
    )
    return row


def _delete(
    at: Place,
    leave_id: str,
    provider_event_id: str | None,
    version: str | None,
    direct: bool = False,
) -> dict:
    row: dict = {c: None for c in CHANGE_COLUMNS}
    row.update(
        op="delete",
        event_key=at.event_key,
        calendar=at.calendar,
        leave_id=leave_id,
        legal_entity=at.legal_entity,
        partition_date=at.date,
        fingerprint=pd.NA,
        provider_event_id=provider_event_id,
        version=version,
        direct=direct,
    )
    return row


def _copy_delete(at: Place, copy: RemoteEvent) -> dict:
    return _delete(at, leave_id_of(at.event_key), copy.provider_event_id, copy.version, True)


def _pick(
    group: list[RemoteEvent], snapshot_id: str | None, want_fingerprint: int | None = None
) -> tuple[RemoteEvent | None, list[RemoteEvent]]:
    """The one event to keep among those carrying one key in one calendar, and the copies.

    Every one of them is ours (our tag, our key), whoever made it twice. Kept: the one the
    snapshot knows; else one already as HR wants it; else the newest (the last listed).
    """
    if not group:
        return None, []
    kept = next((r for r in group if snapshot_id and r.provider_event_id == snapshot_id), None)
    if kept is None and want_fingerprint is not None:
        kept = next(
            (r for r in reversed(group) if r.payload and r.payload.fingerprint == want_fingerprint),
            None,
        )
    kept = kept or group[-1]
    return kept, [r for r in group if r is not kept]


def fold_aliases(remote: list[RemoteEvent], placed: set[tuple[str, str]]) -> list[RemoteEvent]:
    """One event read under several addresses (an alias of a renamed mailbox) counts once.

    The same id and version under two calendars is one event seen twice: it is kept where
    HR or the snapshot places it (``placed``: event key, calendar), else under the first
    address, so that drift never takes it for an orphan of the old address and deletes it.
    """
    seen: dict[tuple[str, str, str], list[RemoteEvent]] = defaultdict(list)
    for event in remote:
        if event.provider_event_id and event.version:
            seen[(event.event_key, event.provider_event_id, event.version)].append(event)
    dropped: set[int] = set()
    for group in seen.values():
        if len({e.calendar for e in group}) < 2:
            continue
        kept = next((e for e in group if (e.event_key, e.calendar) in placed), group[0])
        dropped |= {id(e) for e in group if e is not kept}
    return [e for e in remote if id(e) not in dropped]


def compare_target(
    snapshot: pd.DataFrame,
    desired: pd.DataFrame,
    remote: Iterable[RemoteEvent],
    known_elsewhere: set[tuple[str, str]],
    protected: frozenset[str],
    compared_fields: Sequence[str],
    default_entity: str = "",
) -> TargetDrift:
    """Drift of one target in one scope.

    ``snapshot``/``desired``: this target's snapshot rows in scope and the events HR says it
    should hold; ``known_elsewhere``: (key, calendar) pairs the snapshot places outside scope.
    Events of quarantined leaves (``protected``) are reported, never repaired.
    """
    out = TargetDrift()
    by_place: dict[tuple[str, str], list[RemoteEvent]] = defaultdict(list)
    for event in remote:
        if event.payload is None:
            continue  # deleted (Google lists cancelled events): not in the calendar any more
        by_place[(event.event_key, event.calendar)].append(event)
    wanted = {r.event_key: r for r in desired.itertuples(index=False)}
    entity_of = {r.calendar: r.legal_entity for r in desired.itertuples(index=False)}
    entity_of.update({r.calendar: r.legal_entity for r in snapshot.itertuples(index=False)})

    for snap in snapshot.itertuples(index=False):
        key, calendar = snap.event_key, snap.calendar
        at = Place(key, calendar, str(snap.legal_entity), str(snap.partition_date))
        group = by_place.pop((key, calendar), [])
        want = wanted.get(key)
        want = want if want is not None and want.calendar == calendar else None
        fp = int(want.fingerprint) if want is not None else None
        ours, copies = _pick(group, snap.provider_event_id, fp)
        _duplicates(out, at, group, copies, key in protected)
        written = _payload(snap)
        fields = []
        if ours is not None and written is not None and ours.payload is not None:
            fields = changed_fields(written, ours.payload, compared_fields)
        if key in protected:  # a quarantined leave: we do not know what its event should be
            if ours is None:
                out.add("missing", at, "deleted in the calendar; leave quarantined: not repaired")
            elif fields:
                out.add("modified", at, f"edited: {', '.join(fields)}; leave quarantined")
        elif want is None:
            gone = "still in the calendar" if ours is not None else "already gone"
            remote_id = ours.provider_event_id if ours else snap.provider_event_id
            version = ours.version if ours else snap.version
            repair = _delete(at, str(snap.leave_id), remote_id, version)
            out.add("stale", at, f"HR has no event for it ({gone})", repair)
        elif ours is None:
            out.add("missing", at, "deleted in the calendar", _write("create", want, None))
        elif fields:
            out.add("modified", at, f"edited: {', '.join(fields)}", _write("update", want, ours))

    for (key, calendar), group in sorted(by_place.items()):
        if (key, calendar) in known_elsewhere:
            continue  # another partition's event: its own drift check looks at it
        want = wanted.get(key)
        want = want if want is not None and want.calendar == calendar else None
        if want is not None:
            at = Place(key, calendar, str(want.legal_entity), str(want.partition_date))
        else:
            at = Place(key, calendar, entity_of.get(calendar, default_entity), _start(group[0]))
        fp = int(want.fingerprint) if want is not None else None
        kept, copies = _pick(group, None, fp)
        _duplicates(out, at, group, copies, key in protected)
        if key in protected:
            out.add("orphan", at, "ours by tag, not in the snapshot; leave quarantined")
        elif want is not None:
            detail = "ours by tag, not in the snapshot: adopted with HR's version"
            out.add("orphan", at, detail, _write("update", want, kept))
        else:
            detail = "ours by tag, unknown to the snapshot, and HR has no event for it here"
            out.add("orphan", at, detail, _copy_delete(at, kept))
    return out


def _duplicates(
    out: TargetDrift, at: Place, group: list[RemoteEvent], copies: list[RemoteEvent], hold: bool
) -> None:
    """One finding per extra copy of our event; deleted unless its leave is quarantined."""
    for copy in copies:
        detail = f"{len(group)} events carry this key here; copy {copy.provider_event_id}"
        if hold:
            out.add("duplicate", at, detail + " (leave quarantined: not repaired)")
        else:
            out.add("duplicate", at, detail + " deleted", _copy_delete(at, copy))


def _start(event: RemoteEvent) -> str:
    return event.payload.start[:10] if event.payload is not None else ""


@dataclass
class DriftReport:
    """One run's drift: findings (with what was repaired), counts, and what stopped a repair."""

    findings: pd.DataFrame
    counts: pd.DataFrame  # target, legal_entity, kind, count, repaired
    notes: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def summary(self) -> pd.DataFrame:
        """Per legal entity: count of each kind of drift and how many were repaired."""
        if self.counts.empty:
            return pd.DataFrame(columns=["legal_entity", *KINDS, "repaired"])
        table = self.counts.pivot_table(
            index="legal_entity", columns="kind", values="count", aggfunc="sum", fill_value=0
        ).reindex(columns=list(KINDS), fill_value=0)
        table["repaired"] = self.counts.groupby("legal_entity")["repaired"].sum()
        return table.astype(int).reset_index().rename_axis(None, axis=1)

    def by_entity_and_date(self) -> pd.DataFrame:
        """The drift table of the asset page: one row per legal entity and date."""
        f = self.findings
        if f.empty:
            return pd.DataFrame(columns=["legal_entity", "date", *KINDS, "repaired"])
        table = pd.crosstab([f["legal_entity"], f["date"]], f["kind"]).reindex(
            columns=list(KINDS), fill_value=0
        )
        table["repaired"] = f.groupby(["legal_entity", "date"])["repaired"].sum()
        return table.astype(int).reset_index().rename_axis(None, axis=1)


def history_by_run(history: pd.DataFrame) -> pd.DataFrame:
    """Drift counts per run (all targets and legal entities), one column per kind."""
    if history.empty:
        return pd.DataFrame(columns=["at", "run_id", *KINDS, "repaired"])
    counts = history.pivot_table(
        index=["at", "run_id"], columns="kind", values="count", aggfunc="sum", fill_value=0
    ).reindex(columns=list(KINDS), fill_value=0)
    counts["repaired"] = history.groupby(["at", "run_id"])["repaired"].sum()
    return counts.astype(int).reset_index().rename_axis(None, axis=1).sort_values("at")


def drift_by_partition(index: PartitionIndex, findings: pd.DataFrame) -> dict[str, dict[str, int]]:
    """Per partition key of the run: each kind of drift found there, and how many repaired."""
    counts = {kind: index.count(findings[findings["kind"] == kind], "legal_entity", "date")
              for kind in KINDS}  # fmt: skip
    repaired = index.count(findings[findings["repaired"].astype(bool)], "legal_entity", "date")
    return {
        key: {**{kind: int(counts[kind][key]) for kind in KINDS}, "repaired": int(repaired[key])}
        for key in index.keys
    }


def latest_per_entity(history: pd.DataFrame) -> pd.DataFrame:
    """Each legal entity's latest drift run, one row per target: at, run_id, kinds, repaired.

    Runs cover one legal entity each; the report keeps every entity's own latest result
    rather than only the entities of the run that wrote it last.
    """
    columns = ["legal_entity", "at", "run_id", "target", *KINDS, "repaired"]
    if history.empty:
        return pd.DataFrame(columns=columns)
    latest_at = history.groupby("legal_entity")["at"].transform("max")
    latest = history[history["at"] == latest_at]
    index = ["legal_entity", "at", "run_id", "target"]
    table = latest.pivot_table(
        index=index, columns="kind", values="count", aggfunc="sum", fill_value=0
    ).reindex(columns=list(KINDS), fill_value=0)
    table["repaired"] = latest.groupby(index)["repaired"].sum()
    out = table.astype(int).reset_index().rename_axis(None, axis=1)
    return out[columns].sort_values(["legal_entity", "target"], ignore_index=True)


def calendars_to_read(
    target: TargetConfig,
    snapshot: pd.DataFrame,
    desired: pd.DataFrame,
    codes: list[str],
    hr: HRDatabase,
    state: StateStore,
) -> tuple[list[str], list[str], list[str]]:
    """Calendars to read back: the snapshot's, HR's wanted ones and every one the registry
    knows for these legal entities; plus, for entities never fully read back for this
    target (a new or wiped state store), every employee HR knows there.

    Returns (known calendars, HR employees' extra calendars, entities scanned by the latter).
    """
    known = set(snapshot["calendar"]) | set(desired["calendar"])
    known |= set(state.registry_calendars(target.name, codes))
    unscanned = sorted(set(codes) - state.scanned(target.name, codes))
    extra: set[str] = set()
    if unscanned and target.team is not None:
        # A team target writes only to its shared calendars, never to an employee's own.
        extra = set(configured_calendars(target)) - known
    elif unscanned:
        emails = hr.employee_emails(unscanned)
        served = emails[served_by(emails, target)] if len(emails) else emails
        extra = {e for e in served["employee_email"] if email_problem(e) is None} - known
    return sorted(known), sorted(extra), unscanned


def _read_back(
    provider: CalendarProvider,
    known: list[str],
    extra: list[str],
    start: dt.date,
    end: dt.date,
    log: logging.Logger,
) -> list[RemoteEvent]:
    """Our events in these calendars. The HR scan's calendars are read one by one when a call
    over all of them fails: an employee without a mailbox must not hide everyone else's."""
    remote = list(provider.read_back(known, start, end)) if known else []
    if not extra:
        return remote
    try:
        return remote + list(provider.read_back(extra, start, end))
    except (ProviderError, OSError, ValueError):
        for calendar in extra:
            try:
                remote += list(provider.read_back([calendar], start, end))
            except (ProviderError, OSError, ValueError) as err:
                log.warning(f"{calendar}: not read back ({err})")
        return remote


def measure_drift(
    plan: LeaveDiff,
    cfg: AppConfig,
    hr: HRDatabase,
    state: StateStore,
    provider_for: Callable[[str], CalendarProvider],
    run_id: str,
    policy_override: str | None = None,
    allow_mass_delete: bool = False,
    log: logging.Logger | None = None,
) -> DriftReport:
    """Read back every target in the plan's scope, compare, repair per policy, record counts."""
    log = log or logging.getLogger(__name__)
    scopes = plan.scopes
    if not scopes:
        return DriftReport(pd.DataFrame(columns=list(FINDING_COLUMNS)), _counts([], [], []))
    start = min(s.date_from for s in scopes)
    end = max(s.date_to for s in scopes) + dt.timedelta(days=1)
    in_scope = snapshot_in_scope(state, hr, scopes)
    desired_all = plan.desired
    extra = sorted(set(desired_all["event_key"]) - set(in_scope["event_key"]))
    if extra:
        in_scope = pd.concat([in_scope, state.snapshot_for_keys(extra)], ignore_index=True)
        in_scope = in_scope.drop_duplicates(["target", "event_key"])
    scope_codes = [c for s in scopes for c in (hr.codes_for_key(s.entity_key) or [s.entity_key])]
    entities = sorted(
        set(scope_codes)
        | {str(e) for e in in_scope["legal_entity"]}
        | set(desired_all["legal_entity"])
    )
    default_entity = scope_codes[0]
    findings: list[dict] = []
    notes: list[str] = []
    errors: list[str] = []
    for target in cfg.targets:
        snapshot = in_scope[in_scope["target"] == target.name]
        desired = desired_all[desired_all["target"] == target.name]
        provider = provider_for(target.name)
        try:
            known, scan, unscanned = calendars_to_read(
                target, snapshot, desired, scope_codes, hr, state
            )
            remote = _read_back(provider, known, scan, start, end, log)
        except (ProviderError, OSError, ValueError) as err:
            errors.append(f"target {target.name}: reading back its events failed: {err}")
            log.error(errors[-1])
            continue
        if unscanned:
            state.mark_scanned(target.name, unscanned)
        if provider.addresses_may_alias:
            placed_here = set(zip(desired["event_key"], desired["calendar"], strict=True))
            placed_here |= set(zip(snapshot["event_key"], snapshot["calendar"], strict=True))
            remote = fold_aliases(remote, placed_here)
        keys = sorted({r.event_key for r in remote})
        elsewhere = state.snapshot_for_keys(keys) if keys else in_scope.iloc[0:0]
        elsewhere = elsewhere[elsewhere["target"] == target.name]
        placed = set(zip(elsewhere["event_key"], elsewhere["calendar"], strict=True))
        placed -= set(zip(snapshot["event_key"], snapshot["calendar"], strict=True))
        drift = compare_target(
            snapshot,
            desired,
            remote,
            placed,
            plan.protected,
            provider.compared_fields,
            default_entity,
        )
        policy = policy_override or target.drift_policy
        repairs = pd.DataFrame(drift.repairs, columns=[*CHANGE_COLUMNS, "direct", "kind"])
        deletes = repairs["op"] == "delete"
        verdict = blast_radius(
            f"drift repair of target {target.name}",
            len(desired),
            len(set(snapshot["event_key"]) | set(keys)),
            int(deletes.sum()),
            cfg.safety,
        )
        if verdict and not allow_mass_delete:
            notes.append(verdict.message())
            log.error(verdict.message())
            repairs = repairs[~deletes]
        done: set[int] = set()
        if policy == "repair" and not repairs.empty:
            done = _repair(target.name, repairs, provider_for, state, run_id, log)
        elif policy == "report" and not repairs.empty:
            notes.append(
                f"target {target.name}: drift_policy is report: {len(repairs)} not repaired"
            )
        for f in drift.findings:
            row = {k: v for k, v in f.items() if k != "_repair"}
            findings.append({**row, "target": target.name, "repaired": f["_repair"] in done})
    frame = pd.DataFrame(findings, columns=list(FINDING_COLUMNS))
    counts = _counts(findings, [t.name for t in cfg.targets], entities)
    state.record_drift(run_id, counts)
    return DriftReport(frame, counts, notes, errors)


def _repair(
    target: str,
    repairs: pd.DataFrame,
    provider_for: Callable[[str], CalendarProvider],
    state: StateStore,
    run_id: str,
    log: logging.Logger,
) -> set[int]:
    """Apply repairs; the positions (in the target's repair list) of those that landed.

    Snapshot repairs go through calendar_sync's apply (snapshot, intent journal, registry
    updated change by change); copies are deleted by their provider id, snapshot untouched.
    """
    done: set[int] = set()
    direct = repairs[repairs["direct"].astype(bool)]
    if len(direct):
        done |= _delete_copies(target, direct, provider_for(target), state, run_id, log)
    through = repairs[~repairs["direct"].astype(bool)]
    if len(through):
        changes = through.drop(columns=["kind", "direct"])
        changes["target"] = target
        empty = pd.DataFrame(columns=["target", "event_key", "legal_entity", "partition_date"])
        plan = LeaveDiff(Diff(changes, empty, pd.DataFrame()), pd.DataFrame())
        outcome = apply_diff(plan, provider_for, state, run_id, log)
        failed = {(f["event_key"], f["calendar"]) for f in outcome.failed}
        done |= {
            i
            for i, k, c in zip(
                through.index, through["event_key"], through["calendar"], strict=True
            )
            if (k, c) not in failed
        }
    return done


def _delete_copies(
    target: str,
    rows: pd.DataFrame,
    provider: CalendarProvider,
    state: StateStore,
    run_id: str,
    log: logging.Logger,
) -> set[int]:
    changes = [
        EventChange(
            op="delete",
            event_key=r.event_key,
            calendar=r.calendar,
            provider_event_id=r.provider_event_id,
            version=r.version,
        )
        for r in rows.itertuples(index=False)
    ]
    position = {
        (c.event_key, c.calendar, c.provider_event_id): i
        for c, i in zip(changes, rows.index, strict=True)
    }
    done, settled = set(), []
    try:
        for result in provider.apply(changes):
            c = result.change
            if result.ok:
                done.add(position[(c.event_key, c.calendar, c.provider_event_id)])
                settled.append((c.event_key, c.calendar))
            else:
                state.record_failure(run_id, target, result)
                log.warning(
                    f"target {target}: deleting a copy of {c.event_key} failed: {result.error}"
                )
    except FatalProviderError as err:
        raise Failure(description=f"target {target}: {err}") from err
    finally:
        state.resolve_intents(target, settled)  # what a killed create left is settled now
    return done


def _counts(findings: list[dict], targets: list[str], entities: list[str]) -> pd.DataFrame:
    """Counts per target, legal entity and kind, zeros included (the history plots them)."""
    rows = {
        (t, e, k): {"target": t, "legal_entity": e, "kind": k, "count": 0, "repaired": 0}
        for t in targets
        for e in entities
        for k in KINDS
    }
    for f in findings:
        key = (f["target"], str(f["legal_entity"]), f["kind"])
        row = rows.setdefault(
            key,
            {"target": key[0], "legal_entity": key[1], "kind": key[2], "count": 0, "repaired": 0},
        )
        row["count"] += 1
        row["repaired"] += int(bool(f["repaired"]))
    return pd.DataFrame(
        list(rows.values()), columns=["target", "legal_entity", "kind", "count", "repaired"]
    )


def build_sync_drift(partitions_def) -> AssetsDefinition:
    @asset(
        name=SYNC_DRIFT,
        partitions_def=partitions_def,
        backfill_policy=BackfillPolicy.single_run(),
        group_name=DRIFT_GROUP,
        owners=OWNERS,
        kinds={"python", "pandas", "matplotlib"},
        ins={"plan": AssetIn(LEAVE_DIFF)},
        deps=[CALENDAR_SYNC],
        description=(
            "Reads our events back from every target, reports missing, modified, orphan, "
            "duplicate and stale events against the snapshot and HR, and repairs per policy."
        ),
    )
    def sync_drift(
        context: AssetExecutionContext,
        plan: LeaveDiff,
        hr: HRDatabase,
        state: StateStore,
        settings: LeavesyncSettings,
    ) -> MaterializeResult:
        tags = context.run.tags
        override = (
            tags.get(DRIFT_POLICY_TAG)
            if tags.get(DRIFT_POLICY_TAG) in ("report", "repair")
            else None
        )
        allow = tags.get(ALLOW_MASS_DELETE_TAG, "").lower() in ("1", "true", "yes")
        cfg = settings.app()
        report = measure_drift(
            plan,
            cfg,
            hr,
            state,
            settings.provider,
            context.run.run_id,
            override,
            allow,
            context.log,
        )
        summary = report.summary()
        history = state.drift_history()
        html, png = write_report(
            cfg.reports_dir(),
            history_by_run(history),
            summary,
            report.by_entity_and_date(),
            report.findings,
            [*report.errors, *report.notes],
            per_entity=latest_per_entity(history),
            run_id=context.run.run_id,
        )
        for row in summary.itertuples(index=False):
            context.log.info(
                f"{row.legal_entity}: "
                + ", ".join(f"{k} {getattr(row, k)}" for k in (*KINDS, "repaired"))
            )
        if report.errors:
            raise Failure(description="\n".join(report.errors), metadata={"report": str(html)})
        index = PartitionIndex(
            context.partition_keys, month_start(window_today(cfg.window.timezone))
        )
        for key, figures in drift_by_partition(index, report.findings).items():
            month, entity = key.split("|", 1)
            context.add_asset_metadata(
                {"legal_entity": entity, "month": month[:7], **figures}, partition_key=key
            )
        return MaterializeResult(
            metadata={
                "drift": MetadataValue.md(markdown_table(report.by_entity_and_date())),
                "summary": MetadataValue.json(summary.to_dict("records")),
                "findings": MetadataValue.md(
                    markdown_table(report.findings.drop(columns=["detail"]), limit=100)
                ),
                "notes": MetadataValue.json(report.notes),
                "report": report_link(cfg, html),
                "plot": report_link(cfg, png),
            }
        )

    return sync_drift
