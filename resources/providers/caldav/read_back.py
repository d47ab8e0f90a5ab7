"""Read-back for the drift report: a calendar-query REPORT over the window, our tag only."""

from __future__ import annotations

import datetime as dt

from resources.providers.base import RemoteEvent
from resources.providers.caldav.calendars import CalendarLocator
from resources.providers.caldav.mapping import href_of, ours_query, parse_resource, path_of
from resources.providers.caldav.session import CalendarFailure, DavSession


def read_calendar(
    session: DavSession, locator: CalendarLocator, calendar: str, start: dt.date, end: dt.date
) -> list[RemoteEvent]:
    """Our tagged events in one employee's calendar overlapping [start, end)."""
    url = locator.url(calendar)
    headers = {"Depth": "1", "Content-Type": "application/xml; charset=utf-8"}
    reply = session.request("REPORT", url, ours_query(start, end), headers)
    if reply.status in (404, 403):
        raise CalendarFailure(f"REPORT {path_of(url)}: {reply.reason()}", whole_calendar=True)
    if reply.status not in (200, 207):
        raise CalendarFailure(f"REPORT {path_of(url)}: {reply.reason()}", permanent=False)
    out = []
    for found in reply.dav.parse_calendar_query():  # type: ignore[attr-defined]
        stored = parse_resource(href_of(url, "", found.href), found.etag, found.calendar_data)
        if stored.key is None:  # the server's filter is a hint; our tag decides
            continue
        payload = stored.payload()
        if payload is not None and (
            payload.end_date_exclusive() < start or payload.start_date() >= end
        ):
            continue  # the same window as every other target, whatever the server's zone
        out.append(
            RemoteEvent(
                event_key=stored.key,
                calendar=calendar,
                provider_event_id=path_of(stored.href),
                payload=payload,
                version=stored.etag,
            )
        )
    return out
