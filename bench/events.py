"""Sample events for the provider benchmarks: every fourth timed, every fifth pending."""

from __future__ import annotations

from resources.providers.base import EventPayload


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
