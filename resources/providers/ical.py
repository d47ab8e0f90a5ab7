"""VEVENT rendering and parsing (RFC 5545), shared by the ics feeds and the CalDAV target."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

from icalendar import Calendar, Event, Timezone

from resources.providers.base import EventPayload

PRODID = "-//leavesync//leave feed//EN"
KEY_PROP = "X-LEAVESYNC-KEY"
LEAVE_PROP = "X-LEAVESYNC-LEAVE-ID"
TZ_PROP = "X-LEAVESYNC-TZ"
# Outlook's busy status property: the one way an iCalendar object can say "out of office".
BUSY_PROP = "X-MICROSOFT-CDO-BUSYSTATUS"
_UTC_NAMES = frozenset({"UTC", "Etc/UTC", "Etc/GMT", "GMT", "Z"})


def uid_for(event_key: str) -> str:
    """The iCalendar UID of our event for a key (the same in every feed and CalDAV calendar)."""
    return f"{event_key}@leavesync"


def key_of(comp: Event) -> str | None:
    """Our event key if the component carries our tag, else None."""
    key = comp.get(KEY_PROP)
    return str(key) if key else None


def vevent(
    p: EventPayload, uid: str, sequence: int, stamp: dt.datetime, zoned: bool = False
) -> Event:
    """The VEVENT of a payload: all-day as VALUE=DATE (DTEND exclusive), timed in UTC or TZID.

    ``zoned``: timed events carry TZID (the calendar then needs that VTIMEZONE) instead of UTC.
    No VALARM and no ATTENDEE, ever: a leave invites nobody and reminds nobody.
    """
    ev = Event()
    ev.add("uid", uid)
    ev.add("dtstamp", stamp)
    ev.add("sequence", sequence)
    ev.add("summary", p.title)
    if p.all_day:
        ev.add("dtstart", p.start_date())
        ev.add("dtend", p.end_date_exclusive())
    elif zoned and p.timezone not in _UTC_NAMES:
        ev.add("dtstart", p.start_datetime())
        ev.add("dtend", p.end_datetime())
    else:
        ev.add("dtstart", p.start_datetime().astimezone(dt.UTC))
        ev.add("dtend", p.end_datetime().astimezone(dt.UTC))
    ev.add("status", p.status.upper())
    ev.add("transp", "TRANSPARENT" if p.show_as == "free" else "OPAQUE")
    ev.add("class", "PRIVATE" if p.private else "PUBLIC")
    ev.add(BUSY_PROP, p.show_as.upper())
    if p.description:
        ev.add("description", p.description)
    if p.categories:
        ev.add("categories", [c.strip() for c in p.categories.split(",") if c.strip()])
    ev.add(KEY_PROP, p.event_key)
    ev.add(LEAVE_PROP, p.leave_id)
    ev.add(TZ_PROP, p.timezone)
    return ev


def vtimezone(tzid: str, first: dt.date | None = None, last: dt.date | None = None) -> Timezone:
    """A VTIMEZONE for an IANA zone, its transitions from ``first`` to ``last`` (default 1970-2038)."""
    if first is None or last is None:
        return Timezone.from_tzid(tzid)
    return Timezone.from_tzid(tzid, first_date=first, last_date=last)


def new_calendar(method: str | None = None, **extra: str) -> Calendar:
    """An empty VCALENDAR with our PRODID; ``extra`` are further calendar properties."""
    cal = Calendar()
    cal.add("prodid", PRODID)
    cal.add("version", "2.0")
    cal.add("calscale", "GREGORIAN")
    if method:
        cal.add("method", method)
    for name, value in extra.items():
        cal.add(name.replace("_", "-"), value)
    return cal


def event_resource(p: EventPayload, uid: str, sequence: int, stamp: dt.datetime) -> bytes:
    """One CalDAV calendar object resource (RFC 4791 4.1): one VEVENT, its VTIMEZONE, no METHOD."""
    cal = new_calendar()
    event = vevent(p, uid, sequence, stamp, zoned=True)
    if not p.all_day and p.timezone not in _UTC_NAMES:
        # Transitions over the event's years only: a few hundred bytes, not 1970-2038's 2.7 kB.
        first = dt.date(p.start_date().year, 1, 1)
        last = dt.date(p.end_date_exclusive().year + 1, 1, 1)
        cal.add_component(vtimezone(p.timezone, first, last))
    cal.add_component(event)
    return cal.to_ical()


def payload_of(comp: Event) -> EventPayload:
    """A VEVENT we wrote (or someone edited) back in provider-neutral form."""
    start, end = comp.decoded("DTSTART"), _end_of(comp)
    tz = str(comp.get(TZ_PROP) or _zone_name(start) or "UTC")
    all_day = not isinstance(start, dt.datetime)
    if all_day:
        start_text, end_text = start.isoformat(), end.isoformat()
    else:
        zone = ZoneInfo(tz)
        start_text = _local(start, zone).isoformat()
        end_text = _local(end, zone).isoformat()
    cats = comp.get("CATEGORIES")
    if isinstance(cats, list):  # several CATEGORIES lines
        categories = ",".join(str(c) for line in cats for c in line.cats)
    else:
        categories = ",".join(str(c) for c in cats.cats) if cats is not None else ""
    return EventPayload(
        event_key=str(comp.get(KEY_PROP)),
        leave_id=str(comp.get(LEAVE_PROP, "")),
        title=str(comp.get("SUMMARY", "")),
        all_day=all_day,
        start=start_text,
        end=end_text,
        timezone=tz,
        status=str(comp.get("STATUS", "CONFIRMED")).lower(),  # type: ignore[arg-type]
        show_as=str(comp.get(BUSY_PROP, "BUSY")).lower(),  # type: ignore[arg-type]
        private=str(comp.get("CLASS", "PUBLIC")).upper() == "PRIVATE",
        description=str(comp.get("DESCRIPTION", "")),
        categories=categories,
    )


def _end_of(comp: Event) -> dt.date | dt.datetime:
    if comp.get("DTEND") is not None:
        return comp.decoded("DTEND")
    start = comp.decoded("DTSTART")
    if comp.get("DURATION") is not None:  # an edit by a client that prefers DURATION
        return start + comp.decoded("DURATION")
    return start + dt.timedelta(days=1) if not isinstance(start, dt.datetime) else start


def _zone_name(value: object) -> str | None:
    tz = getattr(value, "tzinfo", None)
    return getattr(tz, "key", None)


def _local(value: dt.datetime, zone: ZoneInfo) -> dt.datetime:
    if value.tzinfo is None:  # floating time: read as the event's zone
        return value
    return value.astimezone(zone).replace(tzinfo=None)
