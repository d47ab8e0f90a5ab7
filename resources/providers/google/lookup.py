"""The look-up before creates: our tagged events per calendar, list calls of many users batched."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from resources.providers.google.batching import Batcher, api_error
from resources.providers.google.mapping import event_key_of
from resources.providers.google.settings import KEY_PROPERTY, TAG_PROPERTY, TAG_VALUE
from resources.providers.google.signin import UserFailed

log = logging.getLogger(__name__)
# One key to create in a calendar: one list of that key. More: one list of every event with
# our tag there, whatever its dates (a leave whose dates HR changed while our state was
# lost still sits at its old dates), which costs one call per 2,500 events. Either way one
# constraint per call: Events: list says repeated ones are AND'ed, the Extended properties
# guide says OR'ed.
PER_KEY_LIMIT = 1
PAGE_SIZE = 2500  # the largest page Google returns (Events: list)


@dataclass
class _Query:
    user: str
    key: str | None  # None: every event that carries our tag
    page_token: str | None = None
    attempts: int = 0
    ready_at: float = 0.0


@dataclass(frozen=True)
class UserFound:
    """One user's look-up: our events (deleted ones too) per key asked, or why it failed."""

    events: dict[str, list[dict[str, Any]]]
    failure: str = ""
    permanent: bool = False


def look_up(
    batcher: Batcher,
    wanted: dict[str, set[str]],
    done: Callable[[str, UserFound], None],
    stop: threading.Event,
) -> None:
    """Our events with the wanted keys in each user's calendar, several users per batch.

    ``done(user, found)`` is called as soon as a user's look-up is complete, so that user's
    writes start while other users' look-ups go on (or wait out a rate limit).
    """
    settings = batcher.settings
    events = {user: {key: [] for key in keys} for user, keys in wanted.items()}
    open_queries: dict[str, int] = {}
    failed: set[str] = set()
    queue: list[_Query] = []
    for user, keys in wanted.items():
        if len(keys) <= PER_KEY_LIMIT:
            queue.extend(_Query(user, key) for key in sorted(keys))
        else:
            queue.append(_Query(user, None))
        open_queries[user] = len(keys) if len(keys) <= PER_KEY_LIMIT else 1

    def fail(user: str, reason: str, permanent: bool) -> None:
        if user not in failed:
            failed.add(user)
            done(user, UserFound({}, reason, permanent))

    def close(user: str) -> None:
        open_queries[user] -= 1
        if open_queries[user] == 0 and user not in failed:
            done(user, UserFound(events[user]))

    authorised: dict[str, Any] = {}
    while queue and not stop.is_set():
        now = time.monotonic()
        ready = [q for q in queue if q.ready_at <= now][: settings.batch_size]
        if not ready:
            stop.wait(min(q.ready_at for q in queue) - now)
            continue
        for query in ready:
            queue.remove(query)
        calls = []
        for query in ready:
            if query.user in failed:
                continue
            if query.user not in authorised:
                try:
                    subject = settings.subject_for(query.user)
                    authorised[query.user] = batcher.signin.authorize(subject)
                except UserFailed as exc:
                    fail(query.user, str(exc), True)
                    continue
            calls.append((query, _list_call(batcher, query, authorised[query.user])))
        if not calls:
            continue
        try:
            outcomes = batcher.send([(q.user, call) for q, call in calls], batcher.signin.http())
        except UserFailed as exc:  # one user's cached token refused, its refresh too
            for query, _ in calls:
                fail(query.user, str(exc), True)
            continue
        for (query, _), outcome in zip(calls, outcomes, strict=True):
            if outcome.error is None and not outcome.lost:
                page = outcome.response or {}
                _keep(events[query.user], page.get("items", []))
                if page.get("nextPageToken"):
                    queue.append(_Query(query.user, query.key, page["nextPageToken"]))
                else:
                    close(query.user)
                continue
            query.attempts += 1
            if outcome.lost:
                problem, retry, advised, pause = outcome.lost, True, None, 0.0
            else:
                error = api_error(outcome.error)  # type: ignore[arg-type]
                batcher.raise_if_fatal(error)
                problem, advised = error.text, error.advised
                retry = error.retryable or error.usage_limit
                pause = settings.usage_limit_pause_seconds if error.usage_limit else 0.0
                if error.status == 404:
                    problem = (
                        f"calendar {settings.calendar_id_for(query.user)!r} of "
                        f"{settings.subject_for(query.user)} not found"
                    )
            if not retry:
                fail(query.user, f"look-up of our events failed: {problem}", True)
            elif query.attempts >= settings.max_attempts:
                fail(
                    query.user,
                    f"look-up of our events gave up after {query.attempts} attempts: {problem}",
                    False,
                )
            else:
                delay = max(pause, batcher.signin.backoff.delay(query.attempts, advised))
                query.ready_at = time.monotonic() + delay
                queue.append(query)


def _list_call(batcher: Batcher, query: _Query, authorised: Any) -> Any:
    constraint = (
        f"{KEY_PROPERTY}={query.key}" if query.key is not None else f"{TAG_PROPERTY}={TAG_VALUE}"
    )
    call = batcher.events().list(
        calendarId=batcher.settings.calendar_id_for(query.user),
        privateExtendedProperty=constraint,
        showDeleted=True,
        maxResults=PAGE_SIZE,
        pageToken=query.page_token,
    )
    call.http = authorised  # this part carries its own user's token
    return call


def _keep(mine: dict[str, list[dict[str, Any]]], items: Iterable[dict[str, Any]]) -> None:
    for event in items:
        key = event_key_of(event)
        # Matched here, not trusted to the filter: a deleted event may lack properties.
        if key in mine:
            mine[key].append(event)
