"""Each partition's materialization says what the run did in that legal entity and month."""

from __future__ import annotations

import datetime as dt

import pandas as pd
import yaml

from assets.partition_report import PartitionIndex, planned_by_partition, sync_by_partition
from resources.scope import month_start

NEWEST = dt.date(2026, 11, 1)
KEYS = ["2026-10-01|FR", "2026-11-01|FR"]


def test_rows_count_in_their_own_partition_later_dates_in_the_newest():
    index = PartitionIndex(KEYS, NEWEST)
    changes = pd.DataFrame(
        {
            "op": ["create", "update", "delete", "create"],
            "legal_entity": ["FR", "FR", "FR", "US"],
            "partition_date": ["2026-10-05", "2027-03-01", "2026-10-09", "2026-10-05"],
        }
    )
    quarantine = pd.DataFrame(
        {
            "leave_id": ["7", "7", "8"],
            "_partition": ["FR", "FR", "FR"],
            "start_date": ["2026-11-20", "2026-11-20", None],
            "severity": ["error", "error", "error"],
        }
    )

    planned = planned_by_partition(index, changes, quarantine)

    # US is not one of the run's partitions; leave 8 has no start date: neither is counted.
    assert planned == {
        "2026-10-01|FR": {"create": 1, "update": 0, "delete": 1, "move": 0, "quarantined": 0},
        "2026-11-01|FR": {"create": 0, "update": 1, "delete": 0, "move": 0, "quarantined": 1},
    }


def test_sync_counts_landed_failed_and_unchanged_per_partition():
    index = PartitionIndex(KEYS, NEWEST)
    changes = pd.DataFrame(
        {"op": ["create", "create"], "legal_entity": ["FR", "FR"],
         "partition_date": ["2026-10-05", "2026-11-03"]}
    )  # fmt: skip
    desired = pd.DataFrame(
        {"legal_entity": ["FR"] * 4,
         "partition_date": ["2026-10-05", "2026-10-06", "2026-11-03", "2026-12-24"]}
    )  # fmt: skip
    applied = {("FR", "2026-10-05", "create"): 1}
    failed = [{"legal_entity": "FR", "partition_date": "2026-11-03"}]
    empty = pd.DataFrame(columns=["leave_id", "_partition", "start_date", "severity"])

    got = sync_by_partition(index, changes, applied, failed, desired, empty)

    assert got["2026-10-01|FR"] == {"created": 1, "updated": 0, "deleted": 0, "moved": 0,
                                    "failed": 0, "unchanged": 1, "quarantined": 0}  # fmt: skip
    assert got["2026-11-01|FR"] == {"created": 0, "updated": 0, "deleted": 0, "moved": 0,
                                    "failed": 1, "unchanged": 1, "quarantined": 0}  # fmt: skip


def test_latest_materialization_of_each_partition_is_that_partitions_run(home, hr):
    from dagster import AssetKey, DagsterInstance

    from pipelines.cli import main

    today = dt.date.today()
    this_month = month_start(today)
    last_month = month_start(this_month - dt.timedelta(days=1))
    hr.employee(1, email="ann@example.com")
    hr.employee(2, email="bob@example.com")
    old = hr.leave(1, last_month + dt.timedelta(days=2))
    hr.leave(2, last_month + dt.timedelta(days=4))
    hr.leave(1, today + dt.timedelta(days=40))  # held by the newest (current) month
    cfg_file = home / "leavesync.yaml"
    cfg_file.write_text(yaml.safe_dump({"hr": {"url": hr.url}, "window": {"lookback_days": 62}}))
    window = ["--config", str(cfg_file), "--entity", "FR", "--from", last_month.isoformat()]
    window += ["--to", (today + dt.timedelta(days=60)).isoformat()]

    assert main(["sync", *window]) == 0
    hr.update_leave(old, status="cancelled")
    assert main(["sync", *window]) == 0

    instance = DagsterInstance.get()

    def latest(month: dt.date, asset: str = "calendar_sync", keys=None) -> dict:
        records = instance.fetch_materializations(AssetKey(asset), limit=20).records
        mine = [r for r in records if r.partition_key == f"{month.isoformat()}|FR"]
        meta = mine[0].asset_materialization.metadata
        keys = keys or ("legal_entity", "month", "created", "deleted", "unchanged")
        return {k: meta[k].value for k in keys}

    # Events, over the two default targets (personal feeds and the legal entity's team feed).
    assert latest(last_month) == {"legal_entity": "FR", "month": last_month.isoformat()[:7],
                                  "created": 0, "deleted": 2, "unchanged": 2}  # fmt: skip
    assert latest(this_month) == {"legal_entity": "FR", "month": this_month.isoformat()[:7],
                                  "created": 0, "deleted": 0, "unchanged": 2}  # fmt: skip
    # Extracted per partition: the cancelled leave is still extracted (and deleted).
    assert latest(last_month, "hr_leaves", ("leaves",)) == {"leaves": 2}
    assert latest(this_month, "hr_leaves", ("leaves",)) == {"leaves": 1}
    assert latest(last_month, "leave_diff", ("delete", "create")) == {"delete": 2, "create": 0}


def test_drift_counts_per_partition():
    from assets.drift import drift_by_partition

    index = PartitionIndex(KEYS, NEWEST)
    findings = pd.DataFrame(
        {"kind": ["missing", "orphan", "missing"], "legal_entity": ["FR", "FR", "FR"],
         "date": ["2026-10-02", "2027-01-05", "2026-10-09"], "repaired": [True, False, False]}
    )  # fmt: skip

    got = drift_by_partition(index, findings)

    assert got["2026-10-01|FR"] == {"missing": 2, "modified": 0, "orphan": 0, "duplicate": 0,
                                    "stale": 0, "repaired": 1}  # fmt: skip
    assert got["2026-11-01|FR"]["orphan"] == 1 and got["2026-11-01|FR"]["repaired"] == 0
