"""Where an employee's leaves go: a calendar URL from the template, or found from the principal."""

from __future__ import annotations

import threading
import urllib.parse

from caldav.elements import cdav, dav

from resources.providers.caldav.mapping import propfind
from resources.providers.caldav.session import CalendarFailure, DavSession
from resources.providers.caldav.settings import CalDavSettings

CALENDAR_TYPE = cdav.Calendar.tag


class CalendarLocator:
    """Calendar collection URL per employee, discovered at most once per provider."""

    def __init__(self, settings: CalDavSettings, session: DavSession) -> None:
        self.settings = settings
        self.session = session
        self._found: dict[str, str] = {}
        self._lock = threading.Lock()

    def url(self, calendar: str) -> str:
        """The collection URL for an employee (or a team calendar's own URL); CalendarFailure
        if it cannot be found."""
        if calendar.startswith(("https://", "http://")):  # a team's shared calendar
            if not self.settings.on_server(calendar):
                raise CalendarFailure(
                    f"{calendar} is not on the target's server {self.settings.server_root}: "
                    "its credentials are never sent elsewhere",
                    whole_calendar=True,
                )
            return calendar if calendar.endswith("/") else calendar + "/"
        if self.settings.server_url:
            raise CalendarFailure(
                f"{calendar!r} is not a calendar URL (server_url is set: the target's "
                "calendars are collection URLs)",
                whole_calendar=True,
            )
        if self.settings.calendar_url:
            return self.settings.url_for(calendar)
        with self._lock:
            if calendar in self._found:
                return self._found[calendar]
        found = self.discover(calendar)
        with self._lock:
            self._found[calendar] = found
        return found

    def home(self, calendar: str) -> str:
        """The employee's calendar-home-set (RFC 4791 6.2.1), from the principal URL template."""
        principal = self.settings.url_for(calendar)
        reply = self.session.request(
            "PROPFIND",
            principal,
            propfind(cdav.CalendarHomeSet()),
            {"Depth": "0", "Content-Type": "application/xml; charset=utf-8"},
        )
        if reply.status == 403:
            raise CalendarFailure(
                f"the service account {self.settings.username!r} may not read the principal "
                f"{principal} (HTTP 403): give it read access to that principal",
                whole_calendar=True,
            )
        if reply.status == 404:
            raise CalendarFailure(f"no principal at {principal} (HTTP 404)", whole_calendar=True)
        if reply.status not in (200, 207):
            raise CalendarFailure(f"PROPFIND {principal}: {reply.reason()}", whole_calendar=True)
        for result in reply.dav.parse_propfind():  # type: ignore[attr-defined]
            home = result.properties.get(cdav.CalendarHomeSet.tag)
            if home:
                href = home[0] if isinstance(home, list) else home
                return urllib.parse.urljoin(principal, str(href))
        raise CalendarFailure(
            f"principal {principal} has no calendar-home-set", whole_calendar=True
        )

    def discover(self, calendar: str) -> str:
        """The calendar named ``calendar_name`` (display name or last path segment) in the home."""
        home = self.home(calendar)
        reply = self.session.request(
            "PROPFIND",
            home,
            propfind(dav.ResourceType(), dav.DisplayName()),
            {"Depth": "1", "Content-Type": "application/xml; charset=utf-8"},
        )
        if reply.status not in (200, 207):
            raise CalendarFailure(f"PROPFIND {home}: {reply.reason()}", whole_calendar=True)
        wanted = self.settings.calendar_name.casefold()
        names = []
        for result in reply.dav.parse_propfind():  # type: ignore[attr-defined]
            types = result.properties.get(dav.ResourceType.tag) or []
            if CALENDAR_TYPE not in (types if isinstance(types, list) else [types]):
                continue
            url = urllib.parse.urljoin(home, result.href)
            name = str(result.properties.get(dav.DisplayName.tag) or "")
            segment = urllib.parse.unquote(url.rstrip("/").rsplit("/", 1)[-1])
            names.append(name or segment)
            if wanted in (name.casefold(), segment.casefold()):
                return url if url.endswith("/") else url + "/"
        raise CalendarFailure(
            f"no calendar named {self.settings.calendar_name!r} in {home} (found: "
            f"{', '.join(sorted(names)) or 'none'}): create it, or set calendar_name",
            whole_calendar=True,
        )
