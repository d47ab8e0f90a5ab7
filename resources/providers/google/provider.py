"""GoogleCalendarProvider: the one public face of the Google Workspace target."""

from __future__ import annotations

import datetime as dt
import queue
import threading
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, ClassVar

from resources.providers.base import (
    CalendarProvider,
    ChangeResult,
    CheckReport,
    EventChange,
    ProviderSettings,
    RemoteEvent,
)
from resources.providers.google import check as check_module
from resources.providers.google import readback
from resources.providers.google.batching import Batcher
from resources.providers.google.lookup import UserFound, look_up
from resources.providers.google.settings import Settings
from resources.providers.google.signin import SignIn
from resources.providers.google.writes import UserWrites


class GoogleCalendarProvider(CalendarProvider):
    """Google Calendar API v3 through google-api-python-client, batched, users in parallel."""

    type_name: ClassVar[str] = "google"
    Settings: ClassVar[type[ProviderSettings]] = Settings
    # Stored by Google and visible to the user; show-as and categories have no true home.
    compared_fields: ClassVar[tuple[str, ...]] = (
        "title",
        "all_day",
        "start",
        "end",
        "status",
        "private",
        "description",
    )
    addresses_may_alias = True

    def __init__(self, target_name: str, settings: ProviderSettings) -> None:
        super().__init__(target_name, settings)
        self.settings: Settings = settings  # type: ignore[assignment]
        self.signin = SignIn(target_name, self.settings)
        self.batcher = Batcher(target_name, self.settings, self.signin)

    def preflight(self) -> None:
        """The CA bundle is a readable PEM file; the key variable holds a service-account key."""
        self.signin.check_ca_bundle()
        self.signin.base()

    def apply(self, changes: Sequence[EventChange]) -> Iterator[ChangeResult]:
        """Write per user, users in parallel; a user with creates first has our events looked
        up (list calls of many users batched), and starts as soon as that look-up is done."""
        per_user: dict[str, list[EventChange]] = {}
        for change in changes:
            per_user.setdefault(change.calendar, []).append(change)
        if not per_user:
            return
        self.preflight()  # a bad key or CA file is fatal before anything is sent
        wanted = {
            user: keys
            for user, user_changes in per_user.items()
            if (keys := {c.event_key for c in user_changes if c.op == "create"})
        }
        results: queue.Queue[Any] = queue.Queue()
        stop = threading.Event()
        done = object()
        workers = min(self.settings.max_parallel_users, len(per_user))
        pool = ThreadPoolExecutor(workers, thread_name_prefix="leavesync-google")

        def write(user: str, found: dict[str, list[dict[str, Any]]]) -> None:
            try:
                UserWrites(self.batcher, user, results.put, stop).run(per_user[user], found)
            except BaseException as exc:  # handed to the consuming thread, which raises it
                results.put(exc)
            finally:
                results.put(done)

        def looked_up(user: str, found: UserFound) -> None:
            if found.failure:
                for change in per_user[user]:
                    if change.op == "create":
                        results.put(
                            ChangeResult(
                                change, False, error=found.failure, permanent=found.permanent
                            )
                        )
                per_user[user] = [c for c in per_user[user] if c.op != "create"]
            pool.submit(write, user, found.events)

        def look() -> None:
            try:
                look_up(self.batcher, wanted, looked_up, stop)
            except BaseException as exc:
                results.put(exc)

        try:
            for user in per_user:
                if user not in wanted:
                    pool.submit(write, user, {})
            looker = threading.Thread(target=look, name="leavesync-google-lookup", daemon=True)
            looker.start()
            remaining = len(per_user)
            while remaining:
                item = results.get()
                if item is done:
                    remaining -= 1
                elif isinstance(item, BaseException):
                    stop.set()
                    raise item
                else:
                    yield item
        finally:
            stop.set()
            pool.shutdown(wait=True, cancel_futures=True)

    def check(self, sample_calendar: str) -> CheckReport:
        """Token for a sample user, then one read of their calendar; changes nothing."""
        user = sample_calendar or self.settings.sample_user or ""
        return check_module.check(self.batcher, self.target_name, user)

    def read_back(
        self, calendars: Iterable[str], start: dt.date, end: dt.date
    ) -> Iterator[RemoteEvent]:
        """Our tagged events (cancelled ones too, as payload None) overlapping [start, end)."""
        return readback.read_back(self.batcher, calendars, start, end)
