"""Read-back for the drift report: our tagged events in a window, deleted ones as None."""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Iterable, Iterator
from typing import Any

from google.auth import exceptions as auth_exceptions
from googleapiclient.errors import HttpError

from resources.providers.base import EventPayload, RemoteEvent
from resources.providers.google.batching import SEND_ERRORS, Batcher, api_error
from resources.providers.google.mapping import event_key_of, payload_from_event
from resources.providers.google.settings import TAG_PROPERTY, TAG_VALUE
from resources.providers.google.signin import UserFailed, certificate_failure, untrusted

log = logging.getLogger(__name__)


def read_back(
    batcher: Batcher, calendars: Iterable[str], start: dt.date, end: dt.date
) -> Iterator[RemoteEvent]:
    """Our tagged events (cancelled ones too, as payload None) overlapping [start, end)."""
    # A day of margin each side: all-day events are placed in each calendar's own zone.
    time_min = dt.datetime.combine(start - dt.timedelta(days=1), dt.time(), dt.UTC)
    time_max = dt.datetime.combine(end + dt.timedelta(days=1), dt.time(), dt.UTC)
    for user in calendars:
        try:
            authed = batcher.signin.authorize(batcher.settings.subject_for(user))
        except UserFailed as exc:
            log.warning("read-back skipped %s: %s", user, exc)
            continue
        try:
            yield from _list_user(batcher, user, authed, time_min, time_max, start, end)
        except UserFailed as exc:
            log.warning("read-back skipped %s: %s", user, exc)


def _list_user(
    batcher: Batcher,
    user: str,
    authed: Any,
    time_min: dt.datetime,
    time_max: dt.datetime,
    start: dt.date,
    end: dt.date,
) -> Iterator[RemoteEvent]:
    """One user's pages of our events (a refused token raises UserFailed)."""
    page_token = None
    while True:
        call = batcher.events().list(
            calendarId=batcher.settings.calendar_id_for(user),
            privateExtendedProperty=f"{TAG_PROPERTY}={TAG_VALUE}",
            showDeleted=True,
            singleEvents=True,
            timeMin=time_min.isoformat(),
            timeMax=time_max.isoformat(),
            maxResults=2500,
            pageToken=page_token,
        )
        page = _execute(batcher, user, call, authed)
        for event in page.get("items", []):
            remote = _remote(user, event, start, end)
            if remote is not None:
                yield remote
        page_token = page.get("nextPageToken")
        if not page_token:
            break


def _remote(user: str, event: dict[str, Any], start: dt.date, end: dt.date) -> RemoteEvent | None:
    key = event_key_of(event)
    if key is None:
        return None
    payload = payload_from_event(event)
    if payload is not None and not (payload.start_date() < end and start < _end_day(payload)):
        return None
    return RemoteEvent(key, user, event.get("id"), payload, event.get("etag"))


def _execute(batcher: Batcher, user: str, call: Any, authed: Any) -> dict[str, Any]:
    settings, backoff = batcher.settings, batcher.signin.backoff
    attempt = 0
    while True:
        attempt += 1
        batcher.user_limiter(user).acquire()
        batcher.project_limiter.acquire()
        try:
            return call.execute(http=authed)
        except auth_exceptions.RefreshError as exc:
            # A cached token refused (the user deleted since): UserFailed if it names the user.
            batcher.signin.raise_for_token_error(batcher.settings.subject_for(user), exc)
            if attempt >= settings.max_attempts:
                raise UserFailed(f"no token for {user}: {exc}") from None
            time.sleep(backoff.delay(attempt))
        except HttpError as exc:
            error = api_error(exc)
            batcher.raise_if_fatal(error)
            if attempt >= settings.max_attempts or not (error.retryable or error.usage_limit):
                raise
            pause = settings.usage_limit_pause_seconds if error.usage_limit else 0.0
            time.sleep(max(pause, backoff.delay(attempt, error.advised)))
        except SEND_ERRORS as exc:
            bad = certificate_failure(exc)
            if bad is not None:
                raise untrusted(batcher.target, settings.api_base_url, bad) from None
            if attempt >= settings.max_attempts:
                raise
            time.sleep(backoff.delay(attempt))


def _end_day(payload: EventPayload) -> dt.date:
    end = payload.end_date_exclusive()
    # A timed event ending at 17:00 still occupies its end date.
    return end if payload.all_day else end + dt.timedelta(days=1)
