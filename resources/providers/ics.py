"""The embedded default target: one subscribable RFC 5545 .ics feed per employee.

With a key in the environment (``feed_key_env``), a feed's file name, and so its URL, is an
HMAC of the mailbox and its rotation count: nobody can guess a colleague's URL from their
address, and one person's URL can be rotated. Feeds written under the older ``<email>.ics``
names are moved to their private names the first time they are seen.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import fcntl
import hashlib
import hmac
import json
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
    FatalProviderError,
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
# Rotation counts, by an HMAC of the mailbox (not the feed's token): a dot file, which the
# README's nginx configuration refuses to serve, and which tells nothing without the key.
ROTATIONS_FILE = ".leavesync-rotations.json"
# Held shared while a sync reads, rewrites and writes a feed, and exclusive by a rotation or
# the migration to private names: a sync never writes a feed back under the name a rotation
# just retired (the old URL would answer again, and the new file would miss the change).
LOCK_FILE = ".leavesync.lock"


class IcsSettings(ProviderSettings):
    directory: str | None = None  # default: <LEAVESYNC_HOME>/feeds/<target name>
    calendar_name: str = "Leaves"
    # The environment variable holding the key feed names are derived from (private URLs).
    feed_key_env: str = "LEAVESYNC_FEED_KEY"
    # Where the directory is served (https://…/feeds): `leavesync feeds` prints URLs under it,
    # and a target with a base_url refuses to run without its key.
    base_url: str | None = None


TEAM_FEEDS = "teams/"


def feed_file_name(calendar: str, key: bytes | None = None, rotation: int = 0) -> str:
    """The feed's file name for a mailbox: private (HMAC) with a key, else ``<email>.ics``."""
    mailbox = calendar.strip().lower()
    if key is None:
        return _UNSAFE.sub("_", mailbox) + ".ics"
    message = f"feed\0{mailbox}\0{rotation}".encode()
    digest = hmac.new(key, message, hashlib.sha256).digest()
    return base64.b32encode(digest[:20]).decode("ascii").lower() + ".ics"


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
        key = os.environ.get(settings.feed_key_env)
        self._key: bytes | None = key.encode() if key else None
        self._migrated = False

    @property
    def private(self) -> bool:
        """Feed names are derived from the key (unguessable, rotatable)."""
        return self._key is not None

    def preflight(self) -> None:
        if self.settings.base_url and not self.private:
            raise FatalProviderError(
                f"ics target {self.target_name}: settings.base_url is set (the feeds are "
                f"served) but environment variable {self.settings.feed_key_env} "
                "(settings.feed_key_env) is not set: feeds would be served under guessable "
                "names (<email>.ics). Set it to a long random secret, e.g. "
                "python -c 'import secrets; print(secrets.token_urlsafe(32))'"
            )
        if self.private and not self._migrated:
            self.migrate()  # every run the CLI starts moves feeds still named <email>.ics

    def path_for(self, calendar: str) -> Path:
        """The feed's path; a feed found under an older name (email, rotation) is moved here."""
        if calendar.startswith(TEAM_FEEDS):
            return self._team_path(calendar)
        if self._key is None:
            return self.directory / feed_file_name(calendar)
        rotation = self._rotations().get(self._rotation_id(calendar), 0)
        path = self.directory / feed_file_name(calendar, self._key, rotation)
        if not path.exists():
            older = [feed_file_name(calendar, self._key, r) for r in range(rotation - 1, -1, -1)]
            for name in [*older, feed_file_name(calendar)]:
                if (self.directory / name).exists():
                    os.replace(self.directory / name, path)
                    break
        return path

    def _team_path(self, calendar: str) -> Path:
        """A team feed: ``teams/<name>.ics``; with the key, private like an employee's."""
        folder = self.directory / "teams"
        plain = f"{_UNSAFE.sub('_', calendar.removeprefix(TEAM_FEEDS))}.ics"
        if self._key is None:
            return folder / plain
        rotation = self._rotations().get(self._rotation_id(calendar), 0)
        path = folder / feed_file_name(calendar, self._key, rotation)
        if not path.exists():
            older = [feed_file_name(calendar, self._key, r) for r in range(rotation - 1, -1, -1)]
            for name in [*older, plain]:
                if (folder / name).exists():
                    os.replace(folder / name, path)
                    break
        return path

    def feed_url(self, calendar: str) -> str | None:
        """The subscription URL of a mailbox's feed (None without a base_url)."""
        if not self.settings.base_url:
            return None
        relative = self.path_for(calendar).relative_to(self.directory).as_posix()
        return self.settings.base_url.rstrip("/") + "/" + relative

    @contextlib.contextmanager
    def _feeds_lock(self, exclusive: bool) -> Iterator[None]:
        """The feed directory's lock (LOCK_FILE); released when the process dies too."""
        self.directory.mkdir(parents=True, exist_ok=True)
        with open(self.directory / LOCK_FILE, "a+b") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
            yield

    def rotate(self, calendar: str) -> Path:
        """Give a mailbox a new feed name; the feed moves there, so its old URL stops working.

        Waits for syncs writing feeds at that moment (the directory's lock)."""
        if self._key is None:
            raise FatalProviderError(
                f"ics target {self.target_name}: cannot rotate a feed name without a key in "
                f"{self.settings.feed_key_env} (settings.feed_key_env)"
            )
        with self._feeds_lock(exclusive=True):
            return self._rotate(calendar)

    def _rotate(self, calendar: str) -> Path:
        old = self.path_for(calendar)
        rotations = self._rotations()
        ident = self._rotation_id(calendar)
        rotations[ident] = rotations.get(ident, 0) + 1
        # The count first: a crash before the move leaves the feed under an older name,
        # which path_for moves to the new one.
        self.directory.mkdir(parents=True, exist_ok=True)
        _write_atomically(self.directory / ROTATIONS_FILE, json.dumps(rotations).encode())
        new = old.parent / feed_file_name(calendar, self._key, rotations[ident])
        if old.exists():
            os.replace(old, new)
        return new

    def migrate(self) -> int:
        """Move every feed still under its ``<email>.ics`` name to its private name.

        A name the file-name sanitising changed (an address with a character outside
        ``A-Za-z0-9._@+-``, made ``_``) cannot be read back as its address: such a feed moves
        when its mailbox is next written or read back, or by ``leavesync feeds``.
        """
        self._migrated = True
        if self._key is None or not self.directory.is_dir():
            return 0
        with self._feeds_lock(exclusive=True):
            return self._migrate()

    def _migrate(self) -> int:
        moved = 0
        for path in self.directory.glob("*@*.ics"):
            mailbox = path.name[: -len(".ics")]
            if "_" in mailbox or feed_file_name(mailbox) != path.name:
                continue
            if self.path_for(mailbox) != path and not path.exists():
                moved += 1
        return moved

    def _rotation_id(self, calendar: str) -> str:
        assert self._key is not None
        message = f"rotation\0{calendar.strip().lower()}".encode()
        return hmac.new(self._key, message, hashlib.sha256).hexdigest()[:32]

    def _rotations(self) -> dict[str, int]:
        """The rotation counts, re-read whenever the file changed (another process rotated)."""
        path = self.directory / ROTATIONS_FILE
        try:
            stat = path.stat()
        except FileNotFoundError:
            return {}
        seen = (stat.st_mtime_ns, stat.st_size, stat.st_ino)
        if getattr(self, "_rotations_seen", None) != seen:
            self._rotations_cache = {
                str(k): int(v) for k, v in json.loads(path.read_bytes()).items()
            }
            self._rotations_seen = seen
        return dict(self._rotations_cache)

    def apply(self, changes: Sequence[EventChange]) -> Iterator[ChangeResult]:
        by_calendar: dict[str, list[EventChange]] = {}
        for change in changes:
            by_calendar.setdefault(change.calendar, []).append(change)
        self.directory.mkdir(parents=True, exist_ok=True)
        if not self._migrated:
            self.migrate()
        for calendar, group in by_calendar.items():
            yield from self._apply_calendar(calendar, group)

    def _apply_calendar(self, calendar: str, changes: list[EventChange]) -> Iterator[ChangeResult]:
        # The feed's name, read and write under the lock; the results are told after it.
        with self._feeds_lock(exclusive=False):
            results = list(self._write_calendar(calendar, changes))
        yield from results

    def _write_calendar(self, calendar: str, changes: list[EventChange]) -> Iterator[ChangeResult]:
        path = self.path_for(calendar)
        path.parent.mkdir(parents=True, exist_ok=True)
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
        if self.private:
            report.add(
                "feed names are private (HMAC of the address with the key in "
                f"${self.settings.feed_key_env})",
                True,
            )
        else:
            report.add(
                "feed names are private",
                not self.settings.base_url,
                f"${self.settings.feed_key_env} is not set: feeds are named <email>.ics, "
                "guessable; set it before serving the directory",
            )
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
        if not self._migrated:
            self.migrate()
        for calendar in calendars:
            with self._feeds_lock(exclusive=False):
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
