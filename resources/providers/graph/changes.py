"""One apply(): look our events up, adopt or write them, and judge every sub-response.

A create is never blind. Before writing, each mailbox's keys are looked up in its calendar
in a few requests: with three keys or more, one listing of our events whose key starts with
the keys' common prefix (a first sync finds nothing in one request); otherwise, or when the
calendar holds many more of our events than we look for, one ``eq`` filter per key. An
event found is adopted (updated only if it differs) and further copies of the key in that
calendar are deleted. Updates are looked up too (ids only, a cheaper listing): an event the
user deleted sits in Deleted Items, outside the calendar, where a PATCH by immutable id would
still succeed unseen; not found in the calendar, it is created again (HR is the master).
"""

from __future__ import annotations

import collections
import logging
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from resources.providers.base import (
    ChangeResult,
    EventChange,
    FatalProviderError,
    changed_fields,
)
from resources.providers.graph.batching import Batch, Scheduler
from resources.providers.graph.client import TRANSPORT_ERRORS, Reply
from resources.providers.graph.mapping import (
    READ_PREFER,
    WRITE_PREFER,
    event_body,
    payload_from_event,
)

if TYPE_CHECKING:
    from resources.providers.graph.provider import GraphCalendarProvider

log = logging.getLogger(__name__)

# Sub-request codes that mean "this mailbox cannot be written", not "this event".
MAILBOX_ERRORS = {
    "ErrorInvalidUser",
    "MailboxNotEnabledForRESTAPI",
    "MailboxNotHostedInExchangeOnline",
    "ResourceNotFound",
    "ErrorNonExistentMailbox",
}
# ... of which these say the user or their mailbox no longer exists (renamed without keeping the
# old address, left, unlicensed): an event there went with it, so its delete is done.
MAILBOX_GONE = {"ErrorInvalidUser", "MailboxNotEnabledForRESTAPI", "ErrorNonExistentMailbox"}
DENIED_ERRORS = {"ErrorAccessDenied", "Authorization_RequestDenied", "AccessDenied"}
# A mailbox with this many keys to look up lists our events instead of asking per key.
LIST_FROM_KEYS = 3
LOOKUP_PAGE_SIZE = 1000
# Keep paging a listing while each page fetched serves at least this many keys.
KEYS_PER_PAGE = 4


@dataclass(eq=False)
class Task:
    """One change on its way; its result is reported once, when its last step has landed."""

    change: EventChange
    mailbox: str
    open_steps: int = 0
    result: ChangeResult | None = None
    done: bool = False
    transaction_id: str | None = None  # this create attempt's, kept for its retries
    create_sent: bool = False


@dataclass(eq=False)
class Lookup:
    """The look-up of some keys in one mailbox's calendar, and what it found so far."""

    mailbox: str
    tasks: list[Task]
    keys: set[str]
    found: dict[str, dict[str, tuple[dict[str, Any], str | None]]] = field(
        default_factory=lambda: collections.defaultdict(dict)
    )
    outstanding: int = 0
    pages: int = 0
    # Every field a comparison needs (a create may adopt), or ids only (updates, deletes).
    full: bool = True


@dataclass(eq=False)
class Work:
    """One request to send: a look-up page, or a create, update or delete of one event."""

    mailbox: str
    kind: str  # "lookup" | "create" | "update" | "delete"
    task: Task | None = None
    lookup: Lookup | None = None
    url: str = ""
    event_id: str | None = None
    main: bool = True  # False: deleting a further copy of the key
    listing: bool = False
    adopted: bool = False
    attempt: int = 0
    not_before: float = 0.0
    last_error: str = ""


class _BatchFailed(Exception):
    def __init__(self, reply: Reply) -> None:
        super().__init__(reply.describe())
        self.reply = reply


class _BatchRejected(Exception):
    """Graph refused the batch as a whole (400): a bug of ours, not of one event."""


class Run:
    """Schedules the batches of one apply() and settles their sub-responses."""

    def __init__(self, provider: GraphCalendarProvider, changes: list[EventChange]) -> None:
        self.p = provider
        self.s = provider.settings
        self.scheduler = Scheduler(self.s, provider.client)
        self.pool = ThreadPoolExecutor(self.s.parallel_batches, thread_name_prefix="graph-batch")
        self.futures: dict[Future, Batch] = {}
        self.results: collections.deque[ChangeResult] = collections.deque()
        self.denied: set[str] = set()
        self.writes_succeeded = 0  # a look-up succeeds with read permission alone
        self.refreshed_token: str | None = None
        by_mailbox: dict[str, list[Task]] = collections.defaultdict(list)
        for change in changes:
            by_mailbox[change.calendar.strip().lower()].append(Task(change, ""))
        self.total_mailboxes = len(by_mailbox)
        for mailbox, tasks in by_mailbox.items():
            self._start(mailbox, tasks)

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)

    # ----------------------------------------------------------------- start

    def _start(self, mailbox: str, tasks: list[Task]) -> None:
        to_look_up = []
        for task in tasks:
            task.mailbox = mailbox
            change = task.change
            if change.op in ("create", "update") and change.event is None:
                raise ValueError(f"{change.op} of {change.event_key} has no event")
            if change.op == "delete" and change.provider_event_id:
                self._push(Work(mailbox, "delete", task, event_id=change.provider_event_id))
            else:
                to_look_up.append(task)
        if to_look_up:
            self._look_up(mailbox, to_look_up)

    def _look_up(self, mailbox: str, tasks: list[Task], not_before: float = 0.0) -> None:
        keys = {t.change.event_key for t in tasks}
        full = any(t.change.op == "create" for t in tasks)
        lookup = Lookup(mailbox, tasks, keys, full=full)
        prefix = _common_prefix(keys)
        if len(keys) >= LIST_FROM_KEYS and prefix:
            url = self.p.tags.lookup_url(
                mailbox, self.p.tags.key_starts_with(prefix), LOOKUP_PAGE_SIZE, full
            )
            self._push_lookup(lookup, url, listing=True, not_before=not_before)
        else:
            for key in sorted(keys):
                self._push_lookup(lookup, self._key_url(lookup, key), not_before=not_before)

    def _key_url(self, lookup: Lookup, key: str) -> str:
        tags = self.p.tags
        return tags.lookup_url(lookup.mailbox, tags.key_equals(key), 10, lookup.full)

    def _push_lookup(
        self, lookup: Lookup, url: str, listing: bool = False, not_before: float = 0.0
    ) -> None:
        lookup.outstanding += 1
        work = Work(lookup.mailbox, "lookup", lookup=lookup, url=url, listing=listing)
        work.not_before = not_before
        self.scheduler.push(work)

    def _push(self, work: Work) -> None:
        if work.task is not None:
            work.task.open_steps += 1
        self.scheduler.push(work)

    # ----------------------------------------------------------------- the loop

    def execute(self) -> Iterator[ChangeResult]:
        while self.scheduler.has_work() or self.futures:
            while len(self.futures) < self.s.parallel_batches:
                batch = self.scheduler.take(time.monotonic(), len(self.futures))
                if batch is None:
                    break
                self.futures[self.pool.submit(self._send, batch)] = batch
            yield from self._drain()
            now = time.monotonic()
            if not self.futures:
                if self.scheduler.has_work():
                    time.sleep(max(0.0, self.scheduler.wake_at(now) - now))
                continue
            # With every batch slot taken, only a batch coming back can change anything.
            room = len(self.futures) < self.s.parallel_batches
            timeout = (
                max(0.0, self.scheduler.wake_at(now) - now)
                if room and self.scheduler.has_work()
                else None
            )
            done, _ = wait(list(self.futures), timeout=timeout, return_when=FIRST_COMPLETED)
            for future in done:
                batch = self.futures.pop(future)
                self.scheduler.release(batch)
                token, outcome = future.result()
                self._settle(batch, token, outcome)
                yield from self._drain()
        yield from self._drain()

    def _drain(self) -> Iterator[ChangeResult]:
        while self.results:
            yield self.results.popleft()

    def _send(self, batch: Batch) -> tuple[str, dict[str, Reply] | BaseException]:
        """Worker thread: POST one $batch and map its sub-responses by id."""
        token = self.p.signin.current()
        body = batch.body(self._sub_request)
        try:
            reply = self.p.client.request(
                "POST", f"{self.p.client.graph_base}/$batch", body, token=token
            )
        except (*TRANSPORT_ERRORS, FatalProviderError) as err:
            return token, err
        if reply.status == 400:
            return token, _BatchRejected(reply.describe())
        if reply.status != 200:
            return token, _BatchFailed(reply)
        out = {}
        for item in (reply.body or {}).get("responses", []):
            out[str(item.get("id"))] = Reply(
                int(item.get("status", 500)), item.get("headers") or {}, item.get("body")
            )
        return token, out

    def _sub_request(self, work: Work, rid: str) -> dict[str, Any]:
        if work.kind == "lookup":
            return {"id": rid, "method": "GET", "url": work.url, "headers": {"Prefer": READ_PREFER}}
        user = f"/users/{quote(work.mailbox, safe='@')}"
        headers = {"Prefer": WRITE_PREFER}
        if work.kind == "delete":
            url = f"{user}/events/{quote(str(work.event_id), safe='')}"
            return {"id": rid, "method": "DELETE", "url": url, "headers": headers}
        assert work.task is not None and work.task.change.event is not None
        change = work.task.change
        body = event_body(change.event, change.event_key, self.p.tags, self.s.categories)
        headers["Content-Type"] = "application/json"
        if work.kind == "create":
            work.task.create_sent = True
            body["transactionId"] = self._transaction_id(work.task)
            return {
                "id": rid,
                "method": "POST",
                "url": f"{user}/calendar/events",
                "headers": headers,
                "body": body,
            }
        url = f"{user}/events/{quote(str(work.event_id), safe='')}"
        return {"id": rid, "method": "PATCH", "url": url, "headers": headers, "body": body}

    @staticmethod
    def _transaction_id(task: Task) -> str:
        """One create attempt's id: the core's attempt_id, else a fresh one; never the content."""
        if task.transaction_id is None:
            task.transaction_id = task.change.attempt_id or str(uuid.uuid4())
        return task.transaction_id

    # ----------------------------------------------------------------- settling

    def _settle(self, batch: Batch, token: str, outcome: dict[str, Reply] | BaseException) -> None:
        now = time.monotonic()
        retry: list[tuple[Work, Reply | None, bool]] = []  # (work, reply, outcome unknown)
        if isinstance(outcome, FatalProviderError):
            raise outcome
        if isinstance(outcome, _BatchRejected):
            for work in batch.works:
                self._fail_work(work, f"Graph rejected the batch: {outcome}")
            return
        if isinstance(outcome, BaseException):
            reply = outcome.reply if isinstance(outcome, _BatchFailed) else None
            if reply is not None and reply.status == 401:
                self._reauthenticate(reply, token)
            unknown = reply is None or reply.status >= 500
            if reply is not None and reply.status == 429:
                # Throttled as a whole: nothing goes out before Retry-After.
                wait_for = reply.retry_after() or self.p.client.backoff.delay(1)
                self.scheduler.app_ready_at = max(self.scheduler.app_ready_at, now + wait_for)
            for work in batch.works:
                work.last_error = reply.describe() if reply else type(outcome).__name__
                retry.append((work, reply, unknown))
            self._requeue(retry, now)
            return
        for i, work in enumerate(batch.works):
            reply = outcome.get(str(i))
            if reply is None:
                work.last_error = "no response for this request in the batch"
                retry.append((work, None, True))
                continue
            self._judge(work, reply, retry, token)
        self._requeue(retry, now)

    def _judge(
        self, work: Work, reply: Reply, retry: list[tuple[Work, Reply | None, bool]], token: str
    ) -> None:
        """The fate of one sub-response: a result, a next step, or a retry."""
        status = reply.status
        if status == 424:  # never ran: the request before it in a sequential batch failed
            self.scheduler.push(work, front=True)
            return
        if status < 300:
            self.writes_succeeded += work.kind != "lookup"
            body = reply.body if isinstance(reply.body, dict) else {}
            if work.kind == "lookup":
                self._looked_up(work, body)
            elif work.kind == "delete":
                self._step_done(work, ok=True, event_id=work.event_id)
            else:
                self._step_done(
                    work, ok=True, event_id=body.get("id"), version=body.get("changeKey")
                )
            return
        if status == 404 and reply.code == "ErrorItemNotFound":
            if work.kind == "delete":
                self._step_done(work, ok=True, event_id=work.event_id)  # already gone
                return
            if work.kind == "update":
                # Gone since the look-up: create it again, as a new attempt.
                assert work.task is not None
                work.kind, work.event_id, work.adopted = "create", None, False
                work.task.transaction_id = None
                self.scheduler.push(work, front=True)
                return
        if status == 401:
            self._reauthenticate(reply, token)
            retry.append((work, reply, False))
            return
        if work.kind == "delete" and reply.code in MAILBOX_GONE:
            log.info("delete in %s done: %s", work.mailbox, reply.describe())
            self._step_done(work, ok=True, event_id=work.event_id)
            return
        if reply.code in MAILBOX_ERRORS or (status == 404 and work.kind in ("create", "lookup")):
            gone = reply.code in MAILBOX_GONE
            self._fail_mailbox(work, self.p.explain_mailbox_error(work.mailbox, reply), gone)
            return
        if status == 403 or reply.code in DENIED_ERRORS:
            self.denied.add(work.mailbox)
            if not self.writes_succeeded and len(self.denied) >= min(3, self.total_mailboxes):
                raise FatalProviderError(
                    f"Microsoft Graph denies the app access to every mailbox tried "
                    f"({', '.join(sorted(self.denied))}): {reply.describe()}. Grant the "
                    "application permission Calendars.ReadWrite to the app registration and "
                    "click 'Grant admin consent'; if an application access policy or RBAC for "
                    "Applications scopes the app, add the synced mailboxes to that scope"
                )
            self._fail_mailbox(work, self.p.explain_mailbox_error(work.mailbox, reply))
            return
        if status == 429 or status >= 500:
            work.last_error = reply.describe()
            retry.append((work, reply, status not in (429, 503)))
            return
        self._fail_work(work, f"{work.kind} refused: {reply.describe()}")

    def _looked_up(self, work: Work, body: dict[str, Any]) -> None:
        lookup = work.lookup
        assert lookup is not None
        for event in body.get("value") or []:
            key, zone = self.p.tags.values(event)
            # Graph compares values case-insensitively; only the exact key is ours to adopt.
            if key in lookup.keys and event.get("id"):
                lookup.found[key][event["id"]] = (event, zone)
        lookup.outstanding -= 1
        next_link = body.get("@odata.nextLink")
        if next_link and work.listing:
            lookup.pages += 1
            if lookup.pages * KEYS_PER_PAGE <= len(lookup.keys):
                self._push_lookup(lookup, self.p.client.relative(next_link), listing=True)
            else:
                # The calendar holds many more of our events than we look for: ask per key.
                for key in sorted(lookup.keys):
                    self._push_lookup(lookup, self._key_url(lookup, key))
        elif next_link:
            self._push_lookup(lookup, self.p.client.relative(next_link))
        if lookup.outstanding == 0:
            for task in lookup.tasks:
                if not task.done:
                    self._decide(task, lookup.found.get(task.change.event_key, {}))

    def _decide(self, task: Task, found: dict[str, tuple[dict[str, Any], str | None]]) -> None:
        """What a change needs once we know which events of its key the calendar holds."""
        change, mailbox = task.change, task.mailbox
        if change.op == "delete":
            if not found:
                self._finish(task, ChangeResult(change, True, provider_event_id=None))
            for n, event_id in enumerate(found):
                self._push(Work(mailbox, "delete", task, event_id=event_id, main=n == 0))
            return
        assert change.event is not None
        if change.op == "update":
            # The change is a write anyway: keep the event the snapshot knows if it is still
            # in the calendar, else the newest copy; delete the others.
            keep = change.provider_event_id if change.provider_event_id in found else None
            if keep is None and found:
                keep = max(found, key=lambda i: _modified(found[i][0]))
            self._delete_copies(task, found, keep)
            if keep is None:  # deleted (or in Deleted Items): HR is the master
                self._push(Work(mailbox, "create", task))
            else:
                adopted = keep != change.provider_event_id and not task.create_sent
                self._push(Work(mailbox, "update", task, event_id=keep, adopted=adopted))
            return
        diffs = {}
        for event_id, (event, zone) in found.items():
            try:
                remote = payload_from_event(event, change.event_key, zone, self.s.categories)
                diffs[event_id] = changed_fields(change.event, remote, self.p.compared_fields)
            except (KeyError, TypeError, ValueError):
                diffs[event_id] = ["unreadable"]
        keep = None
        if found:
            same = [event_id for event_id, diff in diffs.items() if not diff]
            keep = same[0] if same else max(found, key=lambda i: _modified(found[i][0]))
        self._delete_copies(task, found, keep)
        adopted = keep is not None and not task.create_sent
        if keep is None:
            self._push(Work(mailbox, "create", task))
        elif diffs[keep]:
            self._push(Work(mailbox, "update", task, event_id=keep, adopted=adopted))
        else:
            event = found[keep][0]
            result = ChangeResult(
                change,
                True,
                provider_event_id=keep,
                version=event.get("changeKey"),
                adopted=adopted,
            )
            self._finish(task, result)

    def _delete_copies(
        self, task: Task, found: dict[str, tuple[dict[str, Any], str | None]], keep: str | None
    ) -> None:
        for event_id in found:
            if event_id != keep:
                self._push(Work(task.mailbox, "delete", task, event_id=event_id, main=False))

    # ----------------------------------------------------------------- outcomes

    def _step_done(
        self, work: Work, ok: bool, event_id: str | None = None, version: str | None = None
    ) -> None:
        task = work.task
        if task is None or task.done:
            return
        task.open_steps -= 1
        if work.main:
            task.result = ChangeResult(
                task.change, ok, provider_event_id=event_id, version=version, adopted=work.adopted
            )
        if task.open_steps <= 0 and task.result is not None:
            self._finish(task, task.result)

    def _finish(self, task: Task, result: ChangeResult) -> None:
        if task.done:
            return
        task.done = True
        self.results.append(result)

    def _fail_work(self, work: Work, reason: str, permanent: bool = True) -> None:
        if work.kind == "lookup":
            assert work.lookup is not None
            for task in work.lookup.tasks:
                self._finish(
                    task, ChangeResult(task.change, False, error=reason, permanent=permanent)
                )
            return
        task = work.task
        if task is None or task.done:
            return
        if not work.main:
            # A further copy of the key stays; drift repair removes it later.
            log.warning(
                "copy %s of %s in %s kept: %s",
                work.event_id,
                task.change.event_key,
                work.mailbox,
                reason,
            )
            self._step_done(work, ok=True)
            return
        self._finish(task, ChangeResult(task.change, False, error=reason, permanent=permanent))

    def _fail_mailbox(self, work: Work, reason: str, gone: bool = False) -> None:
        # The rest of this mailbox's requests would fail the same way: fail them at once
        # (a delete in a mailbox that no longer exists is done).
        self._fail_work(work, reason)
        for other in self.scheduler.remove_mailbox(work.mailbox):
            if gone and other.kind == "delete":
                self._step_done(other, ok=True, event_id=other.event_id)
            else:
                self._fail_work(other, reason)

    def _requeue(self, retry: list[tuple[Work, Reply | None, bool]], now: float) -> None:
        # Sub-requests throttled together wait for the longest Retry-After among them.
        advised = [r.retry_after() for _, r, _ in retry if r is not None and r.retry_after()]
        longest = max(advised) if advised else None
        for work, reply, unknown in retry:
            work.attempt += 1
            if work.attempt >= self.s.max_attempts:
                self._fail_work(
                    work, f"gave up after {work.attempt} attempts: {work.last_error}", False
                )
                continue
            hint = longest if reply is not None and reply.status == 429 else None
            if hint is None and reply is not None:
                hint = reply.retry_after()
            not_before = now + self.p.client.backoff.delay(work.attempt, hint)
            if reply is not None and reply.status == 429:
                # Its mailbox is over a limit: hold back its other requests as well.
                self.scheduler.hold(work.mailbox, not_before)
            if unknown and work.kind == "create" and work.task is not None:
                # The create may have landed: look for its key before trying again.
                work.task.open_steps -= 1
                self._look_up(work.mailbox, [work.task], not_before)
                continue
            work.not_before = not_before
            self.scheduler.push(work, front=True)

    def _reauthenticate(self, reply: Reply, token: str) -> None:
        """A 401: fetch a new token once; a 401 on that new token too is fatal."""
        if token == self.refreshed_token:
            raise FatalProviderError(
                f"Microsoft Graph rejects the app's fresh access token: {reply.describe()}; "
                "check that the app registration is enabled and has admin consent"
            )
        if token == self.p.signin.token:  # not yet replaced by another batch's refresh
            self.refreshed_token = self.p.signin.renew()


def _common_prefix(keys: set[str]) -> str:
    low, high = min(keys), max(keys)
    n = 0
    while n < min(len(low), len(high)) and low[n] == high[n]:
        n += 1
    return low[:n]


def _modified(event: dict[str, Any]) -> str:
    return str(event.get("lastModifiedDateTime") or "")
