"""A run's scope: the legal entities and exact dates it covers, from its partitions and tags."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from dagster import MultiPartitionKey

ENTITY_DIMENSION = "legal_entity"
DATE_DIMENSION = "date"
# The exact first and last start dates of a run (day precision within its month partitions).
DATE_FROM_TAG = "leavesync/date_from"
DATE_TO_TAG = "leavesync/date_to"
# Only these start dates within [date_from, date_to] (comma-separated ISO days): the hr_changes
# sensor's runs cover the days its changes touch, not the months between them.
DATES_TAG = "leavesync/dates"


@dataclass(frozen=True)
class EntityScope:
    """The part of a run that concerns one legal entity partition."""

    entity_key: str
    date_from: dt.date
    date_to: dt.date
    dates: frozenset[str]

    def label(self) -> str:
        return f"{self.entity_key} {self.date_from}..{self.date_to}"


def month_start(day: dt.date) -> dt.date:
    return day.replace(day=1)


def month_end(day: dt.date) -> dt.date:
    following = (day.replace(day=28) + dt.timedelta(days=4)).replace(day=1)
    return following - dt.timedelta(days=1)


def partition_of(day: dt.date, newest: dt.date) -> dt.date:
    """The month partition of a start date: its month, or the newest one for later dates."""
    return min(month_start(day), newest)


def scopes_from_keys(
    partition_keys: Sequence[str],
    newest: dt.date | None = None,
    horizon_end: dt.date | None = None,
    tags: Mapping[str, str] | None = None,
) -> list[EntityScope]:
    """Group a run's month × entity keys by legal entity; exact dates from the run's tags.

    ``newest`` is the newest month partition: it also holds every later start date up to
    ``horizon_end``. Without them, each month key covers its own month only.
    """
    tags = tags or {}
    tag_from, tag_to = tags.get(DATE_FROM_TAG), tags.get(DATE_TO_TAG)
    only = frozenset(tags[DATES_TAG].split(",")) if tags.get(DATES_TAG) else None
    by_entity: dict[str, set[dt.date]] = {}
    for key in partition_keys:
        dims = key.keys_by_dimension if isinstance(key, MultiPartitionKey) else _split(key)
        month = dt.date.fromisoformat(dims[DATE_DIMENSION])
        by_entity.setdefault(dims[ENTITY_DIMENSION], set()).add(month)
    scopes = []
    for entity, months in sorted(by_entity.items()):
        last = max(months)
        open_end = newest is not None and horizon_end is not None and last >= newest
        lo = min(months)
        hi = max(horizon_end, month_end(last)) if open_end else month_end(last)
        if tag_from:
            lo = max(lo, dt.date.fromisoformat(tag_from))
        if tag_to:
            hi = min(hi, dt.date.fromisoformat(tag_to))
        cap = newest if open_end else None
        days = [lo + dt.timedelta(days=i) for i in range((hi - lo).days + 1)]
        dates = frozenset(
            d.isoformat()
            for d in days
            if (min(month_start(d), cap) if cap else month_start(d)) in months
        )
        if only is not None:
            dates &= only
        scopes.append(EntityScope(entity, lo, max(lo, hi), dates))
    return scopes


def _split(key: str) -> dict[str, str]:
    date, entity = key.split("|", 1)
    return {DATE_DIMENSION: date, ENTITY_DIMENSION: entity}


def window_today(timezone: str, now: dt.datetime | None = None) -> dt.date:
    """Today in the window's time zone (the date the schedule and partitions reason in)."""
    from zoneinfo import ZoneInfo

    return (now or dt.datetime.now(dt.UTC)).astimezone(ZoneInfo(timezone)).date()


def run_scopes(partition_keys: Sequence[str], tags: Mapping[str, str], window) -> list[EntityScope]:
    """The scopes of a run executing now under ``window`` (resources.config.WindowConfig)."""
    today = window_today(window.timezone)
    return scopes_from_keys(
        partition_keys,
        newest=month_start(today),
        horizon_end=today + dt.timedelta(days=window.horizon_days),
        tags=tags,
    )
