"""Google Workspace calendars, written by a service account with domain-wide delegation."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import http.client
import json
import logging
import queue
import ssl
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, ClassVar
from zoneinfo import ZoneInfo

import google_auth_httplib2
import httplib2
from google.auth import exceptions as auth_exceptions
from google.oauth2 import service_account
from googleapiclient.discovery import build
from googleapiclient.errors import BatchError, HttpError
from googleapiclient.http import BatchHttpRequest
from pydantic import Field

from resources.providers.base import (
    CalendarProvider,
    ChangeResult,
    CheckReport,
    EventChange,
    EventPayload,
    FatalProviderError,
    ProviderSettings,
    RemoteEvent,
    secret_from_env,
)
from resources.providers.retry import Backoff, RateLimiter

log = logging.getLogger(__name__)

SCOPE_EVENTS = "https://www.googleapis.com/auth/calendar.events"
SCOPE_CALENDAR = "https://www.googleapis.com/auth/calendar"
# Private extended properties on every event we write: the tag we filter on, our identity.
TAG_PROPERTY = "leavesync"
TAG_VALUE = "1"
KEY_PROPERTY = "leavesyncKey"
LEAVE_PROPERTY = "leavesyncLeaveId"
# Not shown by Google but needed to rebuild the payload exactly: an all-day event has no
# zone, and Google has no show-as beyond busy/free, nor categories.
ZONE_PROPERTY = "leavesyncTimezone"
SHOW_AS_PROPERTY = "leavesyncShowAs"
CATEGORIES_PROPERTY = "leavesyncCategories"
EVENT_ID_PREFIX = "lvs"
_RETRYABLE_REASONS = {"rateLimitExceeded", "userRateLimitExceeded", "backendError"}
_TRANSPORT_ERRORS = (OSError, httplib2.HttpLib2Error, http.client.HTTPException, BatchError)
DELEGATION_HELP = (
    "In the Google Admin console (Security > Access and data control > API controls > "
    "Manage Domain Wide Delegation) add the service account's client ID {client_id} with "
    "the OAuth scopes {scopes}"
)


class Settings(ProviderSettings):
    """The ``settings:`` block of a ``google`` target."""

    service_account_key_env: str = "LEAVESYNC_GOOGLE_SERVICE_ACCOUNT"
    scopes: tuple[str, ...] = (SCOPE_EVENTS,)
    calendar_id: str = "primary"
    api_base_url: str = "https://www.googleapis.com/"
    token_uri: str = "https://oauth2.googleapis.com/token"
    batch_uri: str | None = None  # default: <api_base_url>batch/calendar/v3
    ca_bundle: str | None = None
    per_user_requests_per_minute: float = Field(600, gt=0)
    per_project_requests_per_minute: float = Field(10_000, gt=0)
    batch_size: int = Field(50, ge=1, le=50)
    max_parallel_users: int = Field(16, ge=1, le=64)
    out_of_office: bool = False
    backoff_base_seconds: float = Field(0.5, ge=0)
    backoff_cap_seconds: float = Field(60.0, ge=0)
    max_attempts: int = Field(8, ge=1)
    usage_limit_pause_seconds: float = Field(60.0, ge=0)
    timeout_seconds: float = Field(60.0, gt=0)
    sample_user: str | None = None


def event_id_for(event_key: str) -> str:
    """Our client-supplied Google event id: base32hex of the key (a-v, 0-9), deterministic."""
    raw = event_key.encode("utf-8")
    if len(raw) > 600:  # keeps the id under Google's 1024 characters
        raw = hashlib.sha256(raw).digest()
    return EVENT_ID_PREFIX + base64.b32hexencode(raw).decode("ascii").rstrip("=").lower()


def event_body(payload: EventPayload, out_of_office: bool = False) -> dict[str, Any]:
    """The Calendar API event resource for a payload (private, no attendees, no reminders)."""
    if payload.all_day:
        start: dict[str, str] = {"date": payload.start[:10]}
        end: dict[str, str] = {"date": payload.end[:10]}
    else:
        start = {"dateTime": payload.start, "timeZone": payload.timezone}
        end = {"dateTime": payload.end, "timeZone": payload.timezone}
    body: dict[str, Any] = {
        "id": event_id_for(payload.event_key),
        "summary": payload.title,
        "start": start,
        "end": end,
        "status": "tentative" if payload.status == "tentative" else "confirmed",
        "visibility": "private" if payload.private else "default",
        "transparency": "transparent" if payload.show_as == "free" else "opaque",
        "reminders": {"useDefault": False},
        "guestsCanInviteOthers": False,
        "extendedProperties": {
            "private": {
                TAG_PROPERTY: TAG_VALUE,
                KEY_PROPERTY: payload.event_key,
                LEAVE_PROPERTY: str(payload.leave_id),
                ZONE_PROPERTY: payload.timezone,
                SHOW_AS_PROPERTY: payload.show_as,
                CATEGORIES_PROPERTY: payload.categories,
            }
        },
    }
    if payload.description:
        body["description"] = payload.description
    if out_of_office and not payload.all_day and payload.show_as == "oof":
        body["eventType"] = "outOfOffice"
        body["outOfOfficeProperties"] = {"autoDeclineMode": "declineNone"}
    return body


def payload_from_event(event: dict[str, Any]) -> EventPayload | None:
    """Our provider-neutral payload read back from a Calendar API event (None if cancelled)."""
    if event.get("status") == "cancelled":
        return None
    private = (event.get("extendedProperties") or {}).get("private") or {}
    start, end = event.get("start") or {}, event.get("end") or {}
    all_day = "date" in start
    zone = private.get(ZONE_PROPERTY) or "UTC"
    if all_day:
        start_text, end_text = start["date"], end["date"]
    else:
        zone = start.get("timeZone") or zone
        start_text = _local_iso(start["dateTime"], start.get("timeZone") or zone)
        end_text = _local_iso(end["dateTime"], start.get("timeZone") or zone)
    if event.get("eventType") == "outOfOffice":
        show_as = "oof"
    elif event.get("transparency") == "transparent":
        show_as = "free"
    else:
        stored = private.get(SHOW_AS_PROPERTY)
        show_as = stored if stored in ("oof", "busy", "tentative") else "busy"
    return EventPayload(
        event_key=private.get(KEY_PROPERTY, ""),
        leave_id=private.get(LEAVE_PROPERTY, ""),
        title=event.get("summary", ""),
        all_day=all_day,
        start=start_text,
        end=end_text,
        timezone=zone,
        status="tentative" if event.get("status") == "tentative" else "confirmed",
        show_as=show_as,
        private=event.get("visibility") in ("private", "confidential"),
        description=event.get("description", ""),
        categories=private.get(CATEGORIES_PROPERTY, ""),
    )


def _local_iso(value: str, zone: str) -> str:
    instant = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    if instant.tzinfo is None:
        return instant.isoformat(timespec="seconds")
    return instant.astimezone(ZoneInfo(zone)).replace(tzinfo=None).isoformat(timespec="seconds")


class _DelegatedCredentials(service_account.Credentials):
    """Service-account credentials whose token refresh always goes through our transport.

    googleapiclient refreshes inside ``BatchHttpRequest.execute`` with a bare
    ``httplib2.Http()`` that would ignore our CA bundle and timeout; this pins the transport.
    """

    _transport_factory: Callable[[], Any] | None = None

    def refresh(self, request: Any) -> None:
        factory = self._transport_factory
        super().refresh(factory() if factory is not None else request)

    def _make_copy(self) -> _DelegatedCredentials:
        cred = super()._make_copy()
        cred._transport_factory = self._transport_factory
        return cred

    def _is_regional_access_boundary_lookup_required(self) -> bool:
        # That lookup calls a third Google endpoint which neither our endpoint overrides nor
        # the Calendar API need; delegated (subject) tokens do not use it.
        return False


@dataclass
class _Pending:
    change: EventChange
    event_id: str
    mode: str  # "insert" | "update" | "delete"
    attempts: int = 0
    error: str = ""


@dataclass
class _Verdict:
    result: ChangeResult | None = None  # final
    retry: bool = False
    switch_to: str | None = None
    advised: float | None = None
    pause: float = 0.0
    error: str = ""


class _UserFailed(Exception):
    """Every change of this user fails permanently (user unknown, calendar unreachable)."""


class GoogleCalendarProvider(CalendarProvider):
    """Google Calendar API v3 through google-api-python-client, batched per delegated user."""

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

    def __init__(self, target_name: str, settings: ProviderSettings) -> None:
        super().__init__(target_name, settings)
        self.settings: Settings = settings  # type: ignore[assignment]
        s = self.settings
        self.backoff = Backoff(s.backoff_base_seconds, s.backoff_cap_seconds, s.max_attempts)
        burst = float(s.batch_size)
        self.project_limiter = RateLimiter(s.per_project_requests_per_minute, 60.0, burst)
        self._user_limiters: dict[str, RateLimiter] = {}
        self._credentials: dict[str, _DelegatedCredentials] = {}
        self._base_credentials: _DelegatedCredentials | None = None
        self._service: Any = None
        self._lock = threading.Lock()
        self.batch_uri = s.batch_uri or s.api_base_url.rstrip("/") + "/batch/calendar/v3"

    # -- plumbing --------------------------------------------------------------------------

    def _http(self) -> httplib2.Http:
        # TLS is always verified; ca_bundle replaces the default trust store on every path.
        return httplib2.Http(
            ca_certs=self.settings.ca_bundle, timeout=self.settings.timeout_seconds
        )

    def _key_info(self) -> dict[str, Any]:
        var = self.settings.service_account_key_env
        value = secret_from_env(var, f"target {self.target_name}: Google service account key")
        try:
            if value.lstrip().startswith("{"):
                info = json.loads(value)
            else:
                with open(value, encoding="utf-8") as handle:
                    info = json.load(handle)
        except (OSError, ValueError):
            raise FatalProviderError(
                f"target {self.target_name}: environment variable {var} must hold the service "
                "account key JSON, or the path of a readable key file (download it from Google "
                "Cloud console > IAM & Admin > Service accounts > Keys)"
            ) from None
        missing = [k for k in ("client_email", "private_key") if not info.get(k)]
        if info.get("type") != "service_account" or missing:
            raise FatalProviderError(
                f"target {self.target_name}: the key in {var} is not a service account key "
                f"(missing {', '.join(missing) or 'type=service_account'})"
            )
        return info

    def _base(self) -> _DelegatedCredentials:
        with self._lock:
            if self._base_credentials is None:
                info = dict(self._key_info(), token_uri=self.settings.token_uri)
                try:
                    creds = _DelegatedCredentials.from_service_account_info(
                        info, scopes=list(self.settings.scopes)
                    )
                except ValueError:
                    raise FatalProviderError(
                        f"target {self.target_name}: the private key in "
                        f"{self.settings.service_account_key_env} cannot be read; create a new "
                        "key for the service account"
                    ) from None
                creds._transport_factory = lambda: google_auth_httplib2.Request(self._http())
                self._base_credentials = creds
                self.client_id = info.get("client_id", "<client ID>")
            return self._base_credentials

    def _credentials_for(self, user: str) -> _DelegatedCredentials:
        base = self._base()
        with self._lock:
            creds = self._credentials.get(user)
            if creds is None:
                creds = self._credentials[user] = base.with_subject(user)
            return creds

    def _user_limiter(self, user: str) -> RateLimiter:
        with self._lock:
            limiter = self._user_limiters.get(user)
            if limiter is None:
                limiter = self._user_limiters[user] = RateLimiter(
                    self.settings.per_user_requests_per_minute,
                    60.0,
                    float(self.settings.batch_size),
                )
            return limiter

    def _events_api(self) -> Any:
        with self._lock:
            if self._service is None:
                # The discovery document ships with the library (static_discovery): nothing is
                # fetched. This http only builds requests; each call runs on a user's http.
                self._service = build(
                    "calendar",
                    "v3",
                    http=httplib2.Http(),
                    static_discovery=True,
                    cache_discovery=False,
                    client_options={
                        "api_endpoint": self.settings.api_base_url.rstrip("/") + "/calendar/v3/"
                    },
                )
            return self._service.events()

    def _authorize(self, user: str) -> google_auth_httplib2.AuthorizedHttp:
        """An authorised http for this user, with a valid token (raises per the token error)."""
        creds = self._credentials_for(user)
        if not creds.valid:
            attempt = 0
            while True:
                attempt += 1
                try:
                    creds.refresh(None)
                    break
                except auth_exceptions.RefreshError as exc:
                    self._raise_for_token_error(user, exc)
                    if attempt >= self.settings.max_attempts:
                        raise _UserFailed(f"no token for {user}: {_first_line(exc)}") from None
                except ssl.SSLCertVerificationError as exc:
                    raise self._untrusted(self.settings.token_uri, exc) from None
                except _TRANSPORT_ERRORS as exc:
                    if attempt >= self.settings.max_attempts:
                        raise _UserFailed(f"token endpoint unreachable: {exc}") from None
                time.sleep(self.backoff.delay(attempt))
        return google_auth_httplib2.AuthorizedHttp(creds, http=self._http())

    def _untrusted(self, url: str, exc: Exception) -> FatalProviderError:
        return FatalProviderError(
            f"target {self.target_name}: the TLS certificate of {url} is not trusted ({exc}); "
            "if a proxy or private CA signs it, set ca_bundle to that CA's PEM file"
        )

    def _raise_for_token_error(self, user: str, exc: auth_exceptions.RefreshError) -> None:
        data = exc.args[1] if len(exc.args) > 1 and isinstance(exc.args[1], dict) else {}
        error = data.get("error", "")
        description = data.get("error_description", "")
        scopes = ", ".join(self.settings.scopes)
        if error == "unauthorized_client":
            raise FatalProviderError(
                f"target {self.target_name}: domain-wide delegation is not granted for the "
                f"scopes {scopes} (token request answered unauthorized_client). "
                + DELEGATION_HELP.format(client_id=getattr(self, "client_id", "?"), scopes=scopes)
            )
        if error == "invalid_grant" and "user" in description.lower():
            raise _UserFailed(
                f"{user} is not a user of the Workspace domain (Google: {description})"
            )
        if error in ("invalid_grant", "invalid_client", "invalid_scope", "access_denied"):
            raise FatalProviderError(
                f"target {self.target_name}: Google refused the service account ({error}: "
                f"{description}). Check that the key in {self.settings.service_account_key_env} "
                "is current and the service account is enabled, and that the scopes are valid"
            )
        if not getattr(exc, "retryable", False) and error:
            raise FatalProviderError(
                f"target {self.target_name}: token request failed ({error}: {description})"
            )

    # -- apply -----------------------------------------------------------------------------

    def apply(self, changes: Sequence[EventChange]) -> Iterator[ChangeResult]:
        """Apply changes batched per calendar, users in parallel; yield results as they land."""
        per_user: dict[str, list[EventChange]] = {}
        for change in changes:
            per_user.setdefault(change.calendar, []).append(change)
        if not per_user:
            return
        self._base()  # a missing or unreadable key is fatal before anything is sent
        results: queue.Queue[Any] = queue.Queue()
        stop = threading.Event()
        done = object()

        def work(user: str, user_changes: list[EventChange]) -> None:
            try:
                self._apply_user(user, user_changes, results.put, stop)
            except BaseException as exc:  # handed to the consuming thread, which raises it
                results.put(exc)
            finally:
                results.put(done)

        workers = min(self.settings.max_parallel_users, len(per_user))
        pool = ThreadPoolExecutor(workers, thread_name_prefix="leavesync-google")
        try:
            for user, user_changes in per_user.items():
                pool.submit(work, user, user_changes)
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

    def _apply_user(
        self,
        user: str,
        changes: list[EventChange],
        emit: Callable[[ChangeResult], None],
        stop: threading.Event,
    ) -> None:
        pending: deque[_Pending] = deque()
        for change in changes:
            if change.op != "delete" and change.event is None:
                emit(ChangeResult(change, False, error="no event payload", permanent=True))
                continue
            event_id = change.provider_event_id or event_id_for(change.event_key)
            mode = {"create": "insert", "update": "update", "delete": "delete"}[change.op]
            pending.append(_Pending(change, event_id, mode))
        while pending and not stop.is_set():
            batch, deferred, ids = [], [], set()
            while pending and len(batch) < self.settings.batch_size:
                item = pending.popleft()
                # Parts of one batch may run in any order: one call per event per batch.
                (deferred if item.event_id in ids else batch).append(item)
                ids.add(item.event_id)
            pending.extendleft(reversed(deferred))
            try:
                verdicts = self._run_batch(user, batch)
            except _UserFailed as exc:
                for item in [*batch, *pending]:
                    emit(ChangeResult(item.change, False, error=str(exc), permanent=True))
                return
            again: list[_Pending] = []
            wait = 0.0
            for item, verdict in zip(batch, verdicts, strict=True):
                if verdict.result is not None:
                    emit(verdict.result)
                    continue
                item.attempts += 1
                item.error = verdict.error
                if item.attempts >= self.settings.max_attempts:
                    emit(
                        ChangeResult(
                            item.change,
                            False,
                            error=f"gave up after {item.attempts} attempts: {item.error}",
                        )
                    )
                    continue
                if verdict.switch_to:
                    item.mode = verdict.switch_to
                else:
                    wait = max(
                        wait, verdict.pause, self.backoff.delay(item.attempts, verdict.advised)
                    )
                again.append(item)
            pending.extendleft(reversed(again))
            if wait:
                stop.wait(wait)

    def _run_batch(self, user: str, batch: list[_Pending]) -> list[_Verdict]:
        """Send one batch for one user; a verdict per item (transport failures: retry all)."""
        authed = self._authorize(user)
        events = self._events_api()
        calendar = self.settings.calendar_id
        outcomes: dict[str, tuple[Any, HttpError | None]] = {}
        request = BatchHttpRequest(batch_uri=self.batch_uri)
        for index, item in enumerate(batch):
            if item.mode == "delete":
                call = events.delete(calendarId=calendar, eventId=item.event_id, sendUpdates="none")
            else:
                body = event_body(
                    item.change.event,  # type: ignore[arg-type]
                    self.settings.out_of_office and calendar == "primary",
                )
                body["id"] = item.event_id
                if item.mode == "insert":
                    call = events.insert(calendarId=calendar, body=body, sendUpdates="none")
                else:
                    call = events.update(
                        calendarId=calendar, eventId=item.event_id, body=body, sendUpdates="none"
                    )
            request.add(call, callback=_collector(outcomes), request_id=str(index))
        # Tokens last, right before sending: the quota counts calls when they arrive.
        self._user_limiter(user).acquire(len(batch))
        self.project_limiter.acquire(len(batch))
        try:
            request.execute(http=authed)
        except HttpError as exc:
            verdict = self._classify_error(exc, None)
            return [verdict if verdict.result is None else _retry(str(exc))] * len(batch)
        except auth_exceptions.RefreshError as exc:
            self._raise_for_token_error(user, exc)
            return [_Verdict(retry=True, error=_first_line(exc))] * len(batch)
        except ssl.SSLCertVerificationError as exc:
            raise self._untrusted(self.batch_uri, exc) from None
        except _TRANSPORT_ERRORS as exc:
            # Lost or refused: every part is retried; ids make a landed create a 409 next time.
            return [_retry(f"transport error: {exc!r}")] * len(batch)
        verdicts = []
        for index, item in enumerate(batch):
            if str(index) not in outcomes:
                verdicts.append(_retry("no answer for this part"))
                continue
            response, error = outcomes[str(index)]
            if error is None:
                verdicts.append(self._success(item, response))
            else:
                verdicts.append(self._classify_error(error, item))
        return verdicts

    def _success(self, item: _Pending, response: Any) -> _Verdict:
        if item.mode == "delete":
            return _Verdict(ChangeResult(item.change, True, provider_event_id=item.event_id))
        return _Verdict(
            ChangeResult(
                item.change,
                True,
                provider_event_id=response.get("id", item.event_id),
                version=response.get("etag"),
            )
        )

    def _classify_error(self, error: HttpError, item: _Pending | None) -> _Verdict:
        status = error.resp.status
        reason, message = _reason(error)
        text = f"HTTP {status} {reason}: {message}".strip()
        advised = _retry_after(error)
        if status == 409 and item is not None and item.mode == "insert":
            # The id exists: a create that landed before, or an event deleted earlier that
            # Google keeps as cancelled. A full update rewrites it and restores its status.
            return _Verdict(switch_to="update", error=text)
        if status in (404, 410) and item is not None and item.mode == "delete":
            return _Verdict(ChangeResult(item.change, True, provider_event_id=item.event_id))
        if status == 404 and item is not None and item.mode == "update":
            return _Verdict(switch_to="insert", error=text)
        if status == 429 or status >= 500 or reason in _RETRYABLE_REASONS:
            return _Verdict(retry=True, advised=advised, error=text)
        if status == 401:
            return _Verdict(retry=True, error=text)
        if status == 403 and reason == "quotaExceeded":
            # Calendar usage limits are per user: pause this user, the others go on.
            return _Verdict(retry=True, pause=self.settings.usage_limit_pause_seconds, error=text)
        if status == 403 and reason in ("accessNotConfigured", "SERVICE_DISABLED"):
            raise FatalProviderError(
                f"target {self.target_name}: the Google Calendar API is disabled for the "
                "service account's Cloud project; enable it in Google Cloud console > APIs & "
                f"Services > Library > Google Calendar API ({message})"
            )
        if status == 403 and reason in (
            "insufficientPermissions",
            "ACCESS_TOKEN_SCOPE_INSUFFICIENT",
        ):
            raise FatalProviderError(
                f"target {self.target_name}: the token lacks a Calendar write scope; set "
                f"scopes to {SCOPE_EVENTS} and "
                + DELEGATION_HELP.format(
                    client_id=getattr(self, "client_id", "?"), scopes=SCOPE_EVENTS
                )
            )
        if item is None:
            return _Verdict(retry=True, error=text)
        if status == 404:
            text = f"calendar {self.settings.calendar_id!r} of {item.change.calendar} not found"
        return _Verdict(ChangeResult(item.change, False, error=text, permanent=True))

    # -- check -----------------------------------------------------------------------------

    def check(self, sample_calendar: str) -> CheckReport:
        """Token for a sample user, then one read of their calendar; changes nothing."""
        report = CheckReport(self.target_name)
        user = sample_calendar or self.settings.sample_user or ""
        try:
            base = self._base()
        except FatalProviderError as exc:
            report.add("service account key", False, str(exc))
            return report
        report.add(
            "service account key",
            True,
            f"{base.service_account_email} (client ID {self.client_id}) from "
            f"${self.settings.service_account_key_env}",
        )
        if not user:
            report.add("sample user", False, "give a sample user's email (settings.sample_user)")
            return report
        writes = {SCOPE_EVENTS, SCOPE_CALENDAR} & set(self.settings.scopes)
        report.add(
            "write scope configured",
            bool(writes),
            ", ".join(self.settings.scopes)
            if writes
            else f"add {SCOPE_EVENTS} to scopes (and to the domain-wide delegation)",
        )
        try:
            authed = self._authorize(user)
        except FatalProviderError as exc:
            report.add(f"domain-wide delegation (token for {user})", False, str(exc))
            return report
        except _UserFailed as exc:
            report.add(f"token for {user}", False, f"{exc}; check the sample user's address")
            return report
        report.add(
            f"domain-wide delegation (token for {user})", True, ", ".join(self.settings.scopes)
        )
        today = dt.datetime.now(dt.UTC).replace(microsecond=0)
        try:
            self._events_api().list(
                calendarId=self.settings.calendar_id,
                timeMin=today.isoformat(),
                timeMax=(today + dt.timedelta(days=1)).isoformat(),
                privateExtendedProperty=f"{TAG_PROPERTY}={TAG_VALUE}",
                maxResults=1,
            ).execute(http=authed)
        except HttpError as exc:
            status = exc.resp.status
            reason, message = _reason(exc)
            if reason in ("accessNotConfigured", "SERVICE_DISABLED"):
                detail = (
                    "the Google Calendar API is disabled: enable it in Google Cloud console > "
                    "APIs & Services > Library > Google Calendar API"
                )
            elif reason in ("insufficientPermissions", "ACCESS_TOKEN_SCOPE_INSUFFICIENT"):
                detail = f"the delegated scopes do not allow reading events: grant {SCOPE_EVENTS}"
            elif status == 404:
                detail = f"calendar {self.settings.calendar_id!r} of {user} not found"
            else:
                detail = f"HTTP {status} {reason}: {message}"
            report.add(f"read calendar of {user}", False, detail)
            return report
        except _TRANSPORT_ERRORS as exc:
            report.add(f"read calendar of {user}", False, f"cannot reach the Calendar API: {exc}")
            return report
        report.add(f"read calendar of {user}", True, f"calendar {self.settings.calendar_id!r}")
        return report

    # -- read back -------------------------------------------------------------------------

    def read_back(
        self, calendars: Iterable[str], start: dt.date, end: dt.date
    ) -> Iterator[RemoteEvent]:
        """Our tagged events (cancelled ones too, as payload None) overlapping [start, end)."""
        # A day of margin each side: all-day events are placed in each calendar's own zone.
        time_min = dt.datetime.combine(start - dt.timedelta(days=1), dt.time(), dt.UTC)
        time_max = dt.datetime.combine(end + dt.timedelta(days=1), dt.time(), dt.UTC)
        for user in calendars:
            try:
                authed = self._authorize(user)
            except _UserFailed as exc:
                log.warning("read-back skipped %s: %s", user, exc)
                continue
            page_token = None
            while True:
                call = self._events_api().list(
                    calendarId=self.settings.calendar_id,
                    privateExtendedProperty=f"{TAG_PROPERTY}={TAG_VALUE}",
                    showDeleted=True,
                    singleEvents=True,
                    timeMin=time_min.isoformat(),
                    timeMax=time_max.isoformat(),
                    maxResults=250,
                    pageToken=page_token,
                )
                page = self._execute_with_retry(user, call, authed)
                for event in page.get("items", []):
                    remote = self._remote(user, event, start, end)
                    if remote is not None:
                        yield remote
                page_token = page.get("nextPageToken")
                if not page_token:
                    break

    def _remote(
        self, user: str, event: dict[str, Any], start: dt.date, end: dt.date
    ) -> RemoteEvent | None:
        private = (event.get("extendedProperties") or {}).get("private") or {}
        key = private.get(KEY_PROPERTY)
        if private.get(TAG_PROPERTY) != TAG_VALUE or not key:
            return None
        payload = payload_from_event(event)
        if payload is not None and not (payload.start_date() < end and start < _end_day(payload)):
            return None
        return RemoteEvent(key, user, event.get("id"), payload, event.get("etag"))

    def _execute_with_retry(self, user: str, call: Any, authed: Any) -> dict[str, Any]:
        attempt = 0
        while True:
            attempt += 1
            self._user_limiter(user).acquire()
            self.project_limiter.acquire()
            try:
                return call.execute(http=authed)
            except HttpError as exc:
                verdict = self._classify_error(exc, None)
                if attempt >= self.settings.max_attempts:
                    raise
                time.sleep(max(verdict.pause, self.backoff.delay(attempt, verdict.advised)))
            except ssl.SSLCertVerificationError as exc:
                raise self._untrusted(self.settings.api_base_url, exc) from None
            except _TRANSPORT_ERRORS:
                if attempt >= self.settings.max_attempts:
                    raise
                time.sleep(self.backoff.delay(attempt))


def _end_day(payload: EventPayload) -> dt.date:
    end = payload.end_date_exclusive()
    # A timed event ending at 17:00 still occupies its end date.
    return end if payload.all_day else end + dt.timedelta(days=1)


def _collector(outcomes: dict[str, tuple[Any, HttpError | None]]) -> Callable[..., None]:
    def collect(request_id: str, response: Any, exception: HttpError | None) -> None:
        outcomes[request_id] = (response if response is not None else {}, exception)

    return collect


def _retry(error: str) -> _Verdict:
    return _Verdict(retry=True, error=error)


def _reason(error: HttpError) -> tuple[str, str]:
    """The error reason (e.g. rateLimitExceeded) and message of a Calendar API error."""
    try:
        data = json.loads(error.content.decode("utf-8"))["error"]
    except (ValueError, KeyError, TypeError, AttributeError):
        return "", ""
    errors = data.get("errors") or [{}]
    reason = errors[0].get("reason") or data.get("status", "")
    for detail in data.get("details") or []:
        reason = detail.get("reason", reason)
    return reason, data.get("message", "")


def _retry_after(error: HttpError) -> float | None:
    value = error.resp.get("retry-after")
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def _first_line(exc: Exception) -> str:
    return str(exc.args[0] if exc.args else exc).splitlines()[0]
