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


def render_html(
    runs: pd.DataFrame,
    summary: pd.DataFrame,
    by_entity_and_date: pd.DataFrame,
    findings: pd.DataFrame,
    notes: list[str],
    plot_name: str,
) -> str:
    """The report page: this run's drift, its findings, what stopped a repair, the history."""
    recent = runs.tail(HISTORY_ROWS).iloc[::-1]
    items = "".join(f"<li>{html.escape(n)}</li>" for n in notes)
    shown = findings.head(500)
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>leavesync drift report</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:2px 8px;text-align:right}}</style></head><body>
<h1>Calendar drift</h1><p>Written {now}. Drift is what the calendars hold that leavesync did
not write: missing, modified, orphan, duplicate and stale events.</p>
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
) -> tuple[Path, Path]:
    """Write drift.html and drift.png into the reports folder; return their paths.

    It renders what drift computed: the per-run history, this run's tables and notes."""
    reports_dir.mkdir(parents=True, exist_ok=True)
    png = plot_history(runs, reports_dir / PLOT_NAME)
    page = reports_dir / REPORT_NAME
    tmp = page.with_name(f".{page.name}.{os.getpid()}.tmp")
    tmp.write_text(
        render_html(runs, summary, by_entity_and_date, findings, notes, PLOT_NAME),
        encoding="utf-8",
    )
    os.replace(tmp, page)
    return page, png
