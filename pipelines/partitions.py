"""The date × legal_entity partitions, and a run's scope derived from its partition keys."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from dagster import (
    DailyPartitionsDefinition,
    DynamicPartitionsDefinition,
    MultiPartitionKey,
    MultiPartitionsDefinition,
)

from pipelines.config import AppConfig

ENTITY_DIMENSION = "legal_entity"
DATE_DIMENSION = "date"
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


@dataclass(frozen=True)
class EntityScope:
    """The part of a run that concerns one legal entity partition."""

    entity_key: str
    date_from: dt.date
    date_to: dt.date
    dates: frozenset[str]

    def label(self) -> str:
        return f"{self.entity_key} {self.date_from}..{self.date_to}"


def scopes_from_keys(partition_keys: list[str]) -> list[EntityScope]:
    """Group a run's multi-partition keys by legal entity."""
    by_entity: dict[str, set[str]] = {}
    for key in partition_keys:
        dims = key.keys_by_dimension if isinstance(key, MultiPartitionKey) else _split(key)
        by_entity.setdefault(dims[ENTITY_DIMENSION], set()).add(dims[DATE_DIMENSION])
    return [
        EntityScope(
            entity,
            dt.date.fromisoformat(min(dates)),
            dt.date.fromisoformat(max(dates)),
            frozenset(dates),
        )
        for entity, dates in sorted(by_entity.items())
    ]


def _split(key: str) -> dict[str, str]:
    date, entity = key.split("|", 1)
    return {DATE_DIMENSION: date, ENTITY_DIMENSION: entity}
