"""An Exchange Web Services (EWS) emulator on 127.0.0.1 for the ``ews`` provider's tests.

Built from Microsoft's EWS reference (messages.xsd / types.xsd and the operation pages): it
speaks SOAP 1.1 over HTTP(S) with basic authentication, answers ConvertId (version probing),
GetFolder, FindItem (restrictions on item and extended properties, indexed paging), GetItem,
CreateItem, UpdateItem and DeleteItem, checks the ExchangeImpersonation header against the
mailboxes the service account may impersonate, keeps calendar items per mailbox, and injects
faults (ErrorServerBusy with BackOffMilliseconds, HTTP 503, HTTP 500 SOAP faults, dropped
connections before or after the request was applied, slow answers).
"""

from __future__ import annotations

import base64
import datetime as dt
import itertools
import random
import ssl
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from lxml import etree

from tests.emulators.pki import TestPki, make_test_pki

SOAP = "http://schemas.xmlsoap.org/soap/envelope/"
M = "http://schemas.microsoft.com/exchange/services/2006/messages"
T = "http://schemas.microsoft.com/exchange/services/2006/types"
E = "http://schemas.microsoft.com/exchange/services/2006/errors"

WRITE_OPS = ("CreateItem", "UpdateItem", "DeleteItem")
READ_OPS = ("FindItem", "GetItem", "GetFolder")
FAULT_KINDS = ("busy", "503", "fault500", "drop", "lost")

_BUSY_TEXT = "The server cannot service this request right now. Try again later."
_FAULT_TEXT = {
    "ErrorServerBusy": _BUSY_TEXT,
    "ErrorInternalServerError": "An internal server error occurred. The operation failed.",
    "ErrorNonExistentMailbox": "The SMTP address has no mailbox associated with it.",
    "ErrorImpersonateUserDenied": (
        "The account does not have permission to impersonate the requested user."
    ),
}


def _t(name: str) -> str:
    return f"{{{T}}}{name}"


def _m(name: str) -> str:
    return f"{{{M}}}{name}"


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _utc_text(text: str) -> str:
    """Exchange returns every date-time in UTC ("Z"), whatever offset the client sent."""
    value = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    return value.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class StoredItem:
    """One calendar item as the server keeps it: its fields by element name, extended props."""

    item_id: str
    changekey: str
    mailbox: str
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
        return dt.datetime.fromisoformat(self.text("Start").replace("Z", "+00:00"))

    @property
    def end(self) -> dt.datetime:
        return dt.datetime.fromisoformat(self.text("End").replace("Z", "+00:00"))

    def timezone_id(self) -> str | None:
        elem = self.fields.get("StartTimeZone")
        return None if elem is None else elem.get("Id")


@dataclass
class Fault:
    """A fault to inject into the next matching request."""

    kind: str  # busy | 503 | fault500 | drop | lost | slow
    ops: tuple[str, ...] | None = None
    mailbox: str | None = None
    back_off_ms: int = 20
    retry_after: int | None = None
    delay: float = 0.05

    def matches(self, op: str, mailbox: str | None) -> bool:
        if self.ops is not None and op not in self.ops:
            return False
        return self.mailbox is None or self.mailbox == mailbox


@dataclass
class RequestRecord:
    op: str
    mailbox: str | None
    outcome: str  # "ok", "401", or the injected fault kind
    count: int = 0  # items in the request (creates/updates/deletes/ids)
    attributes: dict[str, str] = field(default_factory=dict)  # of the operation element
    at: float = 0.0  # time.monotonic() when it arrived


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
    ) -> None:
        self.mailboxes: dict[str, dict[str, StoredItem]] = {m.lower(): {} for m in mailboxes}
        # None: the ApplicationImpersonation role's scope covers every mailbox.
        self.impersonable = None if impersonable is None else {m.lower() for m in impersonable}
        self.username = username
        self.password = password
        self.build = build
        self.tls = tls
        self.requests: list[RequestRecord] = []
        self.faults: list[Fault] = []
        self.fault_rate = 0.0
        self.fault_kinds: tuple[str, ...] = FAULT_KINDS
        self.fault_ops: tuple[str, ...] = WRITE_OPS + READ_OPS
        self.back_off_ms = 20
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
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        if self.tls:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(self.tls.cert_file, self.tls.key_file)
            self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
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

    def items(self, mailbox: str) -> list[StoredItem]:
        with self._lock:
            return list(self.mailboxes[mailbox.lower()].values())

    def all_items(self) -> Iterator[StoredItem]:
        with self._lock:
            for items in self.mailboxes.values():
                yield from list(items.values())

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

    def add_foreign_item(self, mailbox: str, subject: str, start: str, end: str) -> StoredItem:
        """An event somebody else created in Outlook (no leavesync tag)."""
        with self._lock:
            item = self._new_item(mailbox.lower())
            for name, text in (("Subject", subject), ("Start", start), ("End", end)):
                elem = etree.Element(_t(name))
                elem.text = _utc_text(text) if name in ("Start", "End") else text
                item.fields[name] = elem
            return item

    def edit_item(self, item_id: str, name: str, text: str) -> None:
        """Someone edits the event in Outlook (changes one field's text)."""
        with self._lock:
            for items in self.mailboxes.values():
                if item_id in items:
                    elem = items[item_id].fields.setdefault(name, etree.Element(_t(name)))
                    elem.text = _utc_text(text) if name in ("Start", "End") else text
                    items[item_id].changekey = self._changekey()

    def _pick_fault(self, op: str, mailbox: str | None) -> Fault | None:
        with self._lock:
            for index, fault in enumerate(self.faults):
                if fault.matches(op, mailbox):
                    return self.faults.pop(index)
            if self.fault_rate and op in self.fault_ops and self._random.random() < self.fault_rate:
                return Fault(self._random.choice(self.fault_kinds), back_off_ms=self.back_off_ms)
        return None

    # -- the operations ---------------------------------------------------------------------------

    def _changekey(self) -> str:
        return base64.b64encode(f"ck-{next(self._ids)}".encode()).decode()

    def _new_item(self, mailbox: str) -> StoredItem:
        item_id = base64.b64encode(f"AAMk-{mailbox}-{next(self._ids)}".encode()).decode()
        item = StoredItem(item_id, self._changekey(), mailbox)
        self.mailboxes[mailbox][item_id] = item
        return item

    def handle(self, op: str, body: etree._Element, mailbox: str | None) -> etree._Element:
        """Run one operation; return the ``m:<op>Response`` element."""
        method = getattr(self, f"_op_{op}", None)
        if method is None:
            raise _SoapFault("ErrorInvalidOperation", f"The operation {op} is not emulated.")
        with self._lock:
            return method(body, mailbox)

    def _folder_mailbox(self, folder_ids: etree._Element | None, mailbox: str | None) -> str:
        if folder_ids is not None:
            address = folder_ids.find(f".//{_t('EmailAddress')}")
            if address is not None and address.text:
                return address.text.lower()
        if mailbox is None:
            raise _SoapFault("ErrorInvalidRequest", "No mailbox: use ExchangeImpersonation.")
        return mailbox

    def _check_mailbox(self, address: str) -> str:
        address = address.lower()
        if address not in self.mailboxes:
            raise _SoapFault("ErrorNonExistentMailbox", value=("SmtpAddress", address))
        return address

    def _op_ConvertId(self, body: etree._Element, mailbox: str | None) -> etree._Element:
        response = etree.Element(_m("ConvertIdResponse"), nsmap={"m": M, "t": T})
        messages = etree.SubElement(response, _m("ResponseMessages"))
        for _ in body.iter(_t("AlternateId")):
            _error_message(messages, "ConvertId", "ErrorInvalidIdMalformed", "Id is malformed.")
        return response

    def _op_GetFolder(self, body: etree._Element, mailbox: str | None) -> etree._Element:
        response = etree.Element(_m("GetFolderResponse"), nsmap={"m": M, "t": T})
        messages = etree.SubElement(response, _m("ResponseMessages"))
        for folder_id in body.find(_m("FolderIds")):
            owner = self._check_mailbox(self._folder_mailbox(folder_id, mailbox))
            name = folder_id.get("Id")
            message = _ok_message(messages, "GetFolder")
            folders = etree.SubElement(message, _m("Folders"))
            if name == "calendar":
                folder = etree.SubElement(folders, _t("CalendarFolder"))
                display, folder_class, total = (
                    "Calendar",
                    "IPF.Appointment",
                    len(self.mailboxes[owner]),
                )
            else:
                folder = etree.SubElement(folders, _t("Folder"))
                display, folder_class, total = "Top of Information Store", "IPF.Note", 0
            etree.SubElement(folder, _t("FolderId"), Id=f"{name}-{owner}", ChangeKey="AQAAAA==")
            _add(folder, "FolderClass", folder_class)
            _add(folder, "DisplayName", display)
            _add(folder, "TotalCount", str(total))
            _add(folder, "ChildFolderCount", "0")
        return response

    def _op_FindItem(self, body: etree._Element, mailbox: str | None) -> etree._Element:
        owner = self._check_mailbox(self._folder_mailbox(body.find(_m("ParentFolderIds")), mailbox))
        restriction = body.find(_m("Restriction"))
        items = [
            item
            for item in self.mailboxes[owner].values()
            if restriction is None or _matches(restriction[0], item)
        ]
        view = body.find(_m("CalendarView"))
        if view is not None:
            lo = dt.datetime.fromisoformat(_utc_text(view.get("StartDate")).replace("Z", "+00:00"))
            hi = dt.datetime.fromisoformat(_utc_text(view.get("EndDate")).replace("Z", "+00:00"))
            items = [i for i in items if i.start < hi and i.end > lo]
        items.sort(key=lambda i: i.item_id)
        offset, limit = 0, len(items)
        paging = body.find(_m("IndexedPageItemView"))
        if paging is not None:
            offset = int(paging.get("Offset", "0"))
            limit = int(paging.get("MaxEntriesReturned", str(len(items))))
        page = items[offset : offset + limit]
        response = etree.Element(_m("FindItemResponse"), nsmap={"m": M, "t": T})
        message = _ok_message(etree.SubElement(response, _m("ResponseMessages")), "FindItem")
        last = offset + len(page) >= len(items)
        root = etree.SubElement(
            message,
            _m("RootFolder"),
            TotalItemsInView=str(len(items)),
            IncludesLastItemInRange="true" if last else "false",
        )
        if not last:
            root.set("IndexedPagingOffset", str(offset + len(page)))
        container = etree.SubElement(root, _t("Items"))
        shape = body.find(_m("ItemShape"))
        for item in page:
            container.append(_render_item(item, shape))
        return response

    def _find_item(self, item_id: str) -> StoredItem | None:
        for items in self.mailboxes.values():
            if item_id in items:
                return items[item_id]
        return None

    def _op_GetItem(self, body: etree._Element, mailbox: str | None) -> etree._Element:
        response = etree.Element(_m("GetItemResponse"), nsmap={"m": M, "t": T})
        messages = etree.SubElement(response, _m("ResponseMessages"))
        shape = body.find(_m("ItemShape"))
        for item_id in body.find(_m("ItemIds")):
            item = self._find_item(item_id.get("Id"))
            if item is None:
                _error_message(messages, "GetItem", "ErrorItemNotFound", _NOT_FOUND)
                continue
            message = _ok_message(messages, "GetItem")
            etree.SubElement(message, _m("Items")).append(_render_item(item, shape))
        return response

    def _op_CreateItem(self, body: etree._Element, mailbox: str | None) -> etree._Element:
        owner = self._check_mailbox(
            self._folder_mailbox(body.find(_m("SavedItemFolderId")), mailbox)
        )
        response = etree.Element(_m("CreateItemResponse"), nsmap={"m": M, "t": T})
        messages = etree.SubElement(response, _m("ResponseMessages"))
        for source in body.find(_m("Items")):
            item = self._new_item(owner)
            for child in source:
                _set_field(item, child)
            message = _ok_message(messages, "CreateItem")
            created = etree.SubElement(etree.SubElement(message, _m("Items")), _t("CalendarItem"))
            etree.SubElement(created, _t("ItemId"), Id=item.item_id, ChangeKey=item.changekey)
        return response

    def _op_UpdateItem(self, body: etree._Element, mailbox: str | None) -> etree._Element:
        response = etree.Element(_m("UpdateItemResponse"), nsmap={"m": M, "t": T})
        messages = etree.SubElement(response, _m("ResponseMessages"))
        never_overwrite = body.get("ConflictResolution") == "NeverOverwrite"
        for change in body.find(_m("ItemChanges")):
            ref = change.find(_t("ItemId"))
            item = self._find_item(ref.get("Id"))
            if item is None:
                _error_message(messages, "UpdateItem", "ErrorItemNotFound", _NOT_FOUND)
                continue
            if never_overwrite and ref.get("ChangeKey") not in (None, item.changekey):
                _error_message(
                    messages,
                    "UpdateItem",
                    "ErrorIrresolvableConflict",
                    "The send or update operation could not be performed because the change key "
                    "passed in the request does not match the current change key for the item.",
                )
                continue
            for update in change.find(_t("Updates")):
                if _local(update.tag) == "SetItemField":
                    value = update.find(_t("CalendarItem"))
                    for child in value:
                        _set_field(item, child)
                elif _local(update.tag) == "DeleteItemField":
                    _delete_field(item, update[0])
            item.changekey = self._changekey()
            message = _ok_message(messages, "UpdateItem")
            updated = etree.SubElement(etree.SubElement(message, _m("Items")), _t("CalendarItem"))
            etree.SubElement(updated, _t("ItemId"), Id=item.item_id, ChangeKey=item.changekey)
            etree.SubElement(message, _m("ConflictResults")).append(_text_elem(_t("Count"), "0"))
        return response

    def _op_DeleteItem(self, body: etree._Element, mailbox: str | None) -> etree._Element:
        response = etree.Element(_m("DeleteItemResponse"), nsmap={"m": M, "t": T})
        messages = etree.SubElement(response, _m("ResponseMessages"))
        for ref in body.find(_m("ItemIds")):
            item = self._find_item(ref.get("Id"))
            if item is None:
                _error_message(messages, "DeleteItem", "ErrorItemNotFound", _NOT_FOUND)
                continue
            del self.mailboxes[item.mailbox][item.item_id]
            _ok_message(messages, "DeleteItem")
        return response


_NOT_FOUND = "The specified object was not found in the store."


class _SoapFault(Exception):
    def __init__(self, code: str, text: str | None = None, value: tuple[str, str] | None = None):
        super().__init__(code)
        self.code = code
        self.text = text or _FAULT_TEXT.get(code, code)
        self.value = value


def _text_elem(tag: str, text: str) -> etree._Element:
    elem = etree.Element(tag)
    elem.text = text
    return elem


def _add(parent: etree._Element, name: str, text: str) -> None:
    parent.append(_text_elem(_t(name), text))


def _ok_message(messages: etree._Element, op: str) -> etree._Element:
    message = etree.SubElement(messages, _m(f"{op}ResponseMessage"), ResponseClass="Success")
    message.append(_text_elem(_m("ResponseCode"), "NoError"))
    return message


def _error_message(messages: etree._Element, op: str, code: str, text: str) -> None:
    message = etree.SubElement(messages, _m(f"{op}ResponseMessage"), ResponseClass="Error")
    message.append(_text_elem(_m("MessageText"), text))
    message.append(_text_elem(_m("ResponseCode"), code))
    message.append(_text_elem(_m("DescriptiveLinkKey"), "0"))


def _extended_key(uri: etree._Element) -> tuple[str, str]:
    return (
        (uri.get("PropertySetId") or uri.get("DistinguishedPropertySetId") or "").lower(),
        uri.get("PropertyName") or uri.get("PropertyTag") or uri.get("PropertyId") or "",
    )


def _set_field(item: StoredItem, child: etree._Element) -> None:
    name = _local(child.tag)
    if name == "ExtendedProperty":
        uri = child.find(_t("ExtendedFieldURI"))
        value = child.find(_t("Value"))
        item.extended[_extended_key(uri)] = (uri, "" if value is None else (value.text or ""))
        return
    copy = etree.fromstring(etree.tostring(child))
    if name in ("Start", "End") and copy.text:
        copy.text = _utc_text(copy.text)
    elif name in _BOOLEANS and copy.text in ("0", "1"):
        copy.text = "true" if copy.text == "1" else "false"  # xs:boolean, as Exchange answers
    item.fields[name] = copy


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


def _field_name(uri: str) -> str:
    # FieldURI values are "<area>:<ElementName>" (item:Subject, calendar:Start) in types.xsd.
    name = uri.split(":", 1)[-1]
    return {"CalendarItemType": "CalendarItemType"}.get(name, name)


def _delete_field(item: StoredItem, path: etree._Element) -> None:
    if _local(path.tag) == "ExtendedFieldURI":
        item.extended.pop(_extended_key(path), None)
    else:
        item.fields.pop(_field_name(path.get("FieldURI", "")), None)


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
    for name, value in item.fields.items():
        if wanted is None or name in wanted:
            elem.append(etree.fromstring(etree.tostring(value)))
    for key in extended if wanted is not None else list(item.extended):
        if key in item.extended:
            uri, value = item.extended[key]
            prop = etree.SubElement(elem, _t("ExtendedProperty"))
            prop.append(etree.fromstring(etree.tostring(uri)))
            prop.append(_text_elem(_t("Value"), value))
    return elem


def _property_value(path: etree._Element, item: StoredItem) -> str | None:
    if _local(path.tag) == "ExtendedFieldURI":
        found = item.extended.get(_extended_key(path))
        return None if found is None else found[1]
    return item.text(_field_name(path.get("FieldURI", "")))


def _compare(left: str, right: str) -> int:
    try:
        a = dt.datetime.fromisoformat(_utc_text(left).replace("Z", "+00:00"))
        b = dt.datetime.fromisoformat(_utc_text(right).replace("Z", "+00:00"))
    except ValueError:
        a, b = left, right  # type: ignore[assignment]
    return (a > b) - (a < b)


_COMPARISONS = {
    "IsEqualTo": lambda c: c == 0,
    "IsNotEqualTo": lambda c: c != 0,
    "IsGreaterThan": lambda c: c > 0,
    "IsGreaterThanOrEqualTo": lambda c: c >= 0,
    "IsLessThan": lambda c: c < 0,
    "IsLessThanOrEqualTo": lambda c: c <= 0,
}


def _matches(node: etree._Element, item: StoredItem) -> bool:
    """Evaluate a restriction (types.xsd SearchExpressionType) against one item."""
    name = _local(node.tag)
    if name == "And":
        return all(_matches(child, item) for child in node)
    if name == "Or":
        return any(_matches(child, item) for child in node)
    if name == "Not":
        return not _matches(node[0], item)
    if name == "Exists":
        return _property_value(node[0], item) is not None
    if name == "Contains":
        value = _property_value(node[0], item)
        constant = node.find(_t("Constant")).get("Value")
        return value is not None and constant.lower() in value.lower()
    if name in _COMPARISONS:
        value = _property_value(node[0], item)
        constant = node.find(f"{_t('FieldURIOrConstant')}/{_t('Constant')}")
        if value is None or constant is None:
            return False
        return _COMPARISONS[name](_compare(value, constant.get("Value")))
    raise _SoapFault("ErrorUnsupportedQueryFilter", f"Restriction {name} is not emulated.")


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
        Version="V2017_07_11",
    )
    etree.SubElement(envelope, f"{{{SOAP}}}Body").append(content)
    return etree.tostring(envelope, xml_declaration=True, encoding="utf-8")


def _fault_envelope(fault: _SoapFault, back_off_ms: int | None = None) -> bytes:
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
        soap_body = envelope.find(f"{{{SOAP}}}Body")
        operation = soap_body[0]
        op = _local(operation.tag)
        sid = envelope.find(f"{{{SOAP}}}Header/{_t('ExchangeImpersonation')}/{_t('ConnectingSID')}")
        mailbox = None if sid is None or not len(sid) else (sid[0].text or "").lower()
        count = len(operation.find(_m("Items"))) if operation.find(_m("Items")) is not None else 0
        for name in ("ItemIds", "ItemChanges"):
            if operation.find(_m(name)) is not None:
                count = len(operation.find(_m(name)))
        record = RequestRecord(op, mailbox, "ok", count, dict(operation.attrib), time.monotonic())
        with emulator._lock:
            emulator.requests.append(record)
        if not self._authorized():
            record.outcome = "401"
            self._send(401, b"", {"WWW-Authenticate": 'Basic realm="127.0.0.1"'})
            return
        fault = emulator._pick_fault(op, mailbox)
        if fault is not None:
            record.outcome = fault.kind
            if fault.kind == "slow":
                time.sleep(fault.delay)
            elif fault.kind == "busy":
                payload = _fault_envelope(_SoapFault("ErrorServerBusy"), fault.back_off_ms)
                self._send(500, payload)
                return
            elif fault.kind == "503":
                headers = (
                    {} if fault.retry_after is None else {"Retry-After": str(fault.retry_after)}
                )
                self.send_response(503)
                self.send_header("Content-Type", "text/html")
                self.send_header("Content-Length", "0")
                for name, value in headers.items():
                    self.send_header(name, value)
                self.end_headers()
                return
            elif fault.kind == "fault500":
                self._send(500, _fault_envelope(_SoapFault("ErrorInternalServerError")))
                return
            elif fault.kind == "drop":
                self.close_connection = True
                return
        try:
            if mailbox is not None:
                mailbox = emulator._check_mailbox(mailbox)
                if emulator.impersonable is not None and mailbox not in emulator.impersonable:
                    raise _SoapFault("ErrorImpersonateUserDenied")
            content = emulator.handle(op, operation, mailbox)
        except _SoapFault as error:
            self._send(500, _fault_envelope(error))
            return
        if fault is not None and fault.kind == "lost":
            # Applied, but the answer never reaches the client (connection reset).
            self.close_connection = True
            return
        self._send(200, _envelope(emulator.build, content))
