"""The calendar provider contract every target implements (DESIGN.md, "Calendar providers")."""

from __future__ import annotations

import abc
import datetime as dt
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import numpy as np
from pandas.util import hash_array
from pydantic import BaseModel, ConfigDict

ChangeOp = Literal["create", "update", "delete"]
EventStatus = Literal["confirmed", "tentative"]
ShowAs = Literal["oof", "busy", "tentative", "free"]

# Field order of the canonical text an event's fingerprint is computed from; the bulk
# renderer (assets/render.py) builds the very same text column-wise.
FINGERPRINT_FIELDS: tuple[str, ...] = (
    "title",
    "all_day",
    "start",
    "end",
    "timezone",
    "status",
    "show_as",
    "private",
    "description",
    "categories",
)


# The global identity of a leave's event, whatever partition or target it is in:
# EVENT_KEY_PREFIX + the leave id. In a team calendar the same leave is another event (a
# person subscribed to both must see two, and clients merge events of equal UID): its key
# is TEAM_EVENT_KEY_PREFIX + the leave id.
EVENT_KEY_PREFIX = "leave-"
TEAM_EVENT_KEY_PREFIX = "team-leave-"
EVENT_KEY_PREFIXES = (TEAM_EVENT_KEY_PREFIX, EVENT_KEY_PREFIX)


def leave_id_of(event_key: str) -> str:
    """The leave id an event key stands for (personal or team)."""
    for prefix in EVENT_KEY_PREFIXES:
        if event_key.startswith(prefix):
            return event_key[len(prefix) :]
    return event_key


def event_keys_of(leave_id: str) -> tuple[str, ...]:
    """Every event key a leave may have (its personal and its team events)."""
    return tuple(prefix + str(leave_id) for prefix in EVENT_KEY_PREFIXES)


# Fixed 16-byte key: fingerprints must be stable across runs and processes.
_FINGERPRINT_KEY = "leavesync-fp-v01"


def fingerprint_texts(texts: Sequence[str] | np.ndarray) -> np.ndarray:
    """Fingerprints (int64) of many canonical event texts at once, in C, not a Python loop."""
    hashed = hash_array(
        np.asarray(texts, dtype=object), hash_key=_FINGERPRINT_KEY, categorize=False
    )
    return hashed.view(np.int64)


def fingerprint_text(text: str) -> int:
    """Fingerprint of one canonical event text; equal to what fingerprint_texts gives for it."""
    return int(fingerprint_texts([text])[0])


@dataclass(frozen=True)
class EventPayload:
    """The calendar event a leave should be, provider-neutral.

    All-day events: ``start``/``end`` are ISO dates, ``end`` exclusive.
    Timed events: ``start``/``end`` are naive ISO local date-times in ``timezone`` (IANA).
    """

    event_key: str
    leave_id: str
    title: str
    all_day: bool
    start: str
    end: str
    timezone: str
    status: EventStatus
    show_as: ShowAs
    private: bool = True
    description: str = ""
    categories: str = ""  # comma-separated, empty for none

    def canonical_text(self) -> str:
        return "\x1f".join(_canonical(getattr(self, name)) for name in FINGERPRINT_FIELDS)

    @property
    def fingerprint(self) -> int:
        return fingerprint_text(self.canonical_text())

    def start_date(self) -> dt.date:
        return dt.date.fromisoformat(self.start[:10])

    def end_date_exclusive(self) -> dt.date:
        """For all-day events the exclusive end date; for timed events the end's date."""
        return dt.date.fromisoformat(self.end[:10])

    def start_datetime(self) -> dt.datetime:
        """Aware start (midnight of the start date for all-day events)."""
        return _aware(self.start, self.timezone)

    def end_datetime(self) -> dt.datetime:
        return _aware(self.end, self.timezone)

    def to_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__dataclass_fields__}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EventPayload:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})


def _canonical(value: object) -> str:
    if isinstance(value, (bool, np.bool_)):
        return "1" if value else "0"
    return "" if value is None else str(value)


def _aware(iso: str, tz: str) -> dt.datetime:
    from zoneinfo import ZoneInfo

    if len(iso) == 10:
        iso = iso + "T00:00:00"
    return dt.datetime.fromisoformat(iso).replace(tzinfo=ZoneInfo(tz))


@dataclass(frozen=True)
class EventChange:
    """One change to apply to one calendar.

    ``provider_event_id``/``version`` come from the snapshot for updates and deletes (None
    for creates, or when an earlier run never learned them).
    """

    op: ChangeOp
    event_key: str
    calendar: str
    event: EventPayload | None = None
    provider_event_id: str | None = None
    version: str | None = None
    # One create attempt's idempotency token (Graph's transactionId). The core keeps it in
    # the state store's intent journal, so a re-run after a crash re-sends the same token;
    # the next create of the same key (a reinstated leave) gets a new one. None: the
    # provider makes one up for this attempt.
    attempt_id: str | None = None
    # The delete half of a move: the calendar the event moves to, whose create follows in a
    # later call. Where the old address now names that mailbox by an alias the service will
    # not act on (Exchange's ErrorNonPrimarySmtpAddress), the delete is done and the create
    # adopts the event.
    moving_to: str | None = None


@dataclass(frozen=True)
class ChangeResult:
    """What the provider says about one change, reported as soon as it landed (or failed)."""

    change: EventChange
    ok: bool
    provider_event_id: str | None = None
    version: str | None = None
    error: str | None = None
    # True: this event (or this calendar) cannot be written, retrying now will not help.
    permanent: bool = False
    # True: a create found our tagged event with this key already in the calendar (lost
    # state, a crash before the snapshot row, an alias of the new address) and took it over.
    adopted: bool = False


@dataclass(frozen=True)
class RemoteEvent:
    """An event read back from a calendar that carries our tag (for the drift report).

    ``payload`` is the event normalised back into our provider-neutral form so that
    ``payload.fingerprint`` equals the fingerprint we wrote when nobody edited it.
    """

    event_key: str
    calendar: str
    provider_event_id: str | None
    payload: EventPayload | None
    version: str | None = None


@dataclass
class CheckReport:
    """Outcome of "test settings": each step, whether it passed, and what to fix."""

    target: str
    steps: list[tuple[str, bool, str]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(passed for _, passed, _ in self.steps)

    def add(self, step: str, passed: bool, detail: str = "") -> None:
        self.steps.append((step, passed, detail))

    def render(self) -> str:
        lines = [f"target {self.target}: {'OK' if self.ok else 'PROBLEMS FOUND'}"]
        for step, passed, detail in self.steps:
            lines.append(
                f"  [{'ok' if passed else 'FAIL'}] {step}" + (f": {detail}" if detail else "")
            )
        return "\n".join(lines)


class ProviderError(Exception):
    """Base of provider errors."""


class FatalProviderError(ProviderError):
    """The whole target cannot work (bad credentials, consent missing): stop the run now."""


class ProviderSettings(BaseModel):
    """Base of each provider's own settings (the ``settings:`` block of a target)."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def changed_fields(
    written: EventPayload, remote: EventPayload, fields: Iterable[str] = FINGERPRINT_FIELDS
) -> list[str]:
    """Fields in which a read-back event differs from what we wrote (timed: compared as instants)."""
    diffs = []
    for name in fields:
        if name in ("start", "end") and not written.all_day and not remote.all_day:
            get = EventPayload.start_datetime if name == "start" else EventPayload.end_datetime
            if get(written) != get(remote):
                diffs.append(name)
        elif name == "timezone" and not (written.all_day and remote.all_day):
            continue  # a timed event's zone matters only through its instants
        elif _canonical(getattr(written, name)) != _canonical(getattr(remote, name)):
            diffs.append(name)
    return diffs


class CalendarProvider(abc.ABC):
    """One calendar system. Subclasses set ``type_name`` and ``Settings``."""

    type_name: ClassVar[str]
    Settings: ClassVar[type[ProviderSettings]]
    # The payload fields this provider stores and reads back faithfully; the drift report
    # compares only these (Google, for instance, has no show-as).
    compared_fields: ClassVar[tuple[str, ...]] = FINGERPRINT_FIELDS
    # True: two addresses may reach one mailbox (an alias kept after a rename), so read_back
    # may report one event (same id, same version) under both; the drift report folds them.
    addresses_may_alias: ClassVar[bool] = False

    def __init__(self, target_name: str, settings: ProviderSettings) -> None:
        self.target_name = target_name
        self.settings = settings

    @abc.abstractmethod
    def apply(self, changes: Sequence[EventChange]) -> Iterator[ChangeResult]:
        """Apply changes in the provider's batch form; yield one result per change as it lands.

        Must raise FatalProviderError for target-wide failures; per-event failures are
        results with ok=False. Never touches events that do not carry our tag.

        A create is never blind: before writing, the provider looks up the events that carry
        our tag and the change's key in that calendar (batched: a few requests per calendar,
        not one per event) and adopts one if found (updated only if it differs from the
        payload; ``adopted=True``), deleting further copies of the same key in that calendar.
        A delete of an event already gone is done. An update of an event gone (or in the
        user's deleted items) recreates it. Changes of one call may be applied in any order;
        the core sends the delete half of a move in an earlier call than its create half.
        """

    def preflight(self) -> None:  # noqa: B027 - optional hook
        """Checks that need no network: secrets present, CA files readable, keys parse.

        Raises FatalProviderError naming the setting or variable to fix; the CLI calls it
        once before any run, so a configuration error stops everything at once, once.
        """

    @abc.abstractmethod
    def check(self, sample_calendar: str) -> CheckReport:
        """Test settings: credentials and write permission on a sample calendar; change nothing."""

    @abc.abstractmethod
    def read_back(
        self, calendars: Iterable[str], start: dt.date, end: dt.date
    ) -> Iterator[RemoteEvent]:
        """Our tagged events in these calendars that overlap [start, end)."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""


def secret_from_env(var_name: str, what: str) -> str:
    """Read a secret from the environment, failing with a message that names the variable."""
    value = os.environ.get(var_name)
    if not value:
        raise FatalProviderError(
            f"{what}: environment variable {var_name} is not set (secrets are only read "
            "from the environment, never from the configuration file)"
        )
    return value
