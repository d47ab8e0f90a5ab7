"""The ``caldav`` target: leaves as events in CalDAV calendars (RFC 4791)."""

from __future__ import annotations

import datetime as dt
import queue
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor

from resources.providers.base import (
    CalendarProvider,
    ChangeResult,
    CheckReport,
    EventChange,
    RemoteEvent,
)
from resources.providers.caldav.apply import CalendarWriter
from resources.providers.caldav.calendars import CalendarLocator
from resources.providers.caldav.check import run_check
from resources.providers.caldav.read_back import read_calendar
from resources.providers.caldav.session import CalendarFailure, DavSession
from resources.providers.caldav.settings import CalDavSettings

_DONE = object()


class CalDavProvider(CalendarProvider):
    """One service account writes each employee's calendar; several calendars at once."""

    type_name = "caldav"
    Settings = CalDavSettings

    def __init__(self, target_name: str, settings: CalDavSettings) -> None:
        super().__init__(target_name, settings)
        self.requests: Counter[str] = Counter()  # per HTTP method, for benchmarks and tests
        self._count_lock = threading.Lock()
        self.session = DavSession(settings, self._count)
        self.locator = CalendarLocator(settings, self.session)

    def _count(self, method: str) -> None:
        with self._count_lock:
            self.requests[method] += 1

    def preflight(self) -> None:
        self.session.preflight()

    def apply(self, changes: Sequence[EventChange]) -> Iterator[ChangeResult]:
        by_calendar: dict[str, list[EventChange]] = {}
        for change in changes:
            by_calendar.setdefault(change.calendar, []).append(change)

        def one_calendar(calendar: str, group: list[EventChange]) -> Iterable[ChangeResult]:
            try:
                url = self.locator.url(calendar)
            except CalendarFailure as failure:
                return [
                    ChangeResult(c, ok=False, error=str(failure), permanent=failure.permanent)
                    for c in group
                ]
            return CalendarWriter(self.session, url, self.settings.username).apply(group)

        yield from self._in_parallel(list(by_calendar.items()), one_calendar)

    def _in_parallel(self, work: list, run: Callable) -> Iterator:
        """Run ``run(*item)`` for each item on at most max_parallel_calendars threads; yield
        each result as it lands; a fatal error stops the others and is raised here."""
        results: queue.Queue = queue.Queue()

        def task(item) -> None:
            try:
                for result in run(*item):
                    results.put(result)
            except BaseException as err:  # noqa: BLE001 - handed to the caller's thread
                results.put(err)
                self.session.stopped.set()
            finally:
                results.put(_DONE)

        workers = min(self.settings.max_parallel_calendars, max(1, len(work)))
        pool = ThreadPoolExecutor(workers, thread_name_prefix=f"caldav-{self.target_name}")
        pending = len(work)
        failure: BaseException | None = None
        try:
            for item in work:
                pool.submit(task, item)
            while pending:
                got = results.get()
                if got is _DONE:
                    pending -= 1
                elif isinstance(got, BaseException):
                    failure = failure or got
                elif failure is None:
                    yield got
        finally:
            self.session.stopped.set()  # a fatal error or a caller that stopped reading
            pool.shutdown(wait=True, cancel_futures=True)
            self.session.stopped.clear()
        if failure is not None:
            raise failure

    def check(self, sample_calendar: str) -> CheckReport:
        report = CheckReport(self.target_name)
        run_check(report, self.settings, self.session, self.locator, sample_calendar)
        return report

    def read_back(
        self, calendars: Iterable[str], start: dt.date, end: dt.date
    ) -> Iterator[RemoteEvent]:
        def one_calendar(calendar: str) -> list[RemoteEvent]:
            try:
                return read_calendar(self.session, self.locator, calendar, start, end)
            except CalendarFailure as failure:
                if failure.whole_calendar:
                    return []  # no calendar (yet) or no access: nothing of ours to read there
                raise

        work = [(c,) for c in dict.fromkeys(calendars)]
        yield from self._in_parallel(work, one_calendar)

    def close(self) -> None:
        self.session.close()
