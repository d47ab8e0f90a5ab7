"""Bulk operations in one mailbox: look keys up, adopt, create, update and delete.

A create is never blind: the keys are looked up first (FindItem restricted to our property),
so a create whose answer was lost, or a key the snapshot forgot, is adopted instead of
duplicated. Every per-item answer of a batch is handled on its own: a stale ChangeKey is
refreshed, an item gone is recreated, an item not processed (throttled, batch stopped) is
sent again, anything else fails that event alone.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from exchangelib import CalendarItem, Q
from exchangelib import errors as ews_errors
from exchangelib.folders.base import BaseFolder
from exchangelib.items import ALWAYS_OVERWRITE, ID_ONLY, SAVE_ONLY, SEND_TO_NONE
from exchangelib.items.base import ALL_OCCURRENCES, HARD_DELETE
from exchangelib.properties import ItemId
from exchangelib.restriction import Restriction
from exchangelib.services import CreateItem, DeleteItem, FindItem, GetItem, UpdateItem

from resources.providers.base import ChangeResult, EventChange, changed_fields
from resources.providers.ews.connection import EwsConnection
from resources.providers.ews.errors import (
    ITEM_GONE,
    ITEM_STALE,
    ITEM_TRANSIENT,
    GaveUp,
    ItemsPending,
    MailboxUnavailable,
    item_reason,
)
from resources.providers.ews.mapping import (
    READ_FIELDS,
    WRITTEN_FIELDS,
    calendar_item,
    calendar_item_from_xml,
    field_paths,
    payload_of,
)

log = logging.getLogger(__name__)

# ErrorRestrictionTooLong above 255 nodes (ResponseCode page); one key costs 4 elements
# (IsEqualTo, ExtendedFieldURI, FieldURIOrConstant, Constant) under one Or: 1 + 4 * 63 = 253.
LOOKUP_KEYS = (255 - 1) // 4
# FindItem returns at most 1000 items per page under the default EWSFindCountLimit.
PAGE_SIZE = 1000
_SERVICE = {"create": "CreateItem", "update": "UpdateItem", "delete": "DeleteItem"}


class _PerItemErrors:
    """Each per-item error of a batch comes back as an exception instead of ending the batch."""

    ERRORS_TO_CATCH_IN_RESPONSE = ews_errors.ResponseMessageError
    WARNINGS_TO_CATCH_IN_RESPONSE = ews_errors.ResponseMessageError


class CreateItemOnce(_PerItemErrors, CreateItem):
    """CreateItem that never resends itself: exchangelib would after a lost answer (duplicates).

    Every failure goes up to ``EwsConnection.call``, whose next attempt looks the keys up
    before it creates again.
    """

    def _get_elements(self, payload: Any) -> Any:
        yield from self._response_generator(payload=payload)


class UpdateItems(_PerItemErrors, UpdateItem):
    pass


class DeleteItems(_PerItemErrors, DeleteItem):
    pass


class GetItems(_PerItemErrors, GetItem):
    """GetItem whose calendar items keep their all-day dates right across DST."""

    def _elem_to_obj(self, elem: Any) -> Any:
        if BaseFolder.item_model_from_tag(elem.tag) is CalendarItem:
            return calendar_item_from_xml(elem, self.account)
        return super()._elem_to_obj(elem)


class FindItems(_PerItemErrors, FindItem):
    pass


@dataclass(frozen=True)
class Found:
    """One of our items found by its key."""

    item_id: str
    changekey: str


def kind_of(landed: object) -> str:
    if not isinstance(landed, Exception):
        return "ok"
    if isinstance(landed, ITEM_GONE):
        return "gone"
    if isinstance(landed, ITEM_STALE):
        return "stale"
    if isinstance(landed, ITEM_TRANSIENT):
        return "transient"
    return "failed"


def _ids(landed: Any) -> tuple[str, str]:
    if isinstance(landed, tuple):
        return landed[0], landed[1]
    return landed.id, landed.changekey


def chunks(values: Sequence[Any], size: int) -> list[list[Any]]:
    return [list(values[i : i + size]) for i in range(0, len(values), size)]


_Step = Callable[[list[EventChange]], tuple[list[ChangeResult], list[EventChange]]]


class MailboxWriter:
    """The changes of one mailbox, chunk by chunk."""

    def __init__(
        self, connection: EwsConnection, calendar: str, compared_fields: tuple[str, ...]
    ) -> None:
        self.conn = connection
        self.calendar = calendar
        self.account, self.folder = connection.mailbox(calendar)
        self.size = connection.settings.chunk_size
        self.compared_fields = compared_fields
        self.unavailable: str | None = None  # set when the mailbox turned out unusable

    def run(self, op: str, changes: list[EventChange]) -> list[ChangeResult]:
        """Apply one chunk of one kind of change; every change gets exactly one answer."""
        step: _Step = {"create": self._create, "update": self._update, "delete": self._delete}[op]
        pending = list(changes)
        results: list[ChangeResult] = []

        def attempt() -> None:
            nonlocal pending
            done, pending = step(pending)
            results.extend(done)
            if pending:
                raise ItemsPending(f"{len(pending)} items were not processed")

        try:
            self.conn.call(self.calendar, _SERVICE[op], attempt)
        except GaveUp as error:
            results += [ChangeResult(c, ok=False, error=str(error)) for c in pending]
        except MailboxUnavailable as error:
            self.unavailable = str(error)
            for c in pending:
                # No mailbox (deleted, renamed without keeping the address): its events went
                # with it. A proxy of the mailbox a move goes to: the create there adopts the
                # event. Either way the delete is done.
                done = op == "delete" and (error.gone or (error.alias and bool(c.moving_to)))
                results.append(
                    ChangeResult(c, ok=True)
                    if done
                    else ChangeResult(c, ok=False, permanent=True, error=str(error))
                )
        except ews_errors.ResponseMessageError as error:
            # A definite refusal of the whole request (schema, restriction): no retry helps.
            results += [
                ChangeResult(
                    c, ok=False, permanent=True, error=item_reason(c.op, c.event_key, error)
                )
                for c in pending
            ]
        return results

    # -- look-up and adoption --------------------------------------------------------------------

    def lookup(self, keys: Sequence[str]) -> dict[str, list[Found]]:
        """Our items carrying these keys in this calendar: one FindItem per 63 keys."""
        found: dict[str, list[Found]] = {}
        key_path = field_paths(("leavesync_key",))
        for group in chunks(list(dict.fromkeys(keys)), LOOKUP_KEYS):
            query = Q(leavesync_key__in=group) if len(group) > 1 else Q(leavesync_key=group[0])
            folders = [self.folder]
            items = FindItems(account=self.account, page_size=PAGE_SIZE).call(
                folders=folders,
                additional_fields=key_path,
                restriction=Restriction(query, folders=folders, applies_to=Restriction.ITEMS),
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
                    found.setdefault(item.leavesync_key, []).append(Found(item.id, item.changekey))
        return found

    def _adopt(
        self, changes: list[EventChange], found: dict[str, list[Found]]
    ) -> tuple[list[ChangeResult], list[EventChange], list[EventChange]]:
        """Take over our items found by key: (answers, to retry, to create after all)."""
        refs = [f for c in changes for f in found[c.event_key]]
        read = self._get(refs, READ_FIELDS)
        done: list[ChangeResult] = []
        retry: list[EventChange] = []
        fresh: list[EventChange] = []
        updates: list[tuple[EventChange, str, str]] = []
        copies: list[str] = []
        for change in changes:
            landed = [read[f.item_id] for f in found[change.event_key]]
            if any(kind_of(x) == "transient" for x in landed):
                retry.append(change)
                continue
            items = [x for x in landed if isinstance(x, CalendarItem)]
            if not items:
                fresh.append(change)  # gone between the look-up and the read
                continue
            same = [x for x in items if self._same(change, x)]
            keep = same[0] if same else max(items, key=_created)
            copies += [x.id for x in items if x is not keep]
            if same:
                done.append(ChangeResult(change, True, keep.id, keep.changekey, adopted=True))
            else:
                updates.append((change, keep.id, keep.changekey))
        for (change, _, _), landed in zip(updates, self._send_updates(updates), strict=True):
            kind = kind_of(landed)
            if kind == "ok":
                done.append(ChangeResult(change, True, *_ids(landed), adopted=True))
            elif kind == "failed":
                done.append(self._failed(change, landed))
            else:
                retry.append(change)  # the next attempt looks it up again
        if copies:
            self._delete_copies(copies)
        return done, retry, fresh

    def _same(self, change: EventChange, item: CalendarItem) -> bool:
        assert change.event is not None
        try:
            return not changed_fields(change.event, payload_of(item), self.compared_fields)
        except Exception:  # noqa: BLE001 - an item we cannot read back is rewritten
            return False

    def _delete_copies(self, item_ids: list[str]) -> None:
        """Further copies of an adopted key in this calendar (the contract: one event per key)."""
        for item_id, landed in zip(item_ids, self._send_deletes(item_ids), strict=True):
            if kind_of(landed) not in ("ok", "gone"):
                log.warning(
                    "target %s: could not delete a duplicate of ours in %s (%s); drift will",
                    self.conn.target_name,
                    self.calendar,
                    type(landed).__name__,
                )
            else:
                log.info(
                    "target %s: deleted duplicate %s in %s",
                    self.conn.target_name,
                    item_id[:12],
                    self.calendar,
                )

    # -- the three steps ---------------------------------------------------------------------------

    def _create(self, pending: list[EventChange]) -> tuple[list[ChangeResult], list[EventChange]]:
        found = self.lookup([c.event_key for c in pending])
        fresh = [c for c in pending if c.event_key not in found]
        done, retry, again = self._adopt([c for c in pending if c.event_key in found], found)
        fresh += again
        if fresh:
            items = [calendar_item(self.account, self.folder, c) for c in fresh]
            outcome = CreateItemOnce(account=self.account, chunk_size=self.size).call(
                items=items,
                folder=self.folder,
                message_disposition=SAVE_ONLY,
                send_meeting_invitations=SEND_TO_NONE,
            )
            for change, landed in zip(fresh, outcome, strict=True):
                kind = kind_of(landed)
                if kind == "ok":
                    done.append(ChangeResult(change, True, *_ids(landed)))
                elif kind == "transient":
                    retry.append(change)  # it may have landed: the next attempt looks first
                else:
                    done.append(self._failed(change, landed))
        return done, retry

    def _update(self, pending: list[EventChange]) -> tuple[list[ChangeResult], list[EventChange]]:
        done: list[ChangeResult] = []
        retry: list[EventChange] = []
        recreate = [c for c in pending if not c.provider_event_id]
        refs = [(c, c.provider_event_id, c.version) for c in pending if c.provider_event_id]
        for round_ in range(2):
            stale: list[EventChange] = []
            for (change, _, _), landed in zip(refs, self._send_updates(refs), strict=True):
                kind = kind_of(landed)
                if kind == "ok":
                    done.append(ChangeResult(change, True, *_ids(landed)))
                elif kind == "gone":
                    recreate.append(change)  # deleted in Outlook (or moved to Deleted Items)
                elif kind == "stale" and round_ == 0:
                    stale.append(change)
                elif kind == "failed":
                    done.append(self._failed(change, landed))
                else:
                    retry.append(change)
            # Someone edited the item since our snapshot: read its current ChangeKey, then
            # write HR's version over it (AlwaysOverwrite), once more in this attempt.
            current = self._get([Found(c.provider_event_id or "", "") for c in stale], ())
            refs = []
            for change in stale:
                landed = current[change.provider_event_id or ""]
                if isinstance(landed, CalendarItem):
                    refs.append((change, landed.id, landed.changekey))
                elif kind_of(landed) == "gone":
                    recreate.append(change)
                else:
                    retry.append(change)
            if not refs:
                break
        if recreate:
            created, again = self._create(recreate)
            done += created
            retry += again
        return done, retry

    def _delete(self, pending: list[EventChange]) -> tuple[list[ChangeResult], list[EventChange]]:
        done: list[ChangeResult] = []
        retry: list[EventChange] = []
        by_key = [c for c in pending if not c.provider_event_id]
        with_id = [c for c in pending if c.provider_event_id]
        ids = [c.provider_event_id or "" for c in with_id]
        for change, landed in zip(with_id, self._send_deletes(ids), strict=True):
            kind = kind_of(landed)
            if kind == "ok":
                done.append(ChangeResult(change, True))
            elif kind == "gone":
                by_key.append(change)  # gone, or restored from Deleted Items under a new id
            elif kind == "failed":
                done.append(self._failed(change, landed))
            else:
                retry.append(change)
        if not by_key:
            return done, retry
        found = self.lookup([c.event_key for c in by_key])
        targets = [(c, f.item_id) for c in by_key for f in found.get(c.event_key, [])]
        outcome = self._send_deletes([item_id for _, item_id in targets])
        worst: dict[int, tuple[EventChange, str, object]] = {}
        for change in by_key:
            worst[id(change)] = (change, "ok", None)  # nothing of ours left: done
        rank = {"ok": 0, "gone": 0, "transient": 1, "stale": 1, "failed": 2}
        for (change, _), landed in zip(targets, outcome, strict=True):
            kind = kind_of(landed)
            if rank[kind] > rank[worst[id(change)][1]]:
                worst[id(change)] = (change, kind, landed)
        for change, kind, landed in worst.values():
            if kind == "ok":
                done.append(ChangeResult(change, True))
            elif kind == "failed":
                done.append(self._failed(change, landed))
            else:
                retry.append(change)
        return done, retry

    # -- requests --------------------------------------------------------------------------------

    def _get(self, refs: list[Found], fields: tuple[str, ...]) -> dict[str, object]:
        """GetItem: item id -> the item (with these fields) or the per-item error."""
        if not refs:
            return {}
        ids = [(f.item_id, None) for f in refs]
        outcome = GetItems(account=self.account, chunk_size=self.size).call(
            items=ids, additional_fields=field_paths(fields), shape=ID_ONLY
        )
        return {f.item_id: landed for f, landed in zip(refs, outcome, strict=True)}

    def _send_updates(self, refs: list[tuple[EventChange, str, str | None]]) -> list[Any]:
        if not refs:
            return []
        items = []
        for change, item_id, changekey in refs:
            item = calendar_item(self.account, self.folder, change)
            item._id = ItemId(item_id, changekey)
            items.append((item, list(WRITTEN_FIELDS)))
        # AlwaysOverwrite: HR is the source of truth. AutoResolve may keep a user's value
        # instead of ours ("t:ConflictResolutionType": the Sensitivity example).
        return list(
            UpdateItems(account=self.account, chunk_size=self.size).call(
                items=items,
                conflict_resolution=ALWAYS_OVERWRITE,
                message_disposition=SAVE_ONLY,
                send_meeting_invitations_or_cancellations=SEND_TO_NONE,
                suppress_read_receipts=True,
            )
        )

    def _send_deletes(self, item_ids: list[str]) -> list[Any]:
        if not item_ids:
            return []
        return list(
            DeleteItems(account=self.account, chunk_size=self.size).call(
                items=[(item_id, None) for item_id in item_ids],
                delete_type=HARD_DELETE,
                send_meeting_cancellations=SEND_TO_NONE,
                affected_task_occurrences=ALL_OCCURRENCES,
                suppress_read_receipts=True,
            )
        )

    @staticmethod
    def _failed(change: EventChange, landed: object) -> ChangeResult:
        error = landed if isinstance(landed, Exception) else RuntimeError(str(landed))
        return ChangeResult(
            change, ok=False, permanent=True, error=item_reason(change.op, change.event_key, error)
        )


def _created(item: CalendarItem) -> dt.datetime:
    return item.datetime_created or dt.datetime.min.replace(tzinfo=dt.UTC)
