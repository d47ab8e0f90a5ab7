"""The month × legal_entity partitions and the run tags that select a range of them.

A leave belongs to the month its start date falls in. The newest partition (the current
month) also holds every later start date up to today + horizon: a nightly run covers the
lookback's months and that one, so what Dagster records per run does not grow with the
horizon (Dagster writes one materialization per asset and partition of a ranged run).
"""

from __future__ import annotations

import datetime as dt

from dagster import (
    DynamicPartitionsDefinition,
    MonthlyPartitionsDefinition,
    MultiPartitionsDefinition,
)

from resources.config import AppConfig
from resources.scope import (
    DATE_DIMENSION,
    DATE_FROM_TAG,
    DATE_TO_TAG,
    ENTITY_DIMENSION,
    month_start,
    partition_of,
    window_today,
)

__all__ = [
    "DATE_DIMENSION",
    "ENTITY_DIMENSION",
    "first_partition",
    "leave_partitions",
    "range_tags",
]

legal_entity_partitions = DynamicPartitionsDefinition(name=ENTITY_DIMENSION)


def first_partition(cfg: AppConfig, today: dt.date | None = None) -> dt.date:
    """window.partitions_start's month, or by default the lookback window's month."""
    today = today or window_today(cfg.window.timezone)
    start = cfg.window.partitions_start or today - dt.timedelta(days=cfg.window.lookback_days)
    return month_start(start)


def leave_partitions(cfg: AppConfig) -> MultiPartitionsDefinition:
    """Months from the first partition to the current month, × legal entities kept in step with HR."""
    months = MonthlyPartitionsDefinition(
        start_date=first_partition(cfg).isoformat(),
        timezone=cfg.window.timezone,
        end_offset=1,  # the current month is a partition (it holds the horizon too)
    )
    return MultiPartitionsDefinition(
        {DATE_DIMENSION: months, ENTITY_DIMENSION: legal_entity_partitions}
    )


def range_tags(
    entity_key: str, date_from: dt.date, date_to: dt.date, today: dt.date
) -> dict[str, str]:
    """Run tags for one legal entity over [date_from, date_to]: its months, and the exact dates."""
    newest = month_start(today)
    first, last = partition_of(date_from, newest), partition_of(date_to, newest)
    return {
        "dagster/asset_partition_range_start": f"{first.isoformat()}|{entity_key}",
        "dagster/asset_partition_range_end": f"{last.isoformat()}|{entity_key}",
        DATE_FROM_TAG: date_from.isoformat(),
        DATE_TO_TAG: date_to.isoformat(),
    }
