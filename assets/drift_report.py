"""The drift report: an HTML page and a PNG plot of drift over time, in the reports folder."""

from __future__ import annotations

import datetime as dt
import html
import os
from pathlib import Path

import pandas as pd

from assets.drift import KINDS, DriftReport

REPORT_NAME = "drift.html"
PLOT_NAME = "drift.png"
HISTORY_ROWS = 60


def history_by_run(history: pd.DataFrame) -> pd.DataFrame:
    """Drift counts per run (all targets and legal entities), one column per kind."""
    if history.empty:
        return pd.DataFrame(columns=["at", "run_id", *KINDS, "repaired"])
    counts = history.pivot_table(
        index=["at", "run_id"], columns="kind", values="count", aggfunc="sum", fill_value=0
    ).reindex(columns=list(KINDS), fill_value=0)
    counts["repaired"] = history.groupby(["at", "run_id"])["repaired"].sum()
    return counts.astype(int).reset_index().rename_axis(None, axis=1).sort_values("at")


def plot_history(history: pd.DataFrame, path: Path) -> Path:
    """One line per kind of drift over the runs, written atomically as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    runs = history_by_run(history)
    fig, ax = plt.subplots(figsize=(9, 4), dpi=100)
    try:
        for kind in KINDS:
            ax.plot(pd.to_datetime(runs["at"]), runs[kind], marker="o", markersize=3, label=kind)
        ax.set_title("Calendar drift per run (all targets and legal entities)")
        ax.set_ylabel("events")
        ax.set_ylim(bottom=0, top=max(1, int(runs[list(KINDS)].to_numpy().max(initial=0))) * 1.1)
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


def render_html(report: DriftReport, history: pd.DataFrame, plot_name: str) -> str:
    """The report page: this run's drift, its findings, what stopped a repair, the history."""
    runs = history_by_run(history).tail(HISTORY_ROWS).iloc[::-1]
    notes = "".join(f"<li>{html.escape(n)}</li>" for n in [*report.errors, *report.notes])
    findings = report.findings.head(500)
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>leavesync drift report</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:2px 8px;text-align:right}}</style></head><body>
<h1>Calendar drift</h1><p>Written {now}. Drift is what the calendars hold that leavesync did
not write: missing, modified, orphan, duplicate and stale events.</p>
<h2>This run, per legal entity</h2>{report.summary().to_html(index=False)}
<h2>This run, per legal entity and date</h2>{report.by_entity_and_date().to_html(index=False)}
{f"<h2>Not repaired</h2><ul>{notes}</ul>" if notes else ""}
<h2>Findings</h2>{findings.to_html(index=False) if len(findings) else "<p>none</p>"}
<h2>Over time</h2><img src="{html.escape(plot_name)}" alt="drift over time">
{runs.to_html(index=False)}
</body></html>
"""


def write_report(
    reports_dir: Path, history: pd.DataFrame, report: DriftReport
) -> tuple[Path, Path]:
    """Write drift.html and drift.png into the reports folder; return their paths."""
    reports_dir.mkdir(parents=True, exist_ok=True)
    png = plot_history(history, reports_dir / PLOT_NAME)
    page = reports_dir / REPORT_NAME
    tmp = page.with_name(f".{page.name}.{os.getpid()}.tmp")
    tmp.write_text(render_html(report, history, PLOT_NAME), encoding="utf-8")
    os.replace(tmp, page)
    return page, png
