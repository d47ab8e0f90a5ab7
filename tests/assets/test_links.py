"""Report links in metadata: http(s) under reports.base_url, a path otherwise (never file://)."""

from assets.links import report_link
from resources.config import AppConfig


def test_reports_link_over_http_when_served(tmp_path, monkeypatch):
    monkeypatch.setenv("LEAVESYNC_HOME", str(tmp_path))
    cfg = AppConfig.model_validate({"reports": {"base_url": "https://reports.example.com/ls/"}})
    page = cfg.reports_dir() / "data_docs" / "run 1.html"
    link = report_link(cfg, page)
    assert link.value == "https://reports.example.com/ls/data_docs/run%201.html"
    outside = report_link(cfg, tmp_path / "elsewhere.txt")
    assert outside.value == str(tmp_path / "elsewhere.txt")


def test_a_path_without_base_url(tmp_path, monkeypatch):
    monkeypatch.setenv("LEAVESYNC_HOME", str(tmp_path))
    cfg = AppConfig()
    link = report_link(cfg, cfg.reports_dir() / "drift.html")
    assert link.value == str(tmp_path / "reports" / "drift.html")
    assert not link.value.startswith("file:")
