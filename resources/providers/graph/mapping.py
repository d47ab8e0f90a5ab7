"""Field mapping between our events and Graph event resources, time zones included.

Graph takes Windows time zone names on create and update ("dateTimeTimeZone resource type":
Windows names plus a short list of IANA names, and "methods such as create or update might
not support all"), so we always write the Windows name from the CLDR mapping exchangelib
maintains, and keep the IANA zone we meant in our own extended property: several IANA zones
share one Windows zone (Europe/Brussels and Europe/Paris are both Romance Standard Time).
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from exchangelib.winzone import IANA_TO_MS_TIMEZONE_MAP, MS_TIMEZONE_TO_IANA_MAP

from resources.providers.base import EventPayload, leave_id_of

KEY_PROPERTY_NAME = "leavesyncKey"
ZONE_PROPERTY_NAME = "leavesyncTimeZone"
# What a look-up needs to decide whether an event found by its key differs from ours.
LOOKUP_SELECT = (
    "id,changeKey,lastModifiedDateTime,subject,body,start,end,isAllDay,showAs,sensitivity,"
    "categories,originalStartTimeZone"
)
# Enough to know where an event to update is, and which copy is the newest.
LOOKUP_SELECT_IDS = "id,lastModifiedDateTime"
# Read as UTC instants and plain text, whatever the mailbox's own settings say.
READ_PREFER = 'IdType="ImmutableId", outlook.timezone="UTC", outlook.body-content-type="text"'
WRITE_PREFER = 'IdType="ImmutableId"'


@dataclass(frozen=True)
class Tags:
    """Our two single-value extended properties: the event key, and the IANA zone we meant."""

    namespace: str

    @property
    def key_id(self) -> str:
        return f"String {{{self.namespace}}} Name {KEY_PROPERTY_NAME}"

    @property
    def zone_id(self) -> str:
        return f"String {{{self.namespace}}} Name {ZONE_PROPERTY_NAME}"

    def expand(self) -> str:
        """$expand that returns both of our properties with each event."""
        return f"singleValueExtendedProperties($filter=id eq '{self.key_id}' or id eq '{self.zone_id}')"

    def key_equals(self, key: str) -> str:
        """$filter: events whose key property equals ``key`` (Graph compares case-insensitively)."""
        return (
            f"singleValueExtendedProperties/Any(ep: ep/id eq '{self.key_id}' "
            f"and ep/value eq '{_odata_string(key)}')"
        )

    def key_starts_with(self, prefix: str) -> str:
        """$filter: events whose key property starts with ``prefix``."""
        return (
            f"singleValueExtendedProperties/Any(ep: ep/id eq '{self.key_id}' "
            f"and startswith(ep/value, '{_odata_string(prefix)}'))"
        )

    def lookup_url(self, mailbox: str, filter_: str, top: int, full: bool = True) -> str:
        """Relative URL listing our events in a mailbox's calendar that match ``filter_``.

        Through /calendar: an event the user deleted sits in Deleted Items, outside it.
        ``full``: with every field a comparison needs, else ids only.
        """
        select = LOOKUP_SELECT if full else LOOKUP_SELECT_IDS
        return (
            f"/users/{quote(mailbox, safe='@')}/calendar/events?$filter={quote(filter_)}"
            f"&$select={select}&$expand={quote(self.expand())}&$top={top}"
        )

    def values(self, event: dict[str, Any]) -> tuple[str | None, str | None]:
        """(event key, IANA zone) from an event's expanded extended properties."""
        key = zone = None
        for prop in event.get("singleValueExtendedProperties") or []:
            pid = str(prop.get("id", "")).lower()
            if pid == self.key_id.lower() and prop.get("value"):
                key = str(prop["value"])
            elif pid == self.zone_id.lower() and prop.get("value"):
                zone = str(prop["value"])
        return key, zone


def windows_zone(iana: str) -> str | None:
    """The Windows time zone name CLDR maps an IANA zone to, or None."""
    entry = IANA_TO_MS_TIMEZONE_MAP.get(iana)
    return entry[0] if entry else None


def iana_zone(name: str | None) -> str | None:
    """An IANA zone for a Graph time zone name (any Windows name, or an IANA name), else None."""
    if not name:
        return None
    name = MS_TIMEZONE_TO_IANA_MAP.get(name, name)
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return None
    return name


def event_body(
    payload: EventPayload, event_key: str, tags: Tags, extra_categories: list[str]
) -> dict[str, Any]:
    """The Graph event resource for one of our events (no attendees, no reminder)."""
    zone = windows_zone(payload.timezone)
    if payload.all_day:
        start, end = f"{payload.start[:10]}T00:00:00", f"{payload.end[:10]}T00:00:00"
    elif zone:
        start, end = _naive(payload.start), _naive(payload.end)
    else:
        # No Windows name for this zone: write the same instants in UTC.
        start = payload.start_datetime().astimezone(dt.UTC).replace(tzinfo=None).isoformat()
        end = payload.end_datetime().astimezone(dt.UTC).replace(tzinfo=None).isoformat()
    zone = zone or "UTC"
    categories = [c.strip() for c in payload.categories.split(",") if c.strip()]
    categories += [c for c in extra_categories if c not in categories]
    return {
        "subject": payload.title,
        "body": {"contentType": "text", "content": payload.description},
        "start": {"dateTime": start, "timeZone": zone},
        "end": {"dateTime": end, "timeZone": zone},
        "isAllDay": payload.all_day,
        "showAs": payload.show_as,
        "sensitivity": "private" if payload.private else "normal",
        "isReminderOn": False,
        "responseRequested": False,
        "categories": categories,
        "singleValueExtendedProperties": [
            {"id": tags.key_id, "value": event_key},
            {"id": tags.zone_id, "value": payload.timezone},
        ],
    }


def payload_from_event(
    event: dict[str, Any], event_key: str, zone: str | None, extra_categories: list[str]
) -> EventPayload:
    """Normalise a Graph event back into our provider-neutral form.

    ``zone`` is the IANA zone from our own property; without it (an event written before we
    kept it) the event's Windows zone is mapped back through CLDR.
    """
    zone_name = iana_zone(zone) or iana_zone(event.get("originalStartTimeZone")) or "UTC"
    local = ZoneInfo(zone_name)
    all_day = bool(event.get("isAllDay"))
    start = _graph_datetime(event["start"])
    end = _graph_datetime(event["end"])
    if all_day:
        if start.time() != dt.time(0):  # returned shifted into another zone
            start, end = start.astimezone(local), end.astimezone(local)
        start_text, end_text = start.date().isoformat(), end.date().isoformat()
    else:
        start_text = start.astimezone(local).replace(tzinfo=None).isoformat()
        end_text = end.astimezone(local).replace(tzinfo=None).isoformat()
    show_as = str(event.get("showAs", "busy"))
    body = event.get("body") or {}
    description = str(body.get("content") or "")
    if body.get("contentType") == "html":
        description = re.sub(r"<[^>]+>", "", description)
    description = description.replace("\r\n", "\n").strip()
    categories = [c for c in event.get("categories") or [] if c not in extra_categories]
    return EventPayload(
        event_key=event_key,
        leave_id=leave_id_of(event_key),
        title=str(event.get("subject") or ""),
        all_day=all_day,
        start=start_text,
        end=end_text,
        timezone=zone_name,
        status="tentative" if show_as == "tentative" else "confirmed",
        show_as=show_as,  # type: ignore[arg-type]
        private=event.get("sensitivity") == "private",
        description=description,
        categories=",".join(categories),
    )


def _naive(iso: str) -> str:
    return dt.datetime.fromisoformat(iso).replace(tzinfo=None).isoformat()


def _graph_datetime(value: dict[str, str]) -> dt.datetime:
    text = re.sub(r"(\.\d{6})\d+", r"\1", value["dateTime"]).rstrip("Z")
    zone = ZoneInfo(iana_zone(value.get("timeZone")) or "UTC")
    return dt.datetime.fromisoformat(text).replace(tzinfo=zone)


def _odata_string(value: str) -> str:
    return value.replace("'", "''")
