"""Exchange Server 2013-2019 on premises over EWS (exchangelib) with one impersonating account."""

from __future__ import annotations

import datetime as dt
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from typing import Any, ClassVar, Literal, TypeVar
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo

import requests.adapters
from exchangelib import (
    IMPERSONATION,
    Account,
    CalendarItem,
    Configuration,
    Credentials,
    ExtendedProperty,
    FaultTolerance,
    Q,
)
from exchangelib import errors as ews_errors
from exchangelib.ewsdatetime import UTC, EWSDate, EWSDateTime, EWSTimeZone
from exchangelib.fields import FieldPath
from exchangelib.folders import Calendar, Root
from exchangelib.items import ID_ONLY, SAVE_ONLY, SEND_TO_NONE
from exchangelib.properties import (
    ENTRY_ID,
    EWS_ID,
    AlternateId,
    Body,
    DistinguishedFolderId,
    Mailbox,
)
from exchangelib.protocol import BaseProtocol, Protocol
from exchangelib.restriction import Restriction
from exchangelib.services import ConvertId, CreateItem, FindItem
from exchangelib.version import Build, Version
from pydantic import Field, model_validator

from resources.providers.base import (
    CalendarProvider,
    ChangeResult,
    CheckReport,
    EventChange,
    EventPayload,
    FatalProviderError,
    ProviderSettings,
    RemoteEvent,
    leave_id_of,
    secret_from_env,
)
from resources.providers.retry import Backoff, RateLimiter

log = logging.getLogger(__name__)

# Our own MAPI named-property set; with the name below it identifies leavesync's events.
PROPERTY_SET_ID = "7c2b3f52-5d0e-4d8a-9a57-0b8f4e1c6a3d"
KEY_PROPERTY = "leavesyncKey"
# The IANA zone we wrote: Exchange keeps only the Windows zone, which maps back ambiguously.
TIMEZONE_PROPERTY = "leavesyncTimezone"

# RequestServerVersion names of the on-premises releases we support, and a build of each.
EXCHANGE_BUILDS: dict[str, Build] = {
    "Exchange2013": Build(15, 0),
    "Exchange2013_SP1": Build(15, 0, 847),
    "Exchange2016": Build(15, 1),
    "Exchange2019": Build(15, 2),
}

_SHOW_AS_TO_FREE_BUSY = {"oof": "OOF", "busy": "Busy", "tentative": "Tentative", "free": "Free"}
_FREE_BUSY_TO_SHOW_AS = {
    "OOF": "oof",
    "Busy": "busy",
    "Tentative": "tentative",
    "Free": "free",
    "WorkingElsewhere": "busy",
    "NoData": "busy",
}
# Item fields we write; UpdateItem sets (or clears) every one of them.
_WRITTEN_FIELDS = (
    "subject",
    "body",
    "categories",
    "sensitivity",
    "reminder_is_set",
    "start",
    "end",
    "is_all_day",
    "legacy_free_busy_status",
    "_start_timezone",
    "_end_timezone",
    "leavesync_key",
    "leavesync_timezone",
)
_READ_FIELDS = (
    "subject",
    "body",
    "categories",
    "sensitivity",
    "start",
    "end",
    "is_all_day",
    "legacy_free_busy_status",
    "_start_timezone",
    "_end_timezone",
    "leavesync_key",
    "leavesync_timezone",
)

# Errors after which the whole request may simply be sent again (exchangelib itself already
# waited out ErrorServerBusy and HTTP 503 up to max_wait before raising).
_RETRYABLE = (
    ews_errors.ErrorServerBusy,
    ews_errors.ErrorTimeoutExpired,
    ews_errors.ErrorInternalServerError,
    ews_errors.ErrorInternalServerTransientError,
    ews_errors.ErrorTooManyObjectsOpened,
    ews_errors.ErrorExceededConnectionCount,
    ews_errors.ErrorMailboxStoreUnavailable,
    ews_errors.ErrorConnectionFailed,
    ews_errors.MalformedResponseError,
    ews_errors.SOAPError,
    ews_errors.TransportError,
    requests.exceptions.ConnectionError,
    requests.exceptions.Timeout,
)
# Errors that concern one mailbox (the employee's calendar), never the whole target.
_MAILBOX_ERRORS = (
    ews_errors.ErrorNonExistentMailbox,
    ews_errors.ErrorImpersonateUserDenied,
    ews_errors.ErrorImpersonationDenied,
    ews_errors.ErrorAccessDenied,
    ews_errors.ErrorMailboxMoveInProgress,
    ews_errors.ErrorFolderNotFound,
)
_GONE = (ews_errors.ErrorItemNotFound,)


class LeavesyncKey(ExtendedProperty):
    """The event key (``leave-123``) stored on every calendar item leavesync writes."""

    property_set_id = PROPERTY_SET_ID
    property_name = KEY_PROPERTY
    property_type = "String"


class LeavesyncTimezone(ExtendedProperty):
    """The IANA zone of the leave's legal entity, as written."""

    property_set_id = PROPERTY_SET_ID
    property_name = TIMEZONE_PROPERTY
    property_type = "String"


def _register_properties() -> None:
    # CalendarItem's field list is process-wide: register once, whatever the number of targets.
    for name, cls in (("leavesync_key", LeavesyncKey), ("leavesync_timezone", LeavesyncTimezone)):
        with suppress(ValueError):
            CalendarItem.register(name, cls)


_register_properties()


_SECRET_HEADERS = {"authorization", "proxy-authorization"}


def _redacted(value: Any, depth: int = 0) -> Any:
    if isinstance(value, Mapping) and depth < 3:
        return {
            k: "<redacted>" if str(k).lower() in _SECRET_HEADERS else _redacted(v, depth + 1)
            for k, v in value.items()
        }
    return value


class _RedactAuthorization(logging.Filter):
    """exchangelib logs request headers at DEBUG, Basic credentials included: blank them."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, Mapping):
            record.args = _redacted(record.args)
        elif isinstance(record.args, tuple):
            record.args = tuple(_redacted(arg) for arg in record.args)
        return True


for _name in ("exchangelib.util", "exchangelib.transport", "exchangelib.autodiscover.discovery"):
    _logger = logging.getLogger(_name)
    if not any(isinstance(f, _RedactAuthorization) for f in _logger.filters):
        _logger.addFilter(_RedactAuthorization())


class EwsSettings(ProviderSettings):
    """The ``settings:`` block of an ``ews`` target."""

    ews_url: str | None = None
    username: str
    password_env: str = "LEAVESYNC_EWS_PASSWORD"
    auth_type: Literal["NTLM", "basic"] = "NTLM"
    version: Literal["Exchange2013", "Exchange2013_SP1", "Exchange2016", "Exchange2019"] | None = (
        None
    )
    autodiscover: bool = False
    ca_bundle: str | None = None
    verify_tls: bool = True
    max_wait: float = Field(default=300.0, gt=0)
    chunk_size: int = Field(default=100, ge=1, le=500)
    timeout: float = Field(default=120.0, gt=0)
    backoff_base: float = Field(default=1.0, ge=0)
    backoff_cap: float = Field(default=60.0, ge=0)
    max_attempts: int = Field(default=6, ge=1)
    concurrent_mailboxes: int = Field(default=4, ge=1, le=27)
    max_requests_per_second: float | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _endpoint(self) -> EwsSettings:
        if not self.ews_url and not self.autodiscover:
            raise ValueError(
                "set ews_url (https://<server>/EWS/Exchange.asmx) or autodiscover: true"
            )
        if self.ews_url and not self.ews_url.lower().startswith(("https://", "http://")):
            raise ValueError(
                "ews_url must be a full URL, e.g. https://mail.example.com/EWS/Exchange.asmx"
            )
        return self


# -- TLS: exchangelib's HTTP adapter class is process-wide -------------------------------------

_TLS_LOCK = threading.Lock()
# origin (scheme://host:port) -> what requests' ``verify`` must be for it: a CA bundle path,
# or False when an admin explicitly turned verification off. Missing: requests' default.
_VERIFY_BY_ORIGIN: dict[str, str | bool] = {}
_VERIFY_DEFAULT: list[str | bool] = []  # for autodiscover, whose hosts are not known up front


def _origin(url: str) -> str:
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return f"{parts.scheme}://{(parts.hostname or '').lower()}:{port}"


class _PerOriginTLSAdapter(requests.adapters.HTTPAdapter):
    """Applies each EWS target's own CA bundle (or explicit no-verify) to its own server only."""

    def send(self, request: Any, **kwargs: Any) -> Any:
        verify = _VERIFY_BY_ORIGIN.get(_origin(request.url))
        if verify is None and _VERIFY_DEFAULT:
            verify = _VERIFY_DEFAULT[-1]
        if verify is not None:
            kwargs["verify"] = verify
        return super().send(request, **kwargs)


def _install_tls(url: str | None, settings: EwsSettings, target: str) -> None:
    verify: str | bool | None = None
    if not settings.verify_tls:
        verify = False
        log.warning(
            "target %s: TLS CERTIFICATE VERIFICATION IS OFF for %s (verify_tls: false). Anyone "
            "on the network path can read the service account's credentials. Set ca_bundle to "
            "your CA's PEM file instead.",
            target,
            url or "autodiscovered EWS servers",
        )
    elif settings.ca_bundle:
        verify = settings.ca_bundle
    with _TLS_LOCK:
        current = BaseProtocol.HTTP_ADAPTER_CLS
        if not issubclass(current, _PerOriginTLSAdapter):
            if current is not requests.adapters.HTTPAdapter:
                # Someone embedding us set their own adapter (proxy, TLS version): keep it.
                BaseProtocol.HTTP_ADAPTER_CLS = type(
                    "LeavesyncTLSAdapter", (_PerOriginTLSAdapter, current), {}
                )
            else:
                BaseProtocol.HTTP_ADAPTER_CLS = _PerOriginTLSAdapter
        if verify is None:
            return
        if url:
            _VERIFY_BY_ORIGIN[_origin(url)] = verify
        else:
            _VERIFY_DEFAULT.append(verify)


class _RetryPolicy(FaultTolerance):
    """exchangelib's FaultTolerance, except that HTTP 401 means bad credentials, not throttling."""

    def raise_response_errors(self, response: Any) -> None:
        if response.status_code == 401:
            raise ews_errors.UnauthorizedError(f"HTTP 401 from {response.url}")
        return super().raise_response_errors(response)


class _MailboxUnavailable(Exception):
    """This calendar cannot be written (no mailbox, impersonation denied): its changes fail."""


class _GaveUp(Exception):
    """Retryable failures persisted through every attempt."""


_T = TypeVar("_T")


class _CreateItemOnce(CreateItem):
    """CreateItem that never resends itself: exchangelib would after a lost answer (duplicates).

    Every failure goes up to ``EwsCalendarProvider._call``, which looks the keys up before it
    creates again, and honours the advised back-off of ErrorServerBusy / HTTP 503 itself.
    """

    def _get_elements(self, payload: Any) -> Iterator[Any]:
        yield from self._response_generator(payload=payload)


def _calendar_folder(account: Account) -> Calendar:
    # The distinguished folder id names the mailbox, so no GetFolder round trip is needed.
    mailbox = Mailbox(email_address=account.primary_smtp_address)
    root = Root(
        account=account, _distinguished_id=DistinguishedFolderId(id="root", mailbox=mailbox)
    )
    return Calendar(
        root=root, _distinguished_id=DistinguishedFolderId(id="calendar", mailbox=mailbox)
    )


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

    def __init__(self, target_name: str, settings: ProviderSettings) -> None:
        super().__init__(target_name, settings)
        self.settings: EwsSettings = settings  # type: ignore[assignment]
        self.backoff = Backoff(
            base=self.settings.backoff_base,
            cap=self.settings.backoff_cap,
            max_attempts=self.settings.max_attempts,
        )
        self._limiter = (
            RateLimiter(self.settings.max_requests_per_second, per=1.0)
            if self.settings.max_requests_per_second
            else None
        )
        self._config: Configuration | None = None
        self._accounts: dict[str, tuple[Account, Calendar]] = {}
        self._lock = threading.Lock()
        _install_tls(self.settings.ews_url, self.settings, target_name)

    # -- connection ----------------------------------------------------------------------------

    def _configuration(self) -> Configuration:
        with self._lock:
            if self._config is not None:
                return self._config
            settings = self.settings
            password = secret_from_env(settings.password_env, f"target {self.target_name} (ews)")
            credentials = Credentials(settings.username, password)
            url = settings.ews_url or self._autodiscover(credentials)
            config = Configuration(
                service_endpoint=url,
                credentials=credentials,
                auth_type=settings.auth_type,
                version=Version(EXCHANGE_BUILDS[settings.version]) if settings.version else None,
                retry_policy=_RetryPolicy(max_wait=settings.max_wait),
                max_connections=settings.concurrent_mailboxes,
            )
            # exchangelib caches one Protocol per (URL, credentials) for the whole process and
            # keeps the first Configuration it saw: drop a stale one so our settings apply.
            with suppress(KeyError):
                cached, _ = Protocol[config]
                if not isinstance(cached, Exception):
                    cached.close()
                del Protocol[config]
            protocol = Protocol(config=config)
            # Per-instance overrides of exchangelib's class-wide timing knobs.
            protocol.TIMEOUT = settings.timeout
            protocol.RETRY_WAIT = settings.backoff_base
            # exchangelib's decrease_poolsize() (on ErrorServerBusy) calls get_session() while
            # holding this plain Lock, and get_session() may call increase_poolsize(), which
            # takes it again: with several mailboxes in flight that deadlocks. Re-entrant fixes it.
            protocol._session_pool_lock = threading.RLock()
            self._config = config
            return config

    def _autodiscover(self, credentials: Credentials) -> str:
        """Find the EWS URL once, from the first mailbox we are asked about."""
        from exchangelib.autodiscover import Autodiscovery

        email = self._first_mailbox or self.settings.username
        if "@" not in email:
            raise FatalProviderError(
                f"target {self.target_name}: autodiscover needs a mailbox address; set ews_url"
            )
        try:
            _, protocol = Autodiscovery(email=email, credentials=credentials).discover()
        except Exception as error:
            raise FatalProviderError(
                f"target {self.target_name}: autodiscover failed for {email} "
                f"({type(error).__name__}); set ews_url to https://<server>/EWS/Exchange.asmx"
            ) from None
        url = protocol.service_endpoint
        log.info("target %s: autodiscover found EWS at %s", self.target_name, url)
        return url

    _first_mailbox: str | None = None

    def _mailbox(self, calendar: str) -> tuple[Account, Calendar]:
        address = calendar.strip().lower()
        if self._first_mailbox is None:
            self._first_mailbox = address
        config = self._configuration()
        with self._lock:
            found = self._accounts.get(address)
            if found is None:
                account = Account(
                    primary_smtp_address=address,
                    config=config,
                    autodiscover=False,
                    access_type=IMPERSONATION,
                    default_timezone=UTC,
                    locale="en_US",
                )
                found = self._accounts[address] = (account, _calendar_folder(account))
            return found

    def close(self) -> None:
        """Release connections and forget the cached protocol."""
        with self._lock:
            self._accounts.clear()
            if self._config is not None:
                with suppress(KeyError):
                    cached, _ = Protocol[self._config]
                    if not isinstance(cached, Exception) and cached.config is self._config:
                        cached.close()
                        del Protocol[self._config]
                self._config = None

    # -- one request, with our retry layer ------------------------------------------------------

    def _call(self, calendar: str, what: str, request: Callable[[], _T]) -> _T:
        """Send one EWS request (or a short sequence); retry what may be retried."""
        url = self.settings.ews_url or "EWS"
        attempt = 0
        while True:
            attempt += 1
            if self._limiter is not None:
                self._limiter.acquire()
            try:
                return request()
            except ews_errors.UnauthorizedError:
                raise FatalProviderError(
                    f"target {self.target_name}: {url} rejected the service account "
                    f"{self.settings.username!r} (HTTP 401). Check the username (DOMAIN\\user or "
                    f"user@domain), the password in environment variable "
                    f"{self.settings.password_env}, that the account is not locked, and that "
                    f"auth_type ({self.settings.auth_type}) is enabled on the EWS virtual "
                    "directory."
                ) from None
            except _MAILBOX_ERRORS as error:
                raise _MailboxUnavailable(_mailbox_reason(calendar, error)) from None
            except ews_errors.RateLimitError as error:
                raise _GaveUp(
                    f"Exchange is throttling: it asked to wait {error.wait:.0f}s, more than "
                    f"max_wait ({self.settings.max_wait:.0f}s); try again later"
                ) from None
            except _RETRYABLE as error:
                if _is_tls_error(error):
                    raise FatalProviderError(_tls_message(self.target_name, url)) from None
                if attempt >= self.backoff.max_attempts:
                    raise _GaveUp(
                        f"{what} failed {attempt} times; last error {type(error).__name__}"
                    ) from None
                # BackOffMilliseconds / Retry-After are obeyed exactly, up to max_wait; Backoff's
                # cap is for our own guesses and must not shorten what the server asked for.
                advised = getattr(error, "back_off", None)
                if advised is not None and advised > self.settings.max_wait:
                    raise _GaveUp(
                        f"Exchange is throttling: it asked to wait {advised:.0f}s, more than "
                        f"max_wait ({self.settings.max_wait:.0f}s); try again later"
                    ) from None
                delay = advised if advised is not None else self.backoff.delay(attempt)
                log.info(
                    "target %s: %s for %s failed (%s); retry %d in %.2fs",
                    self.target_name,
                    what,
                    calendar,
                    type(error).__name__,
                    attempt,
                    delay,
                )
                time.sleep(delay)

    # -- apply ---------------------------------------------------------------------------------

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
        pending = {id(change): change for change in changes}

        def report(results: Iterable[ChangeResult]) -> Iterator[ChangeResult]:
            for result in results:
                if pending.pop(id(result.change), None) is not None:
                    yield result

        try:
            account, folder = self._mailbox(calendar)
            size = self.settings.chunk_size
            for change in changes:
                problem = None if change.op == "delete" else self._invalid(account, folder, change)
                if problem:
                    yield from report(
                        [ChangeResult(change, ok=False, permanent=True, error=problem)]
                    )
            deletes = [c for c in changes if c.op == "delete"]
            updates = [c for c in changes if c.op == "update" and id(c) in pending]
            creates = [c for c in changes if c.op == "create" and id(c) in pending]
            for chunk in _chunks(deletes, size):
                yield from report(self._delete_chunk(calendar, account, folder, chunk))
            for chunk in _chunks(updates, size):
                yield from report(self._update_chunk(calendar, account, folder, chunk))
            for chunk in _chunks(creates, size):
                yield from report(self._create_chunk(calendar, account, folder, chunk))
        except _MailboxUnavailable as error:
            for change in list(pending.values()):
                yield from report(
                    [ChangeResult(change, ok=False, permanent=True, error=str(error))]
                )
        except _GaveUp as error:
            for change in list(pending.values()):
                yield from report([ChangeResult(change, ok=False, error=str(error))])

    def _find_keys(
        self, account: Account, folder: Calendar, keys: Sequence[str]
    ) -> dict[str, list[CalendarItem]]:
        """Our items carrying these event keys (one FindItem restricted to our property)."""
        found: dict[str, list[CalendarItem]] = {}
        if not keys:
            return found
        key_field = FieldPath(field=CalendarItem.get_field_by_fieldname("leavesync_key"))
        # FindItem returns extended properties asked for in AdditionalProperties; exchangelib's
        # folder API refuses them there, so the service is called directly (one request).
        folders = [folder]
        items = FindItem(account=account, page_size=max(len(keys), 10)).call(
            folders=folders,
            additional_fields={key_field},
            restriction=Restriction(
                Q(leavesync_key__in=list(keys)), folders=folders, applies_to=Restriction.ITEMS
            ),
            order_fields=None,
            shape=ID_ONLY,
            query_string=None,
            depth="Shallow",
            calendar_view=None,
            max_items=None,
            offset=0,
        )
        for item in items:
            if isinstance(item, Exception):
                raise item
            if item.leavesync_key:
                found.setdefault(item.leavesync_key, []).append(item)
        return found

    def _invalid(self, account: Account, folder: Calendar, change: EventChange) -> str | None:
        """Why this event cannot become a calendar item (checked before any request), if so."""
        try:
            self._item(account, folder, change).clean()
        except Exception as error:  # noqa: BLE001 - unknown zone, end before start, ...
            return f"cannot write {change.event_key} to Exchange: {error}"
        return None

    def _item(self, account: Account, folder: Calendar, change: EventChange) -> CalendarItem:
        event = change.event
        if event is None:
            raise ValueError(f"{change.op} of {change.event_key} carries no event")
        zone = EWSTimeZone(event.timezone)
        if event.all_day:
            # exchangelib writes an all-day end date as inclusive (it adds one day itself).
            start: Any = EWSDate.from_date(event.start_date())
            end: Any = EWSDate.from_date(event.end_date_exclusive() - dt.timedelta(days=1))
        else:
            start = EWSDateTime.from_datetime(event.start_datetime()).astimezone(zone)
            end = EWSDateTime.from_datetime(event.end_datetime()).astimezone(zone)
        return CalendarItem(
            account=account,
            folder=folder,
            subject=event.title,
            body=Body(event.description) if event.description else None,
            categories=event.categories.split(",") if event.categories else None,
            sensitivity="Private" if event.private else "Normal",
            reminder_is_set=False,
            start=start,
            end=end,
            is_all_day=event.all_day,
            legacy_free_busy_status=_SHOW_AS_TO_FREE_BUSY[event.show_as],
            _start_timezone=zone,
            _end_timezone=zone,
            leavesync_key=change.event_key,
            leavesync_timezone=event.timezone,
        )

    def _create_chunk(
        self, calendar: str, account: Account, folder: Calendar, chunk: list[EventChange]
    ) -> list[ChangeResult]:
        def attempt() -> list[ChangeResult]:
            # A create may have landed in an earlier attempt or run whose answer was lost:
            # look the keys up first, so a retried create never duplicates.
            existing = self._find_keys(account, folder, [c.event_key for c in chunk])
            results: list[ChangeResult] = []
            fresh = [c for c in chunk if c.event_key not in existing]
            found = [c for c in chunk if c.event_key in existing]
            if found:
                rewrites = [(c, existing[c.event_key][0]) for c in found]
                results += self._send_updates(account, folder, rewrites)
            if fresh:
                items = [self._item(account, folder, c) for c in fresh]
                outcome = _CreateItemOnce(
                    account=account, chunk_size=self.settings.chunk_size
                ).call(
                    items=items,
                    folder=folder,
                    message_disposition=SAVE_ONLY,
                    send_meeting_invitations=SEND_TO_NONE,
                )
                for change, landed in zip(fresh, outcome, strict=True):
                    results.append(_result(change, landed))
            for index, result in enumerate(results):
                if result.error == "gone":  # vanished between our lookup and our rewrite
                    results[index] = ChangeResult(
                        result.change, ok=False, error="the event vanished while being rewritten"
                    )
            return results

        return self._call(calendar, "CreateItem", attempt)

    def _send_updates(
        self,
        account: Account,
        folder: Calendar,
        targets: list[tuple[EventChange, Any]],
    ) -> list[ChangeResult]:
        items = []
        for change, ref in targets:
            item = self._item(account, folder, change)
            item._id = ref._id if hasattr(ref, "_id") else ref
            items.append((item, list(_WRITTEN_FIELDS)))
        outcome = account.bulk_update(
            items=items,
            send_meeting_invitations_or_cancellations=SEND_TO_NONE,
            chunk_size=self.settings.chunk_size,
        )
        return [
            _result(change, landed) for (change, _), landed in zip(targets, outcome, strict=True)
        ]

    def _update_chunk(
        self, calendar: str, account: Account, folder: Calendar, chunk: list[EventChange]
    ) -> list[ChangeResult]:
        from exchangelib.properties import ItemId

        def attempt() -> list[ChangeResult]:
            unknown = [c.event_key for c in chunk if not c.provider_event_id]
            existing = self._find_keys(account, folder, unknown)
            targets: list[tuple[EventChange, Any]] = []
            missing: list[EventChange] = []
            for change in chunk:
                if change.provider_event_id:
                    targets.append((change, ItemId(change.provider_event_id, change.version)))
                elif change.event_key in existing:
                    targets.append((change, existing[change.event_key][0]))
                else:
                    missing.append(change)
            results = self._send_updates(account, folder, targets) if targets else []
            # Somebody deleted the event in Outlook: put it back (lookup first, then create).
            missing += [r.change for r in results if r.error == "gone"]
            results = [r for r in results if r.error != "gone"]
            return results + (
                self._create_chunk(calendar, account, folder, missing) if missing else []
            )

        return self._call(calendar, "UpdateItem", attempt)

    def _delete_chunk(
        self, calendar: str, account: Account, folder: Calendar, chunk: list[EventChange]
    ) -> list[ChangeResult]:
        def attempt() -> list[ChangeResult]:
            unknown = [c.event_key for c in chunk if not c.provider_event_id]
            existing = self._find_keys(account, folder, unknown)
            targets: list[tuple[EventChange, tuple[str, None]]] = []
            results: list[ChangeResult] = []
            for change in chunk:
                if change.provider_event_id:
                    targets.append((change, (change.provider_event_id, None)))
                else:
                    found = existing.get(change.event_key, [])
                    if not found:
                        results.append(ChangeResult(change, ok=True))  # already gone
                    # Every item with this key goes, duplicates from older tools included.
                    targets += [(change, (item.id, None)) for item in found]
            if targets:
                outcome = account.bulk_delete(
                    ids=[ref for _, ref in targets], chunk_size=self.settings.chunk_size
                )
                merged: dict[int, ChangeResult] = {}
                for (change, _), landed in zip(targets, outcome, strict=True):
                    result = _result(change, landed, deleting=True)
                    if id(change) not in merged or not result.ok:
                        merged[id(change)] = result
                results += merged.values()
            return results

        return self._call(calendar, "DeleteItem", attempt)

    # -- read back -----------------------------------------------------------------------------

    def read_back(
        self, calendars: Iterable[str], start: dt.date, end: dt.date
    ) -> Iterator[RemoteEvent]:
        """Our tagged events overlapping [start, end), normalised back into payloads."""
        # Items are stored in UTC; widen by a day so every zone's local dates are covered.
        low = EWSDateTime.combine(start - dt.timedelta(days=1), dt.time(0), UTC)
        high = EWSDateTime.combine(end + dt.timedelta(days=1), dt.time(0), UTC)
        for calendar in dict.fromkeys(c.strip().lower() for c in calendars):
            try:
                account, folder = self._mailbox(calendar)
                items = self._call(
                    calendar,
                    "FindItem",
                    lambda f=folder: list(
                        f.filter(leavesync_key__exists=True, start__lt=high, end__gt=low).only(
                            *_READ_FIELDS
                        )
                    ),
                )
            except (_MailboxUnavailable, _GaveUp) as error:
                log.warning("target %s: cannot read %s back: %s", self.target_name, calendar, error)
                continue
            for item in items:
                if isinstance(item, Exception) or not item.leavesync_key:
                    continue
                payload = _payload(item)
                if payload.start_date() < end and payload.end_date_exclusive() > start:
                    yield RemoteEvent(
                        event_key=item.leavesync_key,
                        calendar=calendar,
                        provider_event_id=item.id,
                        payload=payload,
                        version=item.changekey,
                    )

    # -- check ---------------------------------------------------------------------------------

    def check(self, sample_calendar: str) -> CheckReport:
        """Connect, sign in, impersonate the sample mailbox and read its calendar; write nothing."""
        report = CheckReport(self.target_name)
        settings = self.settings
        try:
            config = self._configuration()
        except FatalProviderError as error:
            report.add("service account password", False, str(error))
            return report
        report.add(
            "service account password",
            True,
            f"read from environment variable {settings.password_env}",
        )
        url = config.service_endpoint
        protocol = Protocol(config=config)
        try:
            if config.version is None:
                version = protocol.version  # discovery sends a ConvertId probe, signed in
            else:
                # A harmless signed-in request (the same probe exchangelib's discovery uses).
                probe = ConvertId(protocol=protocol)
                list(
                    probe.call([AlternateId(id="DUMMY", format=EWS_ID, mailbox="DUMMY")], ENTRY_ID)
                )
                version = config.version
            report.add(
                f"connect to {url}, TLS and sign in as {settings.username}",
                True,
                f"Exchange build {version.build} (API {version.api_version})",
            )
        except Exception as error:  # noqa: BLE001 - every failure becomes an actionable step
            report.add(
                f"connect to {url}, TLS and sign in as {settings.username}",
                False,
                _connect_advice(url, settings, error),
            )
            return report
        try:
            account, folder = self._mailbox(sample_calendar)
            calendar = account.calendar  # GetFolder on the distinguished calendar, as the user
            report.add(
                f"impersonate {sample_calendar} and read its calendar folder",
                True,
                f"calendar {calendar.name!r} holds {calendar.total_count} items",
            )
        except Exception as error:  # noqa: BLE001
            report.add(
                f"impersonate {sample_calendar} and read its calendar folder",
                False,
                _impersonation_advice(sample_calendar, settings.username, error),
            )
            return report
        try:
            count = folder.filter(leavesync_key__exists=True).count()
            report.add(
                "search the calendar for leavesync events (FindItem on our property)",
                True,
                f"{count} leavesync events found (write access comes with ApplicationImpersonation;"
                " nothing was written)",
            )
        except Exception as error:  # noqa: BLE001
            report.add(
                "search the calendar for leavesync events (FindItem on our property)",
                False,
                f"FindItem failed ({type(error).__name__}); check the EWS throttling policy and "
                "that EWS is enabled for the mailbox (Set-CASMailbox -EwsEnabled $true)",
            )
        return report


# -- helpers --------------------------------------------------------------------------------------


def _chunks(changes: list[EventChange], size: int) -> Iterator[list[EventChange]]:
    for index in range(0, len(changes), size):
        yield changes[index : index + size]


def _result(change: EventChange, landed: Any, deleting: bool = False) -> ChangeResult:
    """One bulk-operation outcome as a ChangeResult."""
    if isinstance(landed, _GONE):
        if deleting:
            return ChangeResult(change, ok=True)  # already gone: the delete is done
        return ChangeResult(change, ok=False, error="gone")
    if isinstance(landed, Exception):
        return ChangeResult(
            change,
            ok=False,
            permanent=True,
            error=f"Exchange refused the {change.op} of {change.event_key} "
            f"({type(landed).__name__}: {landed})",
        )
    if deleting:
        return ChangeResult(change, ok=True)
    if isinstance(landed, tuple):
        item_id, changekey = landed
    else:
        item_id, changekey = landed.id, landed.changekey
    return ChangeResult(change, ok=True, provider_event_id=item_id, version=changekey)


def _payload(item: CalendarItem) -> EventPayload:
    """A calendar item read back, in our provider-neutral form."""
    windows_zone = item._start_timezone
    written_zone = item.leavesync_timezone
    zone = windows_zone.key if windows_zone is not None else (written_zone or "UTC")
    if written_zone and windows_zone is not None:
        with suppress(Exception):
            # Several IANA zones share one Windows zone: keep the one we wrote if it still fits.
            if EWSTimeZone(written_zone).ms_id == windows_zone.ms_id:
                zone = written_zone
    if item.is_all_day:
        start = item.start.isoformat()
        end = (item.end + dt.timedelta(days=1)).isoformat()
    else:
        local = ZoneInfo(zone)
        start = item.start.astimezone(local).replace(tzinfo=None).isoformat(timespec="seconds")
        end = item.end.astimezone(local).replace(tzinfo=None).isoformat(timespec="seconds")
    show_as = _FREE_BUSY_TO_SHOW_AS.get(item.legacy_free_busy_status or "Busy", "busy")
    return EventPayload(
        event_key=item.leavesync_key,
        leave_id=leave_id_of(item.leavesync_key),
        title=item.subject or "",
        all_day=bool(item.is_all_day),
        start=start,
        end=end,
        timezone=zone,
        status="tentative" if show_as == "tentative" else "confirmed",
        show_as=show_as,  # type: ignore[arg-type]
        private=item.sensitivity == "Private",
        description=str(item.body or "").strip(),
        categories=",".join(item.categories or []),
    )


def _mailbox_reason(calendar: str, error: Exception) -> str:
    if isinstance(error, ews_errors.ErrorNonExistentMailbox):
        return (
            f"no mailbox {calendar} on this Exchange server (ErrorNonExistentMailbox): check the "
            "employee's email in HR, or that the mailbox is on premises and not migrated"
        )
    if isinstance(
        error, ews_errors.ErrorImpersonateUserDenied | ews_errors.ErrorImpersonationDenied
    ):
        return (
            f"the service account may not impersonate {calendar} (ErrorImpersonateUserDenied): "
            "add the mailbox to the management scope of the ApplicationImpersonation role "
            "assignment (Get-ManagementRoleAssignment -Role ApplicationImpersonation)"
        )
    return f"mailbox {calendar} cannot be accessed ({type(error).__name__})"


def _is_tls_error(error: Exception) -> bool:
    text = str(error)
    return isinstance(error, requests.exceptions.SSLError) or (
        isinstance(error, ews_errors.TransportError)
        and ("CERTIFICATE_VERIFY_FAILED" in text or "SSLError" in text or "SSL:" in text)
    )


def _tls_message(target: str, url: str) -> str:
    return (
        f"target {target}: the TLS certificate of {url} is not trusted. Set ca_bundle to the PEM "
        "file of the CA that issued the Exchange certificate (export it from the server's "
        "certificate chain); do not turn verify_tls off."
    )


def _connect_advice(url: str, settings: EwsSettings, error: Exception) -> str:
    if isinstance(error, ews_errors.UnauthorizedError):
        return (
            f"credentials rejected (HTTP 401): check username {settings.username!r}, the password "
            f"in {settings.password_env}, that the account is not locked and that "
            f"{settings.auth_type} authentication is enabled on the EWS virtual directory"
        )
    if _is_tls_error(error):
        return (
            "certificate not trusted: set ca_bundle to the PEM file of the CA that issued the "
            "Exchange server's certificate"
        )
    text = str(error)
    if isinstance(
        error, ews_errors.ErrorTimeoutExpired | requests.exceptions.ConnectionError
    ) or any(sign in text for sign in ("ErrorTimeoutExpired", "ConnectionError", "timed out")):
        return (
            f"cannot reach {url} (connection failed): check ews_url, DNS and the firewall "
            "(HTTPS to the Exchange server)"
        )
    return (
        f"{url} did not answer as Exchange Web Services ({type(error).__name__}): check ews_url; "
        "it is usually https://<mail server>/EWS/Exchange.asmx"
    )


def _impersonation_advice(calendar: str, username: str, error: Exception) -> str:
    if isinstance(
        error, ews_errors.ErrorImpersonateUserDenied | ews_errors.ErrorImpersonationDenied
    ):
        return (
            f"{username} has no ApplicationImpersonation right on {calendar}: run "
            f"New-ManagementRoleAssignment -Name leavesync-impersonation -Role "
            f"ApplicationImpersonation -User {username} -CustomRecipientWriteScope <your scope>, "
            "and make sure the scope includes this mailbox"
        )
    if isinstance(error, ews_errors.ErrorNonExistentMailbox):
        return f"no mailbox {calendar} on this Exchange server: use an existing employee mailbox"
    if isinstance(error, FatalProviderError):
        return str(error)
    return f"could not read the calendar of {calendar} ({type(error).__name__})"
