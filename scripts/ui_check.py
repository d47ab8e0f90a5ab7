"""The browser check (`make ui-check`): the Dagster UI of `make ui` on the demo, in Chromium.

Starts `make ui` on the demo's instance, drives Debian's Chromium with Playwright and checks
what an operator sees: the asset graph with the four assets, an asset's partitions, a check's
metadata, the automation page with the schedules running, and a backfill launched through
the UI's own dialog until it completes. Screenshots go to the reports folder
(`ui-check/`); `--readme` also refreshes the two shown in the README (assets/).
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from playwright.sync_api import Page, expect, sync_playwright

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ASSETS = ("hr_leaves", "leave_diff", "calendar_sync", "sync_drift")
TIMEOUT_MS = 120_000


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_ui(url: str, proc: subprocess.Popen, seconds: float = 300) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"ui-check: `make ui` exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/server_info", timeout=5) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        time.sleep(1)
    raise SystemExit(f"ui-check: the UI did not answer at {url} within {seconds:.0f} s")


class Check:
    """One browser session on the UI; each step checks what the page shows and saves it."""

    def __init__(self, page: Page, url: str, shots: Path, reports: Path) -> None:
        self.page, self.url, self.shots, self.reports = page, url, shots, reports
        self.saved: list[Path] = []

    def shot(self, name: str) -> Path:
        path = self.shots / f"{name}.png"
        self.page.screenshot(path=str(path))
        self.saved.append(path)
        return path

    def go(self, path: str) -> None:
        self.page.goto(f"{self.url}{path}", wait_until="domcontentloaded")

    def asset_graph(self) -> None:
        self.go("/asset-groups")
        for name in ASSETS:
            expect(self.page.get_by_text(name, exact=True).first).to_be_visible(timeout=TIMEOUT_MS)
        # No first-run pop-up over the graph (instance setting nux: enabled: false).
        expect(self.page.get_by_text("Join the Dagster community")).to_have_count(0)
        self.page.wait_for_timeout(1500)
        self.shot("asset-graph")

    def partitions(self) -> None:
        self.go("/assets/calendar_sync?view=partitions")
        # The legal entities (one partition dimension) are listed by their keys.
        for key in ("FR", "JP", "US-NY"):
            expect(self.page.get_by_text(key, exact=True).first).to_be_visible(timeout=TIMEOUT_MS)
        self.shot("partitions")

    def check_metadata(self) -> None:
        self.go("/assets/leave_diff?view=checks")
        expect(self.page.get_by_text("diff_is_safe").first).to_be_visible(timeout=TIMEOUT_MS)
        self.page.get_by_text("diff_is_safe").first.click()
        expect(self.page.get_by_text("Metadata").first).to_be_visible(timeout=TIMEOUT_MS)
        self.shot("check-metadata")

    def automation(self) -> None:
        self.go("/automation")
        for name in ("nightly_reconciliation", "drift_report", "legal_entities_from_hr"):
            expect(self.page.get_by_text(name, exact=True).first).to_be_visible(timeout=TIMEOUT_MS)
        # Each row has a selection box (unchecked) and its running toggle: three on.
        on = self.page.locator("input[type=checkbox]:checked")
        expect(on).to_have_count(3, timeout=TIMEOUT_MS)
        self.shot("automation")

    def backfill(self) -> None:
        """Materialize all, latest month x two legal entities, through the launch dialog."""
        self.go("/asset-groups")
        self.page.get_by_role("button", name=re.compile("Materialize all")).click()
        dialog = self.page.get_by_role("dialog")
        expect(dialog.get_by_text("Partition selection")).to_be_visible(timeout=TIMEOUT_MS)
        dialog.get_by_role("button", name="Latest").click()
        dialog.get_by_text("Select a partition or create one").click()
        for key in ("FR", "JP"):
            self.page.get_by_text(key, exact=True).first.click()
        dialog.get_by_text(re.compile("^Launch runs to materialize")).click()  # closes the list
        expect(dialog.get_by_text("2 partitions")).to_be_visible(timeout=TIMEOUT_MS)
        self.shot("backfill-dialog")
        dialog.get_by_role("button", name="Launch backfill").click()
        expect(self.page.get_by_role("dialog")).to_have_count(0, timeout=TIMEOUT_MS)
        # Its status as the UI's own GraphQL endpoint reports it, then its page.
        query = "{ partitionBackfillsOrError(limit: 1) { ... on PartitionBackfills { results { id status } } } }"
        deadline = time.monotonic() + 900
        while True:
            resp = self.page.request.post(f"{self.url}/graphql", data={"query": query})
            latest = resp.json()["data"]["partitionBackfillsOrError"]["results"][0]
            if latest["status"] not in ("REQUESTED", "CANCELING"):
                break
            assert time.monotonic() < deadline, f"backfill {latest['id']} still {latest['status']}"
            time.sleep(3)
        assert latest["status"] == "COMPLETED_SUCCESS", latest
        self.go(f"/runs/b/{latest['id']}")
        expect(self.page.get_by_text(latest["id"]).first).to_be_visible(timeout=TIMEOUT_MS)
        self.shot("backfill-completed")

    def drift_plot(self) -> None:
        """The drift report's plot, as the sync_drift asset's metadata names it."""
        self.go("/assets/sync_drift")
        expect(self.page.get_by_text("plot", exact=True).first).to_be_visible(timeout=TIMEOUT_MS)
        plot = self.reports / "drift.png"
        self.page.goto(plot.as_uri())
        self.shot("drift-plot")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--readme", action="store_true", help="refresh the README's screenshots")
    parser.add_argument("--port", type=int, default=0, help="the UI's port (default: a free one)")
    parser.add_argument("--url", help="check a UI already running there instead of `make ui`")
    args = parser.parse_args(argv)

    home = Path(os.environ.get("LEAVESYNC_HOME", REPO / ".leavesync")).resolve()
    env = {**os.environ, "LEAVESYNC_HOME": str(home), "DAGSTER_HOME": str(home / "dagster")}
    port = args.port or free_port()
    url = args.url or f"http://127.0.0.1:{port}"
    shots = home / "reports" / "ui-check"
    shots.mkdir(parents=True, exist_ok=True)

    ui = (
        None
        if args.url
        else subprocess.Popen(
            ["make", "--no-print-directory", "ui", f"UI_PORT={port}"],
            cwd=REPO,
            env=env,
            stdout=open(home / "ui-check.log", "w"),  # noqa: SIM115 - lives as long as the UI
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    )
    try:
        if ui is not None:
            wait_for_ui(url, ui)
        with tempfile.TemporaryDirectory() as profile, sync_playwright() as pw:
            # A fresh profile each time (Playwright passes it as --user-data-dir).
            browser = pw.chromium.launch_persistent_context(
                profile,
                executable_path=CHROMIUM,
                args=CHROMIUM_FLAGS,
                viewport={"width": 1440, "height": 900},
            )
            page = browser.new_page()
            check = Check(page, url, shots, home / "reports")
            for step in (
                check.asset_graph,
                check.partitions,
                check.check_metadata,
                check.automation,
                check.drift_plot,
                check.backfill,
            ):
                started = time.monotonic()
                step()
                print(f"ui-check: {step.__name__}: ok ({time.monotonic() - started:.1f} s)")
            browser.close()
        print(f"ui-check: screenshots in {shots}")
        if args.readme:
            for name in ("asset-graph", "drift-plot"):
                src = shots / f"{name}.png"
                (REPO / "assets" / f"ui-{name}.png").write_bytes(src.read_bytes())
        return 0
    finally:
        if ui is not None:
            os.killpg(ui.pid, signal.SIGTERM)
            try:
                ui.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(ui.pid, signal.SIGKILL)


if __name__ == "__main__":
    sys.exit(main())
