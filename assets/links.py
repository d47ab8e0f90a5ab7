"""Links to the reports folder from asset and check metadata: http(s) when served, else a path."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import quote

from dagster import MetadataValue

from resources.config import AppConfig


def report_link(cfg: AppConfig, path: Path) -> MetadataValue:
    """A URL under ``reports.base_url`` for a file in the reports folder, otherwise its path.

    The UI is an http(s) page: a browser opens no file:// link from it, so without a base URL
    the operator gets the path on the server rather than a dead link.
    """
    path = Path(path).resolve()
    base = cfg.reports.base_url
    if base:
        try:
            relative = path.relative_to(cfg.reports_dir())
        except ValueError:
            return MetadataValue.path(str(path))
        return MetadataValue.url(f"{base.rstrip('/')}/{quote(relative.as_posix())}")
    return MetadataValue.path(str(path))
