"""RFC 5545 (and RFC 4791 4.1) rules checked on text parsed by vobject, not the writer's library.

vobject alone accepts a VCALENDAR with no component; strict parsers (sabre/vobject's
VCalendar::validate, behind Nextcloud and Baikal) refuse it, so the rules are spelled out here.
"""

from __future__ import annotations

import datetime as dt

import vobject

_COMPONENTS = {"VEVENT", "VTODO", "VJOURNAL", "VFREEBUSY", "VTIMEZONE"}


def problems(text: str, calendar_object_resource: bool = False) -> list[str]:
    """What makes ``text`` an invalid iCalendar stream; empty when it is valid."""
    out: list[str] = []
    raw_lines = text.split("\r\n")
    if raw_lines[-1] != "":
        out.append("the stream does not end with CRLF")
    for n, line in enumerate(raw_lines[:-1], 1):
        if "\n" in line or "\r" in line:
            out.append(f"line {n}: not delimited by CRLF")
        if len(line.encode("utf-8")) > 75:
            out.append(f"line {n}: longer than 75 octets (RFC 5545 3.1)")
    calendars = list(vobject.readComponents(text))
    if len(calendars) != 1 or calendars[0].name != "VCALENDAR":
        return out + [f"expected one VCALENDAR, found {[c.name for c in calendars]}"]
    cal = calendars[0]
    for prop in ("VERSION", "PRODID"):
        if len(cal.contents.get(prop.lower(), [])) != 1:
            out.append(f"VCALENDAR: {prop} must appear exactly once")
    if cal.contents.get("version") and cal.version.value != "2.0":
        out.append("VCALENDAR: VERSION is not 2.0")
    comps = [c for c in cal.getChildren() if isinstance(c, vobject.base.Component)]
    if not comps:
        out.append("VCALENDAR: no component (RFC 5545 3.6: one or more are required)")
    timezones = {c.tzid.value for c in comps if c.name == "VTIMEZONE"}
    for tz in (c for c in comps if c.name == "VTIMEZONE"):
        if not any(s.name in ("STANDARD", "DAYLIGHT") for s in tz.getChildren()):
            out.append(f"VTIMEZONE {tz.tzid.value}: no STANDARD or DAYLIGHT")
    events = [c for c in comps if c.name == "VEVENT"]
    for ev in events:
        out += _event_problems(ev, timezones)
    if calendar_object_resource:
        if "method" in cal.contents:
            out.append("calendar object resource: METHOD is not allowed (RFC 4791 4.1)")
        if len({ev.uid.value for ev in events if "uid" in ev.contents}) != 1:
            out.append("calendar object resource: exactly one UID required (RFC 4791 4.1)")
        if {c.name for c in comps} - {"VEVENT", "VTIMEZONE"}:
            out.append("calendar object resource: one component type only (RFC 4791 4.1)")
    for c in comps:
        if c.name not in _COMPONENTS and not c.name.startswith("X-"):
            out.append(f"unknown component {c.name}")
    return out


def _event_problems(ev, timezones: set[str]) -> list[str]:
    uid = ev.uid.value if "uid" in ev.contents else "?"
    out = []
    for prop in ("uid", "dtstamp", "dtstart"):
        if len(ev.contents.get(prop, [])) != 1:
            out.append(f"VEVENT {uid}: {prop.upper()} must appear exactly once")
    if "dtend" in ev.contents and "duration" in ev.contents:
        out.append(f"VEVENT {uid}: DTEND and DURATION together")
    for name in ("valarm",):
        if name in ev.contents:
            out.append(f"VEVENT {uid}: has a {name.upper()}")
    if "attendee" in ev.contents:
        out.append(f"VEVENT {uid}: has an ATTENDEE")
    for prop in ("dtstart", "dtend"):
        for line in ev.contents.get(prop, []):
            tzid = line.params.get("TZID")
            if tzid and tzid[0] not in timezones:
                out.append(f"VEVENT {uid}: {prop.upper()} TZID {tzid[0]} has no VTIMEZONE")
    if "dtstart" in ev.contents and "dtend" in ev.contents:
        start, end = ev.dtstart.value, ev.dtend.value
        if isinstance(start, dt.datetime) != isinstance(end, dt.datetime):
            out.append(f"VEVENT {uid}: DTSTART and DTEND of different value types")
        elif end <= start:
            out.append(f"VEVENT {uid}: DTEND not after DTSTART")
    return out
