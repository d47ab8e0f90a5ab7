"""The run queue: Dagster's QueuedRunCoordinator, with one run at a time per legal entity.

Every run submitted to the queue (schedules, sensors, UI launches, backfills) is tagged with
the legal entities it covers, read from its partition tags: ``leavesync/legal_entity`` (the
keys, for people and filters) and one ``leavesync/slot/<key>`` tag per entity. The queue
holds a tag concurrency limit per slot key, so a run waits while any run of one of its
entities is in progress. A backfill over N entities and M <= N months is split by Dagster
into one run per month spanning those entities: such a run holds every entity's slot, which
a single per-unique-value tag (one value per run) could not express.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from dagster import Field
from dagster._core.run_coordinator import QueuedRunCoordinator, SubmitRunContext
from dagster._core.run_coordinator.queued_run_coordinator import RunQueueConfig
from dagster._core.storage.dagster_run import DagsterRun

from resources.scope import ENTITY_DIMENSION

ENTITY_TAG = "leavesync/legal_entity"
SLOT_TAG_PREFIX = "leavesync/slot/"
_PARTITION_TAG = "dagster/partition"
_ENTITY_PARTITION_TAG = f"dagster/partition/{ENTITY_DIMENSION}"
_RANGE_START_TAG = "dagster/asset_partition_range_start"
_RANGE_END_TAG = "dagster/asset_partition_range_end"


def slot_tag(entity_key: str) -> str:
    return f"{SLOT_TAG_PREFIX}{entity_key}"


def entity_tags(entity_keys: Sequence[str]) -> dict[str, str]:
    """The tags that put a run of these legal entities under the per-entity limit."""
    keys = sorted(set(entity_keys))
    if not keys:
        return {}
    return {ENTITY_TAG: ",".join(keys), **{slot_tag(k): "1" for k in keys}}


def _entity_of(multi_key: str) -> str | None:
    # A month x legal_entity key is "<date>|<entity>" (dimensions in name order).
    return multi_key.split("|", 1)[1] if "|" in multi_key else None


def run_entities(tags: Mapping[str, str], known: Sequence[str]) -> list[str]:
    """The legal entity keys a run covers, from its tags; ``known`` is the keys' stored order."""
    if tags.get(ENTITY_TAG):
        return tags[ENTITY_TAG].split(",")
    if tags.get(_ENTITY_PARTITION_TAG):
        return [tags[_ENTITY_PARTITION_TAG]]
    if tags.get(_PARTITION_TAG):
        entity = _entity_of(tags[_PARTITION_TAG])
        return [entity] if entity else []
    start, end = tags.get(_RANGE_START_TAG), tags.get(_RANGE_END_TAG)
    if not (start and end):
        return []
    first, last = _entity_of(start), _entity_of(end)
    if first is None or last is None:
        return []
    if first == last:
        return [first]
    # A range over the entity dimension covers the keys between its ends, in stored order.
    if first in known and last in known:
        lo, hi = sorted((known.index(first), known.index(last)))
        return list(known[lo : hi + 1])
    return [first, last]


class LegalEntityRunCoordinator(QueuedRunCoordinator):
    """QueuedRunCoordinator that runs at most ``max_concurrent_runs_per_legal_entity`` runs of
    each legal entity at once, on top of its global and tag limits."""

    def __init__(self, *args: Any, max_concurrent_runs_per_legal_entity: int = 1, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._per_entity = max_concurrent_runs_per_legal_entity

    @classmethod
    def config_type(cls) -> dict:
        return {
            **QueuedRunCoordinator.config_type(),
            "max_concurrent_runs_per_legal_entity": Field(
                int,
                is_required=False,
                default_value=1,
                description="Runs of one legal entity in progress at once.",
            ),
        }

    @classmethod
    def from_config_value(cls, inst_data, config_value: Mapping[str, Any]):
        rest = {
            k: v for k, v in config_value.items() if k != "max_concurrent_runs_per_legal_entity"
        }
        coordinator = super().from_config_value(inst_data, rest)
        coordinator._per_entity = config_value.get("max_concurrent_runs_per_legal_entity", 1)
        return coordinator

    @property
    def max_concurrent_runs_per_legal_entity(self) -> int:
        return self._per_entity

    def _known_entities(self) -> list[str]:
        return list(self._instance.get_dynamic_partitions(ENTITY_DIMENSION))

    def submit_run(self, context: SubmitRunContext) -> DagsterRun:
        run = context.dagster_run
        entities = run_entities(run.tags, self._known_entities())
        missing = {k: v for k, v in entity_tags(entities).items() if run.tags.get(k) != v}
        if missing:
            self._instance.add_run_tags(run.run_id, missing)
            run = run.with_tags({**run.tags, **missing})
            context = SubmitRunContext(run, context.workspace)
        return super().submit_run(context)

    def get_run_queue_config(self) -> RunQueueConfig:
        # One limit per legal entity known now: the daemon asks at every dequeue.
        config = super().get_run_queue_config()
        limits = [
            *config.tag_concurrency_limits,
            *({"key": slot_tag(k), "limit": self._per_entity} for k in self._known_entities()),
        ]
        return config._replace(tag_concurrency_limits=limits)
