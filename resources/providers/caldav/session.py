"""HTTP to the CalDAV server through the caldav library: one client per thread, one retry policy."""

from __future__ import annotations

import os
import threading
import time
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import caldav
from caldav.lib import error as dav_error
from caldav.lib.http_sync import requests as http

from resources.providers.base import FatalProviderError, ProviderError, secret_from_env
from resources.providers.caldav.settings import CalDavSettings
from resources.providers.retry import Backoff, RateLimiter

RETRYABLE_STATUS = frozenset({429, 500, 502, 503, 504})


_CONSTRUCTION = threading.Lock()  # see DavSession._client


class CalendarFailure(ProviderError):
    """One calendar (or one event) cannot be written; ``permanent``: retrying now will not help."""

    def __init__(self, message: str, permanent: bool = True, whole_calendar: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent
        self.whole_calendar = whole_calendar


@dataclass(frozen=True)
class Reply:
    """A server answer: status, ETag and body (text for GET, parsed multistatus for the rest)."""

    status: int
    etag: str | None
    text: str
    dav: object  # caldav's DAVResponse, for multistatus parsing

    @property
    def uid_conflict(self) -> bool:
        return "no-uid-conflict" in self.text

    def reason(self) -> str:
        body = " ".join(self.text.split())[:200]
        return f"HTTP {self.status}" + (f": {body}" if body else "")


class DavSession:
    """Requests with retries (429/503 Retry-After, 5xx, dropped connections) and clear failures."""

    def __init__(
        self, settings: CalDavSettings, count: Callable[[str], None] | None = None
    ) -> None:
        self.settings = settings
        self.backoff = Backoff(
            settings.backoff_base_seconds, settings.backoff_cap_seconds, settings.max_attempts
        )
        self.limiter = (
            RateLimiter(settings.max_requests_per_second, per=1.0)
            if settings.max_requests_per_second
            else None
        )
        self._local = threading.local()
        self._clients: list[caldav.DAVClient] = []
        self._lock = threading.Lock()
        self._count = count or (lambda method: None)
        self.stopped = threading.Event()

    def preflight(self) -> None:
        """No-network checks: the secret is set, the CA bundle is readable."""
        s = self.settings
        secret_from_env(s.password_env, f"CalDAV target password for {s.username}")
        if s.ca_bundle and not os.access(s.ca_bundle, os.R_OK):
            raise FatalProviderError(
                f"CalDAV ca_bundle {s.ca_bundle!r} cannot be read: point ca_bundle at a PEM "
                "file of the CA(s) that issued the server's certificate"
            )

    def _client(self) -> caldav.DAVClient:
        client = getattr(self._local, "client", None)
        if client is None:
            s = self.settings
            password = secret_from_env(s.password_env, f"CalDAV target password for {s.username}")
            # Built one at a time, process-wide: DAVClient's constructor fills a class-level
            # feature table of the caldav library lazily, which is not thread-safe (seen:
            # KeyError 'http' in compatibility_hints.find_feature when a run's first
            # requests start together in several threads).
            with _CONSTRUCTION:
                client = caldav.DAVClient(
                    url=s.server_root,
                    username=s.username,
                    password=password,
                    auth_type=s.auth_type,
                    timeout=s.timeout_seconds,
                    ssl_verify_cert=s.ca_bundle or True,
                    enable_rfc6764=False,
                    rate_limit_handle=False,
                )
                # One TLS policy for every provider: ca_bundle only, never REQUESTS_CA_BUNDLE,
                # SSL_CERT_FILE, proxies or .netrc from the environment.
                client.session.trust_env = False
            with self._lock:
                self._clients.append(client)
            self._local.client = client
        return client

    def request(
        self,
        method: str,
        url: str,
        body: str | bytes = "",
        headers: Mapping[str, str] | None = None,
    ) -> Reply:
        """One request, retried while the server says "later"; raises on 401 and TLS errors."""
        last = ""
        for attempt in range(1, self.backoff.max_attempts + 1):
            if self.stopped.is_set():
                raise CalendarFailure("run stopped", permanent=False)
            if self.limiter:
                self.limiter.acquire()
            advised: float | None = None
            try:
                self._count(method)
                response = self._client().request(url, method, body, dict(headers or {}))
            except dav_error.RateLimitError as err:
                advised, last = err.retry_after_seconds, f"HTTP {err.status} (Retry-After)"
            except dav_error.AuthorizationError as err:
                if err.status == 401:
                    raise self._bad_credentials() from None
                body = (
                    err.body.decode("utf-8", "replace") if isinstance(err.body, bytes) else err.body
                )
                return Reply(err.status or 403, None, body or str(err.reason or ""), None)
            except http.exceptions.SSLError as err:
                raise self._tls_failure(err) from None
            except (http.exceptions.ConnectionError, http.exceptions.Timeout) as err:
                if _is_tls(err):
                    raise self._tls_failure(err) from None
                last = f"connection to {self.settings.host} failed: {type(err).__name__}"
            else:
                reply = _reply(response)
                if reply.status not in RETRYABLE_STATUS:
                    return reply
                last = reply.reason()
                advised = _retry_after(response)
            if attempt < self.backoff.max_attempts:
                time.sleep(self.backoff.delay(attempt, advised))
        raise CalendarFailure(
            f"{method} {_path(url)}: gave up after {self.backoff.max_attempts} attempts ({last})",
            permanent=False,
        )

    def _bad_credentials(self) -> FatalProviderError:
        s = self.settings
        return FatalProviderError(
            f"CalDAV server {s.host} rejected the credentials of {s.username!r} (HTTP 401): "
            f"check username and the password or app token in ${s.password_env}"
        )

    def _tls_failure(self, err: Exception) -> FatalProviderError:
        s = self.settings
        where = f"the CA file {s.ca_bundle}" if s.ca_bundle else "the system trust store"
        return FatalProviderError(
            f"TLS certificate of CalDAV server {s.host} not trusted by {where}: set ca_bundle "
            f"to a PEM file of the CA that issued it ({str(err).splitlines()[0][:200]})"
        )

    def close(self) -> None:
        with self._lock:
            for client in self._clients:
                client.close()
            self._clients.clear()
        self._local = threading.local()


def _reply(response) -> Reply:
    raw = getattr(response, "_raw", "") or ""
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
    if not text and getattr(response, "tree", None) is not None:
        text = response.raw
    etag = response.headers.get("ETag")
    return Reply(int(response.status), etag, text, response)


def _retry_after(response) -> float | None:
    value = response.headers.get("Retry-After")
    return dav_error.parse_retry_after(value) if value else None


def _is_tls(err: Exception) -> bool:
    text = str(err).lower()
    return "certificate" in text or "ssl" in text and "verify" in text


def _path(url: str) -> str:
    return urllib.parse.urlsplit(url).path
