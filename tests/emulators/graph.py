"""An emulator of Microsoft Graph calendar events and the Entra ID v2.0 token endpoint.

Served over HTTPS on 127.0.0.1 with a throw-away certificate authority, so the real msal and
requests stacks run against it unchanged. Built from the Microsoft Graph v1.0 reference
(event resource, JSON batching, throttling guidance) and the Microsoft identity platform
client-credentials flow, at least as strict as the service: batches fully parallel or fully
sequential (424 after a failure), Windows time zone names on writes, the documented filter
forms, Deleted Items reachable by immutable id, transactionId remembered only briefly.
It enforces the Outlook limits (4 concurrent requests per mailbox, requests per window per
mailbox and per app) at a configurable scale, counts what it saw, and injects faults (429
with Retry-After, 503, dropped connections, slow responses). Every rule, with its source
and test: tests/emulators/README.md.

Use ``GraphEmulator.start()`` as a context manager, or the ``graph_emulator`` fixture.
"""

from __future__ import annotations

import base64
import collections
import datetime as dt
import hashlib
import json
import random
import re
import secrets
import socket
import ssl
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlencode, urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import jwt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from tests.emulators.graph_zones import ADDITIONAL_ALIASES, ADDITIONAL_ZONES, WINDOWS_ZONES
from tests.emulators.pki import TestPki, make_test_pki

GRAPH_SCOPE = "https://graph.microsoft.com/.default"
FAULT_KINDS = ("429", "503", "drop_before", "drop_after", "slow")
# "event resource type": the enumerations our client writes.
ENUMS = {
    "showAs": ("free", "tentative", "busy", "oof", "workingElsewhere", "unknown"),
    "sensitivity": ("normal", "personal", "private", "confidential"),
}
# "Outlook extended properties overview": a named string property's id.
PROPERTY_ID = re.compile(r"String \{[0-9a-fA-F]{8}(-[0-9a-fA-F]{4}){3}-[0-9a-fA-F]{12}\} Name \S+")
# Where an event keeps its start and end instants (computed once, when written).
_INSTANTS = "_instants"
# Collections of a user's calendar events; none of them holds Deleted Items.
LISTINGS = ("/events", "/calendar/events", "/calendarView", "/calendar/calendarView")


# --------------------------------------------------------------------------- TLS material


def make_client_certificate() -> tuple[str, str, str]:
    """A self-signed app certificate: (private key + certificate PEM, certificate PEM, SHA-1)."""
    now = dt.datetime.now(dt.UTC)
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "leavesync app")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .sign(key, hashes.SHA256())
    )
    cert_pem = cert.public_bytes(serialization.Encoding.PEM).decode()
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    return key_pem + cert_pem, cert_pem, cert.fingerprint(hashes.SHA1()).hex().upper()


# --------------------------------------------------------------------------- state


@dataclass
class AppRegistration:
    """An Entra ID app registration: its credentials and the application permissions granted."""

    client_id: str
    secret: str | None = None
    certificate_pem: str | None = None
    roles: tuple[str, ...] = ("Calendars.ReadWrite",)


@dataclass
class Mailbox:
    """One user's calendar, their Deleted Items, and the transactionIds seen on create."""

    address: str
    events: dict[str, dict[str, Any]] = field(default_factory=dict)
    # Deleted Items: events deleted by the user (or by DELETE), still reachable by id.
    deleted: dict[str, dict[str, Any]] = field(default_factory=dict)
    # transactionId -> (monotonic time of the create, the create's response)
    transactions: dict[str, tuple[float, dict[str, Any]]] = field(default_factory=dict)
    in_flight: int = 0
    max_in_flight: int = 0
    requests: collections.deque = field(default_factory=collections.deque)


class GraphError(Exception):
    """An error response in Graph's JSON error format."""

    def __init__(
        self, status: int, code: str, message: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "code": self.code,
                "message": self.message,
                "innerError": {"request-id": str(uuid.uuid4()), "date": _now_iso()},
            }
        }


class Dropped(Exception):
    """Close the connection without a response."""


@dataclass
class Fault:
    """A scripted fault: applies to the next ``times`` requests whose target matches."""

    kind: str
    times: int = 1
    method: str | None = None
    mailbox: str | None = None
    retry_after: float | None = 0.01
    in_batch: bool | None = None  # None: top-level or inside a batch
    seconds: float = 0.05  # for "slow"


@dataclass
class Stats:
    """What the emulator saw (for assertions and the benchmark)."""

    token_requests: int = 0
    http_requests: int = 0
    batch_requests: int = 0
    sub_requests: int = 0
    batch_sizes: list[int] = field(default_factory=list)
    writes_without_immutable_id: int = 0
    throttled: collections.Counter = field(default_factory=collections.Counter)
    faults: collections.Counter = field(default_factory=collections.Counter)
    max_mailbox_concurrency: int = 0
    admitted: list[float] = field(default_factory=list)  # monotonic time of each event request
    connections: int = 0  # TCP connections accepted
    methods: collections.Counter = field(default_factory=collections.Counter)  # event requests
    batch_shapes: collections.Counter = field(default_factory=collections.Counter)


# --------------------------------------------------------------------------- the emulator


class GraphEmulator:
    """State and behaviour of the emulated tenant; the HTTP handler delegates here."""

    def __init__(self, pki: TestPki, tenant_id: str = "contoso-tenant") -> None:
        self.pki = pki
        self.tenant_id = tenant_id
        self.apps: dict[str, AppRegistration] = {}
        self.mailboxes: dict[str, Mailbox] = {}
        # Users that do not exist, and users without an Exchange Online mailbox.
        self.unknown_users: set[str] = set()
        self.no_mailbox: set[str] = set()
        # A user's other SMTP addresses (proxyAddresses "smtp:"), by address -> the primary
        # address of the mailbox they reach: a renamed user keeps the old one by default.
        self.aliases: dict[str, str] = {}
        # Mailboxes outside the application access policy / RBAC scope.
        self.denied_mailboxes: set[str] = set()
        self.token_lifetime = 3599
        self.revoked_tokens = False
        self.signing_key = secrets.token_bytes(32)
        self.tokens: dict[str, float] = {}
        # Limits, as in the Graph throttling guidance, scaled down as tests wish.
        self.mailbox_concurrency = 4
        self.enforce_concurrency = True
        self.mailbox_limit: tuple[int, float] | None = None  # (requests, window seconds)
        self.app_limit: tuple[int, float] | None = None
        self.app_requests: collections.deque = collections.deque()
        self.batch_parallelism = 4  # Graph dispatches up to 4 sub-requests of a batch at once
        self.latency = 0.0  # service time of each event request, seconds
        self.max_page_size = 1000
        # Graph documents transactionId as protection against a client's retries of one
        # create; nothing longer is promised, so a reuse later creates a new event.
        self.transaction_window = 60.0
        # Faults: scripted ones first, then random ones at ``fault_rate``.
        self.scripted: list[Fault] = []
        self.fault_rate = 0.0
        self.fault_kinds: tuple[str, ...] = FAULT_KINDS
        self.rng = random.Random(1234)
        self.stats = Stats()
        self.lock = threading.RLock()
        self.server: ThreadingHTTPServer | None = None
        self.pool = ThreadPoolExecutor(max_workers=64, thread_name_prefix="graph-batch")

    # ----------------------------------------------------------------- set-up helpers

    @property
    def base_url(self) -> str:
        assert self.server is not None
        return f"https://127.0.0.1:{self.server.server_address[1]}"

    def register_app(
        self,
        client_id: str = "11111111-2222-3333-4444-555555555555",
        secret: str | None = "s3cr3t-value",
        certificate_pem: str | None = None,
        roles: tuple[str, ...] = ("Calendars.ReadWrite",),
    ) -> AppRegistration:
        app = AppRegistration(client_id, secret, certificate_pem, roles)
        self.apps[client_id] = app
        return app

    def mailbox(self, address: str) -> Mailbox:
        with self.lock:
            key = address.lower()
            if key not in self.mailboxes:
                self.mailboxes[key] = Mailbox(key)
            return self.mailboxes[key]

    def rename_user(self, old: str, new: str, keep_alias: bool = True) -> None:
        """The user's address becomes ``new``, mailbox and events with it; the old address
        stays one of their proxy addresses (``keep_alias``) or names no user any more."""
        old, new = old.lower(), new.lower()
        with self.lock:
            box = self.mailboxes.pop(old)
            box.address = new
            self.mailboxes[new] = box
            for alias, primary in list(self.aliases.items()):
                if primary == old:
                    self.aliases[alias] = new
            if keep_alias:
                self.aliases[old] = new
            else:
                self.unknown_users.add(old)

    def remove_mailbox(self, address: str) -> None:
        """The user left: the mailbox is soft-deleted, its events unreachable."""
        with self.lock:
            self.mailboxes.pop(address.lower(), None)
            self.no_mailbox.add(address.lower())

    def events(self, address: str) -> list[dict[str, Any]]:
        """All events of a mailbox, as stored (extended properties included)."""
        with self.lock:
            return [_stored(e) for e in self.mailbox(address).events.values()]

    def deleted_events(self, address: str) -> list[dict[str, Any]]:
        """The events in a mailbox's Deleted Items."""
        with self.lock:
            return [_stored(e) for e in self.mailbox(address).deleted.values()]

    def user_deletes(self, address: str, event_id: str) -> None:
        """The user deletes an event in Outlook: it moves to Deleted Items, its id still works."""
        with self.lock:
            box = self.mailbox(address)
            box.deleted[event_id] = box.events.pop(event_id)

    def add_foreign_event(self, address: str, subject: str, start: str, end: str) -> str:
        """An event somebody else created (no leavesync tag): we must never touch it."""
        body = {
            "subject": subject,
            "start": {"dateTime": start, "timeZone": "UTC"},
            "end": {"dateTime": end, "timeZone": "UTC"},
        }
        with self.lock:
            return self._create(self.mailbox(address), body, {})["id"]

    def expire_tokens(self) -> None:
        """Every access token issued so far stops working (expiry, revocation)."""
        with self.lock:
            self.tokens.clear()

    def fault(self, kind: str, **kwargs: Any) -> Fault:
        """Script a fault for the next matching request(s)."""
        assert kind in FAULT_KINDS + ("500",), kind
        f = Fault(kind, **kwargs)
        with self.lock:
            self.scripted.append(f)
        return f

    # ----------------------------------------------------------------- identity platform

    def openid_configuration(self, tenant: str) -> dict[str, Any]:
        base = f"{self.base_url}/{tenant}"
        return {
            "token_endpoint": f"{base}/oauth2/v2.0/token",
            "authorization_endpoint": f"{base}/oauth2/v2.0/authorize",
            "device_authorization_endpoint": f"{base}/oauth2/v2.0/devicecode",
            "issuer": f"{self.base_url}/{self.tenant_id}/v2.0",
            "token_endpoint_auth_methods_supported": ["client_secret_post", "private_key_jwt"],
        }

    def issue_token(self, tenant: str, form: dict[str, str]) -> tuple[int, dict[str, Any]]:
        """The v2.0 token endpoint, client-credentials grant (secret or certificate)."""
        with self.lock:
            self.stats.token_requests += 1

        def oauth_error(status: int, error: str, aadsts: str) -> tuple[int, dict[str, Any]]:
            return status, {
                "error": error,
                "error_description": f"{aadsts} Trace ID: {uuid.uuid4()}",
                "error_codes": [int(re.match(r"AADSTS(\d+)", aadsts).group(1))],
                "timestamp": _now_iso(),
            }

        if tenant != self.tenant_id:
            return oauth_error(400, "invalid_request", f"AADSTS90002: Tenant '{tenant}' not found.")
        if form.get("grant_type") != "client_credentials":
            return oauth_error(400, "unsupported_grant_type", "AADSTS7000218: bad grant type.")
        app = self.apps.get(form.get("client_id", ""))
        if app is None:
            return oauth_error(
                400,
                "unauthorized_client",
                f"AADSTS700016: Application with identifier '{form.get('client_id')}' was "
                "not found in the directory.",
            )
        # The emulator is the Graph resource at its own URL, as a sovereign cloud would be.
        if form.get("scope") not in (GRAPH_SCOPE, f"{self.base_url}/.default"):
            return oauth_error(
                400, "invalid_scope", "AADSTS1002012: The provided scope is invalid."
            )
        if "client_secret" in form:
            if app.secret is None or not secrets.compare_digest(form["client_secret"], app.secret):
                return oauth_error(
                    401,
                    "invalid_client",
                    "AADSTS7000215: Invalid client secret provided. Ensure the secret being "
                    "sent in the request is the client secret value, not the client secret ID.",
                )
        elif "client_assertion" in form:
            if not self._assertion_ok(app, tenant, form["client_assertion"]):
                return oauth_error(
                    401,
                    "invalid_client",
                    "AADSTS700027: Client assertion failed signature validation.",
                )
        else:
            return oauth_error(401, "invalid_client", "AADSTS7000216: client credential missing.")
        now = time.time()
        claims = {
            "aud": "https://graph.microsoft.com",
            "iss": f"https://sts.windows.net/{self.tenant_id}/",
            "tid": self.tenant_id,
            "appid": app.client_id,
            "roles": list(app.roles),
            "iat": int(now),
            "exp": int(now + self.token_lifetime),
            "jti": str(uuid.uuid4()),
        }
        token = jwt.encode(claims, self.signing_key, algorithm="HS256")
        with self.lock:
            self.tokens[token] = now + self.token_lifetime
        return 200, {
            "token_type": "Bearer",
            "expires_in": self.token_lifetime,
            "ext_expires_in": self.token_lifetime,
            "access_token": token,
        }

    def _assertion_ok(self, app: AppRegistration, tenant: str, assertion: str) -> bool:
        if not app.certificate_pem:
            return False
        cert = x509.load_pem_x509_certificate(app.certificate_pem.encode())
        header = jwt.get_unverified_header(assertion)
        sha1 = base64.urlsafe_b64encode(cert.fingerprint(hashes.SHA1())).rstrip(b"=").decode()
        sha256 = base64.urlsafe_b64encode(cert.fingerprint(hashes.SHA256())).rstrip(b"=").decode()
        # base64url thumbprints, with or without padding
        given = {
            str(header.get("x5t", "")).rstrip("="),
            str(header.get("x5t#S256", "")).rstrip("="),
        }
        if sha1 not in given and sha256 not in given:
            return False
        try:
            claims = jwt.decode(
                assertion,
                cert.public_key(),
                algorithms=["RS256", "PS256"],
                audience=self.openid_configuration(tenant)["token_endpoint"],
            )
        except jwt.PyJWTError:
            return False
        return claims.get("iss") == app.client_id and claims.get("sub") == app.client_id

    def _authorize(self, headers: dict[str, str]) -> dict[str, Any]:
        auth = headers.get("authorization", "")
        token = auth[7:] if auth.lower().startswith("bearer ") else ""
        with self.lock:
            expires = self.tokens.get(token)
        if not token or expires is None or expires < time.time() or self.revoked_tokens:
            raise GraphError(
                401,
                "InvalidAuthenticationToken",
                "Access token is empty." if not token else "Lifetime validation failed.",
            )
        return jwt.decode(
            token,
            self.signing_key,
            algorithms=["HS256"],
            audience=None,
            options={"verify_aud": False},
        )

    # ----------------------------------------------------------------- throttling

    def _admit(self, address: str) -> None:
        """Apply the per-app and per-mailbox limits to one event request; raise 429 if over."""
        now = time.monotonic()
        with self.lock:
            if self.app_limit:
                limit, window = self.app_limit
                while self.app_requests and self.app_requests[0] <= now - window:
                    self.app_requests.popleft()
                if len(self.app_requests) >= limit:
                    wait = self.app_requests[0] + window - now
                    self.stats.throttled["app"] += 1
                    raise GraphError(
                        429,
                        "ApplicationThrottled",
                        "Application is over its request limit.",
                        {"Retry-After": f"{max(wait, 0.001):.3f}"},
                    )
                self.app_requests.append(now)
            if self.mailbox_limit:
                box = self.mailbox(address)
                limit, window = self.mailbox_limit
                while box.requests and box.requests[0] <= now - window:
                    box.requests.popleft()
                if len(box.requests) >= limit:
                    wait = box.requests[0] + window - now
                    self.stats.throttled["mailbox"] += 1
                    raise GraphError(
                        429,
                        "ApplicationThrottled",
                        "Application is over its MailboxRequests limit.",
                        {"Retry-After": f"{max(wait, 0.001):.3f}"},
                    )
                box.requests.append(now)

    def _enter(self, address: str) -> Mailbox:
        with self.lock:
            self.stats.admitted.append(time.monotonic())
            box = self.mailbox(address)
            box.in_flight += 1
            box.max_in_flight = max(box.max_in_flight, box.in_flight)
            self.stats.max_mailbox_concurrency = max(
                self.stats.max_mailbox_concurrency, box.in_flight
            )
            if self.enforce_concurrency and box.in_flight > self.mailbox_concurrency:
                box.in_flight -= 1
                self.stats.throttled["concurrency"] += 1
                raise GraphError(
                    429,
                    "ApplicationThrottled",
                    "Application is over its MailboxConcurrency limit.",
                    {"Retry-After": "0.01"},
                )
            return box

    def _leave(self, box: Mailbox) -> None:
        with self.lock:
            box.in_flight -= 1

    def _take_fault(self, method: str, address: str | None, in_batch: bool) -> Fault | None:
        with self.lock:
            for f in self.scripted:
                if (
                    (f.method is None or f.method == method)
                    and (f.mailbox is None or (address or "").lower() == f.mailbox.lower())
                    and (f.in_batch is None or f.in_batch == in_batch)
                ):
                    f.times -= 1
                    if f.times <= 0:
                        self.scripted.remove(f)
                    self.stats.faults[f.kind] += 1
                    return f
            if self.fault_rate and self.rng.random() < self.fault_rate:
                kinds = [k for k in self.fault_kinds if not (in_batch and k.startswith("drop"))]
                kind = self.rng.choice(kinds)
                self.stats.faults[kind] += 1
                return Fault(kind, retry_after=self.rng.choice([None, 0.01, 0.02]))
        return None

    # ----------------------------------------------------------------- request routing

    def handle(
        self, method: str, target: str, headers: dict[str, str], body: Any, in_batch: bool
    ) -> tuple[int, dict[str, str], Any]:
        """One Graph request (top-level or inside a batch): (status, headers, JSON body)."""
        split = urlsplit(target)
        path = unquote(split.path)
        if path.startswith("/v1.0"):
            path = path[5:]
        query = {k: v[0] for k, v in parse_qs(split.query).items()}
        match = re.fullmatch(r"/users/([^/]+)(/.*)?", path)
        address = match.group(1) if match else None
        fault = self._take_fault(method, address, in_batch)
        try:
            if fault is not None:
                if fault.kind == "drop_before":
                    raise Dropped()
                if fault.kind == "slow":
                    time.sleep(fault.seconds)
                elif fault.kind in ("429", "503", "500"):
                    extra = (
                        {} if fault.retry_after is None else {"Retry-After": f"{fault.retry_after}"}
                    )
                    codes = {
                        "429": "ApplicationThrottled",
                        "503": "ServiceUnavailable",
                        "500": "InternalServerError",
                    }
                    raise GraphError(int(fault.kind), codes[fault.kind], "Injected fault.", extra)
            claims = self._authorize(headers)
            if method in ("POST", "PATCH") and "application/json" not in headers.get(
                "content-type", ""
            ):
                # "Create event" / "Update event": Content-Type application/json is required.
                raise GraphError(400, "BadRequest", "Content-Type application/json is required.")
            if path == "/$batch" and method == "POST" and not in_batch:
                result = self._batch(headers, body)
            elif match:
                result = self._user_request(
                    method, address, match.group(2) or "", query, headers, body, claims
                )
            else:
                raise GraphError(400, "BadRequest", f"Unsupported path {path}.")
        except GraphError as err:
            result = (err.status, {"Content-Type": "application/json", **err.headers}, err.body())
        if fault is not None and fault.kind == "drop_after":
            raise Dropped()
        return result

    def _user_request(
        self,
        method: str,
        address: str,
        rest: str,
        query: dict[str, str],
        headers: dict[str, str],
        body: Any,
        claims: dict[str, Any],
    ) -> tuple[int, dict[str, str], Any]:
        # An Outlook resource is reached through any SMTP address of its user: a proxy
        # address reaches the same mailbox as the primary one.
        key = self.aliases.get(address.lower(), address.lower())
        if key in self.unknown_users:
            raise GraphError(404, "ErrorInvalidUser", f"The requested user '{address}' is invalid.")
        if key in self.no_mailbox:
            raise GraphError(
                404,
                "MailboxNotEnabledForRESTAPI",
                "The mailbox is either inactive, soft-deleted, or is hosted on-premise.",
            )
        roles = set(claims.get("roles", []))
        writes = method in ("POST", "PATCH", "DELETE")
        if not roles & {"Calendars.ReadWrite", "Calendars.Read"} or (
            writes and "Calendars.ReadWrite" not in roles
        ):
            raise GraphError(
                403, "ErrorAccessDenied", "Access is denied. Check credentials and try again."
            )
        if key in self.denied_mailboxes:
            raise GraphError(
                403,
                "ErrorAccessDenied",
                "Access to OData is disabled: [RAOP] : Blocked by tenant configured AppOnly "
                "AccessPolicy settings.",
            )
        self._admit(key)
        box = self._enter(key)
        with self.lock:
            self.stats.methods[method] += 1
        try:
            if self.latency:
                time.sleep(self.latency)
            prefer = headers.get("prefer", "")
            if writes and 'IdType="ImmutableId"' not in prefer:
                with self.lock:
                    self.stats.writes_without_immutable_id += 1
            with self.lock:
                return self._event_op(box, method, rest, query, prefer, body)
        finally:
            self._leave(box)

    def _event_op(
        self, box: Mailbox, method: str, rest: str, query: dict[str, str], prefer: str, body: Any
    ) -> tuple[int, dict[str, str], Any]:
        json_headers = {"Content-Type": "application/json"}
        if rest == "/calendar" and method == "GET":
            return (
                200,
                json_headers,
                {
                    "id": "calendar-" + hashlib.sha1(box.address.encode()).hexdigest()[:12],
                    "name": "Calendar",
                    "canEdit": True,
                    "canShare": True,
                    "owner": {"name": box.address, "address": box.address},
                },
            )
        if rest in ("/events", "/calendar/events") and method == "POST":
            if not isinstance(body, dict):
                raise GraphError(
                    400, "ErrorInvalidRequest", "Empty Payload, JSON content expected."
                )
            txn = body.get("transactionId")
            now = time.monotonic()
            seen = box.transactions.get(txn) if txn else None
            if seen is not None and now - seen[0] <= self.transaction_window:
                # A client's retry of a create that already landed: the same answer, no second
                # event (whatever happened to the first since).
                return 201, json_headers, seen[1]
            event = self._create(box, body, query)
            rendered = self._render(event, query, prefer)
            if txn:
                box.transactions[txn] = (now, rendered)
            return 201, json_headers, rendered
        if rest in LISTINGS and method == "GET":
            return 200, json_headers, self._list(box, rest, query, prefer)
        m = re.fullmatch(r"/events/([^/]+)", rest)
        if m:
            # Immutable ids reach an event in Deleted Items too.
            event = box.events.get(m.group(1)) or box.deleted.get(m.group(1))
            if event is None:
                raise GraphError(
                    404, "ErrorItemNotFound", "The specified object was not found in the store."
                )
            if method == "GET":
                return 200, json_headers, self._render(event, query, prefer)
            if method == "DELETE":
                # "Delete event" moves it to Deleted Items; from there it is gone for good.
                if box.events.pop(event["id"], None) is not None:
                    box.deleted[event["id"]] = event
                else:
                    del box.deleted[event["id"]]
                return 204, {}, None
            if method == "PATCH":
                if not isinstance(body, dict):
                    raise GraphError(400, "ErrorInvalidRequest", "Empty Payload.")
                self._apply_fields(event, body, creating=False)
                return 200, json_headers, self._render(event, query, prefer)
        raise GraphError(405, "ErrorInvalidRequest", f"{method} {rest} is not supported.")

    # ----------------------------------------------------------------- events

    def _create(self, box: Mailbox, body: dict[str, Any], query: dict[str, str]) -> dict[str, Any]:
        event_id = "AAkALg" + base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        event: dict[str, Any] = {
            "id": event_id,
            "createdDateTime": _now_iso(),
            "subject": "",
            "body": {"contentType": "text", "content": ""},
            "isAllDay": False,
            "showAs": "busy",
            "sensitivity": "normal",
            "isReminderOn": True,
            "responseRequested": True,
            "categories": [],
            "attendees": [],
            "type": "singleInstance",
            "singleValueExtendedProperties": [],
        }
        self._apply_fields(event, body, creating=True)
        box.events[event_id] = event
        return event

    def _apply_fields(self, event: dict[str, Any], body: dict[str, Any], creating: bool) -> None:
        """Validate a create or update body as Graph does, then apply it (all or nothing)."""
        new = dict(event)
        if (
            not creating
            and "transactionId" in body
            and body["transactionId"] != event.get("transactionId")
        ):
            # "event resource type": transactionId cannot be changed in a later update.
            raise GraphError(400, "ErrorInvalidRequest", "transactionId cannot be changed.")
        for name in (
            "subject",
            "isAllDay",
            "showAs",
            "sensitivity",
            "isReminderOn",
            "responseRequested",
            "categories",
            "attendees",
            "body",
            "transactionId",
        ):
            if name in body:
                new[name] = body[name]
        for name, allowed in ENUMS.items():
            if name in body and body[name] not in allowed:
                raise GraphError(
                    400,
                    "RequestBodyRead",
                    f"Requested value '{body[name]}' was not found in the enum type of {name}.",
                )
        if "body" in body and (body["body"] or {}).get("contentType") not in ("text", "html"):
            raise GraphError(400, "RequestBodyRead", "body.contentType must be text or html.")
        if "categories" in body and not all(isinstance(c, str) for c in body["categories"]):
            raise GraphError(400, "RequestBodyRead", "categories must be strings.")
        for side in ("start", "end"):
            if side in body:
                value = body[side] or {}
                _writable_zone(value.get("timeZone"))
                _parse_local(value.get("dateTime"))
                new[side] = {"dateTime": value["dateTime"], "timeZone": value["timeZone"]}
                new["originalStartTimeZone" if side == "start" else "originalEndTimeZone"] = value[
                    "timeZone"
                ]
        if "start" not in new or "end" not in new:
            raise GraphError(400, "ErrorInvalidRequest", "start and end are required.")
        start, end = _instant(new["start"]), _instant(new["end"])
        new[_INSTANTS] = (start, end)  # kept beside the event, never rendered
        if end < start:
            raise GraphError(400, "ErrorInvalidRequest", "The end is before the start.")
        if new["isAllDay"]:
            s, e = _parse_local(new["start"]["dateTime"]), _parse_local(new["end"]["dateTime"])
            if s.time() != dt.time(0) or e.time() != dt.time(0) or e <= s:
                raise GraphError(
                    400,
                    "ErrorInvalidRequest",
                    "Your request can't be completed. An all-day event must start and end at "
                    "midnight.",
                )
        props = body.get("singleValueExtendedProperties")
        if props is not None:
            current = {p["id"].lower(): p for p in new["singleValueExtendedProperties"]}
            for prop in props:
                if not PROPERTY_ID.fullmatch(str(prop.get("id", ""))) or not isinstance(
                    prop.get("value"), str
                ):
                    raise GraphError(400, "ErrorInvalidProperty", f"Bad property {prop!r}.")
                current[prop["id"].lower()] = {"id": prop["id"], "value": prop["value"]}
            new["singleValueExtendedProperties"] = list(current.values())
        new["changeKey"] = base64.b64encode(secrets.token_bytes(12)).decode()
        new["lastModifiedDateTime"] = _now_iso()
        new["@odata.etag"] = f'W/"{new["changeKey"]}"'
        event.clear()
        event.update(new)

    def _render(self, event: dict[str, Any], query: dict[str, str], prefer: str) -> dict[str, Any]:
        return _View(query, prefer).render(event)

    def _list(self, box: Mailbox, rest: str, query: dict[str, str], prefer: str) -> dict[str, Any]:
        events = sorted(box.events.values(), key=lambda e: (e[_INSTANTS][0], e["id"]))
        if rest.endswith("calendarView"):
            try:
                lo = _parse_query_instant(query["startDateTime"])
                hi = _parse_query_instant(query["endDateTime"])
            except (KeyError, ValueError):
                raise GraphError(
                    400,
                    "ErrorInvalidParameter",
                    "This request requires a time window specified by the query string "
                    "parameters StartDateTime and EndDateTime.",
                ) from None
            events = [e for e in events if e[_INSTANTS][0] < hi and e[_INSTANTS][1] > lo]
        flt = query.get("$filter")
        if flt:
            match = _property_filter(flt)
            events = [
                e for e in events if any(match(p) for p in e["singleValueExtendedProperties"])
            ]
        try:
            top = int(query.get("$top", "10"))
            skip = int(query.get("$skip", "0"))
        except ValueError:
            raise GraphError(400, "BadRequest", "$top and $skip take integers.") from None
        if top < 1 or skip < 0:
            raise GraphError(400, "BadRequest", "Invalid $top or $skip.")
        top = min(top, self.max_page_size)  # server-side paging beyond the page limit
        page = events[skip : skip + top]
        view = _View(query, prefer)
        out: dict[str, Any] = {"value": [view.render(e) for e in page]}
        if skip + top < len(events):
            params = {k: v for k, v in query.items() if k != "$skip"}
            params["$skip"] = str(skip + top)
            out["@odata.nextLink"] = (
                f"{self.base_url}/v1.0/users/{box.address}{rest}?{urlencode(params)}"
            )
        return out

    # ----------------------------------------------------------------- JSON batching

    def _batch(self, headers: dict[str, str], body: Any) -> tuple[int, dict[str, str], Any]:
        """JSON batching as "Combine multiple HTTP requests using JSON batching" describes it."""
        requests_ = body.get("requests") if isinstance(body, dict) else None
        if not isinstance(requests_, list) or not requests_:
            raise GraphError(400, "BadRequest", "Invalid batch payload format.")
        if len(requests_) > 20:
            raise GraphError(
                400, "BadRequest", "The number of requests in a batch cannot exceed 20."
            )
        for r in requests_:
            if (
                not isinstance(r, dict)
                or not r.get("id")
                or not r.get("method")
                or not r.get("url")
            ):
                raise GraphError(400, "BadRequest", "Each request needs an id, a method and a url.")
            if "body" in r and "content-type" not in {k.lower() for k in r.get("headers") or {}}:
                raise GraphError(
                    400,
                    "BadRequest",
                    "Content-Type header must be specified when a request has a body.",
                )
        ids = [str(r["id"]).lower() for r in requests_]  # ids are not case-sensitive
        if len(set(ids)) != len(ids):
            raise GraphError(400, "BadRequest", "Batch request ids must be unique.")
        deps = [[str(d).lower() for d in r.get("dependsOn") or []] for r in requests_]
        for position, depends in enumerate(deps):
            if any(d not in ids[:position] for d in depends):
                raise GraphError(400, "BadRequest", f"Invalid dependsOn {depends!r}.")
        sequential = any(deps)
        if sequential and not all(
            depends == ([ids[position - 1]] if position else [])
            for position, depends in enumerate(deps)
        ):
            raise GraphError(
                400, "BadRequest", "Batch should be either fully sequential or fully parallel."
            )
        with self.lock:
            self.stats.batch_requests += 1
            self.stats.sub_requests += len(requests_)
            self.stats.batch_sizes.append(len(requests_))
            self.stats.batch_shapes["sequential" if sequential else "parallel"] += 1

        def run(r: dict[str, Any]) -> tuple[int, dict[str, str], Any]:
            sub_headers = {k.lower(): v for k, v in (r.get("headers") or {}).items()}
            sub_headers["authorization"] = headers.get("authorization", "")
            url = str(r["url"])
            return self.handle(
                str(r["method"]).upper(), url if url.startswith("/") else "/" + url,
                sub_headers, r.get("body"), True,
            )  # fmt: skip

        results: dict[str, tuple[int, dict[str, str], Any]] = {}
        if sequential:
            # One at a time; after a failure, the rest fail with 424 without running.
            failed = False
            for r in requests_:
                if failed:
                    results[str(r["id"])] = (
                        424,
                        {"Content-Type": "application/json"},
                        GraphError(
                            424, "FailedDependency", "A request this one depends on failed."
                        ).body(),
                    )
                    continue
                results[str(r["id"])] = run(r)
                failed = results[str(r["id"])][0] >= 400
        else:
            # Graph dispatches up to batch_parallelism requests of a batch at once.
            sem = threading.Semaphore(self.batch_parallelism)

            def limited(r: dict[str, Any]) -> tuple[int, dict[str, str], Any]:
                with sem:
                    return run(r)

            futures = {str(r["id"]): self.pool.submit(limited, r) for r in requests_}
            for rid, fut in futures.items():
                results[rid] = fut.result()
        responses = []
        for rid, (status, hdrs, rbody) in results.items():
            item: dict[str, Any] = {"id": rid, "status": status, "headers": hdrs}
            if rbody is not None:
                item["body"] = rbody
            responses.append(item)
        with self.lock:
            self.rng.shuffle(responses)  # Graph returns sub-responses in any order
        return 200, {"Content-Type": "application/json"}, {"responses": responses}

    # ----------------------------------------------------------------- server

    @classmethod
    def start(cls, directory: Path | None = None) -> GraphEmulator:
        """Create the test CA and serve on an ephemeral 127.0.0.1 port (call stop() to end)."""
        directory = directory or Path(tempfile.mkdtemp(prefix="graph-emu-"))
        emu = cls(make_test_pki(directory))
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(emu.pki.cert_file, emu.pki.key_file)
        server = _Server(("127.0.0.1", 0), _Handler)
        server.emulator = emu
        server.socket = context.wrap_socket(
            server.socket, server_side=True, do_handshake_on_connect=False
        )
        emu.server = server
        threading.Thread(target=server.serve_forever, daemon=True, name="graph-emu").start()
        return emu

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
        self.pool.shutdown(wait=False, cancel_futures=True)

    def __enter__(self) -> GraphEmulator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128
    emulator: GraphEmulator

    def verify_request(self, request: Any, client_address: Any) -> bool:
        with self.emulator.lock:
            self.emulator.stats.connections += 1
        return True

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that refuses our certificate is what some tests are about


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet
        pass

    def _dispatch(self, method: str) -> None:
        emu = self.server.emulator
        with emu.lock:
            emu.stats.http_requests += 1
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        headers = {k.lower(): v for k, v in self.headers.items()}
        path = urlsplit(self.path).path
        try:
            m = re.fullmatch(r"/([^/]+)/v2\.0/\.well-known/openid-configuration", path)
            if m and method == "GET":
                if m.group(1) != emu.tenant_id:
                    return self._send(
                        400,
                        {},
                        {
                            "error": "invalid_tenant",
                            "error_description": f"AADSTS90002: Tenant '{m.group(1)}' not found.",
                        },
                    )
                return self._send(200, {}, emu.openid_configuration(m.group(1)))
            m = re.fullmatch(r"/([^/]+)/oauth2/v2\.0/token", path)
            if m and method == "POST":
                form = {k: v[0] for k, v in parse_qs(raw.decode()).items()}
                status, body = emu.issue_token(m.group(1), form)
                return self._send(status, {}, body)
            try:
                body = json.loads(raw) if raw else None
            except ValueError:
                return self._send(400, {}, GraphError(400, "BadRequest", "Invalid JSON.").body())
            status, hdrs, out = emu.handle(method, self.path, headers, body, in_batch=False)
            self._send(status, hdrs, out)
        except Dropped:
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        except Exception as err:  # an emulator bug must show as a 500, not a hang
            self._send(500, {}, GraphError(500, "EmulatorError", repr(err)).body())

    def _send(self, status: int, headers: dict[str, str], body: Any) -> None:
        data = b"" if body is None else json.dumps(body).encode()
        self.send_response(status)
        for k, v in headers.items():
            if k.lower() != "content-type":
                self.send_header(k, v)
        if body is not None:
            self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:  # noqa: N802
        self._dispatch("GET")

    def do_POST(self) -> None:  # noqa: N802
        self._dispatch("POST")

    def do_PATCH(self) -> None:  # noqa: N802
        self._dispatch("PATCH")

    def do_DELETE(self) -> None:  # noqa: N802
        self._dispatch("DELETE")


class _View:
    """How a GET asks events to be shown: time zone, body type, $expand, $select."""

    def __init__(self, query: dict[str, str], prefer: str) -> None:
        m = re.search(r'outlook\.timezone="([^"]+)"', prefer)
        self.zone_name = m.group(1) if m else "UTC"
        self.zone = _zone(self.zone_name)
        self.html = 'outlook.body-content-type="html"' in prefer
        self.wanted = _expanded_properties(query.get("$expand"))
        self.keep: set[str] | None = None
        select = query.get("$select")
        if select:
            fields = {f.strip() for f in select.split(",") if f.strip()}
            unknown = fields - EVENT_PROPERTIES
            if unknown:
                raise GraphError(
                    400,
                    "BadRequest",
                    f"Could not find a property named '{sorted(unknown)[0]}' on type "
                    "'microsoft.graph.event'.",
                )
            self.keep = fields | {"id", "@odata.etag", "singleValueExtendedProperties"}

    def render(self, event: dict[str, Any]) -> dict[str, Any]:
        out = {
            k: v
            for k, v in event.items()
            if k not in ("singleValueExtendedProperties", "transactionId", _INSTANTS)
            or (k == "transactionId" and v)  # returned only when the app set it
        }
        for n, side in enumerate(("start", "end")):
            if event.get("isAllDay"):
                # All-day events float: midnight in whatever zone the reader asks for.
                local = _parse_local(event[side]["dateTime"])
            else:
                local = event[_INSTANTS][n].astimezone(self.zone).replace(tzinfo=None)
            out[side] = {
                "dateTime": local.strftime("%Y-%m-%dT%H:%M:%S.0000000"),
                "timeZone": self.zone_name,
            }
        if self.html:
            content = event["body"].get("content", "")
            out["body"] = {"contentType": "html", "content": f"<html><body>{content}</body></html>"}
        if self.wanted:
            props = [
                p
                for p in event["singleValueExtendedProperties"]
                if _property_key(p["id"]) in self.wanted
            ]
            if props:  # Graph omits the collection when nothing matches
                out["singleValueExtendedProperties"] = props
        if self.keep is not None:
            out = {k: v for k, v in out.items() if k in self.keep}
        return out


# --------------------------------------------------------------------------- helpers


def _stored(event: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in event.items() if k != _INSTANTS}


def _now_iso() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _zone(name: str | None) -> ZoneInfo:
    """The zone a stored or requested time zone name stands for (Windows or IANA)."""
    if not name:
        raise GraphError(400, "ErrorInvalidRequest", "timeZone is required.")
    name = WINDOWS_ZONES.get(name) or ADDITIONAL_ALIASES.get(name) or name
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise _zone_not_supported(name) from None


def _writable_zone(name: str | None) -> None:
    """Create and update take Windows names and the page's additional list, nothing else."""
    if not name:
        raise GraphError(400, "ErrorInvalidRequest", "timeZone is required.")
    if name not in WINDOWS_ZONES and name not in ADDITIONAL_ZONES:
        raise _zone_not_supported(name)


def _zone_not_supported(name: str) -> GraphError:
    # The code and message Graph answers (microsoft-graph-docs issue #4758).
    return GraphError(
        400,
        "TimeZoneNotSupportedException",
        "A valid TimeZone value must be specified. The following TimeZone value is not "
        f"supported: '{name}'.",
    )


def _property_key(property_id: str) -> str:
    """A property id as Graph compares it: the GUID in any case, the Name case-sensitively."""
    head, sep, name = property_id.partition(" Name ")
    return head.lower() + sep + name


def _expanded_properties(expand: str | None) -> set[str]:
    """The property ids an $expand of singleValueExtendedProperties asks for."""
    if not expand:
        return set()
    m = re.fullmatch(r"singleValueExtendedProperties\(\$filter=(.+)\)", expand)
    clauses = re.split(r" or ", m.group(1)) if m else []
    ids = [re.fullmatch(r"id eq '([^']+)'", c.strip()) for c in clauses]
    if not clauses or not all(ids):
        raise GraphError(400, "BadRequest", f"Invalid $expand: {expand}.")
    return {_property_key(i.group(1)) for i in ids if i}


_FILTER = re.compile(
    r"singleValueExtendedProperties/any\(ep: ep/id eq '(?P<id>(?:[^']|'')+)' and "
    r"(?:ep/value (?P<op>eq|ne) '(?P<value>(?:[^']|'')*)'"
    r"|(?P<fn>startswith|contains)\(ep/value, ?'(?P<arg>(?:[^']|'')*)'\))\)",
    re.IGNORECASE,
)


def _property_filter(text: str) -> Any:
    """A matcher for the $filter forms "Get singleValueLegacyExtendedProperty" documents.

    The id with eq; a string value with eq, ne, startswith or contains, compared
    case-insensitively. Anything else is refused.
    """
    m = _FILTER.fullmatch(text.strip())
    if not m:
        raise GraphError(400, "BadRequest", f"Invalid filter clause: {text}.")
    pid = _property_key(m.group("id").replace("''", "'"))
    if m.group("op"):
        op, value = m.group("op").lower(), m.group("value").replace("''", "'").lower()
    else:
        op, value = m.group("fn").lower(), m.group("arg").replace("''", "'").lower()
    tests = {
        "eq": lambda v: v == value,
        "ne": lambda v: v != value,
        "startswith": lambda v: v.startswith(value),
        "contains": lambda v: value in v,
    }
    test = tests[op]
    return lambda prop: _property_key(prop["id"]) == pid and test(str(prop["value"]).lower())


# "event resource type": the properties a $select may name.
EVENT_PROPERTIES = {
    "allowNewTimeProposals", "attendees", "body", "bodyPreview", "categories", "changeKey",
    "createdDateTime", "end", "hasAttachments", "hideAttendees", "iCalUId", "id", "importance",
    "isAllDay", "isCancelled", "isDraft", "isOnlineMeeting", "isOrganizer", "isReminderOn",
    "lastModifiedDateTime", "location", "locations", "onlineMeeting", "onlineMeetingProvider",
    "onlineMeetingUrl", "organizer", "originalEndTimeZone", "originalStart",
    "originalStartTimeZone", "recurrence", "reminderMinutesBeforeStart", "responseRequested",
    "responseStatus", "sensitivity", "seriesMasterId", "showAs", "start", "subject",
    "transactionId", "type", "webLink",
}  # fmt: skip


def _parse_local(value: str | None) -> dt.datetime:
    try:
        # Graph writes seven fractional digits; Python reads at most six.
        text = re.sub(r"(\.\d{6})\d+", r"\1", value or "")
        return dt.datetime.fromisoformat(text).replace(tzinfo=None)
    except ValueError:
        raise GraphError(400, "ErrorInvalidRequest", f"Cannot read dateTime {value!r}.") from None


def _instant(value: dict[str, str]) -> dt.datetime:
    return _parse_local(value["dateTime"]).replace(tzinfo=_zone(value["timeZone"]))


def _parse_query_instant(text: str) -> dt.datetime:
    parsed = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)


@pytest.fixture
def graph_emulator(tmp_path: Path) -> Iterator[GraphEmulator]:
    """A running emulator with one registered app (secret auth), stopped after the test."""
    emu = GraphEmulator.start(tmp_path / "pki")
    emu.register_app()
    try:
        yield emu
    finally:
        emu.stop()
