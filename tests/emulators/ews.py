"""An Exchange Web Services (EWS) emulator on 127.0.0.1 for the ``ews`` provider's tests.

Built from Microsoft's EWS reference (the operation and element pages of "EWS reference for
Exchange", the ResponseCode list, "EWS throttling in Exchange"), not from our client: it speaks
SOAP 1.1 over HTTP(S) with basic authentication; answers ConvertId (version probing),
GetFolder, FindItem (restrictions, indexed paging), GetItem, CreateItem, UpdateItem and
DeleteItem; checks the SOAP headers (RequestServerVersion, ExchangeImpersonation and the
X-AnchorMailbox that goes with it); validates each request the way the reference says the
server does (schema faults, per-item response codes, ChangeKeys, restriction size, page
size); keeps each mailbox's calendar, Deleted Items and dumpster; and injects the faults the
reference describes (ErrorServerBusy with BackOffMilliseconds, HTTP 503, item-level
ErrorInternalServerError, ErrorBatchProcessingStopped, partial FindItem pages, connection
limits) plus dropped connections and lost answers. Every rule is listed, with its source, in
tests/emulators/README.md ("Exchange Web Services").
"""

from __future__ import annotations

import base64
import binascii
import copy
import datetime as dt
import itertools
import random
import re
import ssl
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from zoneinfo import ZoneInfo

from icalendar.timezone.windows_to_olson import WINDOWS_TO_OLSON
from lxml import etree

from tests.emulators.pki import TestPki, make_test_pki

SOAP = "http://schemas.xmlsoap.org/soap/envelope/"
M = "http://schemas.microsoft.com/exchange/services/2006/messages"
T = "http://schemas.microsoft.com/exchange/services/2006/types"
E = "http://schemas.microsoft.com/exchange/services/2006/errors"

WRITE_OPS = ("CreateItem", "UpdateItem", "DeleteItem")
READ_OPS = ("FindItem", "GetItem", "GetFolder")
BATCH_OPS = ("CreateItem", "UpdateItem", "DeleteItem", "GetItem")
# Faults drawn at random by ``fault_rate``; each only where it can happen.
FAULT_KINDS = ("busy", "503", "fault500", "drop", "lost", "item_busy", "stopped", "partial")

CALENDAR, DELETED_ITEMS, DUMPSTER = "calendar", "deleteditems", "recoverableitemsdeletions"

# RequestServerVersion values ("RequestServerVersion"; "EWS schema versions in Exchange") and the
# build from which a server knows each one.
SCHEMA_VERSIONS: dict[str, tuple[int, ...]] = {
    "Exchange2007": (8, 0),
    "Exchange2007_SP1": (8, 1),
    "Exchange2010": (14, 0),
    "Exchange2010_SP1": (14, 1),
    "Exchange2010_SP2": (14, 2),
    "Exchange2013": (15, 0),
    "Exchange2013_SP1": (15, 0, 847),
    "Exchange2016": (15, 1),
}
# "EWSFindCountLimit" default of the throttling policy ("EWS throttling in Exchange").
FIND_COUNT_LIMIT = 1000
# "EWSMaxConcurrency" default for Exchange 2013 and later ("EWS throttling in Exchange").
MAX_CONCURRENCY = 27
# ErrorRestrictionTooLong: "the restriction contains more than 255 nodes" (ResponseCode). The
# page does not say what a node is; every element under <Restriction> counts, the strictest way.
MAX_RESTRICTION_NODES = 255
# Windows time zone ids (the Id of StartTimeZone / EndTimeZone): CLDR's windowsZones table.
WINDOWS_ZONES = frozenset(WINDOWS_TO_OLSON)

_TEXT = {
    "ErrorServerBusy": "The server cannot service this request right now. Try again later.",
    "ErrorInternalServerError": "An internal server error occurred. The operation failed.",
    "ErrorNonExistentMailbox": "The SMTP address has no mailbox associated with it.",
    "ErrorNonPrimarySmtpAddress": (
        "The primary SMTP address must be specified when referencing a mailbox."
    ),
    "ErrorImpersonateUserDenied": (
        "The account does not have permission to impersonate the requested user."
    ),
    "ErrorInvalidServerVersion": "The specified server version is invalid.",
    "ErrorSchemaValidation": "The request failed schema validation.",
    "ErrorExceededConnectionCount": (
        "You have exceeded the available concurrent connections for your account."
    ),
    "ErrorItemNotFound": "The specified object was not found in the store.",
    "ErrorBatchProcessingStopped": "The batch was stopped after an earlier item failed.",
}


def _t(name: str) -> str:
    return f"{{{T}}}{name}"


def _m(name: str) -> str:
    return f"{{{M}}}{name}"


def _local(tag: object) -> str:
    return str(tag).rsplit("}", 1)[-1]


def _parse_time(text: str | None) -> dt.datetime:
    """xs:dateTime as the server reads it; a value without an offset is taken as UTC."""
    if not text:
        raise ValueError("empty date-time")
    value = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


def _utc_text(text: str) -> str:
    """Exchange returns every date-time in UTC ("Z"), whatever offset the client sent."""
    return _parse_time(text).astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class SoapFault(Exception):
    """A request-level failure: a SOAP fault with HTTP 500."""

    def __init__(self, code: str, text: str | None = None, value: tuple[str, str] | None = None):
        super().__init__(code)
        self.code = code
        self.text = text or _TEXT.get(code, code)
        self.value = value


class ItemError(Exception):
    """A failure of one item (or one folder of a FindItem): an error ResponseMessage."""

    def __init__(self, code: str, text: str | None = None):
        super().__init__(code)
        self.code = code
        self.text = text or _TEXT.get(code, code)


@dataclass
class StoredItem:
    """One item as the server keeps it: its folder, fields by element name, extended props."""

    item_id: str
    changekey: str
    mailbox: str
    folder: str = CALENDAR
    fields: dict[str, etree._Element] = field(default_factory=dict)
    extended: dict[tuple[str, str], tuple[etree._Element, str]] = field(default_factory=dict)

    def text(self, name: str) -> str | None:
        elem = self.fields.get(name)
        return None if elem is None else (elem.text or "")

    def extended_value(self, property_name: str) -> str | None:
        for (_, name), (_, value) in self.extended.items():
            if name == property_name:
                return value
        return None

    @property
    def start(self) -> dt.datetime:
        return _parse_time(self.text("Start"))

    @property
    def end(self) -> dt.datetime:
        return _parse_time(self.text("End"))

    def timezone_id(self) -> str | None:
        elem = self.fields.get("StartTimeZone")
        return None if elem is None else elem.get("Id")


@dataclass
class Fault:
    """A fault to inject into the next matching request."""

    kind: str  # busy | 503 | fault500 | drop | lost | slow | item_busy | stopped | partial
    ops: tuple[str, ...] | None = None
    mailbox: str | None = None
    back_off_ms: int = 20
    retry_after: int | None = None
    delay: float = 0.05

    def matches(self, op: str, mailbox: str | None) -> bool:
        if self.ops is not None and op not in self.ops:
            return False
        return self.mailbox is None or self.mailbox == mailbox


def _fault_applies(kind: str, op: str) -> bool:
    if kind in ("item_busy", "stopped"):
        return op in BATCH_OPS
    if kind == "partial":
        return op == "FindItem"
    return True


@dataclass
class RequestRecord:
    op: str
    mailbox: str | None
    outcome: str  # "ok", "401", "anchor", "fault:<code>", or the injected fault kind
    count: int = 0  # items in the request (creates/updates/deletes/ids)
    attributes: dict[str, str] = field(default_factory=dict)  # of the operation element
    at: float = 0.0  # time.monotonic() when it arrived
    version: str | None = None  # RequestServerVersion/@Version


def make_tls_files(directory: Path) -> TestPki:
    """A private CA and a 127.0.0.1 server certificate, as an on-premises PKI would have."""
    return make_test_pki(directory)


class EwsEmulator:
    """An EWS endpoint on 127.0.0.1 with a few mailboxes and one impersonating service account."""

    def __init__(
        self,
        mailboxes: Iterable[str],
        *,
        username: str = "svc-leavesync",
        password: str = "emulator-password",
        impersonable: Iterable[str] | None = None,
        tls: TestPki | None = None,
        build: tuple[int, int, int, int] = (15, 1, 2507, 6),
        seed: int = 0,
        max_concurrency: int = MAX_CONCURRENCY,
        overwrite_needs_current_change_key: bool = True,
    ) -> None:
        self.mailboxes: dict[str, dict[str, StoredItem]] = {m.lower(): {} for m in mailboxes}
        # Proxy (secondary) SMTP address -> the primary address of the mailbox it reaches: a
        # rename keeps the old address as a proxy by default (email address policies).
        self.aliases: dict[str, str] = {}
        # None: the ApplicationImpersonation role's scope covers every mailbox.
        self.impersonable = None if impersonable is None else {m.lower() for m in impersonable}
        self.username = username
        self.password = password
        self.build = build
        self.tls = tls
        self.max_concurrency = max_concurrency
        # ResponseCode, ErrorChangeKeyRequiredForWriteOperations: UpdateItem needs a current
        # ChangeKey "even when conflict resolution is set to always overwrite". False: a stale
        # key is overwritten under AlwaysOverwrite, as the ConflictResolution page describes.
        self.overwrite_needs_current_change_key = overwrite_needs_current_change_key
        self.requests: list[RequestRecord] = []
        self.faults: list[Fault] = []
        self.fault_rate = 0.0
        self.fault_kinds: tuple[str, ...] = FAULT_KINDS
        self.fault_ops: tuple[str, ...] = WRITE_OPS + READ_OPS
        self.back_off_ms = 20
        self.connections = 0  # TCP connections accepted
        self.tls_failures = 0  # TLS handshakes that failed (an untrusted client gave up)
        self.max_active = 0  # most requests of the service account in flight at once
        self._active = 0
        self._random = random.Random(seed)
        self._lock = threading.RLock()
        self._ids = itertools.count(1)
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        assert self._server is not None, "emulator not started"
        scheme = "https" if self.tls else "http"
        return f"{scheme}://127.0.0.1:{self._server.server_address[1]}/EWS/Exchange.asmx"

    def start(self) -> EwsEmulator:
        handler = type("Handler", (_Handler,), {"emulator": self})
        context = None
        if self.tls:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(self.tls.cert_file, self.tls.key_file)
        self._server = _Server(("127.0.0.1", 0), handler, context, self)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.05,), daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> EwsEmulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- inspection and fault injection ---------------------------------------------------------

    def items(self, mailbox: str, folder: str = CALENDAR) -> list[StoredItem]:
        """The items of one folder of a mailbox (the calendar unless told)."""
        with self._lock:
            return [i for i in self.mailboxes[mailbox.lower()].values() if i.folder == folder]

    def all_items(self, folder: str = CALENDAR) -> Iterator[StoredItem]:
        with self._lock:
            for items in self.mailboxes.values():
                yield from [i for i in items.values() if i.folder == folder]

    def inject(self, kind: str, times: int = 1, **kwargs: object) -> None:
        """Queue ``times`` faults of ``kind`` for the next matching requests."""
        with self._lock:
            self.faults.extend(Fault(kind, **kwargs) for _ in range(times))

    def count(self, *ops: str, outcome: str | None = None) -> int:
        """How many requests of these operations (all if none) the emulator received."""
        with self._lock:
            return sum(
                1
                for r in self.requests
                if (not ops or r.op in ops) and (outcome is None or r.outcome == outcome)
            )

    def rename_mailbox(self, old: str, new: str, keep_alias: bool = True) -> None:
        """The mailbox's primary address becomes ``new``, with its items; the old address
        stays a proxy address of it (``keep_alias``) or names nothing any more."""
        old, new = old.lower(), new.lower()
        with self._lock:
            items = self.mailboxes.pop(old)
            for item in items.values():
                item.mailbox = new
            self.mailboxes[new] = items
            for alias, primary in list(self.aliases.items()):
                if primary == old:
                    self.aliases[alias] = new
            if keep_alias:
                self.aliases[old] = new
            if self.impersonable is not None and old in self.impersonable:
                self.impersonable.add(new)  # the scope names the account, whatever its address

    def remove_mailbox(self, address: str) -> None:
        """The mailbox is deleted (the employee left), and its items with it."""
        with self._lock:
            del self.mailboxes[address.lower()]

    def add_foreign_item(self, mailbox: str, subject: str, start: str, end: str) -> StoredItem:
        """An event somebody else created in Outlook (no leavesync tag)."""
        with self._lock:
            item = self._new_item(mailbox.lower(), CALENDAR)
            for name, text in (("Subject", subject), ("Start", start), ("End", end)):
                elem = etree.Element(_t(name))
                elem.text = _utc_text(text) if name in ("Start", "End") else text
                item.fields[name] = elem
            return item

    def copy_item(self, item_id: str, created: dt.datetime | None = None) -> StoredItem:
        """A second copy of an item in the same folder (another tool, an older run): new id."""
        with self._lock:
            source = self._any_item(item_id)
            clone = self._new_item(source.mailbox, source.folder)
            clone.fields = {k: copy.deepcopy(v) for k, v in source.fields.items()}
            clone.fields["DateTimeCreated"] = _text_elem(_t("DateTimeCreated"), _now_text(created))
            clone.extended = dict(source.extended)
            return clone

    def edit_item(self, item_id: str, name: str, text: str) -> None:
        """Someone edits the event in Outlook (changes one field's text): a new ChangeKey."""
        with self._lock:
            item = self._any_item(item_id)
            elem = item.fields.setdefault(name, etree.Element(_t(name)))
            elem.text = _utc_text(text) if name in ("Start", "End") else text
            item.changekey = self._changekey()

    def user_deletes(self, item_id: str, how: str = "MoveToDeletedItems") -> StoredItem | None:
        """The employee deletes the event in Outlook: it moves to Deleted Items under a new id.

        "Delete appointments and cancel meetings by using EWS in Exchange": the item in Deleted
        Items "has a different ItemId", it "is copied and deleted rather than simply moved".
        """
        with self._lock:
            return self._delete(self._any_item(item_id), how)

    def user_restores(self, item_id: str) -> StoredItem:
        """The employee moves a deleted event back to the calendar: again a new id."""
        with self._lock:
            item = self._any_item(item_id)
            del self.mailboxes[item.mailbox][item.item_id]
            back = self._new_item(item.mailbox, CALENDAR)
            back.fields, back.extended = item.fields, item.extended
            return back

    def _any_item(self, item_id: str) -> StoredItem:
        for items in self.mailboxes.values():
            if item_id in items:
                return items[item_id]
        raise KeyError(item_id)

    def _pick_fault(self, op: str, mailbox: str | None) -> Fault | None:
        with self._lock:
            for index, fault in enumerate(self.faults):
                if fault.matches(op, mailbox):
                    return self.faults.pop(index)
            if self.fault_rate and op in self.fault_ops and self._random.random() < self.fault_rate:
                kinds = [k for k in self.fault_kinds if _fault_applies(k, op)]
                return Fault(self._random.choice(kinds), back_off_ms=self.back_off_ms)
        return None

    # -- the store ------------------------------------------------------------------------------

    def _changekey(self) -> str:
        return base64.b64encode(f"ck-{next(self._ids)}".encode()).decode()

    def _new_item(self, mailbox: str, folder: str) -> StoredItem:
        item_id = base64.b64encode(f"AAMk-{mailbox}-{next(self._ids)}".encode()).decode()
        item = StoredItem(item_id, self._changekey(), mailbox, folder)
        self.mailboxes[mailbox][item_id] = item
        return item

    def _delete(self, item: StoredItem, how: str) -> StoredItem | None:
        """DeleteItem's DeleteType: a move gets a new ItemId ("EWS identifiers in Exchange")."""
        del self.mailboxes[item.mailbox][item.item_id]
        if how == "HardDelete":
            return None
        moved = self._new_item(
            item.mailbox, DELETED_ITEMS if how == "MoveToDeletedItems" else DUMPSTER
        )
        moved.fields, moved.extended = item.fields, item.extended
        return moved

    def _item(self, ref: etree._Element, mailbox: str) -> StoredItem:
        """The item an ItemId names, as the impersonated user sees it."""
        item_id = ref.get("Id")
        if not item_id:
            raise SoapFault("ErrorSchemaValidation", "ItemId requires the Id attribute.")
        try:
            base64.b64decode(item_id, validate=True)
        except (binascii.Error, ValueError):
            raise ItemError("ErrorInvalidIdMalformed", "Id is malformed.") from None
        item = self.mailboxes[mailbox].get(item_id)
        if item is None:
            # Ids are case-sensitive and name one mailbox ("EWS identifiers in Exchange"): another
            # mailbox's id is "not found or you do not have permission" (ResponseCode).
            raise ItemError("ErrorItemNotFound")
        return item

    # -- the operations ---------------------------------------------------------------------------

    def handle(self, op: str, body: etree._Element, request: _Request) -> etree._Element:
        """Validate and run one operation; return the ``m:<op>Response`` element."""
        method = getattr(self, f"_op_{op}", None)
        if method is None:
            raise SoapFault("ErrorInvalidOperation", f"The operation {op} is not emulated.")
        _check_schema(op, body, request.version)
        with self._lock:
            return method(body, request)

    def _mailbox_of(self, folder_id: etree._Element, request: _Request) -> str:
        """The mailbox a folder id names: its <Mailbox>, else the impersonated user."""
        address = folder_id.findtext(f"{_t('Mailbox')}/{_t('EmailAddress')}")
        owner = (address or request.mailbox or "").lower()
        if not owner:
            # "ErrorMissingEmailAddress": a distinguished folder without a mailbox, and the
            # caller (a service account) has none of its own.
            raise ItemError("ErrorMissingEmailAddress")
        if owner in self.aliases:
            # ResponseCode: "This error occurs when a caller passes in a non-primary SMTP
            # address. The response includes the correct SMTP address to use."
            raise ItemError("ErrorNonPrimarySmtpAddress")
        if owner not in self.mailboxes:
            raise ItemError("ErrorNonExistentMailbox")
        if request.mailbox and owner != request.mailbox:
            raise ItemError("ErrorAccessDenied")  # impersonating one user, reading another's
        return owner

    def _folder_of(self, folder_id: etree._Element, request: _Request) -> tuple[str, str]:
        owner = self._mailbox_of(folder_id, request)
        if _local(folder_id.tag) == "DistinguishedFolderId":
            return owner, folder_id.get("Id", "")
        name = (folder_id.get("Id") or "").split("-", 1)[0]  # our FolderIds are "<name>-<owner>"
        return owner, name

    def _op_ConvertId(self, body: etree._Element, request: _Request) -> etree._Element:
        response, messages = _response("ConvertId")
        for _ in body.iter(_t("AlternateId")):
            _error_message(messages, "ConvertId", ItemError("ErrorInvalidIdMalformed"))
        return response

    def _op_GetFolder(self, body: etree._Element, request: _Request) -> etree._Element:
        response, messages = _response("GetFolder")
        for folder_id in body.find(_m("FolderIds")):
            try:
                owner, name = self._folder_of(folder_id, request)
            except ItemError as error:
                _error_message(messages, "GetFolder", error)
                continue
            message = _ok_message(messages, "GetFolder")
            folders = etree.SubElement(message, _m("Folders"))
            if name == CALENDAR:
                folder = etree.SubElement(folders, _t("CalendarFolder"))
                total = len(self.items(owner))
                display, folder_class = "Calendar", "IPF.Appointment"
            else:
                folder = etree.SubElement(folders, _t("Folder"))
                display, folder_class, total = "Top of Information Store", "IPF.Note", 0
            etree.SubElement(folder, _t("FolderId"), Id=f"{name}-{owner}", ChangeKey="AQAAAA==")
            _add(folder, "FolderClass", folder_class)
            _add(folder, "DisplayName", display)
            _add(folder, "TotalCount", str(total))
            _add(folder, "ChildFolderCount", "0")
        return response

    def _op_FindItem(self, body: etree._Element, request: _Request) -> etree._Element:
        response, messages = _response("FindItem")
        for folder_id in body.find(_m("ParentFolderIds")):
            try:
                owner, name = self._folder_of(folder_id, request)
                found = self._find(body, owner, name, request)
            except ItemError as error:
                _error_message(messages, "FindItem", error)
                continue
            items, offset, total, shape = found
            message = _ok_message(messages, "FindItem")
            last = offset + len(items) >= total
            root = etree.SubElement(
                message,
                _m("RootFolder"),
                TotalItemsInView=str(total),
                IncludesLastItemInRange="true" if last else "false",
            )
            if not last:
                root.set("IndexedPagingOffset", str(offset + len(items)))
            container = etree.SubElement(root, _t("Items"))
            for item in items:
                container.append(_render_item(item, shape))
        return response

    def _find(
        self, body: etree._Element, owner: str, folder: str, request: _Request
    ) -> tuple[list[StoredItem], int, int, etree._Element]:
        """One folder of a FindItem: (page, its offset, items in view, shape)."""
        shape = body.find(_m("ItemShape"))
        _check_shape_paths(shape)
        restriction = body.find(_m("Restriction"))
        if restriction is not None:
            nodes = sum(1 for _ in restriction.iter()) - 1
            if nodes > MAX_RESTRICTION_NODES:
                raise ItemError(
                    "ErrorRestrictionTooLong", f"The restriction has {nodes} nodes, more than 255."
                )
            for uri in restriction.iter(_t("ExtendedFieldURI")):
                _check_extended_uri(uri)
        traversal = body.get("Traversal")
        if traversal == "SoftDeleted":
            # FindItem: "a soft-deleted traversal combined with a search restriction will
            # result in zero items returned".
            pool = [] if restriction is not None else self._folder_items(owner, DUMPSTER)
        elif traversal == "Associated":
            pool = []
        else:
            pool = self._folder_items(owner, folder)
        if restriction is not None:
            keep = _compile(restriction[0])
            pool = [i for i in pool if keep(i)]
        items = pool
        view = body.find(_m("CalendarView"))
        if view is not None:
            low, high = _parse_time(view.get("StartDate")), _parse_time(view.get("EndDate"))
            if high < low:
                raise ItemError("ErrorCalendarEndDateIsEarlierThanStartDate")
            items = [i for i in items if i.start < high and i.end > low]
        offset, limit = 0, FIND_COUNT_LIMIT
        paging = body.find(_m("IndexedPageItemView"))
        if paging is not None:
            offset = int(paging.get("Offset"))
            if offset < 0:
                raise ItemError("ErrorInvalidIndexedPagingParameters")
            if paging.get("MaxEntriesReturned") is not None:
                wanted = int(paging.get("MaxEntriesReturned"))
                if wanted <= 0:
                    raise ItemError("ErrorInvalidPagingMaxRows")
                limit = min(wanted, FIND_COUNT_LIMIT)
            if paging.get("BasePoint") == "End":
                # IndexedPageItemView: from the end, the offset counts backwards.
                offset = max(0, len(items) - offset - limit)
        if request.fault is not None and request.fault.kind == "partial":
            # "EWS throttling in Exchange": under EWSFindCountLimit pressure a paged FindItem
            # "may return a partial result set"; IncludesLastItemInRange says so.
            limit = max(1, min(limit, len(items) - offset) // 2)
        return items[offset : offset + limit], offset, len(items), shape

    def _folder_items(self, owner: str, folder: str) -> list[StoredItem]:
        return [i for i in self.mailboxes[owner].values() if i.folder == folder]

    def _op_GetItem(self, body: etree._Element, request: _Request) -> etree._Element:
        response, messages = _response("GetItem")
        shape = body.find(_m("ItemShape"))
        _check_shape_paths(shape)
        for index, ref in enumerate(body.find(_m("ItemIds"))):
            if _batch_fault(messages, "GetItem", index, len(body.find(_m("ItemIds"))), request):
                continue
            try:
                item = self._item(ref, request.owner)
            except ItemError as error:
                _error_message(messages, "GetItem", error)
                continue
            message = _ok_message(messages, "GetItem")
            etree.SubElement(message, _m("Items")).append(_render_item(item, shape))
        return response

    def _op_CreateItem(self, body: etree._Element, request: _Request) -> etree._Element:
        response, messages = _response("CreateItem")
        target = body.find(_m("SavedItemFolderId"))
        sources = list(body.find(_m("Items")))
        for index, source in enumerate(sources):
            if _batch_fault(messages, "CreateItem", index, len(sources), request):
                continue
            try:
                if target is not None:
                    owner, folder = self._folder_of(target[0], request)
                else:
                    owner, folder = request.owner, CALENDAR
                if _local(source.tag) == "CalendarItem" and not body.get("SendMeetingInvitations"):
                    raise ItemError("ErrorSendMeetingInvitationsRequired")
                fields, extended = _validated_item(source, creating=True)
            except ItemError as error:
                _error_message(messages, "CreateItem", error)
                continue
            item = self._new_item(owner, folder)
            item.fields, item.extended = fields, extended
            item.fields["DateTimeCreated"] = _text_elem(_t("DateTimeCreated"), _now_text())
            message = _ok_message(messages, "CreateItem")
            created = etree.SubElement(
                etree.SubElement(message, _m("Items")), _t(_local(source.tag))
            )
            etree.SubElement(created, _t("ItemId"), Id=item.item_id, ChangeKey=item.changekey)
        return response

    def _op_UpdateItem(self, body: etree._Element, request: _Request) -> etree._Element:
        response, messages = _response("UpdateItem")
        resolution = body.get("ConflictResolution", "AutoResolve")
        changes = list(body.find(_m("ItemChanges")))
        for index, change in enumerate(changes):
            if _batch_fault(messages, "UpdateItem", index, len(changes), request):
                continue
            try:
                ref = change.find(_t("ItemId"))
                item = self._item(ref, request.owner)
                if not body.get("SendMeetingInvitationsOrCancellations"):
                    raise ItemError("ErrorSendMeetingInvitationsOrCancellationsRequired")
                self._check_change_key(ref.get("ChangeKey"), item, resolution)
                fields = dict(item.fields)
                extended = dict(item.extended)
                for update in change.find(_t("Updates")):
                    _apply_update(update, fields, extended)
                _check_calendar(fields)
            except ItemError as error:
                _error_message(messages, "UpdateItem", error)
                continue
            item.fields, item.extended = fields, extended
            item.changekey = self._changekey()
            message = _ok_message(messages, "UpdateItem")
            updated = etree.SubElement(etree.SubElement(message, _m("Items")), _t("CalendarItem"))
            etree.SubElement(updated, _t("ItemId"), Id=item.item_id, ChangeKey=item.changekey)
            etree.SubElement(message, _m("ConflictResults")).append(_text_elem(_t("Count"), "0"))
        return response

    def _check_change_key(self, change_key: str | None, item: StoredItem, resolution: str) -> None:
        """ItemId, ConflictResolutionType and the ResponseCode list on ChangeKeys."""
        if change_key is not None:
            try:
                base64.b64decode(change_key, validate=True)
            except (binascii.Error, ValueError):
                raise ItemError("ErrorInvalidChangeKey") from None
        if resolution == "AutoResolve" and not change_key:
            raise ItemError("ErrorChangeKeyRequired")  # ItemId: "required ... AutoResolve"
        if change_key == item.changekey:
            return
        if resolution in ("AutoResolve", "NeverOverwrite"):
            raise ItemError(
                "ErrorIrresolvableConflict",
                "The change key passed in the request does not match the current change key.",
            )
        if self.overwrite_needs_current_change_key:
            raise ItemError("ErrorChangeKeyRequiredForWriteOperations")

    def _op_DeleteItem(self, body: etree._Element, request: _Request) -> etree._Element:
        response, messages = _response("DeleteItem")
        refs = list(body.find(_m("ItemIds")))
        for index, ref in enumerate(refs):
            if _batch_fault(messages, "DeleteItem", index, len(refs), request):
                continue
            try:
                item = self._item(ref, request.owner)
                if item.folder == CALENDAR and not body.get("SendMeetingCancellations"):
                    raise ItemError("ErrorSendMeetingCancellationsRequired")
            except ItemError as error:
                _error_message(messages, "DeleteItem", error)
                continue
            self._delete(item, body.get("DeleteType"))
            _ok_message(messages, "DeleteItem")
        return response


# -- request validation -----------------------------------------------------------------------

# Attribute values each operation element allows (the operation element pages); "required"
# ones must be present. Anything else is ErrorSchemaValidation, a SOAP fault.
_SEND_INVITES = ("SendToNone", "SendOnlyToAll", "SendToAllAndSaveCopy")
_DISPOSITIONS = ("SaveOnly", "SendOnly", "SendAndSaveCopy")
_BOOL = ("true", "false", "1", "0")
_ATTRIBUTES: dict[str, dict[str, tuple[tuple[str, ...], bool]]] = {
    "ConvertId": {
        "DestinationFormat": (
            ("EwsLegacyId", "EwsId", "EntryId", "HexEntryId", "StoreId", "OwaId"),
            True,
        )
    },
    "GetFolder": {},
    "GetItem": {},
    "FindItem": {"Traversal": (("Shallow", "SoftDeleted", "Associated"), True)},
    "CreateItem": {
        "MessageDisposition": (_DISPOSITIONS, False),
        "SendMeetingInvitations": (_SEND_INVITES, False),
    },
    "UpdateItem": {
        "ConflictResolution": (("NeverOverwrite", "AutoResolve", "AlwaysOverwrite"), False),
        "MessageDisposition": (_DISPOSITIONS, False),
        "SendMeetingInvitationsOrCancellations": (
            (
                "SendToNone",
                "SendOnlyToAll",
                "SendOnlyToChanged",
                "SendToAllAndSaveCopy",
                "SendToChangedAndSaveCopy",
            ),
            False,
        ),
        "SuppressReadReceipts": (_BOOL, False),
    },
    "DeleteItem": {
        "DeleteType": (("HardDelete", "SoftDelete", "MoveToDeletedItems"), True),
        "SendMeetingCancellations": (_SEND_INVITES, False),
        "AffectedTaskOccurrences": (("AllOccurrences", "SpecifiedOccurrenceOnly"), False),
        "SuppressReadReceipts": (_BOOL, False),
    },
}
# UpdateItem / DeleteItem: SuppressReadReceipts "was introduced in Exchange Server 2013 SP1".
_ATTRIBUTE_SINCE = {"SuppressReadReceipts": "Exchange2013_SP1"}
_CHILDREN: dict[str, tuple[str, ...]] = {
    "ConvertId": ("SourceIds",),
    "GetFolder": ("FolderShape", "FolderIds"),
    "GetItem": ("ItemShape", "ItemIds"),
    "FindItem": ("ItemShape", "ParentFolderIds"),
    "CreateItem": ("Items",),
    "UpdateItem": ("ItemChanges",),
    "DeleteItem": ("ItemIds",),
}
_BASE_SHAPES = ("IdOnly", "Default", "AllProperties")


def _schema_error(text: str) -> SoapFault:
    return SoapFault("ErrorSchemaValidation", f"The request failed schema validation: {text}")


def _check_schema(op: str, body: etree._Element, version: str) -> None:
    """What the XML schema itself refuses: a SOAP fault before anything runs."""
    allowed = _ATTRIBUTES.get(op, {})
    for name, value in body.attrib.items():
        if name not in allowed:
            raise _schema_error(f"the attribute '{name}' is not declared on {op}.")
        since = _ATTRIBUTE_SINCE.get(name)
        if since and SCHEMA_VERSIONS[version] < SCHEMA_VERSIONS[since]:
            raise _schema_error(f"the attribute '{name}' is not declared in schema {version}.")
        if value not in allowed[name][0]:
            raise _schema_error(f"'{value}' is not a valid value of {op}/@{name}.")
    for name, (_, required) in allowed.items():
        if required and body.get(name) is None:
            raise _schema_error(f"the required attribute '{name}' is missing on {op}.")
    for name in _CHILDREN.get(op, ()):
        child = body.find(_m(name))
        if child is None or (name != "FolderShape" and name != "ItemShape" and not len(child)):
            raise _schema_error(f"{op} requires a non-empty {name} element.")
    for shape in (body.find(_m("ItemShape")), body.find(_m("FolderShape"))):
        if shape is not None and shape.findtext(_t("BaseShape")) not in _BASE_SHAPES:
            raise _schema_error("BaseShape must be IdOnly, Default or AllProperties.")
    paging = body.find(_m("IndexedPageItemView"))
    if paging is not None:
        if paging.get("BasePoint") not in ("Beginning", "End") or paging.get("Offset") is None:
            raise _schema_error("IndexedPageItemView requires Offset and BasePoint.")
        try:
            int(paging.get("Offset"))
            int(paging.get("MaxEntriesReturned", "1"))
        except ValueError:
            raise _schema_error("IndexedPageItemView numbers must be integers.") from None
    view = body.find(_m("CalendarView"))
    if view is not None:
        try:
            _parse_time(view.get("StartDate"))
            _parse_time(view.get("EndDate"))
        except ValueError:
            raise _schema_error("CalendarView requires StartDate and EndDate.") from None
    if op == "UpdateItem":
        for change in body.find(_m("ItemChanges")):
            ids = [c for c in change if _local(c.tag).endswith("ItemId")]
            if len(ids) != 1 or change.find(_t("Updates")) is None:
                raise _schema_error("ItemChange needs exactly one item id and Updates.")
    if op in ("CreateItem", "UpdateItem"):
        for elem in body.iter(_t("Start"), _t("End")):
            try:
                _parse_time(elem.text)
            except ValueError:
                raise _schema_error(f"'{elem.text}' is not an xs:dateTime.") from None


def _check_shape_paths(shape: etree._Element | None) -> None:
    extras = None if shape is None else shape.find(_t("AdditionalProperties"))
    for uri in [] if extras is None else extras.iter(_t("ExtendedFieldURI")):
        _check_extended_uri(uri)


_DISTINGUISHED_SETS = (
    "Address",
    "Appointment",
    "CalendarAssistant",
    "Common",
    "InternetHeaders",
    "Meeting",
    "Sharing",
    "PublicStrings",
    "Task",
    "UnifiedMessaging",
)
_PROPERTY_TYPES = (
    "ApplicationTime",
    "ApplicationTimeArray",
    "Binary",
    "BinaryArray",
    "Boolean",
    "CLSID",
    "CLSIDArray",
    "Currency",
    "CurrencyArray",
    "Double",
    "DoubleArray",
    "Float",
    "FloatArray",
    "Integer",
    "IntegerArray",
    "Long",
    "LongArray",
    "Short",
    "ShortArray",
    "SystemTime",
    "SystemTimeArray",
    "String",
    "StringArray",
)  # Error, Null, Object, ObjectArray: "not used for restrictions or for getting/setting values"
_GUID = re.compile(r"^[0-9a-fA-F]{8}-([0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}$")


def _check_extended_uri(uri: etree._Element) -> None:
    """The attribute combinations the ExtendedFieldURI page allows (ErrorInvalidExtendedProperty)."""
    a = uri.attrib
    problem = None
    if a.get("PropertyType") not in _PROPERTY_TYPES:
        problem = "PropertyType is required and must be a settable type"
    elif "DistinguishedPropertySetId" in a and "PropertySetId" in a:
        problem = "DistinguishedPropertySetId and PropertySetId exclude each other"
    elif "PropertyTag" in a:
        if {"DistinguishedPropertySetId", "PropertySetId", "PropertyName", "PropertyId"} & set(a):
            problem = "PropertyTag stands alone"
        else:
            tag = int(a["PropertyTag"], 16 if a["PropertyTag"].lower().startswith("0x") else 10)
            if 0x8000 <= tag <= 0xFFFE:
                raise ItemError("ErrorNoPropertyTagForCustomProperties")
    elif not ({"DistinguishedPropertySetId", "PropertySetId"} & set(a)):
        problem = "PropertyName and PropertyId need a property set"
    elif ("PropertyName" in a) == ("PropertyId" in a):
        problem = "exactly one of PropertyName and PropertyId"
    elif "PropertySetId" in a and not _GUID.match(a["PropertySetId"]):
        problem = "PropertySetId must be a GUID"
    elif a.get("DistinguishedPropertySetId", "Common") not in _DISTINGUISHED_SETS:
        problem = "unknown DistinguishedPropertySetId"
    if problem:
        raise ItemError("ErrorInvalidExtendedProperty", f"Invalid ExtendedFieldURI: {problem}.")


def _extended_key(uri: etree._Element) -> tuple[str, str]:
    return (
        (uri.get("PropertySetId") or uri.get("DistinguishedPropertySetId") or "").lower(),
        uri.get("PropertyName") or uri.get("PropertyTag") or uri.get("PropertyId") or "",
    )


def _check_extended_value(uri: etree._Element, value: str) -> None:
    kind = uri.get("PropertyType")
    try:
        if kind in ("Integer", "Long", "Short"):
            int(value)
        elif kind == "Boolean" and value not in _BOOL:
            raise ValueError(value)
        elif kind == "SystemTime":
            _parse_time(value)
    except ValueError:
        raise ItemError("ErrorInvalidExtendedPropertyValue") from None


# The documented order of CalendarItem's children (the "CalendarItem" page, an xs:sequence in
# types.xsd); elements the page does not list (Importance, ...) are not checked for order.
_CALENDAR_ORDER = [
    "MimeContent",
    "ItemId",
    "ParentFolderId",
    "ItemClass",
    "Subject",
    "Sensitivity",
    "Body",
    "Attachments",
    "DateTimeReceived",
    "Size",
    "Categories",
    "InReplyTo",
    "IsSubmitted",
    "IsDraft",
    "IsFromMe",
    "IsResend",
    "IsUnmodified",
    "InternetMessageHeaders",
    "DateTimeSent",
    "DateTimeCreated",
    "ResponseObjects",
    "ReminderDueBy",
    "ReminderIsSet",
    "ReminderMinutesBeforeStart",
    "DisplayCc",
    "DisplayTo",
    "HasAttachments",
    "ExtendedProperty",
    "Culture",
    "Start",
    "End",
    "OriginalStart",
    "IsAllDayEvent",
    "LegacyFreeBusyStatus",
    "Location",
    "When",
    "IsMeeting",
    "IsCancelled",
    "IsRecurring",
    "MeetingRequestWasSent",
    "IsResponseRequested",
    "CalendarItemType",
    "MyResponseType",
    "Organizer",
    "RequiredAttendees",
    "OptionalAttendees",
    "Resources",
    "ConflictingMeetingCount",
    "AdjacentMeetingCount",
    "ConflictingMeetings",
    "AdjacentMeetings",
    "Duration",
    "TimeZone",
    "AppointmentReplyTime",
    "AppointmentSequenceNumber",
    "AppointmentState",
    "Recurrence",
    "FirstOccurrence",
    "LastOccurrence",
    "ModifiedOccurrences",
    "DeletedOccurrences",
    "MeetingTimeZone",
    "StartTimeZone",
    "EndTimeZone",
    "ConferenceType",
    "AllowNewTimeProposal",
    "IsOnlineMeeting",
    "MeetingWorkspaceUrl",
    "NetShowUrl",
    "EffectiveRights",
    "LastModifiedName",
    "LastModifiedTime",
    "IsAssociated",
    "WebClientReadFormQueryString",
    "WebClientEditFormQueryString",
    "ConversationId",
    "UniqueBody",
]
_POSITION = {name: index for index, name in enumerate(_CALENDAR_ORDER)}
# Set by the server, never by a client: ErrorInvalidPropertySet ("the property ... is read-only").
_READ_ONLY = {
    "ItemId",
    "ParentFolderId",
    "DateTimeReceived",
    "Size",
    "DateTimeCreated",
    "DateTimeSent",
    "HasAttachments",
    "DisplayCc",
    "DisplayTo",
    "IsMeeting",
    "IsCancelled",
    "IsRecurring",
    "MeetingRequestWasSent",
    "CalendarItemType",
    "MyResponseType",
    "Organizer",
    "ConflictingMeetingCount",
    "AdjacentMeetingCount",
    "Duration",
    "AppointmentState",
    "EffectiveRights",
    "LastModifiedName",
    "LastModifiedTime",
    "ConversationId",
    "UniqueBody",
}
# xs:boolean item and calendar properties of types.xsd that a client may send as 1/0.
_BOOLEANS = {
    "IsAllDayEvent",
    "ReminderIsSet",
    "IsResponseRequested",
    "AllowNewTimeProposal",
    "IsDraft",
    "IsRead",
    "IsOnlineMeeting",
    "IsAssociated",
    "IsSubmitted",
    "IsUnmodified",
    "IsResend",
}
_FREE_BUSY = ("Free", "Tentative", "Busy", "OOF", "WorkingElsewhere", "NoData")
_SENSITIVITY = ("Normal", "Personal", "Private", "Confidential")


def _validated_item(
    source: etree._Element, creating: bool
) -> tuple[dict[str, etree._Element], dict[tuple[str, str], tuple[etree._Element, str]]]:
    """An item's children as the store keeps them; per-item response codes for what is wrong."""
    fields: dict[str, etree._Element] = {}
    extended: dict[tuple[str, str], tuple[etree._Element, str]] = {}
    last = -1
    for child in source:
        name = _local(child.tag)
        position = _POSITION.get(name)
        if position is not None:
            if position < last:
                raise SoapFault("ErrorSchemaValidation", f"{name} is out of schema order.")
            last = position
        if name in _READ_ONLY:
            raise ItemError("ErrorInvalidPropertySet", f"The property {name} is read-only.")
        _store_field(child, fields, extended)
    if creating:
        _check_calendar(fields)
    return fields, extended


def _store_field(
    child: etree._Element,
    fields: dict[str, etree._Element],
    extended: dict[tuple[str, str], tuple[etree._Element, str]],
) -> None:
    name = _local(child.tag)
    if name == "ExtendedProperty":
        uri = child.find(_t("ExtendedFieldURI"))
        if uri is None:
            raise ItemError("ErrorInvalidExtendedProperty")
        _check_extended_uri(uri)
        value = child.findtext(_t("Value"), "")
        _check_extended_value(uri, value)
        extended[_extended_key(uri)] = (copy.deepcopy(uri), value)
        return
    value = copy.deepcopy(child)
    if name in ("Start", "End") and value.text:
        value.text = _utc_text(value.text)
    elif name in _BOOLEANS:
        if value.text not in _BOOL:
            raise SoapFault("ErrorSchemaValidation", f"{name} must be an xs:boolean.")
        value.text = "true" if value.text in ("1", "true") else "false"  # as Exchange answers
    elif name == "LegacyFreeBusyStatus" and value.text not in _FREE_BUSY:
        raise SoapFault("ErrorSchemaValidation", f"'{value.text}' is not a LegacyFreeBusyType.")
    elif name == "Sensitivity" and value.text not in _SENSITIVITY:
        raise SoapFault("ErrorSchemaValidation", f"'{value.text}' is not a SensitivityChoicesType.")
    elif name in ("StartTimeZone", "EndTimeZone") and value.get("Id") not in WINDOWS_ZONES:
        raise ItemError("ErrorCalendarInvalidTimeZone", f"Unknown time zone {value.get('Id')!r}.")
    fields[name] = value


def _check_calendar(fields: dict[str, etree._Element]) -> None:
    """ResponseCode: ErrorCalendarEndDateIsEarlierThanStartDate, ErrorCalendarDurationIsTooLong."""
    if "Start" not in fields or "End" not in fields:
        return
    start, end = _parse_time(fields["Start"].text), _parse_time(fields["End"].text)
    if end < start:
        raise ItemError("ErrorCalendarEndDateIsEarlierThanStartDate")
    try:
        limit = start.replace(year=start.year + 5)
    except ValueError:  # 29 February
        limit = start.replace(year=start.year + 5, day=28)
    if end > limit:
        raise ItemError("ErrorCalendarDurationIsTooLong", "The duration is longer than 5 years.")
    if fields.get("IsAllDayEvent") is not None and fields["IsAllDayEvent"].text == "true":
        _all_day_midnights(fields, start, end)


def _all_day_midnights(
    fields: dict[str, etree._Element], start: dt.datetime, end: dt.datetime
) -> None:
    """All-day events run midnight to midnight in the item's zone ("Create all-day events by
    using EWS in Exchange"): a later start goes back to the midnight before, a later end on to
    the midnight after."""
    zone_elem = fields.get("StartTimeZone")
    name = WINDOWS_TO_OLSON.get(zone_elem.get("Id", "UTC") if zone_elem is not None else "UTC")
    zone = ZoneInfo(name or "UTC")
    local_start, local_end = start.astimezone(zone), end.astimezone(zone)
    first = dt.datetime.combine(local_start.date(), dt.time(0), zone)
    last = dt.datetime.combine(local_end.date(), dt.time(0), zone)
    if last < local_end:
        last = dt.datetime.combine(local_end.date() + dt.timedelta(days=1), dt.time(0), zone)
    for field_name, value in (("Start", first), ("End", last)):
        fields[field_name] = _text_elem(_t(field_name), _utc_text(value.isoformat()))


def _field_name(uri: str) -> str:
    # FieldURI values are "<area>:<ElementName>" (item:Subject, calendar:Start) in types.xsd.
    return uri.split(":", 1)[-1]


def _apply_update(
    update: etree._Element,
    fields: dict[str, etree._Element],
    extended: dict[tuple[str, str], tuple[etree._Element, str]],
) -> None:
    """One SetItemField / DeleteItemField of an ItemChange."""
    kind = _local(update.tag)
    path = update[0]
    if kind == "DeleteItemField":
        if _local(path.tag) == "ExtendedFieldURI":
            _check_extended_uri(path)
            extended.pop(_extended_key(path), None)
        else:
            fields.pop(_field_name(path.get("FieldURI", "")), None)
        return
    if kind != "SetItemField":
        raise ItemError("ErrorInvalidOperation", f"{kind} is not emulated.")
    value = update[1] if len(update) > 1 else None
    # ErrorIncorrectUpdatePropertyCount: "each change description ... must list only one
    # property", the one its path names.
    if value is None or len(value) != 1:
        raise ItemError("ErrorIncorrectUpdatePropertyCount")
    (child,) = value
    if _local(path.tag) == "ExtendedFieldURI":
        uri = child.find(_t("ExtendedFieldURI"))
        if _local(child.tag) != "ExtendedProperty" or uri is None:
            raise ItemError("ErrorIncorrectUpdatePropertyCount")
        if _extended_key(uri) != _extended_key(path):
            raise ItemError("ErrorIncorrectUpdatePropertyCount")
    elif _local(child.tag) != _field_name(path.get("FieldURI", "")):
        raise ItemError("ErrorIncorrectUpdatePropertyCount")
    if _local(child.tag) in _READ_ONLY:
        raise ItemError("ErrorInvalidPropertySet")
    _store_field(child, fields, extended)


def _render_item(item: StoredItem, shape: etree._Element | None) -> etree._Element:
    """The item as FindItem/GetItem return it: ItemId plus the properties the shape asks for."""
    elem = etree.Element(_t("CalendarItem"))
    etree.SubElement(elem, _t("ItemId"), Id=item.item_id, ChangeKey=item.changekey)
    base = "IdOnly" if shape is None else shape.findtext(_t("BaseShape"), "IdOnly")
    wanted: set[str] | None = set() if base == "IdOnly" else None
    extended: list[tuple[str, str]] = []
    extras = None if shape is None else shape.find(_t("AdditionalProperties"))
    for path in [] if extras is None else extras:
        if _local(path.tag) == "ExtendedFieldURI":
            extended.append(_extended_key(path))
        elif wanted is not None:
            wanted.add(_field_name(path.get("FieldURI", "")))
    for name in sorted(item.fields, key=lambda n: _POSITION.get(n, len(_POSITION))):
        if wanted is None or name in wanted:
            elem.append(copy.deepcopy(item.fields[name]))
    for key in extended:  # never part of a base shape, only when asked for by name
        if key in item.extended:
            uri, value = item.extended[key]
            prop = etree.SubElement(elem, _t("ExtendedProperty"))
            prop.append(copy.deepcopy(uri))
            prop.append(_text_elem(_t("Value"), value))
    return elem


_Predicate = Callable[[StoredItem], bool]
# Date-time properties compare as instants; everything else as text.
_TIME_FIELDS = {"Start", "End", "DateTimeCreated", "LastModifiedTime", "OriginalStart"}


def _getter(path: etree._Element) -> tuple[Callable[[StoredItem], str | None], bool]:
    """How to read the property a restriction names, and whether it is a date-time."""
    if _local(path.tag) == "ExtendedFieldURI":
        key = _extended_key(path)

        def extended(item: StoredItem) -> str | None:
            found = item.extended.get(key)
            return None if found is None else found[1]

        return extended, path.get("PropertyType") == "SystemTime"
    name = _field_name(path.get("FieldURI", ""))
    return (lambda item: item.text(name)), name in _TIME_FIELDS


_COMPARISONS: dict[str, Callable[[int], bool]] = {
    "IsEqualTo": lambda c: c == 0,
    "IsNotEqualTo": lambda c: c != 0,
    "IsGreaterThan": lambda c: c > 0,
    "IsGreaterThanOrEqualTo": lambda c: c >= 0,
    "IsLessThan": lambda c: c < 0,
    "IsLessThanOrEqualTo": lambda c: c <= 0,
}


def _compile(node: etree._Element) -> _Predicate:
    """A restriction (types.xsd SearchExpressionType) as a predicate over items."""
    name = _local(node.tag)
    if name in ("And", "Or"):
        parts = [_compile(child) for child in node]
        if name == "And":
            return lambda item: all(p(item) for p in parts)
        return lambda item: any(p(item) for p in parts)
    if name == "Not":
        inner = _compile(node[0])
        return lambda item: not inner(item)
    get, is_time = _getter(node[0])
    if name == "Exists":
        return lambda item: get(item) is not None
    if name == "Contains":
        needle = node.find(_t("Constant")).get("Value").lower()

        def contains(item: StoredItem) -> bool:
            value = get(item)
            return value is not None and needle in value.lower()

        return contains
    if name not in _COMPARISONS:
        raise ItemError("ErrorUnsupportedQueryFilter", f"Restriction {name} is not emulated.")
    test = _COMPARISONS[name]
    constant_elem = node.find(f"{_t('FieldURIOrConstant')}/{_t('Constant')}")
    if constant_elem is None:
        raise ItemError("ErrorUnsupportedQueryFilter", "Only constants are compared.")
    text = constant_elem.get("Value", "")
    try:
        constant: object = _parse_time(text) if is_time else text
    except ValueError:
        raise ItemError("ErrorInvalidValueForProperty") from None

    def compare(item: StoredItem) -> bool:
        value = get(item)
        if value is None:
            return False
        left: object = _parse_time(value) if is_time else value
        return test((left > constant) - (left < constant))  # type: ignore[operator]

    return compare


# -- responses --------------------------------------------------------------------------------


def _now_text(at: dt.datetime | None = None) -> str:
    """A server-set time stamp, to the second (DateTimePrecision's default)."""
    return (at or dt.datetime.now(dt.UTC)).strftime("%Y-%m-%dT%H:%M:%SZ")


def _text_elem(tag: str, text: str) -> etree._Element:
    elem = etree.Element(tag)
    elem.text = text
    return elem


def _add(parent: etree._Element, name: str, text: str) -> None:
    parent.append(_text_elem(_t(name), text))


def _response(op: str) -> tuple[etree._Element, etree._Element]:
    response = etree.Element(_m(f"{op}Response"), nsmap={"m": M, "t": T})
    return response, etree.SubElement(response, _m("ResponseMessages"))


def _ok_message(messages: etree._Element, op: str) -> etree._Element:
    message = etree.SubElement(messages, _m(f"{op}ResponseMessage"), ResponseClass="Success")
    message.append(_text_elem(_m("ResponseCode"), "NoError"))
    return message


def _error_message(
    messages: etree._Element,
    op: str,
    error: ItemError,
    response_class: str = "Error",
    values: Iterable[tuple[str, str]] = (),
) -> None:
    message = etree.SubElement(messages, _m(f"{op}ResponseMessage"), ResponseClass=response_class)
    message.append(_text_elem(_m("MessageText"), error.text))
    message.append(_text_elem(_m("ResponseCode"), error.code))
    message.append(_text_elem(_m("DescriptiveLinkKey"), "0"))
    values = list(values)
    if values:
        xml = etree.SubElement(message, _m("MessageXml"))
        for name, text in values:
            etree.SubElement(xml, _t("Value"), Name=name).text = text


def _batch_fault(
    messages: etree._Element, op: str, index: int, total: int, request: _Request
) -> bool:
    """Injected item-level faults of a batch; True when this item was not processed."""
    fault = request.fault
    if fault is None:
        return False
    if fault.kind == "item_busy":
        # "EWS throttling in Exchange", HTTP 200: "an EWS schema-based error response with an
        # ErrorInternalServerError error code. An inner ErrorServerBusy error code may be present."
        _error_message(
            messages,
            op,
            ItemError("ErrorInternalServerError"),
            values=[
                ("InnerErrorResponseCode", "ErrorServerBusy"),
                ("InnerErrorMessageText", _TEXT["ErrorServerBusy"]),
            ],
        )
        return True
    if fault.kind == "stopped" and index >= total // 2:
        # ResponseClass Warning: "an error occurred while an item in the request was processed
        # and subsequent items could not be processed" (ErrorBatchProcessingStopped).
        _error_message(messages, op, ItemError("ErrorBatchProcessingStopped"), "Warning")
        return True
    return False


def _server_schema(build: tuple[int, ...]) -> str:
    if build[:2] == (15, 0):
        return "Exchange2013_SP1" if build >= (15, 0, 847) else "Exchange2013"
    return "V2017_07_11"


def _envelope(build: tuple[int, int, int, int], content: etree._Element) -> bytes:
    envelope = etree.Element(f"{{{SOAP}}}Envelope", nsmap={"s": SOAP})
    header = etree.SubElement(envelope, f"{{{SOAP}}}Header")
    major, minor, major_build, minor_build = build
    etree.SubElement(
        header,
        f"{{{T}}}ServerVersionInfo",
        nsmap={"h": T},
        MajorVersion=str(major),
        MinorVersion=str(minor),
        MajorBuildNumber=str(major_build),
        MinorBuildNumber=str(minor_build),
        Version=_server_schema(build),
    )
    etree.SubElement(envelope, f"{{{SOAP}}}Body").append(content)
    return etree.tostring(envelope, xml_declaration=True, encoding="utf-8")


def _fault_envelope(fault: SoapFault, back_off_ms: int | None = None) -> bytes:
    envelope = etree.Element(f"{{{SOAP}}}Envelope", nsmap={"s": SOAP})
    soap_fault = etree.SubElement(etree.SubElement(envelope, f"{{{SOAP}}}Body"), f"{{{SOAP}}}Fault")
    code = etree.SubElement(soap_fault, "faultcode", nsmap={"a": T})
    code.text = f"a:{fault.code}"
    string = etree.SubElement(soap_fault, "faultstring")
    string.set("{http://www.w3.org/XML/1998/namespace}lang", "en-US")
    string.text = fault.text
    detail = etree.SubElement(soap_fault, "detail")
    etree.SubElement(detail, f"{{{E}}}ResponseCode", nsmap={"e": E}).text = fault.code
    etree.SubElement(detail, f"{{{E}}}Message", nsmap={"e": E}).text = fault.text
    values = []
    if back_off_ms is not None:
        values.append(("BackOffMilliseconds", str(back_off_ms)))
    if fault.value:
        values.append(fault.value)
    if values:
        message_xml = etree.SubElement(detail, f"{{{T}}}MessageXml", nsmap={"t": T})
        for name, text in values:
            etree.SubElement(message_xml, f"{{{T}}}Value", Name=name).text = text
    return etree.tostring(envelope, xml_declaration=True, encoding="utf-8")


# -- HTTP ---------------------------------------------------------------------------------------


@dataclass
class _Request:
    """What the SOAP header and the HTTP request say about one operation."""

    version: str
    mailbox: str | None  # the impersonated user
    fault: Fault | None = None

    @property
    def owner(self) -> str:
        if self.mailbox is None:
            raise ItemError("ErrorMissingEmailAddress")
        return self.mailbox


_SID_CHOICES = ("PrincipalName", "SID", "PrimarySmtpAddress", "SmtpAddress")


def _read_header(envelope: etree._Element, emulator: EwsEmulator) -> _Request:
    """RequestServerVersion and ExchangeImpersonation, as the server checks them."""
    header = envelope.find(f"{{{SOAP}}}Header")
    version_elem = None if header is None else header.find(_t("RequestServerVersion"))
    version = None if version_elem is None else version_elem.get("Version")
    # RequestServerVersion: Version "is required when the target server version is ...
    # Exchange Server 2010" or later; a version the server does not know is refused.
    if version not in SCHEMA_VERSIONS or SCHEMA_VERSIONS[version] > emulator.build:
        raise SoapFault("ErrorInvalidServerVersion")
    impersonation = None if header is None else header.find(_t("ExchangeImpersonation"))
    if impersonation is None:
        return _Request(version, None)
    sid = impersonation.find(_t("ConnectingSID"))
    chosen = [] if sid is None else [c for c in sid if _local(c.tag) in _SID_CHOICES]
    if sid is None or len(chosen) != 1 or len(sid) != 1 or not (chosen[0].text or "").strip():
        raise _schema_error("ConnectingSID takes exactly one of " + ", ".join(_SID_CHOICES))
    address = chosen[0].text.strip().lower()
    if _local(chosen[0].tag) in ("PrimarySmtpAddress", "SmtpAddress") and "@" not in address:
        raise SoapFault("ErrorInvalidSmtpAddress")
    primary = emulator.aliases.get(address)
    if primary is not None:
        # ConnectingSID: SmtpAddress is "the SMTP address of the account" (any proxy address,
        # resolved through Active Directory); PrimarySmtpAddress must be the primary one, else
        # ErrorNonPrimarySmtpAddress naming it (ResponseCode: "The response includes the
        # correct SMTP address to use").
        if _local(chosen[0].tag) == "PrimarySmtpAddress":
            raise SoapFault("ErrorNonPrimarySmtpAddress", value=("Primary", primary))
        address = primary
    if address not in emulator.mailboxes:
        raise SoapFault("ErrorNonExistentMailbox", value=("SmtpAddress", address))
    if emulator.impersonable is not None and address not in emulator.impersonable:
        raise SoapFault("ErrorImpersonateUserDenied")
    return _Request(version, address)


class _Server(ThreadingHTTPServer):
    """Counts failed TLS handshakes (a client that does not trust our CA gives up there)."""

    def __init__(
        self,
        address: tuple[str, int],
        handler: type[BaseHTTPRequestHandler],
        context: ssl.SSLContext | None,
        emulator: EwsEmulator,
    ) -> None:
        super().__init__(address, handler)
        self.context = context
        self.emulator = emulator

    def finish_request(self, request, client_address) -> None:  # type: ignore[no-untyped-def]
        with self.emulator._lock:
            self.emulator.connections += 1
        if self.context is not None:
            try:
                request = self.context.wrap_socket(request, server_side=True)
            except (ssl.SSLError, OSError):
                with self.emulator._lock:
                    self.emulator.tls_failures += 1
                return
        super().finish_request(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    emulator: EwsEmulator

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - quiet server
        pass

    def _send(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "text/xml; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def _send_empty(self, status: int, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", "0")
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()

    def _authorized(self) -> bool:
        header = self.headers.get("Authorization", "")
        if not header.startswith("Basic "):
            return False
        user, _, password = base64.b64decode(header[6:]).decode().partition(":")
        return user == self.emulator.username and password == self.emulator.password

    def do_POST(self) -> None:  # noqa: N802 - http.server naming
        emulator = self.emulator
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        envelope = etree.fromstring(body)
        operation = envelope.find(f"{{{SOAP}}}Body")[0]
        op = _local(operation.tag)
        sid = envelope.find(f"{{{SOAP}}}Header/{_t('ExchangeImpersonation')}/{_t('ConnectingSID')}")
        mailbox = None if sid is None or not len(sid) else (sid[0].text or "").strip().lower()
        version = envelope.find(f"{{{SOAP}}}Header/{_t('RequestServerVersion')}")
        count = 0
        for name in ("Items", "ItemIds", "ItemChanges"):
            if operation.find(_m(name)) is not None:
                count = len(operation.find(_m(name)))
        record = RequestRecord(
            op,
            mailbox,
            "ok",
            count,
            dict(operation.attrib),
            time.monotonic(),
            None if version is None else version.get("Version"),
        )
        with emulator._lock:
            emulator.requests.append(record)
        if not self._authorized():
            record.outcome = "401"
            self._send(401, b"", {"WWW-Authenticate": 'Basic realm="127.0.0.1"'})
            return
        if mailbox and self.headers.get("X-AnchorMailbox", "").lower() != mailbox:
            # "Impersonation and EWS in Exchange": with impersonation "the X-AnchorMailbox should
            # always be correctly set. Otherwise, you may get error messages 500 or 503".
            record.outcome = "anchor"
            self._send_empty(503)
            return
        with emulator._lock:
            emulator._active += 1
            emulator.max_active = max(emulator.max_active, emulator._active)
            over = emulator._active > emulator.max_concurrency
        try:
            if over:
                record.outcome = "fault:ErrorExceededConnectionCount"
                self._send(500, _fault_envelope(SoapFault("ErrorExceededConnectionCount")))
                return
            self._serve(emulator, record, envelope, operation, op, mailbox)
        finally:
            with emulator._lock:
                emulator._active -= 1

    def _serve(
        self,
        emulator: EwsEmulator,
        record: RequestRecord,
        envelope: etree._Element,
        operation: etree._Element,
        op: str,
        mailbox: str | None,
    ) -> None:
        fault = emulator._pick_fault(op, mailbox)
        if fault is not None:
            record.outcome = fault.kind
            if fault.kind == "slow":
                time.sleep(fault.delay)
            elif fault.kind == "busy":
                payload = _fault_envelope(SoapFault("ErrorServerBusy"), fault.back_off_ms)
                self._send(500, payload)
                return
            elif fault.kind == "503":
                headers = (
                    {} if fault.retry_after is None else {"Retry-After": str(fault.retry_after)}
                )
                self._send_empty(503, headers)
                return
            elif fault.kind == "fault500":
                self._send(500, _fault_envelope(SoapFault("ErrorInternalServerError")))
                return
            elif fault.kind == "drop":
                self.close_connection = True
                return
        try:
            request = _read_header(envelope, emulator)
            request.fault = fault
            content = emulator.handle(op, operation, request)
        except SoapFault as error:
            record.outcome = f"fault:{error.code}"
            self._send(500, _fault_envelope(error))
            return
        if fault is not None and fault.kind == "lost":
            # Applied, but the answer never reaches the client (connection reset).
            self.close_connection = True
            return
        self._send(200, _envelope(emulator.build, content))
