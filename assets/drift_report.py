"""The drift report: an HTML page and a PNG plot of drift over time, in the reports folder."""

from __future__ import annotations

import datetime as dt
import html
import os
from pathlib import Path

import pandas as pd

REPORT_NAME = "drift.html"
PLOT_NAME = "drift.png"
HISTORY_ROWS = 60
# Columns of the per-run history that are not a kind of drift.
_NOT_KINDS = ("at", "run_id", "repaired")


def plot_history(runs: pd.DataFrame, path: Path) -> Path:
    """One line per kind of drift over the runs (one row per run), written atomically as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    kinds = [c for c in runs.columns if c not in _NOT_KINDS]
    fig, ax = plt.subplots(figsize=(9, 4), dpi=100)
    try:
        for kind in kinds:
            ax.plot(pd.to_datetime(runs["at"]), runs[kind], marker="o", markersize=3, label=kind)
        ax.set_title("Calendar drift per run (all targets and legal entities)")
        ax.set_ylabel("events")
        ax.set_ylim(bottom=0, top=max(1, int(runs[kinds].to_numpy().max(initial=0))) * 1.1)
        ax.yaxis.get_major_locator().set_params(integer=True)
        ax.legend(loc="upper left", fontsize="small")
        ax.grid(alpha=0.3)
        if runs.empty:
            ax.text(0.5, 0.5, "no drift measured yet", ha="center", transform=ax.transAxes)
        fig.autofmt_xdate()
        fig.tight_layout()
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        fig.savefig(tmp, format="png")
        os.replace(tmp, path)
    finally:
        plt.close(fig)
    return path


def entity_sections(per_entity: pd.DataFrame, findings: pd.DataFrame, run_id: str | None) -> str:
    """One section per legal entity: its latest drift run's counts per target, and the
    findings of that run when it is this one."""
    if per_entity.empty:
        return "<p>No drift run recorded yet.</p>"
    out = []
    for entity, rows in per_entity.groupby("legal_entity", sort=True):
        first = rows.iloc[0]
        kinds = [c for c in rows.columns if c not in ("legal_entity", "at", "run_id", "target")]
        drifted = int(rows[[k for k in kinds if k != "repaired"]].to_numpy().sum())
        at = pd.Timestamp(first["at"]).strftime("%Y-%m-%d %H:%M UTC")
        this = " (this run)" if run_id and first["run_id"] == run_id else ""
        out.append(
            f'<section class="entity" id="entity-{html.escape(str(entity))}">'
            f"<h3>{html.escape(str(entity))}</h3>"
            f"<p>Latest drift run {at}, run {html.escape(str(first['run_id']))}{this}: "
            f"{drifted} drifted events, {int(rows['repaired'].sum())} repaired.</p>"
            + rows[["target", *kinds]].to_html(index=False)
        )
        mine = findings[findings["legal_entity"].astype(str) == str(entity)] if this else None
        if mine is not None and len(mine):
            out.append(mine.head(100).to_html(index=False))
        out.append("</section>")
    return "".join(out)


def render_html(
    runs: pd.DataFrame,
    summary: pd.DataFrame,
    by_entity_and_date: pd.DataFrame,
    findings: pd.DataFrame,
    notes: list[str],
    plot_name: str,
    per_entity: pd.DataFrame | None = None,
    run_id: str | None = None,
) -> str:
    """The report page: every legal entity's latest drift, this run's drift and findings,
    what stopped a repair, the history."""
    recent = runs.tail(HISTORY_ROWS).iloc[::-1]
    items = "".join(f"<li>{html.escape(n)}</li>" for n in notes)
    shown = findings.head(500)
    sections = entity_sections(per_entity, findings, run_id) if per_entity is not None else ""
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>leavesync drift report</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:2px 8px;text-align:right}}</style></head><body>
<h1>Calendar drift</h1><p>Written {now}. Drift is what the calendars hold that leavesync did
not write: missing, modified, orphan, duplicate and stale events.</p>
{f"<h2>Per legal entity: each one's latest drift run</h2>{sections}" if sections else ""}
<h2>This run, per legal entity</h2>{summary.to_html(index=False)}
<h2>This run, per legal entity and date</h2>{by_entity_and_date.to_html(index=False)}
{f"<h2>Not repaired</h2><ul>{items}</ul>" if items else ""}
<h2>Findings</h2>{shown.to_html(index=False) if len(shown) else "<p>none</p>"}
<h2>Over time</h2><img src="{html.escape(plot_name)}" alt="drift over time">
{recent.to_html(index=False)}
</body></html>
"""


def write_report(
    reports_dir: Path,
    runs: pd.DataFrame,
    summary: pd.DataFrame,
    by_entity_and_date: pd.DataFrame,
    findings: pd.DataFrame,
    notes: list[str],
    per_entity: pd.DataFrame | None = None,
    run_id: str | None = None,
) -> tuple[Path, Path]:
    """Write drift.html and drift.png into the reports folder; return their paths.

    It renders what drift computed: the per-run history, every legal entity's latest run
    (``per_entity``), this run's tables and notes."""
    reports_dir.mkdir(parents=True, exist_ok=True)
    png = plot_history(runs, reports_dir / PLOT_NAME)
    page = reports_dir / REPORT_NAME
    tmp = page.with_name(f".{page.name}.{os.getpid()}.tmp")
    tmp.write_text(
        render_html(
            runs, summary, by_entity_and_date, findings, notes, PLOT_NAME, per_entity, run_id
        ),
        encoding="utf-8",
    )
    os.replace(tmp, page)
    return page, png
