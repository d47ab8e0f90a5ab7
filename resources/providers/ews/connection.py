"""Connection and sign-in: TLS, credentials, the impersonated mailboxes, one request with retries."""

from __future__ import annotations

import logging
import os
import ssl
import threading
import time
from collections.abc import Callable, Mapping
from contextlib import suppress
from typing import Any, TypeVar
from urllib.parse import urlsplit

import requests.adapters
from exchangelib import IMPERSONATION, Account, Configuration, Credentials, FaultTolerance
from exchangelib import errors as ews_errors
from exchangelib.ewsdatetime import UTC
from exchangelib.folders import Calendar, Root
from exchangelib.properties import DistinguishedFolderId, Mailbox
from exchangelib.protocol import BaseProtocol, Protocol
from exchangelib.version import Version

from resources.providers.base import FatalProviderError, secret_from_env
from resources.providers.ews.errors import (
    MAILBOX_ERRORS,
    MAILBOX_GONE,
    RETRYABLE,
    GaveUp,
    ItemsPending,
    MailboxUnavailable,
    is_tls_error,
    mailbox_reason,
    tls_fatal,
    unauthorized,
)
from resources.providers.ews.settings import EXCHANGE_BUILDS, EwsSettings
from resources.providers.retry import Backoff, RateLimiter

log = logging.getLogger(__name__)

_T = TypeVar("_T")

# -- secrets never reach a log ------------------------------------------------------------------

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


# -- TLS: one policy, exchangelib's HTTP adapter class is process-wide ------------------------

_TLS_LOCK = threading.Lock()
# origin (scheme://host:port) -> what requests' ``verify`` must be for it: a CA bundle path,
# or False when an admin explicitly turned verification off. Missing: the default trust store.
_VERIFY_BY_ORIGIN: dict[str, str | bool] = {}
_VERIFY_DEFAULT: list[str | bool] = []  # for autodiscover, whose hosts are not known up front


def _origin(url: str) -> str:
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return f"{parts.scheme}://{(parts.hostname or '').lower()}:{port}"


class _PerOriginTLSAdapter(requests.adapters.HTTPAdapter):
    """Each EWS target's own CA bundle (or explicit no-verify) for its own server only.

    ``verify`` is always set here, after requests merged the environment into it, so
    REQUESTS_CA_BUNDLE, CURL_CA_BUNDLE and SSL_CERT_FILE never decide whom we trust: a target
    without ``ca_bundle`` uses requests' own bundle (certifi), as the other providers do.
    """

    def send(self, request: Any, **kwargs: Any) -> Any:
        verify = _VERIFY_BY_ORIGIN.get(_origin(request.url))
        if verify is None:
            verify = _VERIFY_DEFAULT[-1] if _VERIFY_DEFAULT else True
        kwargs["verify"] = verify
        return super().send(request, **kwargs)


def install_tls(url: str | None, settings: EwsSettings, target: str) -> None:
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


def ca_bundle_problem(settings: EwsSettings) -> str | None:
    """Why the configured ca_bundle cannot be used (no network needed), if so."""
    path = settings.ca_bundle
    if not path or not settings.verify_tls:
        return None
    if not os.path.isfile(path):
        return f"ca_bundle {path} does not exist or is not a file"
    if not os.access(path, os.R_OK):
        return f"ca_bundle {path} is not readable by this user"
    try:
        ssl.create_default_context(cafile=path)
    except (ssl.SSLError, ValueError, OSError) as error:
        return f"ca_bundle {path} holds no PEM certificate ({error})"
    return None


class _RetryPolicy(FaultTolerance):
    """exchangelib's FaultTolerance, except that HTTP 401 means bad credentials, not throttling."""

    def raise_response_errors(self, response: Any) -> None:
        if response.status_code == 401:
            raise ews_errors.UnauthorizedError(f"HTTP 401 from {response.url}")
        return super().raise_response_errors(response)


def calendar_folder(account: Account) -> Calendar:
    # The distinguished folder id names the mailbox, so no GetFolder round trip is needed.
    mailbox = Mailbox(email_address=account.primary_smtp_address)
    root = Root(
        account=account, _distinguished_id=DistinguishedFolderId(id="root", mailbox=mailbox)
    )
    return Calendar(
        root=root, _distinguished_id=DistinguishedFolderId(id="calendar", mailbox=mailbox)
    )


class EwsConnection:
    """One target's sign-in, impersonated accounts, and the retry layer around each request."""

    def __init__(self, target_name: str, settings: EwsSettings) -> None:
        self.target_name = target_name
        self.settings = settings
        self.backoff = Backoff(
            base=settings.backoff_base, cap=settings.backoff_cap, max_attempts=settings.max_attempts
        )
        self._limiter = (
            RateLimiter(settings.max_requests_per_second, per=1.0)
            if settings.max_requests_per_second
            else None
        )
        self._config: Configuration | None = None
        self._accounts: dict[str, tuple[Account, Calendar]] = {}
        self._lock = threading.Lock()
        self.first_mailbox: str | None = None
        install_tls(settings.ews_url, settings, target_name)

    @property
    def url(self) -> str:
        return self._config.service_endpoint if self._config else (self.settings.ews_url or "EWS")

    def configuration(self) -> Configuration:
        """exchangelib's Configuration, built once: reads the password, maybe autodiscovers."""
        with self._lock:
            if self._config is not None:
                return self._config
            settings = self.settings
            problem = ca_bundle_problem(settings)
            if problem:
                raise FatalProviderError(f"target {self.target_name}: {problem}")
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

        email = self.first_mailbox or self.settings.username
        if "@" not in email:
            raise FatalProviderError(
                f"target {self.target_name}: autodiscover needs a mailbox address; set ews_url"
            )
        try:
            _, protocol = Autodiscovery(email=email, credentials=credentials).discover()
        except Exception as error:
            if is_tls_error(error):
                raise tls_fatal(self.target_name, f"https://{email.split('@')[1]}", error) from None
            raise FatalProviderError(
                f"target {self.target_name}: autodiscover failed for {email} "
                f"({type(error).__name__}); set ews_url to https://<server>/EWS/Exchange.asmx"
            ) from None
        url = protocol.service_endpoint
        log.info("target %s: autodiscover found EWS at %s", self.target_name, url)
        return url

    def mailbox(self, calendar: str) -> tuple[Account, Calendar]:
        """The impersonated account of this calendar's owner, and its calendar folder."""
        address = calendar.strip().lower()
        if self.first_mailbox is None:
            self.first_mailbox = address
        config = self.configuration()
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
                found = self._accounts[address] = (account, calendar_folder(account))
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

    def call(self, calendar: str, what: str, request: Callable[[], _T]) -> _T:
        """Send one EWS request (or a short sequence); retry what may be retried."""
        attempt = 0
        while True:
            attempt += 1
            if self._limiter is not None:
                self._limiter.acquire()
            try:
                return request()
            except ews_errors.UnauthorizedError:
                raise unauthorized(self.target_name, self.url, self.settings) from None
            except ews_errors.ErrorInvalidServerVersion:
                raise FatalProviderError(
                    f"target {self.target_name}: {self.url} refused RequestServerVersion "
                    f"{self.settings.version} (ErrorInvalidServerVersion): set version to the "
                    "Exchange release the server runs, or leave it out to ask the server"
                ) from None
            except MAILBOX_ERRORS as error:
                raise MailboxUnavailable(
                    mailbox_reason(calendar, error),
                    gone=isinstance(error, MAILBOX_GONE),
                    alias=isinstance(error, ews_errors.ErrorNonPrimarySmtpAddress),
                ) from None
            except ews_errors.RateLimitError as error:
                raise GaveUp(
                    f"Exchange is throttling: it asked to wait {error.wait:.0f}s, more than "
                    f"max_wait ({self.settings.max_wait:.0f}s); try again later"
                ) from None
            except (*RETRYABLE, ews_errors.TransportError, ItemsPending) as error:
                if is_tls_error(error):
                    raise tls_fatal(self.target_name, self.url, error) from None
                if isinstance(error, ews_errors.ResponseMessageError) and not isinstance(
                    error, RETRYABLE
                ):
                    raise  # a definite answer (schema, restriction, ...): retrying cannot help
                self._wait(calendar, what, attempt, error)
            except OSError as error:
                if is_tls_error(error) or "CA certificate bundle" in str(error):
                    raise tls_fatal(self.target_name, self.url, error) from None
                raise

    def _wait(self, calendar: str, what: str, attempt: int, error: Exception) -> None:
        if attempt >= self.backoff.max_attempts:
            raise GaveUp(
                f"{what} failed {attempt} times; last error {type(error).__name__}"
            ) from None
        # BackOffMilliseconds / Retry-After are obeyed exactly, up to max_wait; Backoff's cap is
        # for our own guesses and must not shorten what the server asked for.
        advised = getattr(error, "back_off", None)
        if advised is not None and advised > self.settings.max_wait:
            raise GaveUp(
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
