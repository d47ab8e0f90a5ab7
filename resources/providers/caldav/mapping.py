"""Field mapping: resource names, event bodies, and the REPORT bodies that find our events."""

from __future__ import annotations

import datetime as dt
import re
import urllib.parse
from dataclasses import dataclass

from caldav.elements import cdav, dav
from icalendar import Calendar, Event
from lxml import etree

from resources.providers.base import EventPayload
from resources.providers.ical import KEY_PROP, event_resource, key_of, payload_of, uid_for

ICS_TYPE = "text/calendar; charset=utf-8"
_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]")
# SEQUENCE of an update: minutes since this instant, so it grows across runs without a read.
_SEQUENCE_EPOCH = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)


def resource_name(event_key: str) -> str:
    """The calendar object resource's name, from the event key (so a re-sent create overwrites)."""
    return _SAFE_NAME.sub("_", event_key) + ".ics"


def href_of(calendar_url: str, event_key: str, provider_event_id: str | None = None) -> str:
    """Absolute URL of our resource: the stored href when we have one, else the derived name."""
    if provider_event_id:
        return urllib.parse.urljoin(calendar_url, provider_event_id)
    return urllib.parse.urljoin(calendar_url, resource_name(event_key))


def path_of(url: str) -> str:
    """The href we store: the URL's path (the server may move, the path stays)."""
    return urllib.parse.urlsplit(url).path


def body_for(payload: EventPayload, update: bool, now: dt.datetime) -> bytes:
    sequence = int((now - _SEQUENCE_EPOCH).total_seconds() // 60) if update else 0
    return event_resource(payload, uid_for(payload.event_key), sequence, now)


@dataclass(frozen=True)
class StoredEvent:
    """One calendar object resource as the server holds it."""

    href: str
    etag: str | None
    event: Event | None  # the master VEVENT, None when unparsable

    @property
    def key(self) -> str | None:
        return key_of(self.event) if self.event is not None else None

    def payload(self) -> EventPayload | None:
        if self.event is None or self.key is None:
            return None
        try:
            return payload_of(self.event)
        except (KeyError, ValueError, TypeError):
            return None


def parse_resource(href: str, etag: str | None, text: str | None) -> StoredEvent:
    """The master VEVENT of a resource's calendar data (recurrence overrides are not ours)."""
    if not text:
        return StoredEvent(href, etag, None)
    try:
        cal = Calendar.from_ical(text)
    except ValueError:
        return StoredEvent(href, etag, None)
    events = [c for c in cal.walk("VEVENT") if c.get("RECURRENCE-ID") is None]
    return StoredEvent(href, etag, events[0] if events else None)


def _xml(element) -> bytes:
    return etree.tostring(element.xmlelement(), encoding="utf-8", xml_declaration=True)


def ours_query(start: dt.date | None = None, end: dt.date | None = None) -> bytes:
    """calendar-query REPORT (RFC 4791 7.8): events that carry our tag, in [start, end)."""
    event_filter = cdav.CompFilter("VEVENT")
    if start is not None and end is not None:
        event_filter += cdav.TimeRange(_utc(start), _utc(end))
    event_filter += cdav.PropFilter(KEY_PROP)  # no child: "the property is defined"
    query = cdav.CalendarQuery() + [
        dav.Prop() + [dav.GetEtag(), cdav.CalendarData()],
        cdav.Filter() + (cdav.CompFilter("VCALENDAR") + event_filter),
    ]
    return _xml(query)


def uid_query(uid: str) -> bytes:
    """calendar-query REPORT for the resource holding one UID (after a no-uid-conflict)."""
    event_filter = cdav.CompFilter("VEVENT") + (
        cdav.PropFilter("UID") + cdav.TextMatch(uid, collation="i;octet")
    )
    query = cdav.CalendarQuery() + [
        dav.Prop() + [dav.GetEtag(), cdav.CalendarData()],
        cdav.Filter() + (cdav.CompFilter("VCALENDAR") + event_filter),
    ]
    return _xml(query)


def propfind(*props) -> bytes:
    return _xml(dav.Propfind() + (dav.Prop() + list(props)))


def _utc(day: dt.date) -> dt.datetime:
    return dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC)
