"""The `leavesync` command: sync, drift, demo, check, entities."""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import sys
import traceback
import warnings
from collections.abc import Sequence

import pandas as pd

from resources.config import AppConfig, ConfigError, load_config


def _date(text: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date (YYYY-MM-DD)") from None


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="leavesync", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    def common(sp: argparse.ArgumentParser) -> None:
        sp.add_argument(
            "--config",
            help="YAML configuration file (default: $LEAVESYNC_CONFIG, or the embedded defaults)",
        )
        sp.add_argument(
            "--verbose",
            action="store_true",
            help="also print Python and Dagster tracebacks (they are always in the run's log)",
        )

    def scope(sp: argparse.ArgumentParser) -> None:
        sp.add_argument(
            "--entity",
            action="append",
            default=[],
            metavar="CODE",
            help="legal entity (repeatable; default: all)",
        )
        sp.add_argument(
            "--from",
            dest="date_from",
            type=_date,
            help="first start date (default: today - lookback)",
        )
        sp.add_argument(
            "--to", dest="date_to", type=_date, help="last start date (default: today + horizon)"
        )

    s = sub.add_parser(
        "sync", help="reconcile leaves into calendars (one Dagster run per legal entity)"
    )
    common(s)
    scope(s)
    s.add_argument("--dry-run", action="store_true", help="stop after the diff and print it")
    s.add_argument(
        "--allow-mass-delete", action="store_true", help="override the blast-radius refusal"
    )
    s.add_argument(
        "--workers",
        type=int,
        default=1,
        metavar="N",
        help="legal entities reconciled at once, each in its own process (default 1)",
    )

    r = sub.add_parser(
        "drift", help="read the calendars back, report drift from the snapshot and HR, repair it"
    )
    common(r)
    scope(r)
    r.add_argument(
        "--report-only",
        action="store_true",
        help="report drift, repair nothing (whatever drift_policy says)",
    )
    r.add_argument(
        "--allow-mass-delete", action="store_true", help="override the blast-radius refusal"
    )

    d = sub.add_parser("demo", help="seed the embedded demo HR database, then reconcile it")
    common(d)
    d.add_argument(
        "--reseed", action="store_true", help="recreate the demo HR data even if present"
    )

    c = sub.add_parser("check", help="test each target's settings without changing anything")
    common(c)
    c.add_argument("--target", action="append", default=[], help="target name (default: all)")
    c.add_argument("--sample", help="sample mailbox (default: first employee email HR has)")

    e = sub.add_parser("entities", help="list legal entities and register them as partitions")
    common(e)

    f = sub.add_parser(
        "feeds", help="print each employee's private feed URL (ics targets), or rotate one"
    )
    common(f)
    f.add_argument("--target", action="append", default=[], help="ics target (default: all)")
    f.add_argument("--csv", action="store_true", help="CSV (email,legal_entity,url) for mail-merge")
    f.add_argument(
        "--rotate", metavar="EMAIL", help="give this employee a new URL; the old one stops working"
    )
    return p


# Exit codes (README, "Exit codes").
OK, NOT_RECONCILED, SETUP = 0, 1, 2


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    # The CLI's output is ours: Dagster's and GX's beta/preview notices stay out of it.
    warnings.filterwarnings("ignore")
    logging.basicConfig(level=logging.ERROR, format="%(levelname)s %(name)s: %(message)s")
    try:
        cfg = load_config(args.config)
    except ConfigError as err:
        print(err, file=sys.stderr)
        return SETUP
    from pipelines.orphans import sweep_at_start

    sweep_at_start(cfg)  # runs left in progress by a process that died are marked failed
    handler = {
        "sync": cmd_sync,
        "drift": cmd_drift,
        "demo": cmd_demo,
        "check": cmd_check,
        "entities": cmd_entities,
        "feeds": cmd_feeds,
    }
    try:
        return handler[args.command](cfg, args)
    except ConfigError as err:
        print(f"configuration problem, nothing was written:\n{err}", file=sys.stderr)
        if args.verbose:
            traceback.print_exc()
        return SETUP
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # noqa: BLE001 - one paragraph, not a traceback (--verbose: both)
        print(f"leavesync {args.command} stopped: {type(err).__name__}: {err}", file=sys.stderr)
        if args.verbose:
            traceback.print_exc()
        else:
            print("(run again with --verbose for the traceback)", file=sys.stderr)
        return NOT_RECONCILED


def _window(cfg: AppConfig, args: argparse.Namespace) -> tuple[dt.date, dt.date]:
    from pipelines.partitions import first_partition
    from pipelines.schedules import nightly_window
    from resources.scope import window_today

    today = window_today(cfg.window.timezone)
    start, end = nightly_window(cfg, today)
    date_from, date_to = args.date_from or start, args.date_to or end
    if date_to < date_from:
        raise ConfigError(f"--to {date_to} is before --from {date_from}")
    first = first_partition(cfg, today)
    if date_from < first:
        raise ConfigError(
            f"--from {date_from} is before the first partition, {first}: set "
            f"window.partitions_start to {date_from.replace(day=1)} or earlier in the "
            "configuration file to reach it"
        )
    return date_from, date_to


def cmd_sync(cfg: AppConfig, args: argparse.Namespace) -> int:
    from pipelines.progress import LiveProgress
    from pipelines.runner import reconcile

    date_from, date_to = _window(cfg, args)
    with LiveProgress(len(args.entity) or None) as live:
        runs = reconcile(
            cfg,
            args.entity or None,
            date_from,
            date_to,
            dry_run=args.dry_run,
            allow_mass_delete=args.allow_mass_delete,
            progress=live.line,
            workers=args.workers,
            on_change=live.change,
            on_done=live.entity_done,
            on_start=live.start,
        )
    code = report(runs, dry_run=args.dry_run)
    print_quarantine(cfg, [r.run_id for r in runs])
    return code


def print_quarantine(cfg: AppConfig, run_ids: list[str], limit: int = 20) -> None:
    """Print the rows these runs quarantined: leave, partition, rule and why."""
    import os

    from resources.state import StateStore

    url = os.environ.get(cfg.state.url_env, "") if cfg.state.url_env else cfg.state_url()
    if not url:
        return
    state = StateStore(url=url)
    frames = [state.quarantine_for_run(r) for r in run_ids]
    found = (
        pd.concat([f for f in frames if len(f)], ignore_index=True)
        if any(len(f) for f in frames)
        else pd.DataFrame()
    )
    if found.empty:
        return
    errors = found[found["severity"] == "error"]
    if len(errors):
        print(
            f"\nquarantined rows ({len(errors)}; skipped, "
            "kept in the state store's quarantine table)"
        )
        cols = ["partition", "leave_id", "start_date", "rule", "message"]
        print(errors[cols].head(limit).to_string(index=False))
        if len(errors) > limit:
            print(f"... and {len(errors) - limit} more")
    warnings = found[found["severity"] == "warn"]
    if len(warnings):
        counts = warnings.groupby("rule").size().to_dict()
        print("warnings (synced): " + ", ".join(f"{n} {rule}" for rule, n in counts.items()))


SUMMARY_COLUMNS = (
    "legal entity",
    "status",
    "created",
    "updated",
    "deleted",
    "moved",
    "failed",
    "not applied",
    "unchanged",
    "quarantined",
)


def summary_table(runs) -> pd.DataFrame:
    """One row per legal entity's run, by its code: what was written, failed, not applied."""
    rows = []
    for run in runs:
        counts = run.counts()
        rows.append(
            {
                "legal entity": run.label or run.entity_key,
                "status": run.status,
                **{c: counts[c] for c in ("created", "updated", "deleted", "moved", "failed")},
                "not applied": run.not_applied(),
                "unchanged": counts["unchanged"],
                "quarantined": counts["quarantined"],
            }
        )
    return pd.DataFrame(rows, columns=list(SUMMARY_COLUMNS))


def exit_code(runs) -> int:
    """0 only when every planned change of every selected legal entity landed."""
    if not runs or all(r.entity_key == "_unassigned" for r in runs):
        return NOT_RECONCILED
    for run in runs:
        counts = run.counts()
        if (
            run.status not in ("ok", "planned")
            or counts["failed"]
            or run.status == "ok"
            and (run.not_applied())
        ):
            return NOT_RECONCILED
    extracted = sum(r.extracted for r in runs)
    quarantined = sum(r.counts()["quarantined"] for r in runs)
    if extracted and quarantined >= extracted:
        return NOT_RECONCILED
    return OK


def report(runs, dry_run: bool = False) -> int:
    """Print the per-entity summary (and the planned changes on a dry run); exit status."""
    table = summary_table(runs)
    if dry_run:
        title = "planned changes (dry run: nothing was written)"
        table = table.drop(columns=["created", "updated", "deleted", "moved", "failed"]).rename(
            columns={"not applied": "planned"}
        )
    else:
        title = (
            "reconciliation summary (created, updated, deleted: written to the calendars; "
            "not applied: planned but not written)"
        )
    print(f"\n{title}\n{table.to_string(index=False)}\n")
    if dry_run:
        for run in runs:
            if run.plan is not None and len(run.plan.diff.changes):
                ch = run.plan.diff.changes
                print(f"\n{run.label or run.entity_key}: {len(ch)} changes")
                print(
                    ch[
                        [
                            "op",
                            "target",
                            "event_key",
                            "calendar",
                            "from_calendar",
                            "start",
                            "end",
                            "title",
                            "status",
                        ]
                    ]
                    .fillna("")
                    .head(50)
                    .to_string(index=False)
                )
                if len(ch) > 50:
                    print(f"... and {len(ch) - 50} more")
    for run in runs:
        for msg in run.messages:
            print(f"{run.label or run.entity_key}: {msg}")
    if dry_run:
        print(f"\nplanned changes: {sum(r.planned for r in runs)}")
    else:
        written = int(table[["created", "updated", "deleted", "moved"]].to_numpy().sum())
        failed = int(table["failed"].sum())
        not_applied = int(table["not applied"].sum())
        line = f"\nwritten: {written} changes"
        if failed or not_applied:
            line += f"; failed: {failed}; not applied: {not_applied}"
        print(line)
        sent_again = sum(r.sent_again for r in runs)
        if sent_again:
            print(
                f"sent again after a transient error (the service kept saying 'later'): "
                f"{sent_again} change(s); failed counts what still failed after that"
            )
    code = exit_code(runs)
    bad = [r for r in runs if r.status not in ("ok", "planned")]
    if bad:
        print(
            "not reconciled: "
            + ", ".join(f"{r.label or r.entity_key} ({r.status}, run {r.run_id})" for r in bad),
            file=sys.stderr,
        )
    elif code != OK:
        failed = sum(int(r.counts()["failed"]) for r in runs)
        not_applied = sum(int(r.not_applied()) for r in runs)
        if failed or not_applied:
            cause = f"{failed} change(s) failed, {not_applied} not applied (see the summary)"
        elif runs:
            cause = "every extracted leave was quarantined"
        else:
            cause = "no legal entity was run"
        print("not reconciled: " + cause, file=sys.stderr)
    return code


def cmd_demo(cfg: AppConfig, args: argparse.Namespace) -> int:
    import sqlalchemy as sa

    from pipelines.demo import seed
    from pipelines.runner import reconcile
    from pipelines.schedules import nightly_window

    url = cfg.hr_url()
    if not url.startswith("sqlite:///"):
        raise ConfigError(
            "the demo seeds the embedded SQLite HR database only; run it without hr.url"
        )
    path = url.removeprefix("sqlite:///")
    import os

    fresh = args.reseed or not os.path.exists(path)
    if fresh:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        counts = seed(sa.create_engine(url), dt.date.today(), with_bad_rows=True)
        print(
            "seeded demo HR database "
            + path
            + ": "
            + ", ".join(f"{v} {k}" for k, v in counts.items())
        )
    else:
        print(f"demo HR database {path} already seeded (use --reseed to start over)")
    from pipelines.progress import LiveProgress
    from resources.scope import window_today

    date_from, date_to = nightly_window(cfg, window_today(cfg.window.timezone))
    with LiveProgress(None) as live:
        runs = reconcile(
            cfg,
            None,
            date_from,
            date_to,
            progress=live.line,
            on_change=live.change,
            on_done=live.entity_done,
            on_start=live.start,
        )
    code = report(runs)
    print_quarantine(cfg, [r.run_id for r in runs])
    print("\nreading the calendars back for the drift report")
    code = max(code, run_drift(cfg, None, date_from, date_to))
    feeds = [t for t in cfg.targets if t.type == "ics"]
    for t in feeds:
        from resources.providers.ics import IcsProvider

        provider = IcsProvider(t.name, IcsProvider.Settings.model_validate(t.settings))
        print(f"feeds of target {t.name}: {provider.directory}")
    print("open the Dagster UI on these runs with: make ui")
    return code


def cmd_drift(cfg: AppConfig, args: argparse.Namespace) -> int:
    """One Dagster run of the drift job per legal entity; print the drift summary."""
    date_from, date_to = _window(cfg, args)
    return run_drift(
        cfg, args.entity or None, date_from, date_to, args.report_only, args.allow_mass_delete
    )


def run_drift(
    cfg: AppConfig,
    entities: list[str] | None,
    date_from: dt.date,
    date_to: dt.date,
    report_only: bool = False,
    allow_mass_delete: bool = False,
) -> int:
    from assets.drift import DRIFT_POLICY_TAG
    from pipelines.definitions import DRIFT_JOB
    from pipelines.runner import run_job

    runs = run_job(
        cfg,
        DRIFT_JOB,
        entities,
        date_from,
        date_to,
        allow_mass_delete=allow_mass_delete,
        tags={DRIFT_POLICY_TAG: "report"} if report_only else None,
        progress=lambda m: print(m, flush=True),
    )
    for run in runs:
        for msg in run.messages:
            print(f"{run.entity_key}: {msg}")
    return print_drift(cfg, [(r.entity_key, r.run_id, r.status) for r in runs])


def print_drift(cfg: AppConfig, runs: list[tuple[str, str, str]]) -> int:
    """Print the drift summary of these runs (entity, run id, status); exit status."""
    from dagster import DagsterEventType, DagsterInstance

    from assets.drift import KINDS, SYNC_DRIFT
    from assets.drift_report import PLOT_NAME, REPORT_NAME

    instance = DagsterInstance.get()
    frames, notes = [], []
    for key, run_id, status in runs:
        events = instance.all_logs(run_id, of_type=DagsterEventType.ASSET_MATERIALIZATION)
        meta = next(
            (
                e.dagster_event.materialization.metadata
                for e in events
                if e.dagster_event.asset_key.to_user_string() == SYNC_DRIFT
            ),
            None,
        )
        if meta is None:
            frames.append(pd.DataFrame([{"legal_entity": key, "status": status}]))
            continue
        summary = pd.DataFrame(meta["summary"].value, columns=["legal_entity", *KINDS, "repaired"])
        frames.append(summary.assign(status=status))
        notes += [f"{key}: {n}" for n in meta["notes"].value]
    table = pd.concat(frames, ignore_index=True)
    for col in (*KINDS, "repaired"):
        table[col] = table[col].fillna(0).astype(int) if col in table else 0
    table = table[["legal_entity", *KINDS, "repaired", "status"]]
    print(f"\ndrift report\n{table.to_string(index=False)}")
    for note in notes:
        print(note)
    reports = cfg.reports_dir()
    print(f"drift report: {reports / REPORT_NAME}\ndrift plot: {reports / PLOT_NAME}")
    print(f"GX Data Docs of the diff validations: {cfg.data_docs_dir() / 'index.html'}")
    bad = [f"{k} ({s}, run {r})" for k, r, s in runs if s != "ok"]
    if bad:
        print("drift not measured: " + ", ".join(bad), file=sys.stderr)
    return 1 if bad else 0


def cmd_check(cfg: AppConfig, args: argparse.Namespace) -> int:
    from pipelines.definitions import build_resources
    from resources.providers.base import FatalProviderError

    resources = build_resources(cfg)
    settings, hr = resources["settings"], resources["hr"]
    sample = args.sample
    chosen = [t for t in cfg.targets if not args.target or t.name in args.target]
    if not sample and any(t.team is None for t in chosen):  # team targets name their calendars
        try:
            sample = hr.sample_email()
        except Exception as err:  # noqa: BLE001 - the HR database itself may be what is wrong
            print(
                f"HR database: cannot read a sample mailbox ({err}); pass --sample", file=sys.stderr
            )
            return 2
    ok = True
    for target in chosen:
        for calendar in calendars_to_check(target, hr, sample):
            try:
                rep = settings.provider(target.name).check(calendar)
                print(rep.render())
                ok &= rep.ok
            except FatalProviderError as err:
                print(f"target {target.name}: PROBLEMS FOUND\n  [FAIL] {err}")
                ok = False
                break  # the whole target cannot work: the next calendar would say the same
    return 0 if ok else 1


def calendars_to_check(target, hr, sample: str | None) -> list[str]:
    """A personal target's sample mailbox; every shared calendar of a team target."""
    from assets.render import team_feed_of
    from pipelines.feeds import shared_calendars

    if target.team is None:
        return [sample]
    return shared_calendars(target, hr) or [team_feed_of("_check")]


def cmd_feeds(cfg: AppConfig, args: argparse.Namespace) -> int:
    from pipelines.feeds import feeds

    return feeds(cfg, args.target, args.csv, args.rotate)


def cmd_entities(cfg: AppConfig, args: argparse.Namespace) -> int:
    # Only the HR resource and the instance: importing the asset graph would double the time.
    from dagster import DagsterInstance

    from pipelines.runner import ensure_dagster_home, sync_entity_partitions
    from resources.hr import HRDatabase

    ensure_dagster_home(cfg)
    hr = HRDatabase(url=cfg.hr_url_in_file(), url_env=cfg.hr.url_env, query=cfg.hr.query)
    keys = sync_entity_partitions(DagsterInstance.get(), hr)
    print("\n".join(keys))
    return 0


if __name__ == "__main__":
    sys.exit(main())
