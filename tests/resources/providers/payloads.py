"""The event a leave becomes, as the provider tests write it."""

from __future__ import annotations

from typing import Any

from resources.providers.base import EventPayload

# A half-day leave's event: timed, an afternoon.
TIMED = dict(all_day=False, start="2026-03-30T13:00:00", end="2026-03-30T18:00:00")


def payload(key: str, **fields: Any) -> EventPayload:
    """Leave ``key``'s event: all day 2-4 March 2026 (end exclusive), Paris, out of office."""
    values: dict[str, Any] = dict(
        event_key=key,
        leave_id=key.removeprefix("leave-"),
        title="Absent",
        all_day=True,
        start="2026-03-02",
        end="2026-03-05",
        timezone="Europe/Paris",
        status="confirmed",
        show_as="oof",
    )
    values.update(fields)
    return EventPayload(**values)
