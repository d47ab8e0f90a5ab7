"""Microsoft 365 / Exchange Online calendars over Microsoft Graph (target type ``microsoft_graph``).

An app registration with the application permission Calendars.ReadWrite writes each leave
into the employee's own calendar. Writes go through JSON ``$batch`` (20 requests), with at
most 4 requests in flight per mailbox; every event carries a single-value extended property
holding its event key, and creates carry a ``transactionId`` so a retried create lands once.
"""

from __future__ import annotations

import collections
import datetime as dt
import logging
import re
import threading
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import jwt
import msal
import requests
from pydantic import Field
from requests.adapters import HTTPAdapter

from resources.providers.base import (
    FINGERPRINT_FIELDS,
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

GRAPH_SCOPE_SUFFIX = "/.default"
WRITE_ROLE = "Calendars.ReadWrite"
KEY_PROPERTY_NAME = "leavesyncKey"
# Sub-request codes that mean "this mailbox cannot be written", not "this event".
MAILBOX_ERRORS = {
    "ErrorInvalidUser",
    "MailboxNotEnabledForRESTAPI",
    "MailboxNotHostedInExchangeOnline",
    "ResourceNotFound",
    "ErrorNonExistentMailbox",
}
DENIED_ERRORS = {"ErrorAccessDenied", "Authorization_RequestDenied", "AccessDenied"}
# How long a part-full batch may wait for rate budget while another batch is in flight.
BATCH_LINGER_SECONDS = 0.1
TRANSPORT_ERRORS = (requests.ConnectionError, requests.Timeout)


class GraphSettings(ProviderSettings):
    """The ``settings:`` block of a ``microsoft_graph`` target."""

    tenant_id: str
    client_id: str
    # Secrets are read from these environment variables at run time, never from the file.
    client_secret_env: str = "LEAVESYNC_GRAPH_CLIENT_SECRET"
    client_certificate_env: str | None = None  # PEM private key (+ certificate) of the app
    certificate_thumbprint: str | None = None  # SHA-1 hex, as the Azure portal shows it
    authority: str = "https://login.microsoftonline.com"
    graph_url: str = "https://graph.microsoft.com"
    ca_bundle: str | None = None
    batch_size: int = Field(20, ge=1, le=20)
    max_concurrency_per_mailbox: int = Field(4, ge=1, le=4)
    parallel_batches: int = Field(4, ge=1, le=32)
    categories: list[str] = Field(default_factory=list)
    extended_property_namespace: str = "6f1c2a9e-4b7d-4e3a-9a51-0c8e2d7b5f41"
    # Outlook limits: 10,000 requests per 10 minutes per mailbox; Graph: 130,000 per 10 s per app.
    mailbox_requests_per_window: int = Field(10_000, ge=1)
    mailbox_window_seconds: float = Field(600.0, gt=0)
    app_requests_per_window: int = Field(130_000, ge=1)
    app_window_seconds: float = Field(10.0, gt=0)
    backoff_base_seconds: float = Field(0.5, ge=0)
    backoff_cap_seconds: float = Field(60.0, ge=0)
    max_attempts: int = Field(8, ge=1)
    timeout_seconds: float = Field(60.0, gt=0)
    page_size: int = Field(100, ge=1, le=1000)


@dataclass
class _Work:
    """One change on its way: which request it needs next and how often it was tried."""

    change: EventChange
    mailbox: str
    step: str  # "create" | "update" | "delete" | "lookup"
    event_id: str | None
    transaction_id: str | None = None
    attempt: int = 0
    not_before: float = 0.0
    last_error: str = ""
    found_then: str = ""  # after a lookup: what to do with the event found ("update"/"delete")


@dataclass
class _Reply:
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


class GraphCalendarProvider(CalendarProvider):
    """Writes leaves into Microsoft 365 calendars through Microsoft Graph."""

    type_name = "microsoft_graph"
    Settings = GraphSettings
    # Graph has no event status (pending leaves show as tentative instead) and may report a
    # time zone under its Windows name, so those two are not compared on read-back.
    compared_fields = tuple(f for f in FINGERPRINT_FIELDS if f not in ("status", "timezone"))

    def __init__(self, target_name: str, settings: GraphSettings) -> None:
        super().__init__(target_name, settings)
        self.settings: GraphSettings = settings
        s = settings
        self.key_property_id = (
            f"String {{{s.extended_property_namespace}}} Name {KEY_PROPERTY_NAME}"
        )
        self.backoff = Backoff(s.backoff_base_seconds, s.backoff_cap_seconds, s.max_attempts)
        self.graph_base = s.graph_url.rstrip("/") + "/v1.0"
        self.scope = s.graph_url.rstrip("/") + GRAPH_SCOPE_SUFFIX
        # One session for msal and Graph; trust_env off so REQUESTS_CA_BUNDLE cannot
        # silently replace the configured CA bundle.
        self.session = requests.Session()
        self.session.trust_env = False
        self.session.verify = s.ca_bundle or True
        adapter = HTTPAdapter(pool_connections=4, pool_maxsize=s.parallel_batches + 4)
        self.session.mount("https://", adapter)
        self.session.mount("http://", adapter)
        self.app_limiter = _window_limiter(s.app_requests_per_window, s.app_window_seconds)
        self._mailbox_limiters: dict[str, RateLimiter] = {}
        self._limiters_lock = threading.Lock()
        self._msal: msal.ConfidentialClientApplication | None = None
        self._token_lock = threading.Lock()
        self._token: str | None = None

    # ------------------------------------------------------------------ authentication

    def _credential(self) -> str | dict[str, str]:
        s = self.settings
        if s.client_certificate_env:
            pem = secret_from_env(s.client_certificate_env, "Microsoft Graph client certificate")
            cred: dict[str, str] = {"private_key": pem}
            if s.certificate_thumbprint:
                cred["thumbprint"] = s.certificate_thumbprint.replace(":", "")
            elif "BEGIN CERTIFICATE" in pem:
                cred["public_certificate"] = pem[pem.index("-----BEGIN CERTIFICATE") :]
            else:
                raise FatalProviderError(
                    f"{s.client_certificate_env} holds no certificate: set certificate_thumbprint "
                    "to the thumbprint shown under Certificates & secrets, or append the "
                    "certificate PEM to the private key"
                )
            return cred
        return secret_from_env(s.client_secret_env, "Microsoft Graph client secret")

    def _app(self) -> msal.ConfidentialClientApplication:
        if self._msal is None:
            s = self.settings
            try:
                self._msal = msal.ConfidentialClientApplication(
                    s.client_id,
                    client_credential=self._credential(),
                    authority=f"{s.authority.rstrip('/')}/{s.tenant_id}",
                    http_client=self.session,
                    # No call to the public cloud's instance discovery (sovereign clouds, tests).
                    instance_discovery=False,
                    timeout=s.timeout_seconds,
                )
            except ValueError as err:
                raise FatalProviderError(
                    f"cannot use tenant {s.tenant_id!r} at {s.authority}: check tenant_id (the "
                    f"Directory (tenant) ID of the app registration) and authority ({err})"
                ) from None
        return self._msal

    def _access_token(self, force_new: bool = False) -> str:
        """A Graph access token for the app; msal reuses it until shortly before expiry."""
        with self._token_lock:
            if force_new:
                self._msal = None  # a new msal app has an empty token cache
            for attempt in range(1, self.backoff.max_attempts + 1):
                try:
                    result = self._app().acquire_token_for_client(scopes=[self.scope])
                except TRANSPORT_ERRORS as err:
                    if attempt == self.backoff.max_attempts:
                        raise FatalProviderError(
                            f"cannot reach the Entra ID token endpoint at "
                            f"{self.settings.authority}: {type(err).__name__}"
                        ) from None
                    time.sleep(self.backoff.delay(attempt))
                    continue
                if "access_token" in result:
                    self._token = result["access_token"]
                    return self._token
                raise FatalProviderError(self._explain_token_error(result))
            raise AssertionError("unreachable")

    def _explain_token_error(self, result: dict[str, Any]) -> str:
        s = self.settings
        error = result.get("error", "unknown_error")
        description = str(result.get("error_description", "")).split(" Trace ID")[0].strip()
        codes = {int(c) for c in result.get("error_codes", []) if str(c).isdigit()}
        prefix = f"Entra ID refused a token for app {s.client_id} in tenant {s.tenant_id}"
        if error == "invalid_client" and s.client_certificate_env:
            fix = (
                "the certificate was not accepted: upload its public part under App registrations "
                "> Certificates & secrets > Certificates, and check certificate_thumbprint"
            )
        elif error == "invalid_client":
            fix = (
                f"the client secret in {s.client_secret_env} is wrong or expired: create a new "
                "one under App registrations > Certificates & secrets and put its Value (not its "
                f"Secret ID) in {s.client_secret_env}"
            )
        elif error == "unauthorized_client" or codes & {700016, 7000016}:
            fix = (
                f"no application with client_id {s.client_id} in this tenant: check client_id "
                "(Application (client) ID) and tenant_id"
            )
        elif codes & {90002} or error == "invalid_tenant":
            fix = f"tenant {s.tenant_id} does not exist at {s.authority}: check tenant_id"
        elif codes & {65001, 7000112}:
            fix = "an administrator must grant admin consent to the app (API permissions)"
        else:
            fix = "see the error above"
        return f"{prefix} ({error}: {description}): {fix}"

    # ------------------------------------------------------------------ HTTP

    def _mailbox_limiter(self, mailbox: str) -> RateLimiter:
        with self._limiters_lock:
            limiter = self._mailbox_limiters.get(mailbox)
            if limiter is None:
                s = self.settings
                limiter = _window_limiter(s.mailbox_requests_per_window, s.mailbox_window_seconds)
                self._mailbox_limiters[mailbox] = limiter
            return limiter

    def _request(
        self, method: str, url: str, body: Any = None, prefer: str = "", token: str | None = None
    ) -> _Reply:
        """One HTTP call to Graph; transport errors propagate to the caller."""
        token = token or self._token or self._access_token()
        headers = {"Authorization": f"Bearer {token}"}
        if prefer:
            headers["Prefer"] = prefer
        resp = self.session.request(
            method, url, json=body, headers=headers, timeout=self.settings.timeout_seconds
        )
        try:
            parsed = resp.json() if resp.content else None
        except ValueError:
            parsed = None
        return _Reply(resp.status_code, dict(resp.headers), parsed)

    def _get_with_retry(self, url: str, prefer: str, mailbox: str) -> _Reply:
        """A read with the retry policy: 429/503/transport errors retried, 401 re-authenticated."""
        refreshed = False
        last = _Reply(599, {}, {"error": {"code": "Unreachable", "message": "no response"}})
        for attempt in range(1, self.backoff.max_attempts + 1):
            _take(self.app_limiter, 1)
            _take(self._mailbox_limiter(mailbox), 1)
            try:
                last = self._request("GET", url, prefer=prefer)
            except TRANSPORT_ERRORS as err:
                last = _Reply(599, {}, {"error": {"code": type(err).__name__, "message": ""}})
                time.sleep(self.backoff.delay(attempt))
                continue
            if last.status == 401 and not refreshed:
                self._access_token(force_new=True)
                refreshed = True
                continue
            if last.status == 429 or last.status >= 500:
                time.sleep(self.backoff.delay(attempt, last.retry_after()))
                continue
            return last
        return last

    # ------------------------------------------------------------------ payload mapping

    def event_body(self, payload: EventPayload, event_key: str) -> dict[str, Any]:
        """The Graph event resource for one of our events (no attendees, no reminder)."""
        if payload.all_day:
            start = f"{payload.start[:10]}T00:00:00"
            end = f"{payload.end[:10]}T00:00:00"
        else:
            start = dt.datetime.fromisoformat(payload.start).replace(tzinfo=None).isoformat()
            end = dt.datetime.fromisoformat(payload.end).replace(tzinfo=None).isoformat()
        categories = [c.strip() for c in payload.categories.split(",") if c.strip()]
        categories += [c for c in self.settings.categories if c not in categories]
        return {
            "subject": payload.title,
            "body": {"contentType": "text", "content": payload.description},
            "start": {"dateTime": start, "timeZone": payload.timezone},
            "end": {"dateTime": end, "timeZone": payload.timezone},
            "isAllDay": payload.all_day,
            "showAs": payload.show_as,
            "sensitivity": "private" if payload.private else "normal",
            "isReminderOn": False,
            "responseRequested": False,
            "categories": categories,
            "singleValueExtendedProperties": [{"id": self.key_property_id, "value": event_key}],
        }

    def payload_from_event(self, event: dict[str, Any], event_key: str) -> EventPayload:
        """Normalise a Graph event back into our provider-neutral form."""
        original_zone = _iana(event.get("originalStartTimeZone")) or "UTC"
        all_day = bool(event.get("isAllDay"))
        start = _graph_datetime(event["start"])
        end = _graph_datetime(event["end"])
        if all_day:
            if start.time() != dt.time(0):  # returned shifted into another zone
                zone = ZoneInfo(original_zone)
                start = start.astimezone(zone)
                end = end.astimezone(zone)
            start_text, end_text, zone_name = (
                start.date().isoformat(),
                end.date().isoformat(),
                original_zone,
            )
        else:
            zone_name = _iana(event["start"].get("timeZone")) or "UTC"
            start_text = start.astimezone(ZoneInfo(zone_name)).replace(tzinfo=None).isoformat()
            end_text = end.astimezone(ZoneInfo(zone_name)).replace(tzinfo=None).isoformat()
        show_as = str(event.get("showAs", "busy"))
        body = event.get("body") or {}
        description = str(body.get("content") or "")
        if body.get("contentType") == "html":
            description = re.sub(r"<[^>]+>", "", description)
        description = description.replace("\r\n", "\n").strip()
        ours = set(self.settings.categories)
        categories = [c for c in event.get("categories") or [] if c not in ours]
        return EventPayload(
            event_key=event_key,
            leave_id=leave_id_of(event_key),
            title=str(event.get("subject") or ""),
            all_day=all_day,
            start=start_text,
            end=end_text,
            timezone=zone_name,
            status="tentative" if show_as == "tentative" else "confirmed",
            show_as=show_as,  # type: ignore[arg-type]
            private=event.get("sensitivity") == "private",
            description=description,
            categories=",".join(categories),
        )

    def _key_filter(self, event_key: str) -> str:
        value = event_key.replace("'", "''")
        return (
            f"singleValueExtendedProperties/Any(ep: ep/id eq '{self.key_property_id}' "
            f"and ep/value eq '{value}')"
        )

    def _sub_request(self, work: _Work, rid: str) -> dict[str, Any]:
        """The $batch sub-request for the next step of a change."""
        base = f"/users/{quote(work.mailbox, safe='@')}/events"
        headers = {"Prefer": 'IdType="ImmutableId"'}
        change = work.change
        if work.step == "lookup":
            url = f"{base}?$filter={quote(self._key_filter(change.event_key))}&$select=id&$top=2"
            return {"id": rid, "method": "GET", "url": url, "headers": headers}
        if work.step == "delete":
            return {
                "id": rid,
                "method": "DELETE",
                "url": f"{base}/{work.event_id}",
                "headers": headers,
            }
        assert change.event is not None
        body = self.event_body(change.event, change.event_key)
        headers["Content-Type"] = "application/json"
        if work.step == "create":
            body["transactionId"] = work.transaction_id
            return {"id": rid, "method": "POST", "url": base, "headers": headers, "body": body}
        return {
            "id": rid,
            "method": "PATCH",
            "url": f"{base}/{work.event_id}",
            "headers": headers,
            "body": body,
        }

    # ------------------------------------------------------------------ apply

    def apply(self, changes: Sequence[EventChange]) -> Iterator[ChangeResult]:
        """Apply all changes through $batch, 4 in flight per mailbox; yield results as they land."""
        if not changes:
            return
        self._access_token()  # bad credentials stop the run before anything is sent
        queues: dict[str, collections.deque[_Work]] = {}
        for change in changes:
            mailbox = change.calendar.strip().lower()
            queues.setdefault(mailbox, collections.deque()).append(
                self._first_step(change, mailbox)
            )
        run = _Run(self, queues)
        try:
            yield from run.execute()
        finally:
            run.close()

    def _first_step(self, change: EventChange, mailbox: str) -> _Work:
        if change.op == "create":
            if change.event is None:
                raise ValueError(f"create of {change.event_key} has no event")
            return _Work(change, mailbox, "create", None, _transaction_id(change))
        if change.op == "update" and change.event is None:
            raise ValueError(f"update of {change.event_key} has no event")
        if not change.provider_event_id:
            # An earlier run never learned the id: find our event by its key first.
            return _Work(change, mailbox, "lookup", None, found_then=change.op)
        return _Work(change, mailbox, change.op, change.provider_event_id)

    # ------------------------------------------------------------------ read-back

    def read_back(
        self, calendars: Iterable[str], start: dt.date, end: dt.date
    ) -> Iterator[RemoteEvent]:
        """Our tagged events overlapping [start, end), via calendarView with the key expanded."""
        lo = (start - dt.timedelta(days=1)).isoformat() + "T00:00:00Z"
        hi = (end + dt.timedelta(days=1)).isoformat() + "T00:00:00Z"
        prefer = 'IdType="ImmutableId", outlook.timezone="UTC", outlook.body-content-type="text"'
        expand = f"singleValueExtendedProperties($filter=id eq '{self.key_property_id}')"
        for calendar in calendars:
            mailbox = calendar.strip().lower()
            url: str | None = (
                f"{self.graph_base}/users/{quote(mailbox, safe='@')}/calendarView"
                f"?startDateTime={lo}&endDateTime={hi}&$top={self.settings.page_size}"
                f"&$expand={quote(expand)}"
            )
            while url:
                reply = self._get_with_retry(url, prefer, mailbox)
                if reply.status != 200:
                    if reply.status in (401, 403) and reply.code not in DENIED_ERRORS:
                        raise FatalProviderError(f"Graph refused the read-back: {reply.describe()}")
                    log.warning("read-back of %s skipped: %s", mailbox, reply.describe())
                    break
                for event in reply.body.get("value", []):
                    key = _our_key(event, self.key_property_id)
                    if key is None:
                        continue  # not ours: never report, never touch
                    payload = self.payload_from_event(event, key)
                    if payload.start_date() < end and payload.end_date_exclusive() >= start:
                        if payload.all_day and payload.end_date_exclusive() == start:
                            continue
                        yield RemoteEvent(
                            key, calendar, event.get("id"), payload, event.get("changeKey")
                        )
                url = reply.body.get("@odata.nextLink")

    # ------------------------------------------------------------------ check

    def check(self, sample_calendar: str) -> CheckReport:
        """Token, permission and read access to a sample mailbox's calendar; writes nothing."""
        s = self.settings
        report = CheckReport(self.target_name)
        try:
            self._credential()
            report.add(
                "credentials in the environment",
                True,
                s.client_certificate_env or s.client_secret_env,
            )
        except FatalProviderError as err:
            report.add("credentials in the environment", False, str(err))
            return report
        try:
            token = self._access_token(force_new=True)
            report.add("token from Entra ID", True, f"tenant {s.tenant_id}, app {s.client_id}")
        except FatalProviderError as err:
            report.add("token from Entra ID", False, str(err))
            return report
        roles = _token_roles(token)
        if roles is None:
            report.add(
                "application permission Calendars.ReadWrite",
                True,
                "token cannot be inspected; the first write will tell",
            )
        else:
            ok = WRITE_ROLE in roles
            report.add(
                "application permission Calendars.ReadWrite",
                ok,
                "granted"
                if ok
                else (
                    f"the token carries {sorted(roles) or 'no application permission'}: in the "
                    "Entra admin center, App registrations > API permissions > Add a permission > "
                    "Microsoft Graph > Application permissions > Calendars.ReadWrite, then "
                    "'Grant admin consent'"
                ),
            )
        mailbox = sample_calendar.strip().lower()
        url = f"{self.graph_base}/users/{quote(mailbox, safe='@')}/calendar?$select=id,name,canEdit"
        try:
            reply = self._get_with_retry(url, 'IdType="ImmutableId"', mailbox)
        except FatalProviderError as err:
            report.add(f"read the calendar of {sample_calendar}", False, str(err))
            return report
        if reply.status == 200:
            can_edit = bool(reply.body.get("canEdit", True))
            report.add(
                f"read the calendar of {sample_calendar}",
                True,
                f"calendar {reply.body.get('name', '')!r}",
            )
            report.add(
                f"calendar of {sample_calendar} is editable by the app",
                can_edit,
                "" if can_edit else "canEdit is false for this calendar",
            )
        else:
            report.add(
                f"read the calendar of {sample_calendar}",
                False,
                self._explain_mailbox_error(sample_calendar, reply),
            )
            return report
        lookup = (
            f"{self.graph_base}/users/{quote(mailbox, safe='@')}/events"
            f"?$filter={quote(self._key_filter('leave-check'))}&$select=id&$top=1"
        )
        reply = self._get_with_retry(lookup, 'IdType="ImmutableId"', mailbox)
        report.add(
            "find events by the leavesync extended property",
            reply.status == 200,
            "" if reply.status == 200 else reply.describe(),
        )
        return report

    def _explain_mailbox_error(self, mailbox: str, reply: _Reply) -> str:
        if reply.code in DENIED_ERRORS or reply.status in (401, 403):
            return (
                f"{reply.describe()} - grant the application permission Calendars.ReadWrite with "
                "admin consent; if the app is scoped to some mailboxes (RBAC for Applications or "
                f"an application access policy), add {mailbox} to that scope"
            )
        if reply.code == "MailboxNotEnabledForRESTAPI":
            return (
                f"{mailbox} has no Exchange Online mailbox (unlicensed, inactive or on "
                "premises): sync it with the ews target or license it"
            )
        if reply.status == 404:
            return f"{reply.describe()} - no such user in the tenant: check the address"
        return reply.describe()

    def close(self) -> None:
        """Release pooled connections."""
        self.session.close()


class _Run:
    """One apply(): schedules batches over mailboxes and settles their sub-responses."""

    def __init__(self, provider: GraphCalendarProvider, queues: dict[str, collections.deque]):
        self.p = provider
        self.s = provider.settings
        self.queues = queues
        self.order = collections.deque(queues)  # round-robin over mailboxes with work
        self.in_flight: collections.Counter[str] = collections.Counter()
        self.pool = ThreadPoolExecutor(self.s.parallel_batches, thread_name_prefix="graph-batch")
        self.futures: dict[Future, list[list[_Work]]] = {}
        self.denied: set[str] = set()
        self.succeeded_mailboxes = 0
        self.total_mailboxes = len(queues)
        self.refreshed_token: str | None = None
        self.app_ready_at = 0.0
        self.staged: list[list[_Work]] = []
        self.staged_since: float | None = None
        self.mailbox_ready_at: dict[str, float] = {}
        self.results_later: list[ChangeResult] = []

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)

    def execute(self) -> Iterator[ChangeResult]:
        while self.queues or self.futures or self.staged:
            while len(self.futures) < self.s.parallel_batches:
                lanes = self._pick(time.monotonic())
                if not lanes:
                    break
                self.futures[self.pool.submit(self._send, lanes)] = lanes
            if not self.futures:
                time.sleep(max(0.0, self._next_ready() - time.monotonic()))
                continue
            pending = self.queues or self.staged
            timeout = max(0.0, self._next_ready() - time.monotonic()) if pending else None
            done, _ = wait(list(self.futures), timeout=timeout, return_when=FIRST_COMPLETED)
            for fut in done:
                lanes = self.futures.pop(fut)
                for lane in lanes:
                    self.in_flight[lane[0].mailbox] -= 1
                token, outcome = fut.result()
                yield from self._settle(lanes, token, outcome)
                while self.results_later:
                    yield self.results_later.pop(0)

    def _next_ready(self) -> float:
        """When the next change may be sent: its retry time, its mailbox's and the app's budget."""
        cap = self.s.max_concurrency_per_mailbox
        soonest = min(
            (
                max(self.mailbox_ready_at.get(mailbox, 0.0), min(w.not_before for w in q))
                for mailbox, q in self.queues.items()
                if self.in_flight[mailbox] < cap
            ),
            default=time.monotonic() + 0.05,
        )
        soonest = max(soonest, self.app_ready_at)
        if self.staged_since is not None:
            soonest = min(soonest, self.staged_since + BATCH_LINGER_SECONDS)
        return soonest

    def _pick(self, now: float) -> list[list[_Work]]:
        """Lanes for one batch: each lane is a dependsOn chain in one mailbox (one in flight).

        At most max_concurrency lanes per mailbox are in flight at any time; when few
        mailboxes have work, lanes grow longer so the batch still fills up to batch_size.
        Rate budgets are taken before a request is placed, so a batch never waits inside.
        """
        size, cap = self.s.batch_size, self.s.max_concurrency_per_mailbox
        staged = sum(len(lane) for lane in self.staged)
        if now < self.app_ready_at:
            return self._release(now, staged)
        candidates = [
            m
            for m in self.order
            if self.in_flight[m] < cap
            and self.mailbox_ready_at.get(m, 0.0) <= now
            and any(w.not_before <= now for w in self.queues[m])
        ]
        ready_total = sum(
            sum(1 for w in self.queues[m] if w.not_before <= now) for m in candidates[:size]
        )
        want = min(size - staged, ready_total, int(self.p.app_limiter.capacity))
        if want <= 0:
            return self._release(now, staged)
        wait = _try_take(self.p.app_limiter, want)
        if wait:
            self.app_ready_at = now + wait
            return self._release(now, staged)
        budget = want
        lanes_of: dict[str, list[list[_Work]]] = {}
        taken: dict[str, list[_Work]] = {}
        added = True
        while budget > 0 and added:
            added = False
            active = [
                m
                for m in candidates
                if m not in self.mailbox_ready_at or self.mailbox_ready_at[m] <= now
            ]
            share = max(1, -(-budget // max(1, len(active))))
            for mailbox in active:
                if budget <= 0:
                    break
                chosen = {id(w) for w in taken.get(mailbox, ())}
                ready = [
                    w for w in self.queues[mailbox] if w.not_before <= now and id(w) not in chosen
                ]
                limiter = self.p._mailbox_limiter(mailbox)
                k = min(budget, share, len(ready), int(limiter.capacity))
                if k <= 0:
                    continue
                wait = _try_take(limiter, k)
                if wait:
                    self.mailbox_ready_at[mailbox] = now + wait
                    continue
                lanes = lanes_of.setdefault(mailbox, [])
                for work in ready[:k]:
                    # At most half the mailbox's lanes per batch, so that a second batch
                    # can run for it while the first one is on its way.
                    if len(lanes) < min(max(1, cap // 2), cap - self.in_flight[mailbox]):
                        lanes.append([work])
                    else:  # chain behind the shortest lane
                        min(lanes, key=len).append(work)
                taken.setdefault(mailbox, []).extend(ready[:k])
                budget -= k
                added = True
        for mailbox, works in taken.items():
            self.in_flight[mailbox] += len(lanes_of[mailbox])
            ids = {id(w) for w in works}
            remaining = collections.deque(w for w in self.queues[mailbox] if id(w) not in ids)
            if remaining:
                self.queues[mailbox] = remaining
            else:
                del self.queues[mailbox]
                self.order.remove(mailbox)
        self.order.rotate(-len(taken))  # round-robin: next batch starts further on
        self.staged += [lane for lanes in lanes_of.values() for lane in lanes]
        return self._release(now, staged + want - budget)

    def _release(self, now: float, count: int) -> list[list[_Work]]:
        """The staged lanes as a batch, unless waiting a little longer would fill it.

        Lanes already hold their rate budget; while another batch is on its way and more
        work is queued, a part-full batch lingers briefly for budget to refill.
        """
        if not self.staged:
            return []
        if count >= self.s.batch_size or not self.futures or not self.queues:
            lanes, self.staged = self.staged, []
            self.staged_since = None
            return lanes
        if self.staged_since is None:
            self.staged_since = now
        if now - self.staged_since >= BATCH_LINGER_SECONDS:
            lanes, self.staged = self.staged, []
            self.staged_since = None
            return lanes
        return []

    def _send(self, lanes: list[list[_Work]]) -> tuple[str, dict[str, _Reply] | BaseException]:
        """Worker thread: respect the rate limits, POST the batch, map responses by id."""
        requests_ = []
        for li, lane in enumerate(lanes):
            for wi, work in enumerate(lane):
                sub = self.p._sub_request(work, f"{li}.{wi}")
                if wi:
                    sub["dependsOn"] = [f"{li}.{wi - 1}"]
                requests_.append(sub)
        token = self.p._token or self.p._access_token()
        try:
            reply = self.p._request(
                "POST", f"{self.p.graph_base}/$batch", {"requests": requests_}, token=token
            )
        except TRANSPORT_ERRORS as err:
            return token, err
        if reply.status == 400:
            return token, FatalProviderError(reply.describe())
        if reply.status != 200:
            return token, _BatchFailed(reply)
        out = {}
        for item in (reply.body or {}).get("responses", []):
            out[str(item.get("id"))] = _Reply(
                int(item.get("status", 500)), item.get("headers") or {}, item.get("body")
            )
        return token, out

    def _settle(
        self, lanes: list[list[_Work]], token: str, outcome: dict[str, _Reply] | BaseException
    ) -> Iterator[ChangeResult]:
        now = time.monotonic()
        retry: list[tuple[_Work, _Reply | None, bool]] = []  # (work, reply, outcome unknown)
        if isinstance(outcome, FatalProviderError):
            for lane in lanes:
                for work in lane:
                    yield ChangeResult(
                        work.change,
                        False,
                        error=f"Graph rejected the batch: {outcome}",
                        permanent=True,
                    )
            return
        if isinstance(outcome, BaseException):
            reply = outcome.reply if isinstance(outcome, _BatchFailed) else None
            if reply is not None and reply.status == 401:
                self._reauthenticate(reply, token)
            unknown = reply is None or reply.status >= 500
            for lane in lanes:
                for work in lane:
                    work.last_error = reply.describe() if reply else type(outcome).__name__
                    retry.append((work, reply, unknown))
            self._requeue(retry, now)
            return
        for li, lane in enumerate(lanes):
            for wi, work in enumerate(lane):
                reply = outcome.get(f"{li}.{wi}")
                if reply is None:
                    work.last_error = "no response for this request in the batch"
                    retry.append((work, None, True))
                    continue
                result = self._judge(work, reply, retry, token)
                if result is not None:
                    yield result
        self._requeue(retry, now)

    def _judge(
        self,
        work: _Work,
        reply: _Reply,
        retry: list[tuple[_Work, _Reply | None, bool]],
        token: str,
    ) -> ChangeResult | None:
        """The fate of one sub-response: a result now, a next step, or a retry."""
        status, change = reply.status, work.change
        if status < 300:
            self._mailbox_ok(work.mailbox)
            body = reply.body if isinstance(reply.body, dict) else {}
            if work.step == "lookup":
                found = body.get("value") or []
                if found:
                    work.event_id = found[0]["id"]
                    work.step = work.found_then or "update"
                elif change.op == "delete":
                    return ChangeResult(change, True, provider_event_id=None)
                else:
                    work.step, work.transaction_id = "create", _transaction_id(change)
                work.not_before = 0.0
                self._push(work)
                return None
            if work.step == "delete":
                return ChangeResult(change, True, provider_event_id=work.event_id)
            return ChangeResult(
                change, True, provider_event_id=body.get("id"), version=body.get("changeKey")
            )
        if status == 424:  # never ran: its predecessor in the chain failed
            work.not_before = 0.0
            self._push(work)
            return None
        if status == 404 and reply.code == "ErrorItemNotFound":
            if work.step == "delete":
                return ChangeResult(change, True, provider_event_id=work.event_id)
            if work.step == "update":
                # Somebody deleted our event: recreate it (a fresh transactionId, as the old
                # one belongs to the deleted event).
                work.step, work.event_id = "create", None
                work.transaction_id = str(uuid.uuid4())
                self._push(work)
                return None
        if status == 401:
            self._reauthenticate(reply, token)
            retry.append((work, reply, False))
            return None
        if reply.code in MAILBOX_ERRORS or (status == 404 and work.step in ("create", "lookup")):
            return self._fail_mailbox(work, self.p._explain_mailbox_error(work.mailbox, reply))
        if status == 403 or reply.code in DENIED_ERRORS:
            self.denied.add(work.mailbox)
            if not self.succeeded_mailboxes and len(self.denied) >= min(3, self.total_mailboxes):
                raise FatalProviderError(
                    f"Microsoft Graph denies the app access to every mailbox tried "
                    f"({', '.join(sorted(self.denied))}): {reply.describe()}. Grant the "
                    "application permission Calendars.ReadWrite to the app registration and "
                    "click 'Grant admin consent'; if an application access policy or RBAC for "
                    "Applications scopes the app, add the synced mailboxes to that scope"
                )
            return self._fail_mailbox(work, self.p._explain_mailbox_error(work.mailbox, reply))
        if status == 429 or status >= 500:
            work.last_error = reply.describe()
            retry.append((work, reply, status != 429 and status != 503))
            return None
        return ChangeResult(
            change, False, error=f"{work.step} refused: {reply.describe()}", permanent=True
        )

    def _requeue(self, retry: list[tuple[_Work, _Reply | None, bool]], now: float) -> None:
        # Sub-requests throttled together wait for the longest Retry-After among them.
        advised = [r.retry_after() for _, r, _ in retry if r is not None and r.retry_after()]
        longest = max(advised) if advised else None
        for work, reply, unknown in retry:
            work.attempt += 1
            if work.attempt >= self.s.max_attempts:
                self.results_later.append(
                    ChangeResult(
                        work.change,
                        False,
                        error=f"gave up after {work.attempt} attempts: {work.last_error}",
                    )
                )
                continue
            hint = longest if reply is not None and reply.status == 429 else None
            if hint is None and reply is not None:
                hint = reply.retry_after()
            work.not_before = now + self.p.backoff.delay(work.attempt, hint)
            if unknown and work.step == "create":
                # The create may have landed: look for our key before trying again.
                work.step, work.found_then = "lookup", "update"
            self._push(work)

    def _push(self, work: _Work) -> None:
        queue = self.queues.get(work.mailbox)
        if queue is None:
            self.queues[work.mailbox] = collections.deque([work])
            self.order.append(work.mailbox)
        else:
            queue.appendleft(work)

    def _mailbox_ok(self, mailbox: str) -> None:
        self.succeeded_mailboxes += 1

    def _fail_mailbox(self, work: _Work, reason: str) -> ChangeResult:
        # The rest of this mailbox's changes would fail the same way: fail them at once.
        for other in self.queues.pop(work.mailbox, ()):
            self.results_later.append(
                ChangeResult(other.change, False, error=reason, permanent=True)
            )
        if work.mailbox in self.order:
            self.order.remove(work.mailbox)
        return ChangeResult(work.change, False, error=reason, permanent=True)

    def _reauthenticate(self, reply: _Reply, token: str) -> None:
        """A 401: fetch a new token once; a 401 on that new token too is fatal."""
        if token == self.refreshed_token:
            raise FatalProviderError(
                f"Microsoft Graph rejects the app's fresh access token: {reply.describe()}; "
                "check that the app registration is enabled and has admin consent"
            )
        if token == self.p._token:  # not yet replaced by another batch's refresh
            self.refreshed_token = self.p._access_token(force_new=True)


class _BatchFailed(Exception):
    def __init__(self, reply: _Reply) -> None:
        super().__init__(reply.describe())
        self.reply = reply


class _WouldBlock(Exception):
    def __init__(self, seconds: float) -> None:
        super().__init__(seconds)
        self.seconds = seconds


def _would_block(seconds: float) -> None:
    raise _WouldBlock(seconds)


def _window_limiter(limit: int, window: float) -> RateLimiter:
    """A token bucket that never exceeds ``limit`` requests in any sliding ``window``.

    Burst plus refill within one window stays at the limit: 5% of it as burst, the rest
    as steady rate, so a long run gets about 95% of the limit.
    Its sleep raises instead, so the scheduler can ask without blocking (``_try_take``).
    """
    burst = float(max(1, limit // 20))
    return RateLimiter(max(limit - burst, 1.0), window, burst=burst, sleep=_would_block)


def _try_take(limiter: RateLimiter, tokens: int) -> float:
    """Take ``tokens`` now and return 0, or take none and return the seconds to wait."""
    try:
        limiter.acquire(tokens)
    except _WouldBlock as wait:
        return max(wait.seconds, 1e-4)
    return 0.0


def _take(limiter: RateLimiter, tokens: int) -> None:
    """Take ``tokens``, sleeping as long as needed."""
    while wait := _try_take(limiter, tokens):
        time.sleep(wait)


def _transaction_id(change: EventChange) -> str:
    """Same change, same transactionId: a retried create is recognised by Graph."""
    assert change.event is not None
    name = f"{change.calendar.lower()}\n{change.event_key}\n{change.event.fingerprint}"
    return str(uuid.uuid5(uuid.NAMESPACE_URL, "leavesync:" + name))


def _our_key(event: dict[str, Any], property_id: str) -> str | None:
    for prop in event.get("singleValueExtendedProperties") or []:
        if str(prop.get("id", "")).lower() == property_id.lower() and prop.get("value"):
            return str(prop["value"])
    return None


def _graph_datetime(value: dict[str, str]) -> dt.datetime:
    text = re.sub(r"(\.\d{6})\d+", r"\1", value["dateTime"]).rstrip("Z")
    zone = ZoneInfo(_iana(value.get("timeZone")) or "UTC")
    return dt.datetime.fromisoformat(text).replace(tzinfo=zone)


_WINDOWS_ZONES = {
    "UTC": "UTC",
    "GMT Standard Time": "Europe/London",
    "Romance Standard Time": "Europe/Paris",
    "W. Europe Standard Time": "Europe/Berlin",
    "Central Europe Standard Time": "Europe/Budapest",
    "E. Europe Standard Time": "Europe/Chisinau",
    "Eastern Standard Time": "America/New_York",
    "Central Standard Time": "America/Chicago",
    "Mountain Standard Time": "America/Denver",
    "Pacific Standard Time": "America/Los_Angeles",
}


def _iana(name: str | None) -> str | None:
    """An IANA zone name for a Graph time zone (IANA or a common Windows name), else None."""
    if not name:
        return None
    name = _WINDOWS_ZONES.get(name, name)
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return None
    return name


def _token_roles(token: str) -> set[str] | None:
    """The application permissions in an access token, when it is a readable JWT."""
    try:
        claims = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError:
        return None
    roles = claims.get("roles")
    return set(roles) if isinstance(roles, list) else set()
