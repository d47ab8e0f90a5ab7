"""The date × legal_entity partitions and the run tags that select a range of them."""

from __future__ import annotations

import datetime as dt

from dagster import (
    DailyPartitionsDefinition,
    DynamicPartitionsDefinition,
    MultiPartitionsDefinition,
)

from resources.config import AppConfig
from resources.scope import DATE_DIMENSION, ENTITY_DIMENSION

__all__ = ["DATE_DIMENSION", "ENTITY_DIMENSION", "leave_partitions", "range_tags"]

legal_entity_partitions = DynamicPartitionsDefinition(name=ENTITY_DIMENSION)


def leave_partitions(cfg: AppConfig) -> MultiPartitionsDefinition:
    """Daily dates up to today + horizon, × legal entities kept in step with HR."""
    dates = DailyPartitionsDefinition(
        start_date=cfg.window.partitions_start.isoformat(),
        timezone=cfg.window.timezone,
        # The last partition is today + horizon: end_offset=1 already reaches today.
        end_offset=cfg.window.horizon_days + 1,
    )
    return MultiPartitionsDefinition(
        {DATE_DIMENSION: dates, ENTITY_DIMENSION: legal_entity_partitions}
    )


def range_tags(entity_key: str, date_from: dt.date, date_to: dt.date) -> dict[str, str]:
    """Run tags that make one run cover one legal entity over a range of dates."""
    return {
        "dagster/asset_partition_range_start": f"{date_from.isoformat()}|{entity_key}",
        "dagster/asset_partition_range_end": f"{date_to.isoformat()}|{entity_key}",
    }
