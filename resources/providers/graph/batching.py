"""JSON batches in the two shapes Graph accepts, within each mailbox's concurrency.

Graph runs a batch either fully parallel (no request has ``dependsOn``) or fully sequential
(each request depends on the one before, and after a failure the rest answer 424); any
other shape is refused as a whole ("Combine multiple HTTP requests using JSON batching").
Outlook allows 4 concurrent requests per app and mailbox ("Microsoft Graph service-specific
throttling limits"), and Graph dispatches up to 4 requests of a parallel batch at once.

So every mailbox has 4 slots. A parallel batch holds a slot for each of its requests to a
mailbox, and never more than that mailbox's free slots; a sequential batch runs one request
at a time and holds one slot per mailbox in it. A mailbox with a long queue (a first sync,
a team calendar) gets full sequential batches of its own, up to one per free slot; short
queues share parallel batches. Request budgets (per app, per mailbox) are taken before a
batch leaves, so a batch never waits inside.
"""

from __future__ import annotations

import collections
import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from resources.providers.graph.client import GraphClient, try_take
from resources.providers.graph.settings import GraphSettings

# How long a part-full batch may wait for more work while another batch is on its way.
BATCH_LINGER_SECONDS = 0.1


@dataclass(eq=False)
class Batch:
    """Requests that go in one $batch, its shape, and the mailbox slots it holds."""

    works: list[Any]
    sequential: bool
    slots: collections.Counter = field(default_factory=collections.Counter)

    def body(self, sub_request: Callable[[Any, str], dict[str, Any]]) -> dict[str, Any]:
        """The $batch payload: ids are the positions; a sequential batch chains them."""
        requests = []
        for i, work in enumerate(self.works):
            sub = sub_request(work, str(i))
            if self.sequential and i:
                sub["dependsOn"] = [str(i - 1)]
            requests.append(sub)
        return {"requests": requests}


class Scheduler:
    """Per-mailbox queues of ready requests, and the batches formed from them."""

    def __init__(self, settings: GraphSettings, client: GraphClient) -> None:
        self.size = settings.batch_size
        self.cap = settings.max_concurrency_per_mailbox
        self.client = client
        self.queues: dict[str, collections.deque] = {}
        self.order: collections.deque[str] = collections.deque()  # round-robin
        self.held: collections.Counter[str] = collections.Counter()
        self.mailbox_ready_at: dict[str, float] = {}
        self.app_ready_at = 0.0
        self.short_since: float | None = None

    # ----------------------------------------------------------------- queues

    def push(self, work: Any, front: bool = False) -> None:
        queue = self.queues.get(work.mailbox)
        if queue is None:
            self.queues[work.mailbox] = collections.deque([work])
            self.order.append(work.mailbox)
        elif front:
            queue.appendleft(work)
        else:
            queue.append(work)

    def remove_mailbox(self, mailbox: str) -> list[Any]:
        """Take every queued request of a mailbox out (it cannot be written)."""
        works = list(self.queues.pop(mailbox, ()))
        if mailbox in self.order:
            self.order.remove(mailbox)
        return works

    def has_work(self) -> bool:
        return bool(self.queues)

    def hold(self, mailbox: str, until: float) -> None:
        """Send nothing more to a mailbox before ``until`` (it was throttled)."""
        self.mailbox_ready_at[mailbox] = max(self.mailbox_ready_at.get(mailbox, 0.0), until)

    def release(self, batch: Batch) -> None:
        self.held.subtract(batch.slots)

    # ----------------------------------------------------------------- forming batches

    def take(self, now: float, in_flight: int) -> Batch | None:
        """The next batch to send now, or None (nothing ready, or worth waiting for)."""
        if now < self.app_ready_at or not self.queues:
            return None
        ready: list[tuple[str, int, list[Any]]] = []
        for mailbox in self.order:
            free = self.cap - self.held[mailbox]
            if free <= 0 or self.mailbox_ready_at.get(mailbox, 0.0) > now:
                continue
            works = list(
                itertools.islice(
                    (w for w in self.queues[mailbox] if w.not_before <= now), self.size
                )
            )
            if works:
                ready.append((mailbox, free, works))
        if not ready:
            return None
        batch = self._shape(ready)
        count = len(batch.works)
        others_waiting = sum(len(q) for q in self.queues.values()) > count
        if count < self.size and in_flight and others_waiting:
            # Requests are still coming back from the batches in flight: wait a little
            # for a fuller batch rather than pay an HTTP request for a few.
            if self.short_since is None:
                self.short_since = now
            if now - self.short_since < BATCH_LINGER_SECONDS:
                return None
        if not self._take_budget(batch, now):
            return None
        self._commit(batch)
        return batch

    def _shape(self, ready: list[tuple[str, int, list[Any]]]) -> Batch:
        mailbox, _, longest = max(ready, key=lambda entry: len(entry[2]))
        if len(longest) >= self.size:
            # A long queue: a full sequential batch of its own, one slot.
            return Batch(longest[: self.size], True, collections.Counter({mailbox: 1}))
        parallel: list[Any] = []
        slots: collections.Counter[str] = collections.Counter()
        for mailbox, free, works in ready:
            room = min(free, len(works), self.size - len(parallel))
            parallel += works[:room]
            slots[mailbox] += room
            if len(parallel) == self.size:
                break
        total = sum(len(works) for _, _, works in ready)
        if len(parallel) == self.size or len(parallel) == total:
            return Batch(parallel, False, slots)
        # Slots, not work, limit a parallel batch: chain the longest queues instead.
        chained: list[Any] = []
        slots = collections.Counter()
        for mailbox, _, works in sorted(ready, key=lambda entry: -len(entry[2])):
            room = min(len(works), self.size - len(chained))
            chained += works[:room]
            slots[mailbox] = 1
            if len(chained) == self.size:
                break
        return Batch(chained, True, slots)

    def _take_budget(self, batch: Batch, now: float) -> bool:
        """Take the app's and each mailbox's request budget for the batch, dropping what waits."""
        wait = try_take(self.client.app_limiter, len(batch.works))
        if wait:
            self.app_ready_at = now + wait
            return False
        per_mailbox = collections.Counter(w.mailbox for w in batch.works)
        for mailbox, count in per_mailbox.items():
            wait = try_take(self.client.mailbox_limiter(mailbox), count)
            if wait:
                self.mailbox_ready_at[mailbox] = now + wait
                batch.works = [w for w in batch.works if w.mailbox != mailbox]
                del batch.slots[mailbox]
        return bool(batch.works)

    def _commit(self, batch: Batch) -> None:
        self.held.update(batch.slots)
        chosen = {id(w) for w in batch.works}
        for mailbox in batch.slots:
            remaining = collections.deque(w for w in self.queues[mailbox] if id(w) not in chosen)
            if remaining:
                self.queues[mailbox] = remaining
            else:
                del self.queues[mailbox]
                self.order.remove(mailbox)
        self.order.rotate(-len(batch.slots))  # the next batch starts further on
        self.short_since = None

    def wake_at(self, now: float) -> float:
        """When ``take`` may next return a batch (retry times, budgets, the linger)."""
        soonest = math.inf
        for mailbox, queue in self.queues.items():
            if self.held[mailbox] < self.cap:
                first = min(w.not_before for w in queue)
                soonest = min(soonest, max(self.mailbox_ready_at.get(mailbox, 0.0), first))
        if soonest == math.inf:
            soonest = now + 0.05  # every mailbox with work is at its concurrency limit
        soonest = max(soonest, self.app_ready_at)
        if self.short_since is not None:
            soonest = min(soonest, self.short_since + BATCH_LINGER_SECONDS)
        return soonest
