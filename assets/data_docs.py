"""Data Docs of the diff validations: self-contained HTML pages (no script, no network)."""

from __future__ import annotations

import datetime as dt
import html
import json
import re
from pathlib import Path

STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 2em; color: #1d2330; }
h1 { font-size: 1.4em; } table { border-collapse: collapse; margin-top: 1em; }
th, td { border: 1px solid #cfd6e4; padding: .35em .6em; text-align: left; vertical-align: top; }
th { background: #eef2f8; } .passed { color: #1a7f37; } .failed { color: #cf222e; font-weight: bold; }
.error { color: #9a6700; } code { font-size: .95em; }
"""


def _page(title: str, body: str) -> str:
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{STYLE}</style></head>"
        f"<body>{body}</body></html>\n"
    )


def _name(run_name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", run_name)[:120] or "run"


def render_validation(verdict, run_name: str, at: str) -> str:
    """One validation: every expectation, its verdict, rows checked, failures, examples."""
    e = html.escape
    rows = []
    for o in verdict.outcomes:
        state = "error" if o.error else ("passed" if o.success else "failed")
        rows.append(
            "<tr>"
            f"<td><code>{e(o.rule)}</code></td><td>{e(o.description)}</td>"
            f'<td class="{state}">{state}</td><td>{o.checked}</td><td>{o.unexpected}</td>'
            f"<td>{e(o.percent())}</td><td>{e(', '.join(o.legal_entities))}</td>"
            f"<td>{e(', '.join(o.event_keys))}{e(' ' + o.error) if o.error else ''}</td>"
            "</tr>"
        )
    outcome = "passed" if verdict.success else "failed"
    body = (
        f"<h1>Diff validation {e(run_name)}</h1>"
        f"<p>Suite <code>leave_diff</code> on {verdict.evaluated} changes, {e(at)}: "
        f'<span class="{outcome}">{outcome}</span>. <a href="../index.html">All validations</a></p>'
        "<table><thead><tr><th>rule</th><th>expectation</th><th>result</th><th>rows checked</th>"
        "<th>unexpected</th><th>unexpected %</th><th>legal entities</th><th>examples</th>"
        f"</tr></thead><tbody>{''.join(rows)}</tbody></table>"
    )
    return _page(f"Diff validation {run_name}", body)


def render_index(entries: list[dict]) -> str:
    e = html.escape
    rows = "".join(
        f'<tr><td><a href="validations/{e(x["file"])}">{e(x["run"])}</a></td><td>{e(x["at"])}</td>'
        f'<td class="{"passed" if x["success"] else "failed"}">'
        f"{'passed' if x['success'] else 'failed'}</td><td>{x['changes']}</td>"
        f"<td>{e(', '.join(x['failed_rules']))}</td></tr>"
        for x in entries
    )
    body = (
        "<h1>leavesync: diff validations</h1>"
        "<p>Newest first. Each run's diff is validated before anything is applied.</p>"
        "<table><thead><tr><th>run</th><th>at</th><th>result</th><th>changes</th>"
        f"<th>failed rules</th></tr></thead><tbody>{rows}</tbody></table>"
    )
    return _page("leavesync diff validations", body)


def publish(verdict, run_name: str, docs_dir: Path, results_dir: Path, keep: int):
    """Write this validation's page and summary, prune to ``keep``, rewrite the index."""
    now = dt.datetime.now(dt.UTC)
    at = now.isoformat(timespec="seconds")
    name = _name(run_name)
    pages = docs_dir / "validations"
    pages.mkdir(parents=True, exist_ok=True)
    results_dir.mkdir(parents=True, exist_ok=True)
    page = pages / f"{name}.html"
    page.write_text(render_validation(verdict, run_name, at), encoding="utf-8")
    entry = {
        "run": run_name,
        "file": page.name,
        "at": at,
        "ts": now.isoformat(timespec="microseconds"),
        "success": verdict.success,
        "changes": verdict.evaluated,
        "failed_rules": [o.rule for o in verdict.failures],
    }
    (results_dir / f"{name}.json").write_text(json.dumps(entry), encoding="utf-8")
    entries = []
    for path in results_dir.glob("*.json"):
        try:
            entries.append(json.loads(path.read_text(encoding="utf-8")) | {"_path": str(path)})
        except (OSError, ValueError):
            continue
    entries.sort(key=lambda x: x.get("ts", x["at"]), reverse=True)
    for old in entries[max(keep, 1) :]:
        Path(old["_path"]).unlink(missing_ok=True)
        (pages / old["file"]).unlink(missing_ok=True)
    index = docs_dir / "index.html"
    index.write_text(render_index(entries[: max(keep, 1)]), encoding="utf-8")
    return page, index
