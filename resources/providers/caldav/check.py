"""Test settings: sign in, find the sample calendar, and read its privileges; write nothing."""

from __future__ import annotations

import datetime as dt

from caldav.elements import dav

from resources.providers.base import CheckReport, FatalProviderError
from resources.providers.caldav.calendars import CALENDAR_TYPE, CalendarLocator
from resources.providers.caldav.mapping import ours_query, propfind
from resources.providers.caldav.session import CalendarFailure, DavSession
from resources.providers.caldav.settings import CalDavSettings

_XML = {"Content-Type": "application/xml; charset=utf-8"}
# Writing an event needs one of these on the calendar collection (RFC 3744 3.1, RFC 4918).
WRITE_PRIVILEGES = ("write", "write-content", "bind", "all")


def run_check(
    report: CheckReport,
    settings: CalDavSettings,
    session: DavSession,
    locator: CalendarLocator,
    sample: str,
) -> None:
    """Add each step of "test settings" to the report; stop at the first step that fails."""
    try:
        session.preflight()
        report.add(f"password in ${settings.password_env}", True)
    except FatalProviderError as err:
        report.add(f"password in ${settings.password_env}", False, str(err))
        return
    try:
        _sign_in(report, settings, session)
        url = _calendar(report, settings, locator, sample)
        if url and _privileges(report, settings, session, url):
            _search(report, session, url)
    except FatalProviderError as err:
        report.add("server", False, str(err))
    except CalendarFailure as err:
        report.add("server", False, str(err))


def _sign_in(report: CheckReport, settings: CalDavSettings, session: DavSession) -> None:
    reply = session.request(
        "PROPFIND",
        settings.server_root,
        propfind(dav.CurrentUserPrincipal()),
        {"Depth": "0", **_XML},
    )
    ok = reply.status in (200, 207)
    detail = f"{settings.server_root} as {settings.username}"
    if ok:
        principal = _principal_of(reply)
        detail += f", principal {principal}" if principal else " (the server names no principal)"
    report.add("sign in", ok, detail if ok else f"{detail}: {reply.reason()}")


def _principal_of(reply) -> str | None:
    for result in reply.dav.parse_propfind():
        value = result.properties.get(dav.CurrentUserPrincipal.tag)
        if value:
            return str(value[0] if isinstance(value, list) else value)
    return None


def _calendar(
    report: CheckReport, settings: CalDavSettings, locator: CalendarLocator, sample: str
) -> str | None:
    step = f"calendar of {sample}"
    try:
        url = locator.url(sample)
    except CalendarFailure as err:
        report.add(step, False, str(err))
        return None
    report.add(step, True, url)
    return url


def _privileges(
    report: CheckReport, settings: CalDavSettings, session: DavSession, url: str
) -> bool:
    reply = session.request(
        "PROPFIND",
        url,
        propfind(dav.ResourceType(), dav.CurrentUserPrivilegeSet()),
        {"Depth": "0", **_XML},
    )
    if reply.status == 404:
        report.add(
            "calendar exists", False, f"no collection at {url}: create it or fix calendar_url"
        )
        return False
    if reply.status == 403:
        report.add(
            "calendar readable",
            False,
            f"{settings.username} may not read {url} (HTTP 403): share the calendar with it",
        )
        return False
    if reply.status not in (200, 207):
        report.add("calendar exists", False, f"PROPFIND {url}: {reply.reason()}")
        return False
    props = reply.dav.parse_propfind()[0].properties  # type: ignore[attr-defined]
    types = props.get(dav.ResourceType.tag) or []
    if CALENDAR_TYPE not in (types if isinstance(types, list) else [types]):
        report.add("calendar exists", False, f"{url} is a collection, not a calendar")
        return False
    report.add("calendar exists", True, url)
    granted = _privilege_names(reply.text)
    can_write = any(p in granted for p in WRITE_PRIVILEGES)
    detail = f"privileges of {settings.username}: {', '.join(sorted(granted)) or 'none'}"
    if not can_write:
        detail += (
            " - leavesync needs write (or write-content and bind) here: share the calendar "
            "read-write with the service account (Nextcloud), give it rw in the rights file "
            "(Radicale), or delegate write access (Fastmail)"
        )
    report.add("write permission (current-user-privilege-set)", can_write, detail)
    return True


def _privilege_names(multistatus: str) -> set[str]:
    from lxml import etree

    try:
        root = etree.fromstring(multistatus.encode("utf-8"))
    except etree.XMLSyntaxError:
        return set()
    names = set()
    for priv_set in root.iter(dav.CurrentUserPrivilegeSet.tag):
        for privilege in priv_set.iter("{DAV:}privilege"):
            names.update(etree.QName(child).localname for child in privilege)
    return names


def _search(report: CheckReport, session: DavSession, url: str) -> None:
    today = dt.date.today()
    reply = session.request(
        "REPORT", url, ours_query(today, today + dt.timedelta(days=366)), {"Depth": "1", **_XML}
    )
    ok = reply.status in (200, 207)
    if ok:
        found = len(reply.dav.parse_calendar_query())  # type: ignore[attr-defined]
        detail = f"{found} leavesync event(s) in the next year"
    else:
        detail = f"calendar-query REPORT refused: {reply.reason()}"
    report.add("search by the leavesync tag (calendar-query)", ok, detail)
