"""Small text renderings of frames for asset metadata and the CLI."""

from __future__ import annotations

import pandas as pd


def markdown_table(frame: pd.DataFrame, limit: int = 200) -> str:
    """A GitHub-style markdown table of the first ``limit`` rows."""
    if frame.empty:
        return "_none_"
    head = frame.head(limit)
    cols = [str(c) for c in head.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for row in head.itertuples(index=False):
        cells = [str(v).replace("|", "\\|").replace("\n", " ")[:120] for v in row]
        lines.append("| " + " | ".join(cells) + " |")
    if len(frame) > limit:
        lines.append(f"\n_{len(frame) - limit} more rows_")
    return "\n".join(lines)
