"""The embedded default target: one subscribable RFC 5545 .ics feed per employee."""

from __future__ import annotations

import datetime as dt
import os
import re
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

from icalendar import Calendar

from resources.providers.base import (
    CalendarProvider,
    ChangeResult,
    CheckReport,
    EventChange,
    ProviderSettings,
    RemoteEvent,
)
from resources.providers.ical import (
    BUSY_PROP,
    KEY_PROP,
    LEAVE_PROP,
    TZ_PROP,
    new_calendar,
    payload_of,
    uid_for,
    vevent,
    vtimezone,
)

__all__ = ["BUSY_PROP", "KEY_PROP", "LEAVE_PROP", "TZ_PROP", "IcsProvider", "feed_file_name"]

_UNSAFE = re.compile(r"[^A-Za-z0-9._@+-]")


class IcsSettings(ProviderSettings):
    directory: str | None = None  # default: <LEAVESYNC_HOME>/feeds/<target name>
    calendar_name: str = "Leaves"


TEAM_FEEDS = "teams/"


def feed_file_name(calendar: str) -> str:
    """The feed's file name for a mailbox (safe on every file system)."""
    return _UNSAFE.sub("_", calendar.lower()) + ".ics"


def team_feed_calendar(name: str) -> str:
    """The calendar a team feed is written as: ``teams/<name>``, the file teams/<name>.ics."""
    return TEAM_FEEDS + name


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
        if calendar.startswith(TEAM_FEEDS):  # a team calendar's feed: <directory>/teams/
            name = _UNSAFE.sub("_", calendar.removeprefix(TEAM_FEEDS))
            return self.directory / "teams" / f"{name}.ics"
        return self.directory / feed_file_name(calendar)

    def apply(self, changes: Sequence[EventChange]) -> Iterator[ChangeResult]:
        by_calendar: dict[str, list[EventChange]] = {}
        for change in changes:
            by_calendar.setdefault(change.calendar, []).append(change)
        for calendar, group in by_calendar.items():
            self.path_for(calendar).parent.mkdir(parents=True, exist_ok=True)
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
        zones = [str(c.get(TZ_PROP)) for c in ours.values() if c.get(TZ_PROP)]
        outcomes: list[tuple[EventChange, str | None, str | None]] = []
        now = dt.datetime.now(dt.UTC).replace(microsecond=0)
        dirty = False
        for change in changes:
            uid = uid_for(change.event_key)
            if change.op == "delete" and _is_copy(ours, change):
                uid = str(change.provider_event_id)  # drift deletes a copy of ours by its UID
            existing = ours.get(uid)
            if change.op == "delete":
                if existing is not None:
                    feed.subcomponents.remove(existing)
                    del ours[uid]
                    dirty = True
                outcomes.append((change, None, None))
                continue
            assert change.event is not None, "create/update needs the event"
            zones.append(change.event.timezone)
            sequence = int(existing.get("SEQUENCE", 0)) + 1 if existing is not None else 0
            event = vevent(change.event, uid, sequence, now)
            if existing is not None:
                feed.subcomponents[feed.subcomponents.index(existing)] = event
            else:
                feed.add_component(event)
            ours[uid] = event
            dirty = True
            outcomes.append((change, uid, str(sequence)))
        if dirty:
            _keep_valid(feed, zones)
            try:
                _write_atomically(path, feed.to_ical())
            except OSError as err:
                for change, _, _ in outcomes:
                    yield ChangeResult(change, ok=False, error=f"{path}: cannot write: {err}")
                return
        for change, uid, version in outcomes:
            yield ChangeResult(change, ok=True, provider_event_id=uid, version=version)

    def _new_calendar(self, calendar: str) -> Calendar:
        shown = calendar.removeprefix(TEAM_FEEDS)
        return new_calendar("PUBLISH", x_wr_calname=f"{self.settings.calendar_name} ({shown})")

    def check(self, sample_calendar: str) -> CheckReport:
        report = CheckReport(self.target_name)
        directory = self.path_for(sample_calendar).parent
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
                payload = payload_of(comp)
                if payload.end_date_exclusive() < start or payload.start_date() >= end:
                    continue
                yield RemoteEvent(
                    event_key=str(key),
                    calendar=calendar,
                    provider_event_id=str(comp.get("UID")),
                    payload=payload,
                    version=str(comp.get("SEQUENCE", 0)),
                )


def _is_copy(ours: dict, change: EventChange) -> bool:
    """A delete naming another event of ours with this key (a copy a client made)."""
    other = ours.get(str(change.provider_event_id)) if change.provider_event_id else None
    return other is not None and str(other.get(KEY_PROP)) == change.event_key


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


def _keep_valid(feed: Calendar, zones: list[str]) -> None:
    """A feed holds one component or more (RFC 5545 3.6): an empty one keeps a VTIMEZONE.

    Strict parsers (sabre/vobject, which Nextcloud and Baikal use) reject a VCALENDAR with no
    component; the zone of the events the feed held keeps it valid without inventing an event.
    Timed events are written in UTC, so a feed with events needs no VTIMEZONE at all.
    """
    has_event = any(c.name == "VEVENT" for c in feed.subcomponents)
    timezones = [c for c in feed.subcomponents if c.name == "VTIMEZONE"]
    if has_event:
        for tz in timezones:
            feed.subcomponents.remove(tz)
    elif not timezones:
        feed.add_component(vtimezone(zones[-1] if zones else "UTC"))
