"""The browser check (`make ui-check`): the Dagster UI of `make ui` on the demo, in Chromium.

First two `leavesync sync --entity` runs from the CLI: one legal entity blocked by the
delete guard (its leaves cancelled in HR for that run, then restored), then another that
passes. Then starts `make ui` on the demo's instance, drives Debian's Chromium with
Playwright and checks what an operator sees: the asset graph with the four assets, an
asset's partitions, a check's metadata, the CLI run listed on the `reconcile` job's page, the
blocked entity's check still red after the other entity's run passed, the quarantine table
(employee, leave, rule), the Data Docs with the network off, the automation page with the
schedules running, the drift report's section per legal entity and its plot, and a backfill
launched through the UI's own dialog until it completes. Screenshots go to the reports
folder (`ui-check/`); `--readme` also refreshes the two shown in the README (assets/).
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

import sqlalchemy as sa
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
GROUPS = ("hr", "reconciliation", "drift")
TIMEOUT_MS = 120_000
# The demo's legal entities the CLI runs use: BLOCKED is refused by the delete guard, SYNCED
# passes (and holds the demo's end-before-start row, quarantined). The backfill uses others.
BLOCKED, SYNCED = "BR", "FR"
JOB_RUNS = "/locations/__repository__@leavesync/jobs/reconcile/runs"


def _entity_leaves(hr: sa.Engine, entity: str) -> dict[int, str]:
    with hr.connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT l.id, l.status FROM leaves l JOIN employees e ON e.id = l.employee_id "
                "WHERE e.legal_entity = :entity"
            ),
            {"entity": entity},
        ).all()
    return {int(i): str(s) for i, s in rows}


def _set_statuses(hr: sa.Engine, statuses: dict[int, str]) -> None:
    # updated_at is left alone, so the UI's near-real-time sensor does not start its own run
    # of the entity: its verdict stays the CLI run's until the check is done.
    with hr.begin() as conn:
        conn.execute(
            sa.text("UPDATE leaves SET status = :status WHERE id = :id"),
            [{"id": i, "status": s} for i, s in statuses.items()],
        )


def cli_runs(home: Path, env: dict[str, str]) -> dict[str, str]:
    """`leavesync sync --entity BLOCKED` (blocked), then `--entity SYNCED` (ok), as a user
    runs them; HR is restored between the two. Returns what the UI must show."""
    leavesync = str(Path(sys.executable).parent / "leavesync")
    hr = sa.create_engine(f"sqlite:///{home / 'hr.sqlite'}")
    before = _entity_leaves(hr, BLOCKED)
    _set_statuses(hr, dict.fromkeys(before, "cancelled"))
    try:
        blocked = subprocess.run(
            [leavesync, "sync", "--entity", BLOCKED], env=env, capture_output=True, text=True
        )
    finally:
        _set_statuses(hr, before)
    said = blocked.stdout + blocked.stderr
    if blocked.returncode != 1 or f"not reconciled: {BLOCKED} (blocked" not in said:
        raise SystemExit(
            f"ui-check: {BLOCKED} was not blocked (exit {blocked.returncode}):\n{said}"
        )
    synced = subprocess.run(
        [leavesync, "sync", "--entity", SYNCED], env=env, capture_output=True, text=True
    )
    if synced.returncode != 0:
        raise SystemExit(f"ui-check: {SYNCED} did not sync:\n{synced.stdout}{synced.stderr}")
    with hr.connect() as conn:
        email, leave_id = conn.execute(
            sa.text(
                "SELECT e.email, l.id FROM leaves l JOIN employees e ON e.id = l.employee_id "
                "WHERE e.legal_entity = :entity AND l.end_date < l.start_date"
            ),
            {"entity": SYNCED},
        ).one()
    hr.dispose()
    return {"quarantined_employee": email, "quarantined_leave": str(leave_id)}


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

    def __init__(
        self, page: Page, url: str, shots: Path, reports: Path, cli: dict[str, str]
    ) -> None:
        self.page, self.url, self.shots, self.reports = page, url, shots, reports
        self.cli = cli
        self.saved: list[Path] = []

    def graphql(self, query: str, variables: dict | None = None) -> dict:
        resp = self.page.request.post(
            f"{self.url}/graphql", data={"query": query, "variables": variables or {}}
        )
        payload = resp.json()
        assert "errors" not in payload, payload
        return payload["data"]

    def shot(self, name: str) -> Path:
        path = self.shots / f"{name}.png"
        self.page.screenshot(path=str(path))
        self.saved.append(path)
        return path

    def go(self, path: str) -> None:
        self.page.goto(f"{self.url}{path}", wait_until="domcontentloaded")

    def asset_graph(self) -> None:
        self.go("/asset-groups")
        # Three groups (hr, reconciliation, drift) start collapsed: the graph's own menu.
        for group in GROUPS:
            expect(self.page.get_by_text(group, exact=True).last).to_be_visible(timeout=TIMEOUT_MS)
        self.page.wait_for_timeout(1500)  # the graph lays out before its menu opens
        self.page.get_by_role("button", name="settings", exact=True).click()
        self.page.get_by_role("menuitem").filter(has_text="Expand all groups").click()
        self.page.keyboard.press("Escape")
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

    def cli_run_listed(self) -> None:
        """The CLI's run is listed on the reconcile job's page, like the daemon's runs."""
        runs = self.graphql(
            """query ($tags: [ExecutionTag!]) {
                 runsOrError(filter: {tags: $tags}, limit: 1) {
                   ... on Runs { results { runId jobName } } } }""",
            {
                "tags": [
                    {"key": "leavesync/trigger", "value": "cli"},
                    {"key": "leavesync/legal_entity", "value": SYNCED},
                ]
            },
        )["runsOrError"]["results"]
        assert runs and runs[0]["jobName"] == "reconcile", runs
        self.go(JOB_RUNS)
        expect(self.page.get_by_text(runs[0]["runId"][:8]).first).to_be_visible(timeout=TIMEOUT_MS)
        expect(self.page.get_by_text("leavesync/trigger: cli").first).to_be_visible()
        self.shot("reconcile-job-runs")

    def blocked_entity_stays_red(self) -> None:
        """SYNCED's later run passed diff_is_safe; the per-entity check still names BLOCKED."""
        self.go("/assets/leave_diff?view=checks&checkDetail=diff_is_safe")
        main = self.page
        expect(main.get_by_text("Passed").first).to_be_visible(timeout=TIMEOUT_MS)
        self.go("/assets/leave_diff?view=checks&checkDetail=every_entity_reconcilable")
        expect(main.get_by_text(f"blocked: {BLOCKED}").first).to_be_visible(timeout=TIMEOUT_MS)
        expect(main.get_by_text("Failed").first).to_be_visible()
        expect(main.get_by_text("refused: it would delete").first).to_be_visible()
        self.shot("blocked-entity-check")

    def quarantine_table(self) -> None:
        """rows_are_valid shows the quarantine as a table: employee, leave, rule."""
        self.go("/assets/leave_diff?view=checks&checkDetail=rows_are_valid")
        main = self.page
        for header in ("employee", "leave_id", "legal_entity", "rule", "severity", "value"):
            expect(main.get_by_text(header, exact=True).first).to_be_visible(timeout=TIMEOUT_MS)
        row = main.locator("tr", has_text=self.cli["quarantined_employee"]).filter(
            has_text="end_before_start"
        )
        expect(row.first).to_be_visible()
        expect(row.first.get_by_text(self.cli["quarantined_leave"], exact=True)).to_be_visible()
        assert "NaN" not in main.inner_text("body"), "NaN shown in the check metadata"
        self.shot("quarantine-table")

    def data_docs_offline(self) -> None:
        """The Data Docs index and a validation page render with the network off."""
        index = self.reports / "data_docs" / "index.html"
        context = self.page.context
        page = context.new_page()
        context.set_offline(True)
        try:
            page.goto(index.as_uri())
            expect(page.get_by_text("leavesync: diff validations")).to_be_visible()
            page.locator("a[href^='validations/']").first.click()
            expect(page.get_by_text("the event key is leave-<leave id>")).to_be_visible()
            text = page.inner_text("body")
            assert "NaN" not in text, "NaN in the Data Docs page"
            page.screenshot(path=str(self.shots / "data-docs-offline.png"))
        finally:
            context.set_offline(False)
            page.close()

    def automation(self) -> None:
        self.go("/automation")
        # The demo's HR is embedded: the near-real-time sensor hr_changes runs too.
        names = ("nightly_reconciliation", "drift_report", "legal_entities_from_hr", "hr_changes")
        for name in names:
            expect(self.page.get_by_text(name, exact=True).first).to_be_visible(timeout=TIMEOUT_MS)
        # Each row has a selection box (unchecked) and its running toggle: all on.
        on = self.page.locator("input[type=checkbox]:checked")
        expect(on).to_have_count(len(names), timeout=TIMEOUT_MS)
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
        """The drift report has a section per legal entity; its plot, as the sync_drift
        asset's metadata names it."""
        self.go("/assets/sync_drift")
        expect(self.page.get_by_text("plot", exact=True).first).to_be_visible(timeout=TIMEOUT_MS)
        self.page.goto((self.reports / "drift.html").as_uri())
        for entity in (BLOCKED, SYNCED):
            section = self.page.locator(f"section.entity#entity-{entity}")
            expect(section.get_by_role("heading", name=entity)).to_be_visible()
        plot = self.reports / "drift.png"
        self.page.goto(plot.as_uri())
        self.shot("drift-plot")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--readme", action="store_true", help="refresh the README's screenshots")
    parser.add_argument("--port", type=int, default=0, help="the UI's port (default: a free one)")
    parser.add_argument("--url", help="check a UI already running there instead of `make ui`")
    parser.add_argument("--steps", help="only these steps, comma-separated (default: all)")
    args = parser.parse_args(argv)

    home = Path(os.environ.get("LEAVESYNC_HOME", REPO / ".leavesync")).resolve()
    env = {**os.environ, "LEAVESYNC_HOME": str(home), "DAGSTER_HOME": str(home / "dagster")}
    port = args.port or free_port()
    url = args.url or f"http://127.0.0.1:{port}"
    shots = home / "reports" / "ui-check"
    shots.mkdir(parents=True, exist_ok=True)

    cli = cli_runs(home, env)
    print(f"ui-check: cli runs: {BLOCKED} blocked, {SYNCED} ok")
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
            check = Check(page, url, shots, home / "reports", cli)
            for step in (
                check.asset_graph,
                check.partitions,
                check.check_metadata,
                check.cli_run_listed,
                check.blocked_entity_stays_red,
                check.quarantine_table,
                check.data_docs_offline,
                check.automation,
                check.drift_plot,
                check.backfill,
            ):
                if args.steps and step.__name__ not in args.steps.split(","):
                    continue
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
