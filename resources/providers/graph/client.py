"""HTTP to Graph: one session, the rate limiters, replies, and the TLS failure policy."""

from __future__ import annotations

import ssl
import threading
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import requests
from requests.adapters import HTTPAdapter

from resources.providers.base import FatalProviderError
from resources.providers.graph.settings import GraphSettings
from resources.providers.retry import Backoff, RateLimiter

TRANSPORT_ERRORS = (requests.ConnectionError, requests.Timeout)


@dataclass
class Reply:
    """One HTTP response (top level, or one sub-response of a batch)."""

    status: int
    headers: dict[str, str]
    body: Any

    @property
    def code(self) -> str:
        err = self.body.get("error") if isinstance(self.body, dict) else None
        return str(err.get("code", "")) if isinstance(err, dict) else ""

    @property
    def message(self) -> str:
        err = self.body.get("error") if isinstance(self.body, dict) else None
        return str(err.get("message", "")) if isinstance(err, dict) else ""

    def retry_after(self) -> float | None:
        for k, v in self.headers.items():
            if k.lower() == "retry-after":
                try:
                    return float(v)
                except ValueError:
                    return None
        return None

    def describe(self) -> str:
        return f"HTTP {self.status} {self.code}: {self.message}".strip()


def make_session(settings: GraphSettings) -> requests.Session:
    """A session that verifies TLS against ``ca_bundle`` (or the system store), nothing else."""
    session = requests.Session()
    # trust_env off: REQUESTS_CA_BUNDLE and proxies from the environment never apply.
    session.trust_env = False
    session.verify = settings.ca_bundle or True
    adapter = HTTPAdapter(pool_connections=4, pool_maxsize=settings.parallel_batches + 4)
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    return session


def check_ca_bundle(ca_bundle: str | None) -> None:
    """A configured CA file must exist, be readable and hold at least one PEM certificate."""
    if not ca_bundle:
        return
    try:
        ssl.create_default_context(cafile=ca_bundle)
    except FileNotFoundError:
        raise FatalProviderError(
            f"ca_bundle: the CA file {ca_bundle} does not exist; set ca_bundle to the PEM file "
            "of the certificate authority that signs the Microsoft endpoints (or remove it to "
            "use the default CA bundle)"
        ) from None
    except PermissionError:
        raise FatalProviderError(
            f"ca_bundle: the CA file {ca_bundle} cannot be read by this user"
        ) from None
    except (ssl.SSLError, OSError, ValueError) as err:
        raise FatalProviderError(
            f"ca_bundle: {ca_bundle} holds no PEM certificate ({err})"
        ) from None


def certificate_problem(err: BaseException, url: str, ca_bundle: str | None) -> str | None:
    """What to tell the operator when ``err`` is a TLS certificate failure, else None."""
    host = urlsplit(url).hostname or url
    if isinstance(err, requests.exceptions.SSLError):
        reason = _ssl_reason(err)
        trust = f"the CA file {ca_bundle}" if ca_bundle else "the default CA bundle (certifi)"
        return (
            f"TLS certificate of {host} is not trusted by {trust} ({reason}): set ca_bundle "
            "to the PEM file of the certificate authority that signs it (for example the one "
            "of a TLS-inspecting proxy)"
        )
    if isinstance(err, OSError) and "CA certificate bundle" in str(err):
        return f"ca_bundle: {ca_bundle} cannot be used to verify {host}: {err}"
    return None


def _ssl_reason(err: BaseException) -> str:
    seen: BaseException | None = err
    while seen is not None:
        if isinstance(seen, ssl.SSLCertVerificationError):
            return seen.verify_message or str(seen)
        seen = seen.__cause__ or seen.__context__ or (seen.args[0] if seen.args else None)
        if not isinstance(seen, BaseException):
            break
    return str(err).split(" (Caused by")[0][-200:]


class _WouldBlock(Exception):
    def __init__(self, seconds: float) -> None:
        super().__init__(seconds)
        self.seconds = seconds


def _would_block(seconds: float) -> None:
    raise _WouldBlock(seconds)


def window_limiter(limit: int, window: float, largest_take: int) -> RateLimiter:
    """A token bucket that never exceeds ``limit`` requests in any sliding ``window``.

    Burst plus refill within one window stays at the limit: the burst is 5% of it (at least
    one batch's worth), the rest is the steady rate. Its sleep raises instead, so the
    scheduler can ask without blocking (``try_take``).
    """
    burst = float(min(limit, max(largest_take, limit // 20)))
    return RateLimiter(max(limit - burst, 1.0), window, burst=burst, sleep=_would_block)


def try_take(limiter: RateLimiter, tokens: int) -> float:
    """Take ``tokens`` now and return 0, or take none and return the seconds to wait."""
    try:
        limiter.acquire(tokens)
    except _WouldBlock as wait:
        return max(wait.seconds, 1e-4)
    return 0.0


def take(limiter: RateLimiter, tokens: int) -> None:
    """Take ``tokens``, sleeping as long as needed."""
    while wait := try_take(limiter, tokens):
        time.sleep(wait)


class GraphClient:
    """Sends requests to Graph within the app's and each mailbox's request budget."""

    def __init__(self, settings: GraphSettings, session: requests.Session, token_source) -> None:
        s = settings
        self.settings = s
        self.session = session
        self.tokens = token_source
        self.graph_base = s.graph_url.rstrip("/") + "/v1.0"
        self.backoff = Backoff(s.backoff_base_seconds, s.backoff_cap_seconds, s.max_attempts)
        self.app_limiter = window_limiter(
            s.app_requests_per_window, s.app_window_seconds, s.batch_size
        )
        self._mailbox_limiters: dict[str, RateLimiter] = {}
        self._lock = threading.Lock()

    def mailbox_limiter(self, mailbox: str) -> RateLimiter:
        with self._lock:
            limiter = self._mailbox_limiters.get(mailbox)
            if limiter is None:
                s = self.settings
                limiter = window_limiter(
                    s.mailbox_requests_per_window, s.mailbox_window_seconds, s.batch_size
                )
                self._mailbox_limiters[mailbox] = limiter
            return limiter

    def request(
        self, method: str, url: str, body: Any = None, prefer: str = "", token: str | None = None
    ) -> Reply:
        """One HTTP call; transport errors propagate, certificate failures are fatal."""
        token = token or self.tokens.current()
        headers = {"Authorization": f"Bearer {token}"}
        if prefer:
            headers["Prefer"] = prefer
        try:
            resp = self.session.request(
                method, url, json=body, headers=headers, timeout=self.settings.timeout_seconds
            )
        except (requests.exceptions.SSLError, OSError) as err:
            problem = certificate_problem(err, url, self.settings.ca_bundle)
            if problem:
                raise FatalProviderError(problem) from None
            raise
        try:
            parsed = resp.json() if resp.content else None
        except ValueError:
            parsed = None
        return Reply(resp.status_code, dict(resp.headers), parsed)

    def get_with_retry(self, url: str, prefer: str, mailbox: str) -> Reply:
        """A read with the retry policy: 429/5xx/transport errors retried, 401 re-authenticated."""
        refreshed = False
        last = Reply(599, {}, {"error": {"code": "Unreachable", "message": "no response"}})
        for attempt in range(1, self.backoff.max_attempts + 1):
            take(self.app_limiter, 1)
            take(self.mailbox_limiter(mailbox), 1)
            try:
                last = self.request("GET", url, prefer=prefer)
            except TRANSPORT_ERRORS as err:
                last = Reply(599, {}, {"error": {"code": type(err).__name__, "message": ""}})
                time.sleep(self.backoff.delay(attempt))
                continue
            if last.status == 401 and not refreshed:
                self.tokens.renew()
                refreshed = True
                continue
            if last.status == 429 or last.status >= 500:
                time.sleep(self.backoff.delay(attempt, last.retry_after()))
                continue
            return last
        return last

    def relative(self, link: str) -> str:
        """A URL Graph returned (an @odata.nextLink), relative to /v1.0 for a batch."""
        if link.startswith(self.graph_base):
            return link[len(self.graph_base) :]
        parts = urlsplit(link)
        path = parts.path.split("/v1.0", 1)[-1]
        return path + (f"?{parts.query}" if parts.query else "")
