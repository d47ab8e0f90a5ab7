"""Chaos trials: the real CLI killed, faulted and robbed of its state, on every target.

For each target (ics, google, microsoft_graph, ews, caldav on Radicale) against its emulator
or server, each phase on a fresh calendar, HR database, state store and Dagster instance:

- kill: N trials of an HR change (new leaves, edits, cancellations), ``leavesync sync`` in a
  subprocess, ``kill -9`` at a random moment of its apply, re-run until it exits 0; every
  other trial HR also edits 30% of the leaves while the sync is down (#20). After each
  trial the calendar is read back independently and compared with HR. A drift run at the
  end must leave nothing stale.
- faults: 500 events, then 200 changes, with 30% of requests answered by 429 (Retry-After),
  503, a connection dropped before or after the write, or a slow answer: one sync each, exit
  0, every change once.
- lost state (#20): the state store deleted, then HR edits 12 leaves, adds 10, cancels 5:
  sync, then drift; and an older copy (a week old: 10 leaves and 4 edits behind) restored,
  then HR edits the leaves it does not know: sync, drift.

The calendar is read by the emulator's own store, the feed files or Radicale's collection
(tests/live_targets.py), never through leavesync's providers. Prints the goals table, writes
bench/results/chaos.json (``--targets`` merges into it), exits 1 when a figure misses its goal.

    python -m bench.chaos [--smoke] [--trials N] [--events N] [--targets ics,google,...]
"""

from __future__ import annotations

import argparse
import datetime as dt
import fcntl
import json
import os
import platform
import random
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import sqlalchemy as sa
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.hr_builder import HRBuilder  # noqa: E402
from tests.live_targets import LiveTarget, live_targets  # noqa: E402

KINDS = ["ics", "google", "microsoft_graph", "ews", "caldav"]
ENTITY = "ACME"
D = dt.date.today() + dt.timedelta(days=3)
TO = D + dt.timedelta(days=120)
CLI = str(Path(sys.executable).with_name("leavesync"))
RESULTS = REPO / "bench" / "results" / "chaos.json"
PHASES = ("kill", "faults", "deleted", "restored")
LINGER_SECONDS = 10.0  # processes of a killed CLI still alive after this are left behind


# -- one phase's world: HR, state, Dagster instance, a live target ----------------------------


class World:
    """A fresh HR database, state store and Dagster instance, and live targets, for one phase.

    Several targets in one world share the HR database and each CLI run (one configuration
    with every target): the phases that need no per-target kill timing cost one run for all.
    """

    def __init__(self, kinds: list[str], phase: str, root: Path, people: int, rng: random.Random):
        self.phase, self.rng = phase, rng
        self.dir = root / f"{'+'.join(kinds)}-{phase}"
        shutil.rmtree(self.dir, ignore_errors=True)
        self.dir.mkdir(parents=True)
        self.mailboxes = [f"{phase[0]}{i}@example.com" for i in range(1, people + 1)]
        self.targets: dict[str, LiveTarget] = {}
        try:
            for kind, target in zip(kinds, live_targets(kinds, self.dir), strict=True):
                target.start(self.mailboxes, "chaos-" + secrets.token_hex(8))
                self.targets[kind] = target
        except BaseException:
            self.stop()
            raise
        engine = sa.create_engine(f"sqlite:///{self.dir / 'hr.sqlite'}")
        self.hr = HRBuilder(engine, defaults=False)
        self.hr.entity(ENTITY, "UTC")
        self.hr.leave_type("PTO", "Paid leave")
        for i, email in enumerate(self.mailboxes, start=1):
            self.hr.employee(i, ENTITY, email)
        self.state = self.dir / "state.sqlite"
        self.config = self.dir / "leavesync.yaml"
        self.config.write_text(
            yaml.safe_dump(
                {
                    "hr": {"url": f"sqlite:///{self.dir / 'hr.sqlite'}"},
                    "state": {"url": f"sqlite:///{self.state}"},
                    "targets": [t.target() for t in self.targets.values()],
                }
            )
        )
        self.env = {
            **os.environ,
            "LEAVESYNC_HOME": str(self.dir / "home"),
            "DAGSTER_HOME": str(self.dir / "dagster"),
            # Ours first; a PYTHONPATH given to the script follows (a hook that plants a bug,
            # to see the trials catch it).
            "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
        }
        for target in self.targets.values():
            self.env.update(target.env())
        self.env.pop("LEAVESYNC_CONFIG", None)
        self.foreign = {}
        for kind, target in self.targets.items():
            for mailbox in self.mailboxes[:3]:
                target.add_foreign(mailbox, D + dt.timedelta(days=5))
            self.foreign[kind] = target.foreign()

    def writes(self) -> int:
        return sum(t.writes() for t in self.targets.values())

    def faults(self, rate: float, seed: int) -> None:
        for target in self.targets.values():
            target.faults(rate, seed)

    def stop(self) -> None:
        for target in self.targets.values():
            target.stop()

    # HR ---------------------------------------------------------------------------------

    def live_leaves(self) -> list[int]:
        with self.hr.engine.connect() as conn:
            return [
                r[0]
                for r in conn.exec_driver_sql(
                    "SELECT id FROM leaves WHERE status IN ('pending','approved') ORDER BY id"
                )
            ]

    def add_leaves(self, n: int) -> list[int]:
        ids = []
        for _ in range(n):
            employee = self.rng.randint(1, len(self.mailboxes))
            start = D + dt.timedelta(days=self.rng.randint(0, 90))
            end = start + dt.timedelta(days=self.rng.randint(0, 4))
            status = self.rng.choice(["approved", "approved", "pending"])
            ids.append(self.hr.leave(employee, start, end, status=status))
        return ids

    def edit_leaves(self, ids: list[int]) -> None:
        """Dates moved (what an independent reader sees), some statuses flipped."""
        for lid in ids:
            start = D + dt.timedelta(days=self.rng.randint(0, 90))
            end = start + dt.timedelta(days=self.rng.randint(0, 4))
            values: dict[str, Any] = {"start_date": start, "end_date": end}
            if self.rng.random() < 0.3:
                values["status"] = self.rng.choice(["approved", "pending"])
            self.hr.update_leave(lid, **values)

    def cancel_leaves(self, ids: list[int]) -> None:
        for lid in ids:
            self.hr.update_leave(lid, status="cancelled")

    def change(self, creates: int, edits: int, cancels: int) -> int:
        live = self.live_leaves()
        picked = self.rng.sample(live, min(len(live), edits + cancels))
        self.edit_leaves(picked[:edits])
        self.cancel_leaves(picked[edits:])
        self.add_leaves(creates)
        return len(picked) + creates

    def wanted(self) -> dict[tuple[str, str], tuple[str, str]]:
        """(calendar, key) -> (first day, day after the last) of every leave HR wants."""
        with self.hr.engine.connect() as conn:
            rows = conn.exec_driver_sql(
                "SELECT l.id, e.email, l.start_date, l.end_date FROM leaves l "
                "JOIN employees e ON e.id = l.employee_id "
                "WHERE l.status IN ('pending', 'approved')"
            ).fetchall()
        out = {}
        for lid, email, start, end in rows:
            start, end = dt.date.fromisoformat(str(start)), dt.date.fromisoformat(str(end))
            out[(email, f"leave-{lid}")] = (start.isoformat(), (end + dt.timedelta(1)).isoformat())
        return out

    # the calendar, read independently ----------------------------------------------------

    def held(self, kind: str) -> list:
        return [h for h in self.targets[kind].held() if h.calendar in self.mailboxes]

    def compare(self, kind: str) -> dict[str, int]:
        """Duplicates, lost, stale (not as HR says), extra (HR wants none) and foreign lost."""
        held = self.held(kind)
        copies = Counter((h.calendar, h.event_key) for h in held)
        dates = {(h.calendar, h.event_key): (h.start, h.end) for h in held}
        want = self.wanted()
        return {
            "duplicates": sum(n - 1 for n in copies.values()),
            "lost": sum(1 for k in want if k not in copies),
            "stale": sum(1 for k, v in want.items() if k in dates and dates[k] != v),
            "extra": sum(1 for k in copies if k not in want),
            "foreign_deleted": max(0, self.foreign[kind] - self.targets[kind].foreign()),
            "events": len(want),
        }

    # the CLI -------------------------------------------------------------------------------

    def cli(self, command: str, kill_after: float | None = None) -> dict[str, Any]:
        """``leavesync <command>`` in its own process group; killed kill_after s into its apply."""
        args = [CLI, command, "--config", str(self.config), "--entity", ENTITY]
        args += ["--from", D.isoformat(), "--to", TO.isoformat()]
        log = self.dir / "cli.out"
        with open(log, "wb") as sink:
            t0 = time.monotonic()
            proc = subprocess.Popen(
                args, env=self.env, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True
            )
        out = open(log, "rb")  # noqa: SIM115 - read as it grows, closed below
        # The apply starts when the CLI prints "<entity>: target <t>: 0/<n> changes applied"
        # and ends with the calendar's last write or progress line: a kill lands kill_after
        # seconds after the start (look-ups, writes, snapshot rows, all alike).
        seen, start, end, killed, now, tail = self.writes(), None, None, False, t0, b""
        while proc.poll() is None:
            now, writes = time.monotonic(), self.writes()
            if writes > seen:
                seen, end = writes, now
            chunk = out.read()
            if chunk:
                if b"changes applied" in tail + chunk:
                    end = now
                    start = start or now
                tail = chunk[-40:]
            if kill_after is not None and start is not None and now - start >= kill_after:
                os.kill(proc.pid, signal.SIGKILL)
                killed = True
                break
            time.sleep(0.003)
        rc = proc.wait()
        seconds = time.monotonic() - t0
        left, linger = 0, 0.0
        if killed:
            # What the CLI started must go by itself: Dagster's compute-log `tail` processes
            # are ended by their watcher, which checks its parent once a second (a second or
            # more on a loaded machine); workers check theirs. Counted after LINGER seconds.
            while _group_members(proc.pid) and linger < LINGER_SECONDS:
                time.sleep(0.1)
                linger = time.monotonic() - seconds - t0
            left = _group_members(proc.pid)
            if left:
                os.killpg(proc.pid, signal.SIGKILL)  # our own group: leave nothing running
        elif self.writes() > seen or b"changes applied" in out.read():
            end = now  # in its last moments
            start = start or end
        out.close()
        text = log.read_bytes().decode(errors="replace")
        return {
            "rc": rc,
            "killed": killed,
            "seconds": round(seconds, 2),
            "apply_seconds": round(end - start, 3) if start and end else 0.0,
            "processes_left": left,
            "processes_exit_seconds": round(linger, 1),
            "summary": _summary(text),
            "output": text,
        }

    def failures(self, kind: str) -> list[str]:
        """The state store's failed changes of this target: "op key: error" each."""
        engine = sa.create_engine(f"sqlite:///{self.state}")
        try:
            with engine.connect() as conn:
                rows = conn.exec_driver_sql(
                    "SELECT op, event_key, error FROM change_failures WHERE target = ?",
                    (self.targets[kind].target()["name"],),
                ).all()
        except sa.exc.OperationalError:  # no run created the table
            rows = []
        finally:
            engine.dispose()
        return [f"{op} {key}: {error[:200]}" for op, key, error in rows]

    def runs_in_progress(self) -> int:
        from dagster import DagsterInstance, DagsterRunStatus, RunsFilter

        os.environ["DAGSTER_HOME"] = self.env["DAGSTER_HOME"]
        with DagsterInstance.get() as instance:
            return instance.get_runs_count(
                RunsFilter(statuses=[DagsterRunStatus.STARTED, DagsterRunStatus.STARTING])
            )


def _group_members(pgid: int) -> int:
    """Processes still alive in this process group (zombies excluded)."""
    n = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            n += 1
    return n


SUMMARY = ("created", "updated", "deleted", "moved", "failed", "not applied")


def _summary(text: str) -> dict[str, int]:
    """The CLI's summary row for our legal entity (created ... not applied)."""
    for line in text.splitlines():
        parts = line.split()
        if parts[:1] == [ENTITY] and len(parts) >= 9 and parts[2].isdigit():
            return dict(zip(SUMMARY, map(int, parts[2:8]), strict=True))
    return {}


def _sent_again(text: str) -> int:
    """The CLI's count of changes sent again after a transient error (0 if it said none)."""
    for line in text.splitlines():
        if line.startswith("sent again after a transient error"):
            return int(line.rsplit(":", 1)[1].split()[0])
    return 0


def _fail(what: str, run: dict[str, Any]) -> str:
    tail = "\n".join(run["output"].strip().splitlines()[-6:])
    return f"{what}: exit {run['rc']}\n{tail}"


# -- phases ----------------------------------------------------------------------------------


def kill_trials(kinds: list[str], root: Path, trials: int, seed: int, log) -> dict[str, dict]:
    """Trials of an HR change, a sync killed mid-apply, re-runs until done; then drift.

    With one target per world (the full run) each kill lands in that target's apply; with
    several (--smoke) a kill lands in whichever target is applying at that moment.
    """
    rng = random.Random(seed)
    w = World(kinds, "kill", root, people=8, rng=rng)
    name = "+".join(kinds)
    out = {
        k: {"trials": trials, "killed_mid_apply": 0, "runs": 0, "errors": [], "per_trial": []}
        for k in kinds
    }
    common: dict[str, Any] = {"errors": [], "runs": 0, "killed": 0, "left": 0, "procs": 0}
    reruns_max = 0
    try:
        w.add_leaves(30)
        calib = w.cli("sync")
        common["runs"] += 1
        if calib["rc"] != 0:
            common["errors"].append(_fail("first sync", calib))
        span, changes_calib = max(calib["apply_seconds"], 0.05), 30
        for t in range(trials):
            t0 = time.monotonic()
            before = set(w.wanted())
            held_before = {k: {(h.calendar, h.event_key) for h in w.held(k)} for k in kinds}
            n = w.change(creates=12, edits=8, cancels=3)
            kill_after = rng.uniform(0, span * n / changes_calib)
            run = w.cli("sync", kill_after=kill_after)
            common["runs"] += 1
            common["procs"] += run["processes_left"]
            edits_while_down = t % 2 == 1
            if edits_while_down:  # #20: HR edits 30% of the leaves while the sync is down
                live = w.live_leaves()
                w.edit_leaves(rng.sample(live, len(live) * 3 // 10))
            if run["killed"]:
                common["killed"] += 1
            elif run["rc"] == 0:  # it finished first: aim the next kills within its span
                span = max(run["apply_seconds"], 0.05) * changes_calib / n
            else:
                common["errors"].append(_fail(f"trial {t} sync", run))
            reruns = 0
            while True:
                rerun = w.cli("sync")
                common["runs"] += 1
                reruns += 1
                if rerun["rc"] == 0 or reruns >= 3:
                    break
            if rerun["rc"] != 0:
                common["errors"].append(_fail(f"trial {t} re-run", rerun))
            reruns_max = max(reruns_max, reruns)
            left = w.runs_in_progress()
            common["left"] += left
            want_now = set(w.wanted())
            for k in kinds:
                got = w.compare(k)
                held_now = {(h.calendar, h.event_key) for h in w.held(k)}
                # Wanted before and still wanted, held before, gone now: a wrong delete.
                wrong = len((before & held_before[k] & want_now) - held_now)
                got["wrong_deletes"] = wrong + got.pop("foreign_deleted")
                out[k]["per_trial"].append(
                    {
                        "trial": t,
                        "changes": n,
                        "kill_after_s": round(kill_after, 3),
                        "killed": run["killed"],
                        "hr_edits_while_down": edits_while_down,
                        "reruns": reruns,
                        "runs_started_left": left,
                        "processes_left": run["processes_left"],
                        "processes_exit_seconds": run["processes_exit_seconds"],
                        "seconds": round(time.monotonic() - t0, 1),
                        **got,
                    }
                )
                log(
                    f"{k} kill trial {t}: killed={run['killed']} {kill_after:.2f}s into the "
                    f"apply, {reruns} re-run(s), {got}"
                )
        drift = w.cli("drift")
        common["runs"] += 1
        if drift["rc"] != 0:
            common["errors"].append(_fail("drift", drift))
        after = {k: w.compare(k) for k in kinds}
    finally:
        w.stop()
    for k in kinds:
        per = out[k]["per_trial"]
        total = Counter()
        for row in per:
            total.update(
                {f: row[f] for f in ("duplicates", "lost", "stale", "extra", "wrong_deletes")}
            )
        out[k].update(
            {
                "world": name,
                "killed_mid_apply": common["killed"],
                "runs": common["runs"],
                "errors": common["errors"],
                **{f: total[f] for f in ("duplicates", "lost", "stale", "extra", "wrong_deletes")},
                "runs_started_left": common["left"],
                "processes_left": common["procs"],
                "processes_exit_seconds_max": max(
                    (r["processes_exit_seconds"] for r in per), default=0.0
                ),
                "reruns_max": reruns_max,
                "trials_with_hr_edits_while_down": sum(1 for r in per if r["hr_edits_while_down"]),
                "after_drift": {f: after[k][f] for f in ("duplicates", "lost", "stale", "extra")},
                "median_trial_seconds": _median([r["seconds"] for r in per]),
            }
        )
    return out


def fault_trials(
    kinds: list[str], root: Path, events: int, seed: int, log, rate: float = 0.3
) -> dict[str, dict]:
    """``events`` leaves, then a tenth more, a fifth edited, a 25th cancelled; 30% faults."""
    rng = random.Random(seed)
    w = World(kinds, "faults", root, people=max(5, events // 10), rng=rng)
    try:
        w.faults(rate, seed)
        w.add_leaves(events)
        first = w.cli("sync")
        n = w.change(creates=events // 10, edits=events // 5, cancels=events // 25)
        second = w.cli("sync")
        w.faults(0.0, seed)
        runs = (("first sync", first), ("changes", second))
        out = {}
        for k in kinds:
            got = w.compare(k)
            out[k] = {
                "world": "+".join(kinds),
                "events": events,
                "changes": events + n,
                # A feed is a local file: there is no request to fault.
                "faults_injected": "n/a" if k == "ics" else w.targets[k].faults_injected(),
                "failed_runs": sum(1 for _, r in runs if r["rc"] != 0),
                # Per target from the state store (the CLI's summary row adds every target's).
                "failed_changes": len(failures := w.failures(k)),
                "failures": failures[:5],
                # Changes the CLI sent again after a transient error, every target together.
                "world_sent_again": sum(_sent_again(r["output"]) for _, r in runs),
                **{f: got[f] for f in ("duplicates", "lost", "stale", "extra")},
                "wrong_deletes": got["foreign_deleted"],
                "seconds": round(first["seconds"] + second["seconds"], 1),
                "errors": [_fail(name, r) for name, r in runs if r["rc"] != 0],
            }
            log(f"{k} faults: { {f: v for f, v in out[k].items() if f != 'errors'} }")
    finally:
        w.stop()
    return out


def _lost_state_world(kinds: list[str], root: Path, phase: str, seed: int):
    w = World(kinds, phase, root, people=20, rng=random.Random(seed))
    ids = []
    for i in range(1, 21):
        day = D + dt.timedelta(days=i)
        ids.append(w.hr.leave(i, day, day + dt.timedelta(days=1)))
        ids.append(w.hr.leave(i, day + dt.timedelta(days=14), status="pending"))
    return w, ids


def _scenario_result(w: World, runs: list[tuple[str, dict]], before: dict, log, what: str):
    out = {}
    for k in w.targets:
        after = w.compare(k)
        out[k] = {
            "world": "+".join(w.targets),
            "duplicates": max(before[k]["duplicates"], after["duplicates"]),
            "lost": max(before[k]["lost"], after["lost"]),
            "stale_before_drift": before[k]["stale"] + before[k]["extra"],
            "stale_after_drift": after["stale"] + after["extra"],
            "wrong_deletes": after["foreign_deleted"],
            "failed_runs": sum(1 for _, r in runs if r["rc"] != 0),
            "errors": [_fail(name, r) for name, r in runs if r["rc"] != 0],
            "seconds": round(sum(r["seconds"] for _, r in runs), 1),
        }
        log(f"{k} {what}: { {f: v for f, v in out[k].items() if f != 'errors'} }")
    return out


def state_deleted(kinds: list[str], root: Path, seed: int, log) -> dict[str, dict]:
    """The state store deleted, then HR edits 12 leaves, adds 10, cancels 5: sync, drift."""
    w, ids = _lost_state_world(kinds, root, "deleted", seed)
    try:
        runs = [("first sync", w.cli("sync"))]
        w.state.unlink()
        w.edit_leaves(ids[:12])
        w.add_leaves(10)
        # Employees 19 and 20 are left with no live leave: nothing HR wants points at them.
        w.cancel_leaves([ids[36], ids[37], ids[38], ids[39], ids[20]])
        runs.append(("sync after the loss", w.cli("sync")))
        before = {k: w.compare(k) for k in kinds}
        runs.append(("drift", w.cli("drift")))
        return _scenario_result(w, runs, before, log, "state deleted")
    finally:
        w.stop()


def state_restored(kinds: list[str], root: Path, seed: int, log) -> dict[str, dict]:
    """A week-old copy of the state store restored, then HR edits what it does not know."""
    w, ids = _lost_state_world(kinds, root, "restored", seed)
    try:
        runs = [("first sync", w.cli("sync"))]
        backup = w.dir / "backup.sqlite"
        shutil.copy(w.state, backup)  # last week's backup
        new = w.add_leaves(10)
        w.edit_leaves(ids[:4])
        runs.append(("the week's sync", w.cli("sync")))
        shutil.copy(backup, w.state)  # restored: 10 leaves and 4 edits behind
        week_ago = time.time() - 7 * 86400
        os.utime(w.state, (week_ago, week_ago))
        w.edit_leaves(new)
        runs.append(("sync after the restore", w.cli("sync")))
        before = {k: w.compare(k) for k in kinds}
        runs.append(("drift", w.cli("drift")))
        return _scenario_result(w, runs, before, log, "older state restored")
    finally:
        w.stop()


def _median(values: list[float]) -> float:
    values = sorted(values)
    return values[len(values) // 2] if values else 0.0


# -- the goals table -------------------------------------------------------------------------

GOALS = [
    # (label, how to read it from a target's result, goal test, goal text)
    ("kill -9 trials killed mid-apply", lambda r: r["kill"]["killed_mid_apply"], None, "info"),
    ("kill -9 trials", lambda r: r["kill"]["trials"], "trials", ">= N"),
    ("  duplicates", lambda r: r["kill"]["duplicates"], 0, "0"),
    ("  lost", lambda r: r["kill"]["lost"], 0, "0"),
    ("  not as HR says (stale/extra)", lambda r: r["kill"]["stale"] + r["kill"]["extra"], 0, "0"),
    ("  wrong deletes", lambda r: r["kill"]["wrong_deletes"], 0, "0"),
    ("  runs STARTED after next start", lambda r: r["kill"]["runs_started_left"], 0, "0"),
    ("  processes left 10 s after kill", lambda r: r["kill"]["processes_left"], 0, "0"),
    (
        "  slowest exit of its processes (s)",
        lambda r: r["kill"].get("processes_exit_seconds_max", "-"),
        None,
        "info",
    ),
    ("  failed re-runs", lambda r: len(r["kill"]["errors"]), 0, "0"),
    ("  HR edits while down: stale after drift", lambda r: _after(r), 0, "0"),
    ("  median s per trial", lambda r: r["kill"]["median_trial_seconds"], None, "info"),
    (
        "faults: events / changes",
        lambda r: f"{r['faults']['events']}/{r['faults']['changes']}",
        None,
        "500",
    ),
    ("  faults injected", lambda r: r["faults"]["faults_injected"], None, "~30%"),
    (
        "  changes sent again (all targets of the run)",
        lambda r: r["faults"].get("world_sent_again", "-"),
        None,
        "info",
    ),
    (
        "  failed (runs + changes)",
        lambda r: r["faults"]["failed_runs"] + r["faults"]["failed_changes"],
        0,
        "0",
    ),
    (
        "  not exactly once (dup+lost+stale+extra)",
        lambda r: sum(r["faults"][k] for k in ("duplicates", "lost", "stale", "extra")),
        0,
        "0",
    ),
    ("state deleted: duplicates", lambda r: r["deleted"]["duplicates"], 0, "0"),
    ("  lost", lambda r: r["deleted"]["lost"], 0, "0"),
    ("  stale after drift", lambda r: r["deleted"]["stale_after_drift"], 0, "0"),
    ("  failed runs", lambda r: r["deleted"]["failed_runs"], 0, "0"),
    ("week-old state: duplicates", lambda r: r["restored"]["duplicates"], 0, "0"),
    ("  lost", lambda r: r["restored"]["lost"], 0, "0"),
    ("  stale after drift", lambda r: r["restored"]["stale_after_drift"], 0, "0"),
    ("  failed runs", lambda r: r["restored"]["failed_runs"], 0, "0"),
]


def _after(r: dict) -> int:
    a = r["kill"]["after_drift"]
    return a["duplicates"] + a["lost"] + a["stale"] + a["extra"]


def goals_table(
    results: dict[str, dict], min_trials: int, markdown: bool = False, complete: bool = True
) -> tuple[str, list[str]]:
    """The goals table and its misses; with ``complete`` False a figure of a phase not run
    ("-") is not a miss (``--phases`` with no results file)."""
    kinds = [k for k in KINDS if k in results]
    rows, misses = [], []
    for label, get, goal, text in GOALS:
        cells = []
        for kind in kinds:
            try:
                value = get(results[kind])
            except (KeyError, TypeError):
                value = "-"
            ok = True
            if value == "-" and not complete:
                cells.append(value)
                continue
            if goal == "trials":
                ok = isinstance(value, int) and value >= min_trials
            elif goal is not None:
                ok = value == goal
            if not ok:
                misses.append(f"{kind}: {label.strip()} = {value} (goal {text})")
            cells.append(f"{value}{'' if ok else ' ✗'}")
        rows.append([label, text.replace("N", str(min_trials)), *cells])
    header = ["figure", "goal", *kinds]
    if markdown:
        lines = [header, ["---"] * len(header), *rows]
        return "\n".join("| " + " | ".join(map(str, r)) + " |" for r in lines), misses
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=True)]
    line = lambda cells: " | ".join(str(c).ljust(w) for c, w in zip(cells, widths, strict=True))  # noqa: E731
    out = [line(header), "-+-".join("-" * w for w in widths), *map(line, rows)]
    return "\n".join(out), misses


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--smoke", action="store_true", help="3 trials and 50 events per target")
    p.add_argument("--trials", type=int, default=None, help="kill trials per target (20)")
    p.add_argument("--events", type=int, default=None, help="events of the faults phase (500)")
    p.add_argument("--targets", default=",".join(KINDS), help="comma-separated target types")
    p.add_argument("--seed", type=int, default=20261129)
    p.add_argument(
        "--fault-rate",
        type=float,
        default=0.3,
        help="share of requests faulted in the faults phase (0.3; higher finds what is not "
        "retried sooner)",
    )
    p.add_argument("--phases", default=",".join(PHASES), help="kill,faults,deleted,restored")
    p.add_argument("--work", type=Path, default=None, help="working folder (default: temporary)")
    p.add_argument("--out", type=Path, default=None, help=f"results file (default {RESULTS})")
    p.add_argument(
        "--markdown", action="store_true", help="print the saved results' table as Markdown"
    )
    args = p.parse_args(argv)
    if args.markdown:
        saved = json.loads((args.out or RESULTS).read_text())
        trials = min(r["trials"] for r in saved["runs"].values())
        print(goals_table(saved["targets"], trials, markdown=True)[0])
        for kinds, run in saved["runs"].items():
            print(f"\n{kinds}: {run['date']}, {run['machine']}, {run['seconds']} s")
        return 0
    trials = args.trials or (3 if args.smoke else 20)
    events = args.events or (50 if args.smoke else 500)
    kinds = [k for k in args.targets.split(",") if k]
    unknown = set(kinds) - set(KINDS)
    if unknown:
        p.error(f"unknown targets: {', '.join(sorted(unknown))}; choose from {', '.join(KINDS)}")
    out_file = args.out or (None if args.smoke else RESULTS)
    work = args.work or Path(tempfile.mkdtemp(prefix="leavesync-chaos-"))
    started = time.monotonic()

    def log(message: str) -> None:
        print(f"[{time.monotonic() - started:7.1f}s] {message}", flush=True)

    phases = [x for x in args.phases.split(",") if x]
    if set(phases) - set(PHASES):
        p.error(f"unknown phases: {args.phases}; choose from {', '.join(PHASES)}")
    results: dict[str, dict] = {k: {} for k in kinds}
    if out_file and out_file.exists():  # phases not run now keep their saved figures
        saved = json.loads(out_file.read_text()).get("targets", {})
        results = {k: {**saved.get(k, {}), **results[k]} for k in kinds}
    # Kill trials: one world per target (each kill lands in its apply), or one for all.
    groups = [kinds] if args.smoke else [[k] for k in kinds]
    for n, group in enumerate(groups if "kill" in phases else []):
        for k, r in kill_trials(group, work, trials, args.seed + n, log).items():
            results[k]["kill"] = r
    # Faults and lost state: every target in one world, one CLI run for all.
    for phase, run in (
        ("faults", lambda: fault_trials(kinds, work, events, args.seed, log, args.fault_rate)),
        ("deleted", lambda: state_deleted(kinds, work, args.seed, log)),
        ("restored", lambda: state_restored(kinds, work, args.seed, log)),
    ):
        if phase in phases:
            for k, r in run().items():
                results[k][phase] = r
    for k in kinds:
        results[k]["seconds"] = round(time.monotonic() - started, 1)
        for phase in phases:
            for error in results[k][phase].get("errors", []):
                log(f"{k} {phase}: {error}")
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)

    table, misses = goals_table(results, trials, complete=bool(out_file) or len(phases) == 4)
    print(
        f"\nchaos: {trials} kill trials, {events} events under {args.fault_rate:.0%} faults, per target\n"
    )
    print(table)
    if out_file:
        with open(Path(tempfile.gettempdir()) / "leavesync-chaos.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # runs of other targets may finish at once
            _save(out_file, results, kinds, phases, trials, events, started)
        print(f"\nresults: {out_file}")
    if misses:
        print("\nmissed goals:\n  " + "\n  ".join(misses))
        return 1
    return 0


def _save(out_file: Path, results: dict, kinds, phases, trials: int, events: int, started):
    """Merge this run's targets into the results file (other targets' figures are kept)."""
    saved = json.loads(out_file.read_text()) if out_file.exists() else {}
    for kind in kinds:  # only the phases run now: another run may have saved the others since
        mine = {phase: results[kind][phase] for phase in phases}
        saved.setdefault("targets", {}).setdefault(kind, {}).update(mine)
    saved["runs"] = saved.get("runs", {})
    saved["runs"][",".join(kinds) + (f" ({','.join(phases)})" if len(phases) < 4 else "")] = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.node()} {platform.machine()}, {os.cpu_count()} cores, "
        f"load average {os.getloadavg()[0]:.1f} at the end",
        "python": platform.python_version(),
        "commit": subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
        ).stdout.strip(),
        "trials": trials,
        "events": events,
        "seconds": round(time.monotonic() - started, 1),
    }
    saved["table"], _ = goals_table(saved["targets"], trials)
    out_file.write_text(json.dumps(saved, indent=1, default=str) + "\n")


if __name__ == "__main__":
    sys.exit(main())
