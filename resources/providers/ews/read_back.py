"""Read back our tagged items in a window, for the drift report."""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterable, Iterator

from exchangelib import Account, CalendarItem, Q
from exchangelib import errors as ews_errors
from exchangelib.ewsdatetime import UTC, EWSDateTime
from exchangelib.folders import Calendar
from exchangelib.items import ID_ONLY
from exchangelib.restriction import Restriction

from resources.providers.base import ProviderError, RemoteEvent
from resources.providers.ews.bulk import PAGE_SIZE, FindItems, GetItems, chunks, kind_of
from resources.providers.ews.connection import EwsConnection
from resources.providers.ews.errors import GaveUp, ItemsPending, MailboxUnavailable
from resources.providers.ews.mapping import READ_FIELDS, field_paths, payload_of

log = logging.getLogger(__name__)


def read_back(
    connection: EwsConnection, calendars: Iterable[str], start: dt.date, end: dt.date
) -> Iterator[RemoteEvent]:
    """Our tagged events overlapping [start, end), normalised back into payloads."""
    # Items are stored in UTC; widen by a day so every zone's local dates are covered.
    low = EWSDateTime.combine(start - dt.timedelta(days=1), dt.time(0), UTC)
    high = EWSDateTime.combine(end + dt.timedelta(days=1), dt.time(0), UTC)
    for calendar in dict.fromkeys(c.strip().lower() for c in calendars):
        try:
            account, folder = connection.mailbox(calendar)
            items = connection.call(
                calendar,
                "FindItem",
                lambda a=account, f=folder: _read(a, f, low, high, connection.settings.chunk_size),
            )
        except (MailboxUnavailable, GaveUp) as error:
            log.warning(
                "target %s: cannot read %s back: %s", connection.target_name, calendar, error
            )
            continue
        except ews_errors.EWSError as error:
            # A definite refusal of our own request: the drift report must say the read failed,
            # not find this calendar empty.
            raise ProviderError(
                f"target {connection.target_name}: reading {calendar} back failed "
                f"({type(error).__name__}: {error})"
            ) from None
        for item in items:
            payload = payload_of(item)
            if payload.start_date() < end and payload.end_date_exclusive() > start:
                yield RemoteEvent(
                    event_key=item.leavesync_key,
                    calendar=calendar,
                    provider_event_id=item.id,
                    payload=payload,
                    version=item.changekey,
                )


def _read(
    account: Account, folder: Calendar, low: EWSDateTime, high: EWSDateTime, chunk: int
) -> list[CalendarItem]:
    """FindItem (ids of our items in the window, 1000 a page), then GetItem (Body is not in
    FindItem's answers) in chunks; an item not processed makes the whole read run again."""
    folders = [folder]
    query = Q(leavesync_key__exists=True, start__lt=high, end__gt=low)
    found = FindItems(account=account, page_size=PAGE_SIZE).call(
        folders=folders,
        additional_fields=field_paths(("leavesync_key",)),
        restriction=Restriction(query, folders=folders, applies_to=Restriction.ITEMS),
        order_fields=None,
        shape=ID_ONLY,
        query_string=None,
        depth="Shallow",
        calendar_view=None,
        max_items=None,
        offset=0,
    )
    ids = []
    for item in found:
        if isinstance(item, Exception):
            raise item
        ids.append((item.id, None))
    items: list[CalendarItem] = []
    for group in chunks(ids, chunk):
        got = GetItems(account=account, chunk_size=chunk).call(
            items=group, additional_fields=field_paths(READ_FIELDS), shape=ID_ONLY
        )
        for landed in got:
            kind = kind_of(landed)
            if kind == "transient":
                raise ItemsPending("an item of the read-back was not processed")
            if kind == "ok" and landed.leavesync_key:
                items.append(landed)
            elif kind not in ("ok", "gone"):
                raise landed  # type: ignore[misc]
    return items
