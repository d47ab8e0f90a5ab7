"""Creates, updates and deletes in one calendar, with ETag preconditions, never blind."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator

from caldav.elements import dav

from resources.providers.base import ChangeResult, EventChange
from resources.providers.caldav.mapping import (
    ICS_TYPE,
    StoredEvent,
    body_for,
    href_of,
    parse_resource,
    path_of,
    propfind,
    uid_query,
)
from resources.providers.caldav.session import CalendarFailure, DavSession, Reply
from resources.providers.ical import uid_for

_XML = {"Content-Type": "application/xml; charset=utf-8"}


class CalendarWriter:
    """Applies one calendar's changes in order; a calendar-wide failure fails the rest at once."""

    def __init__(self, session: DavSession, calendar_url: str, username: str) -> None:
        self.session = session
        self.url = calendar_url
        self.username = username

    def apply(self, changes: list[EventChange]) -> Iterator[ChangeResult]:
        for i, change in enumerate(changes):
            try:
                yield self._one(change)
            except CalendarFailure as failure:
                yield ChangeResult(
                    change, ok=False, error=str(failure), permanent=failure.permanent
                )
                if failure.whole_calendar:
                    for rest in changes[i + 1 :]:
                        yield ChangeResult(
                            rest, ok=False, error=str(failure), permanent=failure.permanent
                        )
                    return

    def _one(self, change: EventChange) -> ChangeResult:
        if change.op == "delete":
            return self._delete(change)
        now = dt.datetime.now(dt.UTC).replace(microsecond=0)
        if change.op == "create":
            return self._create(change, now)
        return self._update(change, now)

    # -- create: If-None-Match: *, and whatever is already there is re-read and adopted ----------

    def _create(self, change: EventChange, now: dt.datetime) -> ChangeResult:
        assert change.event is not None, "create needs the event"
        href = href_of(self.url, change.event_key)
        reply = self._put(href, body_for(change.event, False, now), {"If-None-Match": "*"})
        if reply.status in (200, 201, 204):
            return self._done(change, href, reply)
        if reply.uid_conflict:  # our UID under another name (RFC 4791 5.3.2.1)
            existing = self._find_uid(uid_for(change.event_key))
            if existing is None:
                raise CalendarFailure(f"{self._where(href)}: UID in use, but not found by UID")
            return self._adopt(change, existing, now)
        if reply.status == 412:  # the resource exists: read it, never overwrite it blind
            existing = self._get(href)
            if existing is None:  # deleted between our PUT and GET: create again
                return self._create(change, now)
            return self._adopt(change, existing, now)
        raise self._failure(href, reply)

    def _adopt(self, change: EventChange, existing: StoredEvent, now: dt.datetime) -> ChangeResult:
        assert change.event is not None
        self._require_ours(change, existing)
        payload = existing.payload()
        if payload is not None and payload.fingerprint == change.event.fingerprint:
            return ChangeResult(
                change,
                ok=True,
                provider_event_id=path_of(existing.href),
                version=existing.etag,
                adopted=True,
            )
        result = self._overwrite(change, existing, now)
        return ChangeResult(
            change,
            ok=result.ok,
            provider_event_id=result.provider_event_id,
            version=result.version,
            error=result.error,
            permanent=result.permanent,
            adopted=result.ok,
        )

    # -- update: If-Match with the stored ETag; 412 -> re-read; gone -> recreated ----------------

    def _update(self, change: EventChange, now: dt.datetime) -> ChangeResult:
        assert change.event is not None, "update needs the event"
        href = href_of(self.url, change.event_key, change.provider_event_id)
        if not change.version:
            existing = self._get(href)
            if existing is None:
                return self._create(change, now)
            return self._overwrite(change, existing, now)
        reply = self._put(href, body_for(change.event, True, now), {"If-Match": change.version})
        if reply.status in (200, 201, 204):
            return self._done(change, href, reply)
        if reply.status in (404, 412):
            existing = self._get(href)
            if existing is None:  # deleted in the calendar: HR is the master, recreate it
                return self._create(change, now)
            return self._overwrite(change, existing, now)
        raise self._failure(href, reply)

    def _overwrite(
        self, change: EventChange, existing: StoredEvent, now: dt.datetime, tries: int = 3
    ) -> ChangeResult:
        """Replace a resource we just read (and found ours), conditional on its current ETag."""
        assert change.event is not None
        self._require_ours(change, existing)
        if not existing.etag:
            raise CalendarFailure(f"{self._where(existing.href)}: the server sent no ETag")
        body = body_for(change.event, True, now)
        reply = self._put(existing.href, body, {"If-Match": existing.etag})
        if reply.status in (200, 201, 204):
            return self._done(change, existing.href, reply)
        if reply.status == 412 and tries > 1:  # edited again meanwhile: read it again
            again = self._get(existing.href)
            if again is None:
                return self._create(change, now)
            return self._overwrite(change, again, now, tries - 1)
        raise self._failure(existing.href, reply)

    # -- delete: If-Match; gone is done; never a resource that is not ours ----------------------

    def _delete(self, change: EventChange, tries: int = 3) -> ChangeResult:
        href = href_of(self.url, change.event_key, change.provider_event_id)
        version = change.version
        for _ in range(tries):
            if not version:
                existing = self._get(href)
                if existing is None:
                    return ChangeResult(change, ok=True)
                self._require_ours(change, existing)
                version = existing.etag
            reply = self.session.request("DELETE", href, "", {"If-Match": version or "*"})
            if reply.status in (200, 204, 404, 410):
                return ChangeResult(change, ok=True)
            if reply.status != 412:
                raise self._failure(href, reply)
            version = None  # changed since we knew it: re-read, check it is still ours
        raise CalendarFailure(f"{self._where(href)}: changed at every attempt to delete it")

    # -- requests ----------------------------------------------------------------------------

    def _put(self, href: str, body: bytes, conditions: dict[str, str]) -> Reply:
        return self.session.request("PUT", href, body, {"Content-Type": ICS_TYPE, **conditions})

    def _get(self, href: str) -> StoredEvent | None:
        reply = self.session.request("GET", href, "", {"Accept": "text/calendar"})
        if reply.status in (404, 410):
            return None
        if reply.status != 200:
            raise self._failure(href, reply)
        return parse_resource(href, reply.etag, reply.text)

    def _find_uid(self, uid: str) -> StoredEvent | None:
        headers = {"Depth": "1", **_XML}
        reply = self.session.request("REPORT", self.url, uid_query(uid), headers)
        if reply.status not in (200, 207):
            raise self._failure(self.url, reply)
        for found in reply.dav.parse_calendar_query():  # type: ignore[attr-defined]
            href = href_of(self.url, "", found.href)
            return parse_resource(href, found.etag, found.calendar_data)
        return None

    def _done(self, change: EventChange, href: str, reply: Reply) -> ChangeResult:
        etag = reply.etag or self._etag(href)
        return ChangeResult(change, ok=True, provider_event_id=path_of(href), version=etag)

    def _etag(self, href: str) -> str | None:
        """A server that rewrote our data sends no ETag with the PUT (RFC 4791 5.3.4): ask."""
        reply = self.session.request(
            "PROPFIND", href, propfind(dav.GetEtag()), {"Depth": "0", **_XML}
        )
        if reply.status not in (200, 207):
            return None
        for result in reply.dav.parse_propfind():  # type: ignore[attr-defined]
            etag = result.properties.get(dav.GetEtag.tag)
            if etag:
                return str(etag)
        return None

    def _require_ours(self, change: EventChange, existing: StoredEvent) -> None:
        if existing.key != change.event_key:
            what = f"tagged {existing.key}" if existing.key else "not tagged by leavesync"
            raise CalendarFailure(
                f"{self._where(existing.href)} holds an event {what}: left alone, "
                f"{change.op} of {change.event_key} not done"
            )

    def _failure(self, href: str, reply: Reply) -> CalendarFailure:
        where = self._where(href)
        if reply.status == 403:
            return CalendarFailure(
                f"{where}: the service account {self.username!r} may not write this calendar "
                "(HTTP 403): share it with write access (Nextcloud), add a rights rule "
                "(Radicale, Baikal) or a delegation (Fastmail)",
                whole_calendar=True,
            )
        if reply.status in (404, 409) and not reply.uid_conflict:
            return CalendarFailure(
                f"{where}: no calendar collection at {self.url} ({reply.reason()}): create it, "
                "or fix calendar_url",
                whole_calendar=True,
            )
        return CalendarFailure(f"{where}: {reply.reason()}", permanent=reply.status < 500)

    def _where(self, href: str) -> str:
        return path_of(href)
