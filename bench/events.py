"""Sample events for the provider benchmarks (every fourth timed, every fifth pending), and
what the benchmarks share besides: an update of what a run wrote, a printed table."""

from __future__ import annotations

from typing import Any

from resources.providers.base import ChangeResult, EventChange, EventPayload


def sample_payload(n: int, title: str, timezone: str = "Europe/Berlin") -> EventPayload:
    """Event number ``n``: an all-day leave, or an afternoon off (every fourth one)."""
    day = 1 + n % 28
    timed = n % 4 == 0
    pending = n % 5 == 0
    return EventPayload(
        event_key=f"leave-{n}",
        leave_id=str(n),
        title=title,
        all_day=not timed,
        start=f"2025-08-{day:02d}T13:00:00" if timed else f"2025-08-{day:02d}",
        end=f"2025-08-{day:02d}T17:30:00" if timed else f"2025-08-{day + 1:02d}",
        timezone=timezone,
        status="tentative" if pending else "confirmed",
        show_as="tentative" if pending else "oof",
    )


def update_of(result: ChangeResult, title: str) -> EventChange:
    """An update of the sample event this result wrote (by its id and version): a new title."""
    key = result.change.event_key
    n = int(key.split("-")[1])
    return EventChange(
        "update",
        key,
        result.change.calendar,
        sample_payload(n, title),
        result.provider_event_id,
        result.version,
    )


def print_table(rows: list[dict[str, Any]], leave_out: tuple[str, ...] = ()) -> None:
    """The rows in aligned columns: the first row's keys, but ``leave_out``."""
    columns = [c for c in rows[0] if c not in leave_out]
    widths = [max(len(c), *(len(str(r.get(c))) for r in rows)) for c in columns]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)))
    for row in rows:
        print("  ".join(str(row.get(c)).ljust(w) for c, w in zip(columns, widths, strict=True)))
