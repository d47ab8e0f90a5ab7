"""hr_leaves: one parameterised extract per legal entity and date range of the run."""

import pandas as pd
from dagster import (
    AssetExecutionContext,
    AssetsDefinition,
    BackfillPolicy,
    MetadataValue,
    Output,
    asset,
)

from assets.catalog import HR_GROUP, OWNERS
from assets.partition_report import PartitionIndex
from resources.hr import HRDatabase
from resources.scope import month_start, run_scopes, window_today
from resources.settings import LeavesyncSettings

HR_LEAVES = "hr_leaves"
PARTITION_COLUMN = "_partition"


def extract_scope(hr: HRDatabase, scopes: list) -> pd.DataFrame:
    """The canonical leaves of every (legal entity, dates) scope, tagged with its partition key."""
    frames = []
    for scope in scopes:
        frame = hr.extract(scope.entity_key, scope.date_from, scope.date_to)
        if len(scope.dates) < (scope.date_to - scope.date_from).days + 1:
            frame = frame[frame["start_date"].isin(scope.dates) | frame["start_date"].isna()]
        frames.append(frame.assign(**{PARTITION_COLUMN: scope.entity_key}))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def build_hr_leaves(partitions_def) -> AssetsDefinition:
    @asset(
        name=HR_LEAVES,
        partitions_def=partitions_def,
        backfill_policy=BackfillPolicy.single_run(),
        group_name=HR_GROUP,
        owners=OWNERS,
        kinds={"sql", "pandas"},
        description="Leaves of the run's legal entities and dates, one canonical row per leave.",
    )
    def hr_leaves(
        context: AssetExecutionContext, hr: HRDatabase, settings: LeavesyncSettings
    ) -> Output[pd.DataFrame]:
        scopes = run_scopes(context.partition_keys, context.run.tags, settings.app().window)
        for scope in scopes:
            context.log.info(f"extracting {scope.label()}")
        leaves = extract_scope(hr, scopes)
        by_status = (
            leaves["status"].fillna("(null)").value_counts().to_dict() if len(leaves) else {}
        )
        cfg = settings.app()
        index = PartitionIndex(
            context.partition_keys, month_start(window_today(cfg.window.timezone))
        )
        per_partition = index.count(leaves, PARTITION_COLUMN, "start_date")
        for key in index.keys:
            month, entity = key.split("|", 1)
            context.add_asset_metadata(
                {"legal_entity": entity, "month": month[:7], "leaves": int(per_partition[key])},
                partition_key=key,
            )
        # The run's figures, named as such: each partition's own count is "leaves".
        return Output(
            leaves,
            metadata={
                "run_rows": len(leaves),
                "run_by_status": MetadataValue.json({str(k): int(v) for k, v in by_status.items()}),
                "run_scopes": MetadataValue.json([s.label() for s in scopes]),
            },
        )

    return hr_leaves
