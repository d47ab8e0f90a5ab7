"""Batching: many Calendar API calls in one multipart/mixed request, and what an error means."""

from __future__ import annotations

import http.client
import json
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import httplib2
from google.auth import exceptions as auth_exceptions
from googleapiclient.discovery import build
from googleapiclient.errors import BatchError, HttpError
from googleapiclient.http import BatchHttpRequest, HttpRequest

from resources.providers.base import FatalProviderError
from resources.providers.google.settings import DELEGATION_HELP, SCOPE_EVENTS, Settings
from resources.providers.google.signin import (
    TRANSPORT_ERRORS,
    SignIn,
    certificate_failure,
    untrusted,
)
from resources.providers.retry import RateLimiter

SEND_ERRORS = (*TRANSPORT_ERRORS, http.client.HTTPException, BatchError)
_RETRYABLE_REASONS = {"rateLimitExceeded", "userRateLimitExceeded", "backendError"}


@dataclass(frozen=True)
class Outcome:
    """One call's answer: the response body, or the API error, or a transport failure."""

    response: dict[str, Any] | None = None
    error: HttpError | None = None
    lost: str = ""  # the batch itself failed in transit: retry the call

    @property
    def status(self) -> int:
        return self.error.resp.status if self.error is not None else 200


@dataclass(frozen=True)
class ApiError:
    """What an API error says: status, reason (e.g. rateLimitExceeded), message, Retry-After."""

    status: int
    reason: str
    message: str
    advised: float | None

    @property
    def text(self) -> str:
        return f"HTTP {self.status} {self.reason}: {self.message}".strip()

    @property
    def retryable(self) -> bool:
        return self.status in (401, 429) or self.status >= 500 or self.reason in _RETRYABLE_REASONS

    @property
    def usage_limit(self) -> bool:
        # Calendar usage limits are per user: pause this user, the others go on.
        return self.status == 403 and self.reason == "quotaExceeded"


def api_error(error: HttpError) -> ApiError:
    reason, message = "", ""
    try:
        data = json.loads(error.content.decode("utf-8"))["error"]
        errors = data.get("errors") or [{}]
        reason = errors[0].get("reason") or data.get("status", "")
        for detail in data.get("details") or []:
            reason = detail.get("reason", reason)
        message = data.get("message", "")
    except (ValueError, KeyError, TypeError, AttributeError):
        pass
    value = error.resp.get("retry-after")
    try:
        advised = float(value) if value is not None else None
    except ValueError:
        advised = None
    return ApiError(error.resp.status, reason, message, advised)


class Batcher:
    """Builds Calendar API calls and sends them in batches, paced by the quotas."""

    def __init__(self, target: str, settings: Settings, signin: SignIn) -> None:
        self.target = target
        self.settings = settings
        self.signin = signin
        self.batch_uri = (
            settings.batch_uri or settings.api_base_url.rstrip("/") + "/batch/calendar/v3"
        )
        burst = float(settings.batch_size)
        self.project_limiter = RateLimiter(settings.per_project_requests_per_minute, 60.0, burst)
        self._user_limiters: dict[str, RateLimiter] = {}
        self._service: Any = None
        self._lock = threading.Lock()

    def events(self) -> Any:
        """The discovery client's events resource (the document ships with the library)."""
        with self._lock:
            # Built once: each build makes a method per call in the discovery document.
            if self._service is None:
                # static_discovery: nothing is fetched. This http only builds requests; each
                # call runs on a user's authorised http.
                self._service = build(
                    "calendar",
                    "v3",
                    http=httplib2.Http(),
                    static_discovery=True,
                    cache_discovery=False,
                    client_options={
                        "api_endpoint": self.settings.api_base_url.rstrip("/") + "/calendar/v3/"
                    },
                ).events()
            return self._service

    def user_limiter(self, user: str) -> RateLimiter:
        user = self.settings.subject_for(user)  # quotas are per user whose token is used
        with self._lock:
            limiter = self._user_limiters.get(user)
            if limiter is None:
                limiter = self._user_limiters[user] = RateLimiter(
                    self.settings.per_user_requests_per_minute,
                    60.0,
                    float(self.settings.batch_size),
                )
            return limiter

    def send(self, calls: Sequence[tuple[str, HttpRequest]], http: Any) -> list[Outcome]:
        """One batch request; an outcome per call, in order. ``calls``: (user, request).

        A call built with its user's authorised http carries that user's token in its part,
        so one batch may serve several users; ``http`` sends the batch itself.
        """
        outcomes: dict[str, Outcome] = {}
        batch = BatchHttpRequest(batch_uri=self.batch_uri)
        for index, (_, call) in enumerate(calls):
            batch.add(call, callback=_collector(outcomes), request_id=str(index))
        # Tokens last, right before sending: the quota counts calls when they arrive.
        per_user: dict[str, int] = {}
        for user, _ in calls:
            per_user[user] = per_user.get(user, 0) + 1
        for user, count in per_user.items():
            self.user_limiter(user).acquire(count)
        self.project_limiter.acquire(len(calls))
        try:
            batch.execute(http=http)
        except HttpError as exc:
            return [Outcome(error=exc)] * len(calls)
        except auth_exceptions.RefreshError as exc:
            if len(per_user) == 1:
                self.signin.raise_for_token_error(next(iter(per_user)), exc)
            return [Outcome(lost=f"token refresh failed: {exc}")] * len(calls)
        except SEND_ERRORS as exc:
            bad = certificate_failure(exc)
            if bad is not None:
                raise untrusted(self.target, self.batch_uri, bad) from None
            # Lost or refused: every part is retried (a landed create answers 409 next time).
            return [Outcome(lost=f"transport error: {exc!r}")] * len(calls)
        return [
            outcomes.get(str(index), Outcome(lost="no answer for this part"))
            for index in range(len(calls))
        ]

    def raise_if_fatal(self, error: ApiError) -> None:
        """Target-wide API errors (API disabled, scope missing) stop the run."""
        if error.status == 403 and error.reason in ("accessNotConfigured", "SERVICE_DISABLED"):
            raise FatalProviderError(
                f"target {self.target}: the Google Calendar API is disabled for the "
                "service account's Cloud project; enable it in Google Cloud console > APIs & "
                f"Services > Library > Google Calendar API ({error.message})"
            )
        if error.status == 403 and error.reason in (
            "insufficientPermissions",
            "ACCESS_TOKEN_SCOPE_INSUFFICIENT",
        ):
            raise FatalProviderError(
                f"target {self.target}: the token lacks a Calendar write scope; set "
                f"scopes to {SCOPE_EVENTS} and "
                + DELEGATION_HELP.format(client_id=self.signin.client_id, scopes=SCOPE_EVENTS)
            )


def _collector(outcomes: dict[str, Outcome]) -> Callable[..., None]:
    def collect(request_id: str, response: Any, exception: HttpError | None) -> None:
        if exception is not None:
            outcomes[request_id] = Outcome(error=exception)
        else:
            outcomes[request_id] = Outcome(response=response if response is not None else {})

    return collect
