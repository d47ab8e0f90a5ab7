"""Read back our tagged events in a window, for the drift report (calendarView, paged)."""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING
from urllib.parse import quote

from resources.providers.base import FatalProviderError, RemoteEvent
from resources.providers.graph.changes import DENIED_ERRORS
from resources.providers.graph.mapping import READ_PREFER, payload_from_event

if TYPE_CHECKING:
    from resources.providers.graph.provider import GraphCalendarProvider

log = logging.getLogger(__name__)


def read_back(
    provider: GraphCalendarProvider, calendars: Iterable[str], start: dt.date, end: dt.date
) -> Iterator[RemoteEvent]:
    """Our tagged events overlapping [start, end) in each calendar; others are never reported."""
    client, tags = provider.client, provider.tags
    # A day of margin each side: all-day events float in the reader's zone.
    lo = (start - dt.timedelta(days=1)).isoformat() + "T00:00:00Z"
    hi = (end + dt.timedelta(days=1)).isoformat() + "T00:00:00Z"
    for calendar in calendars:
        mailbox = calendar.strip().lower()
        url: str | None = (
            f"{client.graph_base}/users/{quote(mailbox, safe='@')}/calendarView"
            f"?startDateTime={lo}&endDateTime={hi}&$top={provider.settings.page_size}"
            f"&$expand={quote(tags.expand())}"
        )
        while url:
            reply = client.get_with_retry(url, READ_PREFER, mailbox)
            if reply.status != 200:
                if reply.status in (401, 403) and reply.code not in DENIED_ERRORS:
                    raise FatalProviderError(f"Graph refused the read-back: {reply.describe()}")
                log.warning("read-back of %s skipped: %s", mailbox, reply.describe())
                break
            for event in reply.body.get("value", []):
                key, zone = tags.values(event)
                if key is None:
                    continue  # not ours: never report, never touch
                payload = payload_from_event(event, key, zone, provider.settings.categories)
                if payload.start_date() < end and payload.end_date_exclusive() >= start:
                    if payload.all_day and payload.end_date_exclusive() == start:
                        continue
                    yield RemoteEvent(
                        key, calendar, event.get("id"), payload, event.get("changeKey")
                    )
            url = reply.body.get("@odata.nextLink")
