"""One user's changes, batched: each change moves through calls until it is final.

A change is one item; each batch holds at most one call per event id, because Google runs
the parts of a batch in any order. The calls an item may need:

- ``insert`` a new id; 409 (the id is taken, deleted events keep theirs) -> ``get`` it:
  ours and live -> adopt it; deleted -> the next generation's id. Never resurrected.
- ``update`` in place; an event type cannot change (Events reference), so a change of type
  is ``delete`` then ``insert`` of the next generation. 404 -> ``find`` by key.
- ``delete``; already gone, or changed since (412) -> ``find`` by key and delete every live
  event of ours with that key there: a delete means "no event for this leave in this
  calendar", not "remove this one copy".
- ``find``: list our events with the key, adopt one, delete further copies.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from resources.providers.base import ChangeResult, EventChange, EventPayload
from resources.providers.google.batching import ApiError, Batcher, Outcome, api_error
from resources.providers.google.mapping import (
    event_body,
    event_id_for,
    event_key_of,
    is_out_of_office,
    parse_event_id,
    same_content,
    wants_out_of_office,
)
from resources.providers.google.settings import KEY_PROPERTY
from resources.providers.google.signin import UserFailed

log = logging.getLogger(__name__)
# Ids tried past the highest generation we know before a create gives up.
MAX_PROBES = 20


@dataclass
class Item:
    """One change (or one further copy to delete) on its way through calls."""

    change: EventChange
    mode: str  # insert | update | delete | get | find
    event_id: str = ""
    out_of_office: bool = False  # the event type the payload wants
    generation: int = 0  # the generation an insert uses
    purpose: str = ""  # get: "probe" (after 409) | "type" (after 400); find: "resolve" | "cleanup"
    then_insert: bool = False  # a delete that makes way for a new generation
    copy: bool = False  # a further copy of the key: deleted without a result of its own
    adopted: bool = False
    # The snapshot's etag, sent as If-Match with the first update or delete: the event
    # must not have changed since we wrote it (deleted by its owner, replaced by a later
    # generation that an older snapshot does not know, edited).
    if_match: str | None = None
    attempts: int = 0
    probes: int = 0
    error: str = ""

    @property
    def payload(self) -> EventPayload:
        return self.change.event  # type: ignore[return-value]

    @property
    def slot(self) -> str:
        """What one batch may hold once: an event id, or a key's find."""
        return f"find:{self.change.event_key}" if self.mode == "find" else self.event_id


@dataclass
class Step:
    """What an answer means for an item: a result, a next call, or a retry after a wait."""

    result: ChangeResult | None = None
    retry: bool = False
    wait: float = 0.0
    spawned: list[Item] = field(default_factory=list)


class UserWrites:
    """Applies one user's items in batches; emits a result per change as it becomes final."""

    def __init__(
        self,
        batcher: Batcher,
        user: str,
        emit: Callable[[ChangeResult], None],
        stop: threading.Event,
    ) -> None:
        self.batcher = batcher
        self.settings = batcher.settings
        self.user = user
        self.emit = emit
        self.stop = stop

    # -- starting points -------------------------------------------------------------------

    def wants_ooo(self, change: EventChange) -> bool:
        return change.event is not None and wants_out_of_office(
            change.event, self.settings.out_of_office, self.settings.calendar_id_for(self.user)
        )

    def start(self, change: EventChange, found: list[dict[str, Any]] | None) -> Step:
        """The first call of a change; a create brings what the look-up found for its key."""
        item = Item(change, "delete", out_of_office=self.wants_ooo(change))
        item.event_id = change.provider_event_id or event_id_for(change.event_key)
        if change.provider_event_id and change.op != "create":
            item.if_match = change.version
        if change.op == "create":
            item.purpose = "resolve"
            step = self.resolve(item, found or [])
        else:
            step = Step()
            parsed = parse_event_id(item.event_id)
            if change.op == "update" and parsed and parsed.event_key == change.event_key:
                item.generation = parsed.generation + 1
                # The type changes: delete, then insert a new generation.
                item.then_insert = parsed.out_of_office != item.out_of_office
            if change.op == "update" and not item.then_insert:
                item.mode = "update"
        if step.result is None:
            step.spawned.insert(0, item)
        return step

    # -- the loop --------------------------------------------------------------------------

    def run(self, changes: list[EventChange], found: dict[str, list[dict[str, Any]]]) -> None:
        pending: deque[Item] = deque()
        for change in changes:
            if change.op != "delete" and change.event is None:
                self.emit(ChangeResult(change, False, error="no event payload", permanent=True))
                continue
            step = self.start(change, found.get(change.event_key))
            if step.result is not None:
                self.emit(step.result)
            pending.extend(step.spawned)
        while pending and not self.stop.is_set():
            batch, deferred, slots = [], [], set()
            while pending and len(batch) < self.settings.batch_size:
                item = pending.popleft()
                (deferred if item.slot in slots else batch).append(item)
                slots.add(item.slot)
            pending.extendleft(reversed(deferred))
            try:
                authorised = self.batcher.signin.authorize(self.settings.subject_for(self.user))
                calls = [(self.user, self._call(item, authorised)) for item in batch]
                # A token still cached when the user was deleted is refused here, and its
                # refresh names the user unknown.
                outcomes = self.batcher.send(calls, authorised)
            except UserFailed as exc:
                for item in [*batch, *pending]:
                    if item.copy:
                        continue
                    if (
                        exc.unknown_user
                        and item.change.op == "delete"
                        and not self.settings.write_as
                    ):
                        # The mailbox is gone, and our event with it (an address that
                        # changed and was not kept as an alias): the delete is done.
                        self.emit(self._ok(item, item.event_id))
                    else:
                        self.emit(ChangeResult(item.change, False, error=str(exc), permanent=True))
                return
            again: list[Item] = []
            wait = 0.0
            for item, outcome in zip(batch, outcomes, strict=True):
                step = self._answer(item, outcome)
                again.extend(step.spawned)
                if step.result is not None:
                    if not item.copy:
                        self.emit(step.result)
                    elif not step.result.ok:
                        log.warning(
                            "copy %s of %s not deleted: %s",
                            item.event_id,
                            self.user,
                            step.result.error,
                        )
                    continue
                if step.retry:
                    item.attempts += 1
                    if item.attempts >= self.settings.max_attempts:
                        result = ChangeResult(
                            item.change,
                            False,
                            error=f"gave up after {item.attempts} attempts: {item.error}",
                        )
                        if not item.copy:
                            self.emit(result)
                        continue
                    wait = max(wait, step.wait)
                again.append(item)
            pending.extendleft(reversed(again))
            if wait:
                self.stop.wait(wait)

    def _call(self, item: Item, authorised: Any) -> Any:
        events = self.batcher.events()
        calendar = self.settings.calendar_id_for(self.user)
        if item.mode == "delete":
            call = events.delete(calendarId=calendar, eventId=item.event_id, sendUpdates="none")
        elif item.mode == "get":
            call = events.get(calendarId=calendar, eventId=item.event_id)
        elif item.mode == "find":
            call = events.list(
                calendarId=calendar,
                privateExtendedProperty=f"{KEY_PROPERTY}={item.change.event_key}",
                showDeleted=True,
                maxResults=2500,
            )
        else:
            body = event_body(item.payload, item.event_id, item.out_of_office)
            if item.mode == "insert":
                call = events.insert(calendarId=calendar, body=body, sendUpdates="none")
            else:
                call = events.update(
                    calendarId=calendar, eventId=item.event_id, body=body, sendUpdates="none"
                )
        if item.if_match and item.mode in ("update", "delete"):
            call.headers["If-Match"] = item.if_match
        call.http = authorised
        return call

    # -- answers ---------------------------------------------------------------------------

    def _answer(self, item: Item, outcome: Outcome) -> Step:
        if outcome.lost:
            item.error = outcome.lost
            return Step(retry=True, wait=self._delay(item, None))
        conditional, item.if_match = item.if_match, None  # one conditional write only
        if outcome.error is None:
            return self._success(item, outcome.response or {})
        error = api_error(outcome.error)
        self.batcher.raise_if_fatal(error)
        item.error = error.text
        if error.retryable or error.usage_limit:
            item.if_match = conditional
            pause = self.settings.usage_limit_pause_seconds if error.usage_limit else 0.0
            return Step(retry=True, wait=max(pause, self._delay(item, error.advised)))
        return self._refused(item, error)

    def _delay(self, item: Item, advised: float | None) -> float:
        return self.batcher.signin.backoff.delay(item.attempts + 1, advised)

    def _success(self, item: Item, response: dict[str, Any]) -> Step:
        if item.mode in ("insert", "update"):
            return Step(self._ok(item, response.get("id", item.event_id), response.get("etag")))
        if item.mode == "delete":
            if item.then_insert:
                return self._insert_next(item)
            return Step(self._ok(item, item.event_id))
        if item.mode == "get":
            return self._got(item, response)
        events = response.get("items", [])
        if item.purpose == "cleanup":
            live = self._live(item, events)
            return Step(self._ok(item, item.event_id), spawned=[self._copy(item, e) for e in live])
        return self.resolve(item, events)

    def _refused(self, item: Item, error: ApiError) -> Step:
        status = error.status
        if status == 412:
            # Changed since we wrote it: find what of ours is live now, by key.
            plain_delete = item.mode == "delete" and not item.then_insert
            item.mode, item.purpose = "find", "cleanup" if plain_delete else "resolve"
            return Step()
        if item.mode == "insert" and status == 409:
            item.mode, item.purpose = "get", "probe"
            return Step()
        if item.mode == "delete" and status in (404, 410):
            if item.then_insert:
                return self._insert_next(item)
            if item.copy:
                return Step(self._ok(item, item.event_id))
            item.mode, item.purpose = "find", "cleanup"
            return Step()
        if item.mode == "update" and status in (404, 410):
            item.mode, item.purpose = "find", "resolve"
            return Step()
        if item.mode == "update" and status == 400:
            # Maybe an event type this id does not tell (written before generations).
            item.mode, item.purpose = "get", "type"
            return Step()
        if item.mode == "get" and status in (404, 410):
            if item.purpose == "probe":
                return self._insert_next(item, taken=True)
            item.mode, item.purpose = "find", "resolve"
            return Step()
        text = error.text
        if status == 404:
            text = f"calendar {self.settings.calendar_id!r} of {item.change.calendar} not found"
        return Step(ChangeResult(item.change, False, error=text, permanent=True))

    def _got(self, item: Item, event: dict[str, Any]) -> Step:
        live = event.get("status") != "cancelled"
        if item.purpose == "probe":
            if live and event_key_of(event) == item.change.event_key:
                return self.resolve(item, [event])  # our create landed earlier: adopt it
            return self._insert_next(item, taken=True)
        if live and is_out_of_office(event) != item.out_of_office:
            return self._replace(item, event)
        return Step(ChangeResult(item.change, False, error=item.error, permanent=True))

    # -- decisions -------------------------------------------------------------------------

    def resolve(self, item: Item, events: list[dict[str, Any]]) -> Step:
        """Adopt our live event with this key (deleting further copies), or insert a new one."""
        mine = [e for e in events if event_key_of(e) == item.change.event_key]
        for event in mine:
            parsed = parse_event_id(event.get("id"))
            if parsed and parsed.event_key == item.change.event_key:
                item.generation = max(item.generation, parsed.generation + 1)
        live = self._live(item, mine)
        if not live:
            return self._insert_next(item)
        keep = self._choose(item, live)
        spawned = [self._copy(item, e) for e in live if e is not keep]
        item.adopted = item.change.op == "create"
        if is_out_of_office(keep) != item.out_of_office:
            step = self._replace(item, keep)
        elif same_content(keep, item.payload, item.out_of_office):
            step = Step(self._ok(item, keep["id"], keep.get("etag")))
        else:
            item.mode, item.event_id = "update", keep["id"]
            step = Step()
        step.spawned.extend(spawned)
        return step

    def _choose(self, item: Item, live: list[dict[str, Any]]) -> dict[str, Any]:
        """The snapshot's event, else one under our own id, of the wanted type, the newest."""
        for event in live:
            if event.get("id") == item.change.provider_event_id:
                return event

        def rank(event: dict[str, Any]) -> tuple[bool, bool, str]:
            parsed = parse_event_id(event.get("id"))
            ours = parsed is not None and parsed.event_key == item.change.event_key
            wanted = is_out_of_office(event) == item.out_of_office
            return ours, wanted, event.get("updated", "")

        return max(live, key=rank)

    def _replace(self, item: Item, event: dict[str, Any]) -> Step:
        parsed = parse_event_id(event.get("id"))
        if parsed and parsed.event_key == item.change.event_key:
            item.generation = max(item.generation, parsed.generation + 1)
        item.mode, item.event_id, item.then_insert = "delete", event["id"], True
        return Step()

    def _insert_next(self, item: Item, taken: bool = False) -> Step:
        if taken:
            item.generation += 1
            item.probes += 1
            if item.probes > MAX_PROBES:
                return Step(
                    ChangeResult(
                        item.change,
                        False,
                        error=f"no free event id after {MAX_PROBES} generations",
                        permanent=True,
                    )
                )
        item.mode, item.then_insert = "insert", False
        item.event_id = event_id_for(item.change.event_key, item.generation, item.out_of_office)
        return Step()

    def _live(self, item: Item, events: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [
            e
            for e in events
            if e.get("status") != "cancelled" and event_key_of(e) == item.change.event_key
        ]

    def _copy(self, item: Item, event: dict[str, Any]) -> Item:
        log.info(
            "deleting a further copy %s of %s in %s", event["id"], item.change.event_key, self.user
        )
        return Item(item.change, "delete", event_id=event["id"], copy=True)

    def _ok(self, item: Item, event_id: str, version: str | None = None) -> ChangeResult:
        return ChangeResult(
            item.change, True, provider_event_id=event_id, version=version, adopted=item.adopted
        )
