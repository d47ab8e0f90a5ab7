"""Field mapping: our payload to a Calendar API event and back, and our event ids."""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import re
from dataclasses import dataclass
from typing import Any
from zoneinfo import ZoneInfo

from resources.providers.base import EventPayload
from resources.providers.google.settings import (
    CATEGORIES_PROPERTY,
    KEY_PROPERTY,
    LEAVE_PROPERTY,
    SHOW_AS_PROPERTY,
    TAG_PROPERTY,
    TAG_VALUE,
    ZONE_PROPERTY,
)

EVENT_ID_PREFIX = "lvs"
# Between the key and the generation in the bytes an id encodes; never part of a key.
_GENERATION_MARK = "\x1f"
_GENERATION = re.compile(r"(\d+)([do])")
OUT_OF_OFFICE = "outOfOffice"
DEFAULT_TYPE = "default"


@dataclass(frozen=True)
class EventId:
    """What one of our event ids stands for: the key, its generation and its event type."""

    event_key: str
    generation: int
    out_of_office: bool


def event_id_for(event_key: str, generation: int = 0, out_of_office: bool = False) -> str:
    """Our client-supplied Google event id: base32hex (a-v, 0-9) of the key and generation.

    A deleted Google event keeps its id, and an event's type cannot change: a leave that
    comes back, or changes type, gets the next generation, a new id. Generation 0 of a
    default event is the plain key, as ids were before generations.
    """
    text = event_key
    if generation or out_of_office:
        text += f"{_GENERATION_MARK}{generation}{'o' if out_of_office else 'd'}"
    raw = text.encode("utf-8")
    if len(raw) > 600:  # keeps the id under Google's 1024 characters
        raw = hashlib.sha256(raw).digest()
    return EVENT_ID_PREFIX + base64.b32hexencode(raw).decode("ascii").rstrip("=").lower()


def parse_event_id(event_id: str | None) -> EventId | None:
    """The key, generation and type one of our ids encodes; None for any other id."""
    if not event_id or not event_id.startswith(EVENT_ID_PREFIX):
        return None
    body = event_id[len(EVENT_ID_PREFIX) :].upper()
    try:
        text = base64.b32hexdecode(body + "=" * (-len(body) % 8)).decode("utf-8")
    except (binascii.Error, ValueError):
        return None
    key, mark, rest = text.partition(_GENERATION_MARK)
    if not mark:
        return EventId(key, 0, False)
    match = _GENERATION.fullmatch(rest)
    if match is None:
        return None
    return EventId(key, int(match[1]), match[2] == "o")


def event_body(payload: EventPayload, event_id: str, out_of_office: bool) -> dict[str, Any]:
    """The Calendar API event resource for a payload (private, no attendees, no reminders)."""
    if payload.all_day:
        start: dict[str, str] = {"date": payload.start[:10]}
        end: dict[str, str] = {"date": payload.end[:10]}
    else:
        start = {"dateTime": payload.start, "timeZone": payload.timezone}
        end = {"dateTime": payload.end, "timeZone": payload.timezone}
    body: dict[str, Any] = {
        "id": event_id,
        "eventType": OUT_OF_OFFICE if out_of_office else DEFAULT_TYPE,
        "summary": payload.title,
        "start": start,
        "end": end,
        "status": "tentative" if payload.status == "tentative" else "confirmed",
        "visibility": "private" if payload.private else "default",
        "transparency": "transparent" if payload.show_as == "free" else "opaque",
        "reminders": {"useDefault": False},
        "guestsCanInviteOthers": False,
        "extendedProperties": {
            "private": {
                TAG_PROPERTY: TAG_VALUE,
                KEY_PROPERTY: payload.event_key,
                LEAVE_PROPERTY: str(payload.leave_id),
                ZONE_PROPERTY: payload.timezone,
                SHOW_AS_PROPERTY: payload.show_as,
                CATEGORIES_PROPERTY: payload.categories,
            }
        },
    }
    if payload.description:
        body["description"] = payload.description
    if out_of_office:
        # Required with this type (Manage focus time, out of office, and working location).
        body["outOfOfficeProperties"] = {"autoDeclineMode": "declineNone"}
    return body


def wants_out_of_office(payload: EventPayload, enabled: bool, calendar_id: str) -> bool:
    """An approved timed leave on a primary calendar is an out-of-office event, if enabled."""
    # Google refuses all-day out-of-office events and any on a secondary calendar.
    return enabled and calendar_id == "primary" and not payload.all_day and payload.show_as == "oof"


def is_out_of_office(event: dict[str, Any]) -> bool:
    return event.get("eventType") == OUT_OF_OFFICE


def event_key_of(event: dict[str, Any]) -> str | None:
    """Our key on an event that carries our tag; None for anyone else's event."""
    private = (event.get("extendedProperties") or {}).get("private") or {}
    if private.get(TAG_PROPERTY) != TAG_VALUE:
        return None
    return private.get(KEY_PROPERTY) or None


def same_content(event: dict[str, Any], payload: EventPayload, out_of_office: bool) -> bool:
    """True when the live event already shows the payload (nothing to write)."""
    current = payload_from_event(event)
    return (
        current is not None
        and is_out_of_office(event) == out_of_office
        and current.fingerprint == payload.fingerprint
    )


def payload_from_event(event: dict[str, Any]) -> EventPayload | None:
    """Our provider-neutral payload read back from a Calendar API event (None if cancelled)."""
    if event.get("status") == "cancelled":
        return None
    private = (event.get("extendedProperties") or {}).get("private") or {}
    start, end = event.get("start") or {}, event.get("end") or {}
    all_day = "date" in start
    zone = private.get(ZONE_PROPERTY) or "UTC"
    if all_day:
        start_text, end_text = start["date"], end["date"]
    else:
        zone = start.get("timeZone") or zone
        start_text = _local_iso(start["dateTime"], zone)
        end_text = _local_iso(end["dateTime"], zone)
    if is_out_of_office(event):
        show_as = "oof"
    elif event.get("transparency") == "transparent":
        show_as = "free"
    else:
        stored = private.get(SHOW_AS_PROPERTY)
        show_as = stored if stored in ("oof", "busy", "tentative") else "busy"
    return EventPayload(
        event_key=private.get(KEY_PROPERTY, ""),
        leave_id=private.get(LEAVE_PROPERTY, ""),
        title=event.get("summary", ""),
        all_day=all_day,
        start=start_text,
        end=end_text,
        timezone=zone,
        status="tentative" if event.get("status") == "tentative" else "confirmed",
        show_as=show_as,
        private=event.get("visibility") in ("private", "confidential"),
        description=event.get("description", ""),
        categories=private.get(CATEGORIES_PROPERTY, ""),
    )


def _local_iso(value: str, zone: str) -> str:
    instant = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    if instant.tzinfo is None:
        return instant.isoformat(timespec="seconds")
    return instant.astimezone(ZoneInfo(zone)).replace(tzinfo=None).isoformat(timespec="seconds")
