"""A run's scope: the legal entities and dates it covers, derived from its partition keys."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from dagster import MultiPartitionKey

ENTITY_DIMENSION = "legal_entity"
DATE_DIMENSION = "date"


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
