"""Field mapping: our provider-neutral event to an Exchange calendar item, and back."""

from __future__ import annotations

import datetime as dt
from contextlib import suppress
from typing import Any
from zoneinfo import ZoneInfo

from exchangelib import Account, CalendarItem, ExtendedProperty
from exchangelib.ewsdatetime import UTC, EWSDate, EWSDateTime, EWSTimeZone
from exchangelib.fields import FieldPath
from exchangelib.folders import Calendar
from exchangelib.properties import Body

from resources.providers.base import EventChange, EventPayload, leave_id_of

# Our own MAPI named-property set; with the name below it identifies leavesync's events.
PROPERTY_SET_ID = "7c2b3f52-5d0e-4d8a-9a57-0b8f4e1c6a3d"
KEY_PROPERTY = "leavesyncKey"
# The IANA zone we wrote: Exchange keeps only the Windows zone, which maps back ambiguously.
TIMEZONE_PROPERTY = "leavesyncTimezone"

SHOW_AS_TO_FREE_BUSY = {"oof": "OOF", "busy": "Busy", "tentative": "Tentative", "free": "Free"}
FREE_BUSY_TO_SHOW_AS = {
    "OOF": "oof",
    "Busy": "busy",
    "Tentative": "tentative",
    "Free": "free",
    "WorkingElsewhere": "busy",
    "NoData": "busy",
}
# Item fields we write; UpdateItem sets (or clears) every one of them.
WRITTEN_FIELDS = (
    "subject",
    "body",
    "categories",
    "sensitivity",
    "reminder_is_set",
    "start",
    "end",
    "is_all_day",
    "legacy_free_busy_status",
    "_start_timezone",
    "_end_timezone",
    "leavesync_key",
    "leavesync_timezone",
)
# What a read-back or an adoption needs to rebuild the payload (GetItem: Body is not in FindItem).
READ_FIELDS = (
    "subject",
    "body",
    "categories",
    "sensitivity",
    "start",
    "end",
    "is_all_day",
    "legacy_free_busy_status",
    "_start_timezone",
    "_end_timezone",
    "datetime_created",
    "leavesync_key",
    "leavesync_timezone",
)


class LeavesyncKey(ExtendedProperty):
    """The event key (``leave-123``) stored on every calendar item leavesync writes."""

    property_set_id = PROPERTY_SET_ID
    property_name = KEY_PROPERTY
    property_type = "String"


class LeavesyncTimezone(ExtendedProperty):
    """The IANA zone of the leave's legal entity, as written."""

    property_set_id = PROPERTY_SET_ID
    property_name = TIMEZONE_PROPERTY
    property_type = "String"


def _register_properties() -> None:
    # CalendarItem's field list is process-wide: register once, whatever the number of targets.
    for name, cls in (("leavesync_key", LeavesyncKey), ("leavesync_timezone", LeavesyncTimezone)):
        with suppress(ValueError):
            CalendarItem.register(name, cls)


_register_properties()


def calendar_item_from_xml(elem: Any, account: Account) -> CalendarItem:
    """A calendar item as Exchange answered it, all-day dates read in the item's own zone.

    exchangelib's CalendarItem.from_xml subtracts 24 hours from an all-day end before taking
    its local date: a day off when the event's last day is a 23-hour day (DST starts). Here
    the local date comes first, then one day back.
    """
    item = super(CalendarItem, CalendarItem).from_xml(elem=elem, account=account)
    if item.is_all_day:
        for name in ("start", "end"):
            value = getattr(item, name)
            if value is None:
                continue
            zone = getattr(item, f"_{name}_timezone") or UTC
            local = value.astimezone(zone).date()
            setattr(item, name, local - dt.timedelta(days=1) if name == "end" else local)
    return item


def field_paths(names: tuple[str, ...]) -> set[FieldPath]:
    """exchangelib field paths of these CalendarItem fields (for FindItem / GetItem shapes)."""
    return {FieldPath(field=CalendarItem.get_field_by_fieldname(name)) for name in names}


def calendar_item(account: Account, folder: Calendar, change: EventChange) -> CalendarItem:
    """The calendar item a create or update writes."""
    event = change.event
    if event is None:
        raise ValueError(f"{change.op} of {change.event_key} carries no event")
    zone = EWSTimeZone(event.timezone)
    if event.all_day:
        # exchangelib writes an all-day end date as inclusive (it adds one day itself).
        start: Any = EWSDate.from_date(event.start_date())
        end: Any = EWSDate.from_date(event.end_date_exclusive() - dt.timedelta(days=1))
    else:
        start = EWSDateTime.from_datetime(event.start_datetime()).astimezone(zone)
        end = EWSDateTime.from_datetime(event.end_datetime()).astimezone(zone)
    return CalendarItem(
        account=account,
        folder=folder,
        subject=event.title,
        body=Body(event.description) if event.description else None,
        categories=event.categories.split(",") if event.categories else None,
        sensitivity="Private" if event.private else "Normal",
        reminder_is_set=False,
        start=start,
        end=end,
        is_all_day=event.all_day,
        legacy_free_busy_status=SHOW_AS_TO_FREE_BUSY[event.show_as],
        _start_timezone=zone,
        _end_timezone=zone,
        leavesync_key=change.event_key,
        leavesync_timezone=event.timezone,
    )


def problem(account: Account, folder: Calendar, change: EventChange) -> str | None:
    """Why this event cannot become a calendar item (checked before any request), if so."""
    try:
        calendar_item(account, folder, change).clean()
        event = change.event
        assert event is not None
        # ResponseCode ErrorCalendarDurationIsTooLong: "longer than ... 5 years".
        if event.end_datetime() > five_years_after(event.start_datetime()):
            raise ValueError("a calendar item may last at most 5 years")
    except Exception as error:  # noqa: BLE001 - unknown zone, end before start, ...
        return f"cannot write {change.event_key} to Exchange: {error}"
    return None


def five_years_after(start: dt.datetime) -> dt.datetime:
    """The longest end Exchange accepts for an item starting at ``start``."""
    try:
        return start.replace(year=start.year + 5)
    except ValueError:  # 29 February
        return start.replace(year=start.year + 5, day=28)


def payload_of(item: CalendarItem) -> EventPayload:
    """A calendar item read back, in our provider-neutral form."""
    windows_zone = item._start_timezone
    written_zone = item.leavesync_timezone
    zone = windows_zone.key if windows_zone is not None else (written_zone or "UTC")
    if written_zone and windows_zone is not None:
        with suppress(Exception):
            # Several IANA zones share one Windows zone: keep the one we wrote if it still fits.
            if EWSTimeZone(written_zone).ms_id == windows_zone.ms_id:
                zone = written_zone
    if item.is_all_day:
        start = item.start.isoformat()
        end = (item.end + dt.timedelta(days=1)).isoformat()
    else:
        local = ZoneInfo(zone)
        start = item.start.astimezone(local).replace(tzinfo=None).isoformat(timespec="seconds")
        end = item.end.astimezone(local).replace(tzinfo=None).isoformat(timespec="seconds")
    show_as = FREE_BUSY_TO_SHOW_AS.get(item.legacy_free_busy_status or "Busy", "busy")
    return EventPayload(
        event_key=item.leavesync_key,
        leave_id=leave_id_of(item.leavesync_key),
        title=item.subject or "",
        all_day=bool(item.is_all_day),
        start=start,
        end=end,
        timezone=zone,
        status="tentative" if show_as == "tentative" else "confirmed",
        show_as=show_as,  # type: ignore[arg-type]
        private=item.sensitivity == "Private",
        description=str(item.body or "").strip(),
        categories=",".join(item.categories or []),
    )
