"""The ``ews`` provider: Exchange Server 2013-2019 on premises, one impersonating account."""

from __future__ import annotations

import datetime as dt
import queue
import threading
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import ClassVar

from resources.providers.base import (
    CalendarProvider,
    ChangeResult,
    CheckReport,
    EventChange,
    FatalProviderError,
    ProviderSettings,
    RemoteEvent,
    secret_from_env,
)
from resources.providers.ews.bulk import MailboxWriter, chunks
from resources.providers.ews.check import check
from resources.providers.ews.connection import EwsConnection, ca_bundle_problem
from resources.providers.ews.errors import MailboxUnavailable
from resources.providers.ews.mapping import problem
from resources.providers.ews.read_back import read_back
from resources.providers.ews.settings import EwsSettings


class EwsCalendarProvider(CalendarProvider):
    """Leaves as calendar items in each employee's mailbox, written by one impersonating account."""

    type_name: ClassVar[str] = "ews"
    Settings: ClassVar[type[ProviderSettings]] = EwsSettings
    # EWS has no event status apart from free/busy: "tentative" reaches the calendar only as
    # show_as, so status is not compared; the zone is compared through leavesyncTimezone.
    compared_fields: ClassVar[tuple[str, ...]] = (
        "title",
        "all_day",
        "start",
        "end",
        "timezone",
        "show_as",
        "private",
        "description",
        "categories",
    )
    addresses_may_alias = True

    def __init__(self, target_name: str, settings: ProviderSettings) -> None:
        super().__init__(target_name, settings)
        self.settings: EwsSettings = settings  # type: ignore[assignment]
        self.connection = EwsConnection(target_name, self.settings)

    def preflight(self) -> None:
        """The password variable is set and the CA bundle is a readable PEM file."""
        secret_from_env(self.settings.password_env, f"target {self.target_name} (ews)")
        issue = ca_bundle_problem(self.settings)
        if issue:
            raise FatalProviderError(
                f"target {self.target_name}: {issue}; fix the ca_bundle setting (the PEM file of "
                "the CA that issued the Exchange certificate)"
            )

    def apply(self, changes: Sequence[EventChange]) -> Iterator[ChangeResult]:
        """Apply changes per mailbox with bulk operations; yield each result as its chunk lands."""
        groups: dict[str, list[EventChange]] = {}
        for change in changes:
            groups.setdefault(change.calendar.strip().lower(), []).append(change)
        if not groups:
            return
        workers = min(self.settings.concurrent_mailboxes, len(groups))
        if workers == 1:
            for calendar, group in groups.items():
                yield from self._apply_mailbox(calendar, group)
            return
        yield from self._apply_concurrently(groups, workers)

    def _apply_concurrently(
        self, groups: dict[str, list[EventChange]], workers: int
    ) -> Iterator[ChangeResult]:
        results: queue.Queue[object] = queue.Queue()
        stop = threading.Event()
        done = object()

        def run(calendar: str, group: list[EventChange]) -> None:
            try:
                for result in self._apply_mailbox(calendar, group):
                    results.put(result)
                    if stop.is_set():
                        return
            except BaseException as error:  # noqa: BLE001 - handed to the consumer thread
                results.put(error)
            finally:
                results.put(done)

        pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix=f"ews-{self.target_name}")
        try:
            for calendar, group in groups.items():
                pool.submit(run, calendar, group)
            remaining = len(groups)
            while remaining:
                item = results.get()
                if item is done:
                    remaining -= 1
                elif isinstance(item, BaseException):
                    stop.set()
                    raise item
                else:
                    yield item  # type: ignore[misc]
        finally:
            stop.set()
            pool.shutdown(wait=True, cancel_futures=True)

    def _apply_mailbox(self, calendar: str, changes: list[EventChange]) -> Iterator[ChangeResult]:
        """Deletes, then updates, then creates of one mailbox, in chunks of ``chunk_size``."""
        try:
            writer = MailboxWriter(self.connection, calendar, self.compared_fields)
        except MailboxUnavailable as error:
            for change in changes:
                yield ChangeResult(change, ok=False, permanent=True, error=str(error))
            return
        valid: list[EventChange] = []
        for change in changes:
            issue = (
                None if change.op == "delete" else problem(writer.account, writer.folder, change)
            )
            if issue:
                yield ChangeResult(change, ok=False, permanent=True, error=issue)
            else:
                valid.append(change)
        for op in ("delete", "update", "create"):
            for chunk in chunks([c for c in valid if c.op == op], self.settings.chunk_size):
                if writer.unavailable:
                    for change in chunk:
                        yield ChangeResult(
                            change, ok=False, permanent=True, error=writer.unavailable
                        )
                    continue
                yield from writer.run(op, chunk)

    def read_back(
        self, calendars: Iterable[str], start: dt.date, end: dt.date
    ) -> Iterator[RemoteEvent]:
        """Our tagged events overlapping [start, end), normalised back into payloads."""
        return read_back(self.connection, calendars, start, end)

    def check(self, sample_calendar: str) -> CheckReport:
        """Connect, sign in, impersonate the sample mailbox and read its calendar; write nothing."""
        return check(self.connection, sample_calendar)

    def close(self) -> None:
        """Release connections and forget the cached protocol."""
        self.connection.close()
