"""Google Calendar API v3 emulator: OAuth JWT-bearer token endpoint, events, batch, quotas, faults.

Built from Google's published API reference and the calendar v3 discovery document that
google-api-python-client ships. Runs on 127.0.0.1 over HTTP or HTTPS. ``google_calendar`` is
a pytest fixture other test modules can import.
"""

from __future__ import annotations

import base64
import copy
import datetime as dt
import email.parser
import email.policy
import itertools
import json
import random
import re
import ssl
import threading
import time
import urllib.parse
import uuid
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from zoneinfo import ZoneInfo

import jwt

JWT_GRANT_TYPE = "urn:ietf:params:oauth:grant-type:jwt-bearer"
SCOPE_CALENDAR = "https://www.googleapis.com/auth/calendar"
SCOPE_EVENTS = "https://www.googleapis.com/auth/calendar.events"
SCOPE_READONLY = "https://www.googleapis.com/auth/calendar.readonly"
# The scopes each method accepts, from the discovery document (Events: insert, list).
WRITE_SCOPES = {
    SCOPE_CALENDAR,
    SCOPE_EVENTS,
    SCOPE_EVENTS + ".owned",
    "https://www.googleapis.com/auth/calendar.app.created",
}
READ_SCOPES = WRITE_SCOPES | {
    SCOPE_READONLY,
    SCOPE_EVENTS + ".readonly",
    SCOPE_EVENTS + ".owned.readonly",
}
GOOGLE_TOKEN_URI = "https://oauth2.googleapis.com/token"
# "You're limited to 1000 calls in a single batch request" (Send batch requests). Our
# client sends at most 50 (DESIGN.md); stats["max_batch_parts"] shows what it sent.
MAX_BATCH = 1000
_EVENT_ID = re.compile(r"^[a-v0-9]{5,1024}$")
_LIST_PATH = re.compile(r"/calendar/v3/calendars/[^/]+/events")
MAX_PAGE = 2500  # "The page size can never be larger than 2500 events" (Events: list)
# Extended properties: keys over 44 characters are silently dropped, values over 1024
# silently truncated; at most 300 properties and 32 kB per event (Extended properties).
MAX_PROPERTY_KEY, MAX_PROPERTY_VALUE, MAX_PROPERTIES, MAX_PROPERTY_BYTES = 44, 1024, 300, 32_768
MAX_REMINDER_OVERRIDES = 5  # Events resource, reminders.overrides
MAX_ASSERTION_SECONDS = 3600  # a JWT assertion lives at most one hour (OAuth server to server)
EVENT_TYPES = {"default", "outOfOffice", "focusTime", "workingLocation", "birthday", "fromGmail"}
_ENUMS = {
    "status": {"confirmed", "tentative", "cancelled"},
    "visibility": {"default", "public", "private", "confidential"},
    "transparency": {"opaque", "transparent"},
}
SEND_UPDATES = {"all", "externalOnly", "none"}
# Faults an injected failure can be: an error status, a dropped connection before or after
# the request took effect (the latter is a lost response), or a slow response.
FAULT_KINDS = ("429", "403rate", "500", "503", "drop_before", "drop_after", "slow")


class _Bucket:
    """Server-side quota: a token bucket that rejects instead of waiting."""

    def __init__(self, per_minute: float, burst: float) -> None:
        self.rate = per_minute / 60.0
        self.capacity = burst
        self.tokens = burst
        self.last = time.monotonic()

    def take(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.capacity, self.tokens + (now - self.last) * self.rate)
        self.last = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False


class _Drop(Exception):
    """Close the connection without an answer."""


@dataclass
class _Reply:
    status: int
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)

    def encoded(self) -> bytes:
        return b"" if self.body is None else json.dumps(self.body).encode("utf-8")


_REASONS = {
    200: "OK",
    204: "No Content",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    409: "Conflict",
    410: "Gone",
    412: "Precondition Failed",
    429: "Too Many Requests",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


_DOMAINS = {
    "userRateLimitExceeded": "usageLimits",
    "rateLimitExceeded": "usageLimits",
    "quotaExceeded": "usageLimits",
    "dailyLimitExceeded": "usageLimits",
    "timeRangeEmpty": "calendar",
    "eventTypeRestriction": "calendar",
}


def api_error(status: int, reason: str, message: str) -> _Reply:
    """An error in the Calendar API's JSON error format (Handle API errors)."""
    domain = _DOMAINS.get(reason, "global")
    return _Reply(
        status,
        {
            "error": {
                "errors": [{"domain": domain, "reason": reason, "message": message}],
                "code": status,
                "message": message,
            }
        },
    )


class GoogleCalendarEmulator:
    """In-memory Google Calendar for the users of one Workspace domain.

    ``users``: mailboxes that exist; ``granted_scopes``: the scopes domain-wide delegation
    grants the service account (Admin console); ``public_key``: the service account's key.
    """

    def __init__(
        self,
        service_account_email: str,
        public_key: Any,
        users: set[str] | list[str],
        granted_scopes: set[str] | None = None,
        tls: tuple[str, str] | None = None,
    ) -> None:
        self.service_account_email = service_account_email
        self.public_key = public_key
        self.users = set(users)
        # alias address -> the user whose mailbox it reaches (a rename keeps the old one).
        self.aliases: dict[str, str] = {}
        # Google may return fewer events than maxResults, "or none at all" (Events: list).
        self.max_page_size = MAX_PAGE
        # "Deleted events are only guaranteed to have the id field populated" (Events,
        # status); on the organizer's calendar they keep their details. False: strip them.
        self.keep_deleted_details = True
        # Event ids a list does not show yet (a listing behind the latest writes).
        self.hidden_from_list: set[str] = set()
        self.granted_scopes = set(granted_scopes or {SCOPE_EVENTS})
        self.api_enabled = True
        self.calendars: dict[str, dict[str, dict[str, Any]]] = {u: {} for u in self.users}
        # Secondary calendars (a team's shared calendar): id -> user -> "reader" | "writer",
        # their access control list; their events live in ``calendars`` under their id.
        self.shared: dict[str, dict[str, str]] = {}
        self.tokens: dict[str, tuple[str, frozenset[str]]] = {}
        self.stats: Counter[str] = Counter()
        self.lock = threading.RLock()
        self._etags = itertools.count(int(time.time() * 1000))
        # Fault injection: share of API calls (and batch posts) that fail, and how.
        self.fault_rate = 0.0
        self.fault_kinds: tuple[str, ...] = FAULT_KINDS
        self.slow_seconds = 0.05
        self.rng = random.Random(4)
        # The parts of a batch run in any order (Send batch requests): shuffled here.
        self.batch_order_rng = random.Random(7)
        # Scripted faults, consumed in order: ("batch"|"call", kind).
        self.scripted: list[tuple[str, str]] = []
        # user -> number of next calls answered 403 quotaExceeded (usage limits).
        self.usage_limited: Counter[str] = Counter()
        self._user_quota: dict[str, _Bucket] = {}
        self._project_quota: _Bucket | None = None
        self._user_quota_args: tuple[float, float] | None = None
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self.server.daemon_threads = True
        self.scheme = "http"
        if tls is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*tls)
            self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
            self.scheme = "https"
        self._thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> GoogleCalendarEmulator:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    @property
    def base_url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.server.server_address[1]}/"

    @property
    def token_uri(self) -> str:
        return self.base_url + "token"

    @property
    def batch_uri(self) -> str:
        return self.base_url + "batch/calendar/v3"

    # -- configuration ---------------------------------------------------------------------

    def enforce_quota(
        self,
        user_per_minute: float | None = None,
        project_per_minute: float | None = None,
        user_burst: float = MAX_BATCH,
        project_burst: float = MAX_BATCH,
    ) -> None:
        """Reject calls beyond these rates (403 userRateLimitExceeded / rateLimitExceeded)."""
        with self.lock:
            self._user_quota.clear()
            self._user_quota_args = (user_per_minute, user_burst) if user_per_minute else None
            self._project_quota = (
                _Bucket(project_per_minute, project_burst) if project_per_minute else None
            )

    def rename_user(self, old: str, new: str, keep_alias: bool = True) -> None:
        """The user's primary address becomes ``new``, calendar and tokens with it (a token
        is the account's, not the address's); the old address stays an alias
        (``keep_alias``, Google's default on a rename) or names no user."""
        with self.lock:
            self.users.discard(old)
            self.users.add(new)
            self.calendars[new] = self.calendars.pop(old, {})
            self.tokens = {
                t: (new if u == old else u, scopes) for t, (u, scopes) in self.tokens.items()
            }
            for alias, user in list(self.aliases.items()):
                if user == old:
                    self.aliases[alias] = new
            if keep_alias:
                self.aliases[old] = new

    def remove_user(self, user: str) -> None:
        """The user is deleted: their calendar and their tokens go with them."""
        with self.lock:
            self.users.discard(user)
            self.calendars.pop(user, None)
            self.tokens = {t: v for t, v in self.tokens.items() if v[0] != user}

    def add_calendar(self, calendar_id: str, acl: dict[str, str]) -> None:
        """A secondary calendar shared with these users ("reader" or "writer")."""
        with self.lock:
            self.shared[calendar_id] = dict(acl)
            self.calendars.setdefault(calendar_id, {})

    def events(self, user: str, include_cancelled: bool = False) -> list[dict[str, Any]]:
        """A copy of the events in a user's primary calendar (or a secondary one, by id)."""
        with self.lock:
            user = self.aliases.get(user, user)
            return [
                copy.deepcopy(e)
                for e in self.calendars.get(user, {}).values()
                if include_cancelled or e["status"] != "cancelled"
            ]

    def put_event(self, user: str, event: dict[str, Any]) -> dict[str, Any]:
        """Seed an event directly (e.g. one the user created, without our tag)."""
        with self.lock:
            stored = self._new_event(user, dict(event))
            self.calendars.setdefault(user, {})[stored["id"]] = stored
            return copy.deepcopy(stored)

    def edit_event(self, user: str, event_id: str, **fields: Any) -> None:
        """Change an event as its owner would in the Calendar UI."""
        with self.lock:
            event = self.calendars[user][event_id]
            event.update(fields)
            event["etag"] = self._etag()

    # -- token endpoint --------------------------------------------------------------------

    def _token(self, form: dict[str, str]) -> _Reply:
        self.stats["token_requests"] += 1
        if form.get("grant_type") != JWT_GRANT_TYPE:
            return self._token_error(400, "unsupported_grant_type", "Invalid grant_type.")
        try:
            claims = jwt.decode(
                form.get("assertion", ""),
                self.public_key,
                algorithms=["RS256"],
                # google-auth always names Google's token endpoint as the audience.
                audience=[GOOGLE_TOKEN_URI, self.token_uri],
                options={"require": ["iss", "aud", "exp", "iat"]},
            )
        except jwt.InvalidSignatureError:
            return self._token_error(400, "invalid_grant", "Invalid JWT Signature.")
        except jwt.PyJWTError as exc:
            return self._token_error(400, "invalid_grant", f"Invalid JWT: {exc}")
        if claims.get("iss") != self.service_account_email:
            return self._token_error(401, "invalid_client", "The OAuth client was not found.")
        if int(claims["exp"]) - int(claims["iat"]) > MAX_ASSERTION_SECONDS:
            return self._token_error(
                400,
                "invalid_grant",
                "Invalid JWT: Token must be a short-lived token (60 minutes) and in a "
                "reasonable timeframe.",
            )
        scopes = frozenset(str(claims.get("scope", "")).split())
        if not scopes:
            return self._token_error(400, "invalid_scope", "Empty or missing scope not allowed.")
        subject = self.aliases.get(claims.get("sub"), claims.get("sub"))
        if subject not in self.users:
            return self._token_error(400, "invalid_grant", "Invalid email or User ID")
        if not scopes <= self.granted_scopes:
            return self._token_error(
                401,
                "unauthorized_client",
                "Client is unauthorized to retrieve access tokens using this method, or "
                "client not authorized for any of the scopes requested.",
            )
        token = "ya29." + uuid.uuid4().hex
        self.tokens[token] = (subject, scopes)
        return _Reply(200, {"access_token": token, "expires_in": 3599, "token_type": "Bearer"})

    def _token_error(self, status: int, error: str, description: str) -> _Reply:
        self.stats["token_rejections"] += 1
        return _Reply(status, {"error": error, "error_description": description})

    # -- API calls -------------------------------------------------------------------------

    def _fault(self, where: str) -> str | None:
        if self.scripted and self.scripted[0][0] == where:
            return self.scripted.pop(0)[1]
        if self.fault_rate and self.rng.random() < self.fault_rate:
            return self.rng.choice(self.fault_kinds)
        return None

    def _call(self, method: str, target: str, headers: Any, body: bytes, in_batch: bool) -> _Reply:
        """One Calendar API call (alone or as a batch part); raises _Drop to drop the line."""
        with self.lock:
            self.stats["api_requests"] += 1
            fault = self._fault("call")
            if in_batch and fault in ("drop_before", "drop_after"):
                fault = "503"  # a part cannot drop the line; the batch post itself can
            if fault:
                self.stats["faults_injected"] += 1
                self.stats[f"fault_{fault}"] += 1
        if fault == "slow":
            time.sleep(self.slow_seconds)  # outside the lock: other calls go on meanwhile
        with self.lock:
            grant = self._grant(headers)
            if grant is None:
                reply = api_error(
                    401, "authError", "Request had invalid authentication credentials."
                )
                reply.headers["WWW-Authenticate"] = 'Bearer realm="https://accounts.google.com/"'
                return reply
            user, scopes = grant
            if not self.api_enabled:
                return api_error(
                    403,
                    "accessNotConfigured",
                    "Google Calendar API has not been used in project 123456 before or it is "
                    "disabled. Enable it by visiting https://console.developers.google.com/apis/"
                    "api/calendar-json.googleapis.com/overview?project=123456 then retry.",
                )
            if fault in ("429", "403rate", "500", "503"):
                return _fault_reply(fault)
            if fault == "drop_before":
                raise _Drop()
            rejected = self._quota_reply(user)
            if rejected is not None:
                return rejected
            reply = self._dispatch(method, target, user, scopes, body, headers)
            if fault == "drop_after":
                raise _Drop()
            return reply

    def _quota_reply(self, user: str) -> _Reply | None:
        if self.usage_limited[user] > 0:
            self.usage_limited[user] -= 1
            self.stats["usage_limit_rejections"] += 1
            return api_error(403, "quotaExceeded", "Calendar usage limits exceeded.")
        if self._user_quota_args is not None:
            bucket = self._user_quota.get(user)
            if bucket is None:
                bucket = self._user_quota[user] = _Bucket(*self._user_quota_args)
            if not bucket.take():
                self.stats["quota_rejections"] += 1
                self.stats["user_quota_rejections"] += 1
                return api_error(403, "userRateLimitExceeded", "User Rate Limit Exceeded")
        if self._project_quota is not None and not self._project_quota.take():
            self.stats["quota_rejections"] += 1
            self.stats["project_quota_rejections"] += 1
            return api_error(403, "rateLimitExceeded", "Rate Limit Exceeded")
        return None

    def _dispatch(
        self,
        method: str,
        target: str,
        user: str,
        scopes: frozenset[str],
        body: bytes,
        headers: Any = None,
    ) -> _Reply:
        url = urllib.parse.urlsplit(target)
        query = urllib.parse.parse_qs(url.query, keep_blank_values=True)
        match = re.fullmatch(r"/calendar/v3/calendars/([^/]+)/events(?:/([^/]+))?", url.path)
        if match is None:
            return api_error(404, "notFound", "Not Found")
        calendar_id = urllib.parse.unquote(match.group(1))
        event_id = urllib.parse.unquote(match.group(2)) if match.group(2) else None
        owner = user
        if calendar_id in self.shared:
            # A secondary calendar: only the users it is shared with see it (CalendarList;
            # Acl roles), and only a writer (or owner) changes its events.
            role = self.shared[calendar_id].get(user)
            if role is None:
                return api_error(404, "notFound", "Not Found")
            if method != "GET" and role not in ("writer", "owner"):
                return api_error(
                    403, "requiredAccessLevel", "You need to have writer access to this calendar."
                )
            owner = calendar_id
        elif calendar_id != "primary" and self.aliases.get(calendar_id, calendar_id) != user:
            return api_error(404, "notFound", "Not Found")
        needed = READ_SCOPES if method == "GET" else WRITE_SCOPES
        if not scopes & needed:
            return api_error(
                403, "insufficientPermissions", "Request had insufficient authentication scopes."
            )
        if method != "GET":
            self.stats[f"{method.lower()}_requests"] += 1
            send_updates = query.get("sendUpdates")
            if send_updates != ["none"]:
                self.stats["writes_without_send_updates_none"] += 1
            if send_updates and send_updates[0] not in SEND_UPDATES:
                return api_error(400, "invalid", "Invalid value for: sendUpdates")
        calendar = self.calendars.setdefault(owner, {})
        try:
            payload = json.loads(body) if body else {}
        except ValueError:
            return api_error(400, "parseError", "Parse Error")
        if method == "POST" and event_id is None:
            return self._insert(owner, calendar, payload, calendar_id)
        if method == "GET" and event_id is None:
            reply = self._list(calendar, query)
            if reply.status == 200:  # Events: list gives the caller's access role
                role = self.shared[calendar_id][user] if calendar_id in self.shared else "owner"
                reply.body["accessRole"] = role
            return reply
        if event_id is None:
            return api_error(404, "notFound", "Not Found")
        event = calendar.get(event_id)
        if method == "GET":
            self.stats["get_requests"] += 1
            # get "always returns" cancelled events too (Events resource, status).
            return _Reply(200, self._shown(event)) if event else _not_found()
        if_match = headers.get("If-Match", "") if headers else ""
        if method in ("PUT", "PATCH", "DELETE") and event is not None and if_match:
            # Conditional modification (Get specific versions of resources): the write
            # happens only if the event has not changed since that etag.
            if if_match != event["etag"]:
                self.stats["precondition_failed"] += 1
                return api_error(412, "conditionNotMet", "Precondition Failed")
        if method == "DELETE":
            if event is None:
                return _not_found()
            if event["status"] == "cancelled":
                return api_error(410, "deleted", "Resource has been deleted")
            event["status"] = "cancelled"
            event["etag"] = self._etag()
            event["updated"] = _now()
            return _Reply(204)
        if method in ("PUT", "PATCH"):
            if event is None:
                return _not_found()
            if method == "PATCH":
                merged = dict(event, **payload)
            else:
                merged = dict(payload)
                # "If unset, 'default' type will be used" (Event types): a full update
                # without eventType asks for a default event.
                merged.setdefault("eventType", "default")
                if "start" not in merged or "end" not in merged:
                    return api_error(400, "required", "Missing time.")
            if merged.get("eventType", "default") != event.get("eventType", "default"):
                self.stats["event_type_change_refused"] += 1
                return api_error(400, "eventTypeRestriction", "Event type cannot be changed.")
            problem = _validate(merged, calendar_id)
            if problem:
                return problem
            for kept in ("id", "created", "iCalUID", "kind", "htmlLink", "organizer", "creator"):
                merged[kept] = event[kept]
            # An update restores a deleted event: on the organizer's calendar cancelled
            # events keep their details "so that they can be restored" (Events, status).
            merged.setdefault("status", "confirmed")
            if event["status"] == "cancelled" and merged["status"] != "cancelled":
                self.stats["events_restored"] += 1
            merged["sequence"] = event.get("sequence", 0) + 1
            merged["etag"] = self._etag()
            merged["updated"] = _now()
            calendar[event_id] = _normalise_times(_store_properties(merged))
            return _Reply(200, copy.deepcopy(calendar[event_id]))
        return api_error(405, "methodNotAllowed", "Method Not Allowed")

    def _insert(
        self, user: str, calendar: dict[str, Any], payload: dict[str, Any], calendar_id: str
    ) -> _Reply:
        event_id = payload.get("id")
        if event_id is not None and not _EVENT_ID.fullmatch(str(event_id)):
            return api_error(400, "invalid", "Invalid resource id value.")
        if event_id in calendar:
            # A deleted event keeps its id: inserting it again is a duplicate too.
            self.stats["insert_conflicts"] += 1
            return api_error(409, "duplicate", "The requested identifier already exists.")
        if "start" not in payload or "end" not in payload:
            return api_error(400, "required", "Missing time.")
        if payload.get("eventType") == "fromGmail":
            return api_error(400, "eventTypeRestriction", "Events from Gmail cannot be created.")
        problem = _validate(payload, calendar_id)
        if problem:
            return problem
        stored = self._new_event(user, _store_properties(payload))
        calendar[stored["id"]] = stored
        self.stats["events_created"] += 1
        return _Reply(200, copy.deepcopy(stored))

    def _new_event(self, user: str, payload: dict[str, Any]) -> dict[str, Any]:
        event = dict(payload)
        event.setdefault("id", uuid.uuid4().hex)
        event.setdefault("status", "confirmed")
        event.setdefault("eventType", "default")
        event.update(
            kind="calendar#event",
            etag=self._etag(),
            created=_now(),
            updated=_now(),
            sequence=0,
            iCalUID=f"{event['id']}@google.com",
            htmlLink=f"https://www.google.com/calendar/event?eid={event['id']}",
            organizer={"email": user, "self": True},
            creator={"email": self.service_account_email},
        )
        return _normalise_times(event)

    def _list(self, calendar: dict[str, Any], query: dict[str, list[str]]) -> _Reply:
        self.stats["list_requests"] += 1
        show_deleted = query.get("showDeleted", ["false"])[0] == "true"
        wanted = []
        for constraint in query.get("privateExtendedProperty", []):
            name, equals, value = constraint.partition("=")
            if not equals or not name:
                return api_error(400, "invalid", "Invalid extended property constraint.")
            wanted.append((name, value))
        types = set(query.get("eventTypes", []))
        try:
            time_min = _rfc3339(query["timeMin"][0]) if "timeMin" in query else None
            time_max = _rfc3339(query["timeMax"][0]) if "timeMax" in query else None
        except ValueError as exc:
            return api_error(400, "invalid", f"Bad Request: {exc}")
        if time_min is not None and time_max is not None and time_max <= time_min:
            return api_error(400, "timeRangeEmpty", "The specified time range is empty.")
        try:
            max_results = int(query.get("maxResults", ["250"])[0])
            offset = int(query.get("pageToken", ["0"])[0] or "x")
        except ValueError:
            return api_error(400, "invalid", "Invalid value for: maxResults or pageToken")
        if max_results < 1:
            return api_error(400, "invalid", "Invalid value for: maxResults")
        page_size = min(max_results, MAX_PAGE, self.max_page_size)
        matches = []
        for stored in sorted(calendar.values(), key=lambda e: e["id"]):
            if stored["status"] == "cancelled" and not show_deleted:
                continue
            if stored["id"] in self.hidden_from_list:
                continue
            event = self._shown(stored)
            if types and event.get("eventType", "default") not in types:
                continue
            private = (event.get("extendedProperties") or {}).get("private") or {}
            # Repeated constraints are OR'ed (Extended properties guide); the Events: list
            # reference says AND. A client that relies on either is wrong somewhere.
            if wanted and not any(private.get(k) == v for k, v in wanted):
                continue
            start, end = _event_instant(event["start"]), _event_instant(event["end"])
            if time_min is not None and end <= time_min:
                continue
            if time_max is not None and start >= time_max:
                continue
            matches.append(event)
        page = matches[offset : offset + page_size]
        body: dict[str, Any] = {"kind": "calendar#events", "items": page}
        if offset + page_size < len(matches):
            body["nextPageToken"] = str(offset + page_size)
        return _Reply(200, body)

    def _shown(self, event: dict[str, Any]) -> dict[str, Any]:
        if event["status"] == "cancelled" and not self.keep_deleted_details:
            return {k: event[k] for k in ("kind", "id", "etag", "status", "start", "end")}
        return copy.deepcopy(event)

    def _etag(self) -> str:
        return f'"{next(self._etags)}"'

    # -- batch -----------------------------------------------------------------------------

    def _batch(self, headers: Any, body: bytes) -> tuple[_Reply, bytes | None]:
        """Run a multipart/mixed batch (Send batch requests); the reply and its raw body."""
        with self.lock:
            self.stats["batch_requests"] += 1
        content_type = headers.get("Content-Type", "")
        if not content_type.lower().startswith("multipart/mixed"):
            return api_error(400, "badRequest", "A batch request must be multipart/mixed."), None
        message = email.parser.BytesParser(policy=email.policy.compat32).parsebytes(
            f"Content-Type: {content_type}\r\n\r\n".encode() + body
        )
        if not message.is_multipart():
            return api_error(400, "badRequest", "Batch body is not multipart/mixed."), None
        parts = message.get_payload()
        if len(parts) > MAX_BATCH:
            return api_error(400, "badRequest", f"A batch holds at most {MAX_BATCH} calls."), None
        calls = []
        for part in parts:
            # "Each part begins with its own Content-Type: application/http HTTP header."
            if part.get_content_type() != "application/http":
                return api_error(400, "badRequest", "Each part must be application/http."), None
            inner = part.get_payload(decode=False)
            request_line, _, rest = inner.partition("\n")
            try:
                method, target, _version = request_line.strip().split(" ", 2)
            except ValueError:
                return api_error(400, "badRequest", "Malformed request line in a part."), None
            # "The HTTP request must only contain the path portion of the URL."
            if not target.startswith("/") or urllib.parse.urlsplit(target).netloc:
                return api_error(400, "badRequest", "Full URLs are not allowed in a batch."), None
            # "All the inner requests must go to the same Google API."
            if not target.startswith("/calendar/v3/"):
                return api_error(400, "badRequest", "Every call must go to calendar v3."), None
            head, _, inner_body = rest.replace("\r\n", "\n").partition("\n\n")
            inner_headers = email.parser.Parser().parsestr(head + "\n\n", headersonly=True)
            calls.append((part.get("Content-ID"), method, target, inner_headers, inner_body))
        users = {
            grant[0]
            for *_, inner_headers, _ in calls
            if (grant := self._grant(_MergedHeaders(inner_headers, headers))) is not None
        }
        lists = sum(
            method == "GET" and _LIST_PATH.fullmatch(urllib.parse.urlsplit(target).path) is not None
            for _, method, target, _, _ in calls
        )
        with self.lock:
            if lists == len(calls):
                self.stats["list_only_batches"] += 1  # look-ups before creates
            self.stats["batch_parts"] += len(calls)
            self.stats["max_batch_parts"] = max(self.stats["max_batch_parts"], len(calls))
            if len(users) > 1:
                self.stats["multi_user_batches"] += 1
            order = list(range(len(calls)))
            self.batch_order_rng.shuffle(order)
        replies: dict[int, _Reply] = {}
        for index in order:
            _, method, target, inner_headers, inner_body = calls[index]
            merged = _MergedHeaders(inner_headers, headers)
            replies[index] = self._call(method, target, merged, inner_body.encode("utf-8"), True)
        boundary = "batch_" + uuid.uuid4().hex
        out = []
        for index, (content_id, *_rest) in enumerate(calls):
            reply = replies[index]
            payload = reply.encoded().decode("utf-8")
            reason = _REASONS.get(reply.status, "Error")
            lines = [f"--{boundary}", "Content-Type: application/http"]
            if content_id:
                lines.append(f"Content-ID: <response-{content_id.strip().strip('<>')}>")
            lines.extend(["", f"HTTP/1.1 {reply.status} {reason}"])
            if reply.body is not None:
                lines.append("Content-Type: application/json; charset=UTF-8")
            lines.extend(f"{k}: {v}" for k, v in reply.headers.items())
            lines.extend([f"Content-Length: {len(payload.encode())}", "", payload])
            out.append("\r\n".join(lines))
        raw = ("\r\n".join(out) + f"\r\n--{boundary}--\r\n").encode("utf-8")
        return _Reply(200, None, {"Content-Type": f"multipart/mixed; boundary={boundary}"}), raw

    def _grant(self, headers: Any) -> tuple[str, frozenset[str]] | None:
        auth = headers.get("Authorization", "") if headers else ""
        return self.tokens.get(auth[7:]) if auth.startswith("Bearer ") else None


class _MergedHeaders:
    """A batch part's headers, falling back to the outer request's (Authorization)."""

    def __init__(self, inner: Any, outer: Any) -> None:
        self.inner, self.outer = inner, outer

    def get(self, name: str, default: str = "") -> str:
        value = self.inner.get(name)
        return value if value is not None else self.outer.get(name, default)


def _fault_reply(kind: str) -> _Reply:
    if kind == "429":
        reply = api_error(429, "rateLimitExceeded", "Rate Limit Exceeded")
        reply.headers["Retry-After"] = "0"
        return reply
    if kind == "403rate":
        return api_error(403, "rateLimitExceeded", "Rate Limit Exceeded")
    if kind == "500":
        return api_error(500, "backendError", "Backend Error")
    return api_error(503, "backendError", "The service is currently unavailable.")


def _not_found() -> _Reply:
    return api_error(404, "notFound", "Not Found")


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _validate(event: dict[str, Any], calendar_id: str) -> _Reply | None:
    """The Events resource's rules for an event being written; an error reply, or None."""
    start, end = event.get("start"), event.get("end")
    if not start or not end:
        return api_error(400, "required", "Missing time.")
    if ("date" in start) != ("date" in end):
        return api_error(
            400, "invalid", "Start and end times must either both be date or both be dateTime."
        )
    for name, when in (("start", start), ("end", end)):
        zone = when.get("timeZone")
        if zone is not None and not _is_zone(zone):
            return api_error(400, "invalid", f"Invalid time zone definition for {name} time.")
        if "dateTime" in when and zone is None and not _has_offset(when["dateTime"]):
            # "A time zone offset is required unless a time zone is explicitly specified."
            return api_error(400, "invalid", f"Missing time zone definition for {name} time.")
    try:
        if _event_instant(end) <= _event_instant(start):
            return api_error(400, "timeRangeEmpty", "The specified time range is empty.")
    except (KeyError, ValueError):
        return api_error(400, "invalid", "Invalid start or end time.")
    for field_name, allowed in _ENUMS.items():
        if field_name in event and event[field_name] not in allowed:
            return api_error(400, "invalid", f"Invalid value for: {field_name}")
    event_type = event.get("eventType", "default")
    if event_type not in EVENT_TYPES:
        return api_error(400, "invalid", "Invalid value for: eventType")
    if event_type == "outOfOffice":
        # Manage focus time, out of office, and working location events.
        if calendar_id != "primary":
            return api_error(
                400, "eventTypeRestriction", "Secondary calendars can't have status events."
            )
        if "date" in start:
            return api_error(
                400, "eventTypeRestriction", "Out of office events cannot be all-day events."
            )
        if "outOfOfficeProperties" not in event:
            return api_error(400, "required", "outOfOfficeProperties is required.")
        if event.get("transparency", "opaque") != "opaque":
            return api_error(400, "invalid", "Out of office events must be opaque.")
    reminders = (event.get("reminders") or {}).get("overrides") or []
    if len(reminders) > MAX_REMINDER_OVERRIDES:
        return api_error(400, "invalid", "The maximum number of override reminders is 5.")
    properties = event.get("extendedProperties") or {}
    pairs = [
        (k, v) for kind in ("private", "shared") for k, v in (properties.get(kind) or {}).items()
    ]
    size = sum(len(k) + len(str(v)) for k, v in pairs)
    if len(pairs) > MAX_PROPERTIES or size > MAX_PROPERTY_BYTES:
        return api_error(400, "invalid", "Too many extended properties.")
    if event.get("attendees"):
        return api_error(400, "invalid", "This emulator takes no attendees (leavesync sends none).")
    return None


def _store_properties(event: dict[str, Any]) -> dict[str, Any]:
    """Long keys are silently dropped and long values truncated (Extended properties)."""
    properties = event.get("extendedProperties")
    if properties:
        event["extendedProperties"] = {
            kind: {
                k: str(v)[:MAX_PROPERTY_VALUE]
                for k, v in (values or {}).items()
                if len(k) <= MAX_PROPERTY_KEY and v is not None
            }
            for kind, values in properties.items()
        }
    return event


def _is_zone(name: str) -> bool:
    try:
        ZoneInfo(name)
    except (ValueError, KeyError, OSError):
        return False
    return True


def _has_offset(text: str) -> bool:
    try:
        return dt.datetime.fromisoformat(text.replace("Z", "+00:00")).tzinfo is not None
    except ValueError:
        return False


def _rfc3339(text: str) -> dt.datetime:
    """An RFC3339 timestamp "with mandatory time zone offset" (Events: list, timeMin)."""
    value = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    if value.tzinfo is None:
        raise ValueError(f"{text!r} has no time zone offset")
    return value


def _instant(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))


def _event_instant(when: dict[str, Any]) -> dt.datetime:
    if "date" in when:
        return dt.datetime.fromisoformat(when["date"] + "T00:00:00+00:00")
    value = dt.datetime.fromisoformat(when["dateTime"].replace("Z", "+00:00"))
    if value.tzinfo is None:
        value = value.replace(tzinfo=ZoneInfo(when.get("timeZone", "UTC")))
    return value


def _normalise_times(event: dict[str, Any]) -> dict[str, Any]:
    # Google answers dateTime with an explicit offset, in the event's time zone.
    for key in ("start", "end"):
        when = event.get(key)
        if when and "dateTime" in when:
            instant = _event_instant(when)
            zone = ZoneInfo(when.get("timeZone", "UTC"))
            event[key] = dict(when, dateTime=instant.astimezone(zone).isoformat())
    return event


def _handler_for(emulator: GoogleCalendarEmulator) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            pass  # keep test output quiet

        def _body(self) -> bytes:
            length = int(self.headers.get("Content-Length") or 0)
            return self.rfile.read(length) if length else b""

        def _send(self, reply: _Reply, raw: bytes | None = None) -> None:
            data = raw if raw is not None else reply.encoded()
            self.send_response(reply.status, _REASONS.get(reply.status))
            if reply.body is not None:
                self.send_header("Content-Type", "application/json; charset=UTF-8")
            for key, value in reply.headers.items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _drop(self) -> None:
            self.close_connection = True
            emulator.stats["dropped_connections"] += 1

        def _handle(self) -> None:
            body = self._body()
            emulator.stats["http_requests"] += 1
            path = urllib.parse.urlsplit(self.path).path
            if path == "/token" and self.command == "POST":
                form = dict(urllib.parse.parse_qsl(body.decode("utf-8")))
                with emulator.lock:
                    reply = emulator._token(form)
                self._send(reply)
                return
            if path == "/batch/calendar/v3" and self.command == "POST":
                with emulator.lock:
                    fault = emulator._fault("batch")
                if fault:
                    emulator.stats["faults_injected"] += 1
                    emulator.stats[f"batch_fault_{fault}"] += 1
                if fault == "drop_before":
                    self._drop()
                    return
                if fault in ("429", "500", "503"):
                    self._send(_fault_reply(fault))
                    return
                if fault == "slow":
                    time.sleep(emulator.slow_seconds)
                reply, raw = emulator._batch(self.headers, body)
                if fault == "drop_after":
                    self._drop()  # every part took effect, the answer is lost
                    return
                self._send(reply, raw)
                return
            try:
                reply = emulator._call(self.command, self.path, self.headers, body, False)
            except _Drop:
                self._drop()
                return
            self._send(reply)

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _handle

    return Handler


def make_service_account(client_email: str = "leavesync@example-project.iam.gserviceaccount.com"):
    """A fresh RSA service-account key: (key JSON info with PEM private key, public key)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode("ascii")
    info = {
        "type": "service_account",
        "project_id": "example-project",
        "private_key_id": base64.b16encode(uuid.uuid4().bytes).decode().lower(),
        "private_key": pem,
        "client_email": client_email,
        "client_id": "112233445566778899000",
        "token_uri": "https://oauth2.googleapis.com/token",
    }
    return info, key.public_key()


try:
    import pytest

    @pytest.fixture
    def google_calendar():
        """A running emulator for users alice/bob/carol@example.com, with its key info."""
        info, public_key = make_service_account()
        users = {"alice@example.com", "bob@example.com", "carol@example.com"}
        emulator = GoogleCalendarEmulator(info["client_email"], public_key, users).start()
        emulator.key_info = info
        yield emulator
        emulator.stop()

except ImportError:  # the benchmark imports this module without pytest
    pass
