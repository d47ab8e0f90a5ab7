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
from resources.providers.feed_text import Block, FeedText
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
            feed = _read_text(path) or FeedText.empty(self._new_calendar(calendar).to_ical())
        except (ValueError, UnicodeDecodeError) as err:
            for change in changes:
                yield ChangeResult(
                    change, ok=False, error=f"{path}: unreadable feed: {err}", permanent=True
                )
            return
        # Only the changed events are rendered; the others keep their bytes (FeedText).
        slots: list[Block | None] = list(feed.blocks)
        where = {
            b.props["UID"]: i
            for i, b in enumerate(feed.blocks)
            if b.kind == "VEVENT" and b.props.get(KEY_PROP) and "UID" in b.props
        }
        zones = [b.props[TZ_PROP] for b in feed.blocks if TZ_PROP in b.props]
        outcomes: list[tuple[EventChange, str | None, str | None]] = []
        now = dt.datetime.now(dt.UTC).replace(microsecond=0)
        dirty = False
        for change in changes:
            uid = uid_for(change.event_key)
            if change.op == "delete" and _is_copy(slots, where, change):
                uid = str(change.provider_event_id)  # drift deletes a copy of ours by its UID
            at = where.get(uid)
            existing = slots[at] if at is not None else None
            if change.op == "delete":
                if at is not None:
                    slots[at] = None
                    del where[uid]
                    dirty = True
                outcomes.append((change, None, None))
                continue
            assert change.event is not None, "create/update needs the event"
            zones.append(change.event.timezone)
            sequence = int(existing.props.get("SEQUENCE", 0)) + 1 if existing is not None else 0
            event = Block("VEVENT", vevent(change.event, uid, sequence, now).to_ical())
            if at is not None:
                slots[at] = event
            else:
                where[uid] = len(slots)
                slots.append(event)
            dirty = True
            outcomes.append((change, uid, str(sequence)))
        if dirty:
            feed.blocks = _keep_valid([b for b in slots if b is not None], zones)
            try:
                _write_atomically(path, feed.to_bytes())
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


def _is_copy(slots: list[Block | None], where: dict[str, int], change: EventChange) -> bool:
    """A delete naming another event of ours with this key (a copy a client made)."""
    at = where.get(str(change.provider_event_id)) if change.provider_event_id else None
    other = slots[at] if at is not None else None
    return other is not None and other.props.get(KEY_PROP) == change.event_key


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


def _read_text(path: Path) -> FeedText | None:
    if not path.exists():
        return None
    return FeedText.parse(path.read_bytes(), ("UID", KEY_PROP, "SEQUENCE", TZ_PROP))


def _keep_valid(blocks: list[Block], zones: list[str]) -> list[Block]:
    """A feed holds one component or more (RFC 5545 3.6): an empty one keeps a VTIMEZONE.

    Strict parsers (sabre/vobject, which Nextcloud and Baikal use) reject a VCALENDAR with no
    component; the zone of the events the feed held keeps it valid without inventing an event.
    Timed events are written in UTC, so a feed with events needs no VTIMEZONE at all.
    """
    if any(b.kind == "VEVENT" for b in blocks):
        return [b for b in blocks if b.kind != "VTIMEZONE"]
    if any(b.kind == "VTIMEZONE" for b in blocks):
        return blocks
    return [*blocks, Block("VTIMEZONE", vtimezone(zones[-1] if zones else "UTC").to_ical())]
