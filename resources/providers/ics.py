"""The embedded default target: one subscribable RFC 5545 .ics feed per employee."""

from __future__ import annotations

import datetime as dt
import os
import re
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from zoneinfo import ZoneInfo

from icalendar import Calendar, Event

from resources.providers.base import (
    CalendarProvider,
    ChangeResult,
    CheckReport,
    EventChange,
    EventPayload,
    ProviderSettings,
    RemoteEvent,
)

KEY_PROP = "X-LEAVESYNC-KEY"
LEAVE_PROP = "X-LEAVESYNC-LEAVE-ID"
TZ_PROP = "X-LEAVESYNC-TZ"
# Outlook's busy status property: the one way a feed can say "out of office".
BUSY_PROP = "X-MICROSOFT-CDO-BUSYSTATUS"
_UNSAFE = re.compile(r"[^A-Za-z0-9._@+-]")


class IcsSettings(ProviderSettings):
    directory: str | None = None  # default: <LEAVESYNC_HOME>/feeds/<target name>
    calendar_name: str = "Leaves"


def feed_file_name(calendar: str) -> str:
    """The feed's file name for a mailbox (safe on every file system)."""
    return _UNSAFE.sub("_", calendar.lower()) + ".ics"


def uid_for(event_key: str) -> str:
    return f"{event_key}@leavesync"


class IcsProvider(CalendarProvider):
    """Writes each calendar's feed atomically; rewrites a feed only when one of its events changed."""

    type_name = "ics"
    Settings = IcsSettings

    def __init__(self, target_name: str, settings: IcsSettings) -> None:
        super().__init__(target_name, settings)
        base = settings.directory or os.path.join(
            os.environ.get("LEAVESYNC_HOME", ".leavesync"), "feeds", target_name
        )
        self.directory = Path(base).resolve()

    def path_for(self, calendar: str) -> Path:
        return self.directory / feed_file_name(calendar)

    def apply(self, changes: Sequence[EventChange]) -> Iterator[ChangeResult]:
        by_calendar: dict[str, list[EventChange]] = {}
        for change in changes:
            by_calendar.setdefault(change.calendar, []).append(change)
        self.directory.mkdir(parents=True, exist_ok=True)
        for calendar, group in by_calendar.items():
            yield from self._apply_calendar(calendar, group)

    def _apply_calendar(self, calendar: str, changes: list[EventChange]) -> Iterator[ChangeResult]:
        path = self.path_for(calendar)
        try:
            feed = _read(path) or self._new_calendar(calendar)
        except ValueError as err:
            for change in changes:
                yield ChangeResult(
                    change, ok=False, error=f"{path}: unreadable feed: {err}", permanent=True
                )
            return
        ours = {str(c.get("UID")): c for c in feed.walk("VEVENT") if c.get(KEY_PROP)}
        outcomes: list[tuple[EventChange, str | None, str | None]] = []
        now = dt.datetime.now(dt.UTC).replace(microsecond=0)
        dirty = False
        for change in changes:
            uid = uid_for(change.event_key)
            existing = ours.get(uid)
            if change.op == "delete":
                if existing is not None:
                    feed.subcomponents.remove(existing)
                    del ours[uid]
                    dirty = True
                outcomes.append((change, None, None))
                continue
            assert change.event is not None, "create/update needs the event"
            sequence = int(existing.get("SEQUENCE", 0)) + 1 if existing is not None else 0
            event = _vevent(change.event, uid, sequence, now)
            if existing is not None:
                feed.subcomponents[feed.subcomponents.index(existing)] = event
            else:
                feed.add_component(event)
            ours[uid] = event
            dirty = True
            outcomes.append((change, uid, str(sequence)))
        if dirty:
            try:
                _write_atomically(path, feed.to_ical())
            except OSError as err:
                for change, _, _ in outcomes:
                    yield ChangeResult(change, ok=False, error=f"{path}: cannot write: {err}")
                return
        for change, uid, version in outcomes:
            yield ChangeResult(change, ok=True, provider_event_id=uid, version=version)

    def _new_calendar(self, calendar: str) -> Calendar:
        cal = Calendar()
        cal.add("prodid", "-//leavesync//leave feed//EN")
        cal.add("version", "2.0")
        cal.add("calscale", "GREGORIAN")
        cal.add("method", "PUBLISH")
        cal.add("x-wr-calname", f"{self.settings.calendar_name} ({calendar})")
        return cal

    def check(self, sample_calendar: str) -> CheckReport:
        report = CheckReport(self.target_name)
        directory = self.directory
        try:
            directory.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=directory, prefix=".check-", delete=True):
                pass
            report.add(f"feed directory {directory} is writable", True)
        except OSError as err:
            report.add(f"feed directory {directory} is writable", False, str(err))
        path = self.path_for(sample_calendar)
        if path.exists():
            try:
                _read(path)
                report.add(f"feed of {sample_calendar} parses", True, str(path))
            except ValueError as err:
                report.add(f"feed of {sample_calendar} parses", False, str(err))
        else:
            report.add(f"feed of {sample_calendar}", True, "not written yet")
        return report

    def read_back(
        self, calendars: Iterable[str], start: dt.date, end: dt.date
    ) -> Iterator[RemoteEvent]:
        for calendar in calendars:
            feed = _read(self.path_for(calendar))
            if feed is None:
                continue
            for comp in feed.walk("VEVENT"):
                key = comp.get(KEY_PROP)
                if not key:
                    continue
                payload = _payload(comp)
                if payload.end_date_exclusive() < start or payload.start_date() >= end:
                    continue
                yield RemoteEvent(
                    event_key=str(key),
                    calendar=calendar,
                    provider_event_id=str(comp.get("UID")),
                    payload=payload,
                    version=str(comp.get("SEQUENCE", 0)),
                )


def _read(path: Path) -> Calendar | None:
    if not path.exists():
        return None
    return Calendar.from_ical(path.read_bytes())


def _write_atomically(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _vevent(p: EventPayload, uid: str, sequence: int, now: dt.datetime) -> Event:
    ev = Event()
    ev.add("uid", uid)
    ev.add("dtstamp", now)
    ev.add("sequence", sequence)
    ev.add("summary", p.title)
    if p.all_day:
        ev.add("dtstart", p.start_date())
        ev.add("dtend", p.end_date_exclusive())
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


def _payload(comp: Event) -> EventPayload:
    """A feed's event back in provider-neutral form."""
    tz = str(comp.get(TZ_PROP) or "UTC")
    start, end = comp.decoded("DTSTART"), comp.decoded("DTEND")
    all_day = not isinstance(start, dt.datetime)
    if all_day:
        start_text, end_text = start.isoformat(), end.isoformat()
    else:
        zone = ZoneInfo(tz)
        start_text = start.astimezone(zone).replace(tzinfo=None).isoformat()
        end_text = end.astimezone(zone).replace(tzinfo=None).isoformat()
    cats = comp.get("CATEGORIES")
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
