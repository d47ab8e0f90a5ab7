"""What the hr_changes sensor decides, without Dagster: which HR rows are new since its
cursor, which legal entities and days they touch, and which runs to launch now.

The cursor holds, per source (leaves, employees, legal_entities, or a custom query), the
newest updated_at seen (HR's own clock, never ours) and a digest of every second of the
overlap window behind it. Each poll reads again from ``newest - overlap``: a row committed
late with an older updated_at, or written by an HR server whose clock lags, lands in a
second whose digest no longer matches, so that second's rows count as changed again
(a duplicate run is harmless; a lost change is not). Entities whose changes cannot run yet
(a run of theirs is still queued, or the tick's cap is reached) wait in the cursor.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import struct
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import pandas as pd

from resources.hr import UNASSIGNED, entity_partition_key
from resources.scope import (
    DATE_FROM_TAG,
    DATE_TO_TAG,
    DATES_TAG,
    month_end,
    partition_of,
)

CURSOR_VERSION = 1
TRIGGER = "hr_changes"
CHANGES_TAG = "leavesync/hr_changes"  # what the run is for, in words (the UI shows it)
# Past this many days an entity's run covers its whole nightly window, without a dates tag.
MAX_TAGGED_DAYS = 62
# Rows of one second the cursor remembers one by one (more: by count and sketch, _remember).
MAX_ROWS_PER_SECOND = 32
# Where a poll reads from when the source had no updated_at at all when first polled.
EMPTY_START = dt.datetime(1900, 1, 1)
_RANGE_START = "dagster/asset_partition_range_start"
_RANGE_END = "dagster/asset_partition_range_end"
_PARTITION = "dagster/partition"


@dataclass(frozen=True)
class Window:
    """The days runs can cover now: [start, end] (nightly window), newest month partition."""

    start: dt.date
    end: dt.date
    newest: dt.date

    def holds(self, day: dt.date) -> bool:
        return self.start <= day <= self.end


@dataclass
class Pending:
    """One legal entity's changes not yet handed to a run: days, or its whole window."""

    days: set[str] = field(default_factory=set)
    whole: bool = False
    leaves: set[str] = field(default_factory=set)  # for the burst rule and the run's tag
    why: list[str] = field(default_factory=list)

    def merge(self, other: Pending) -> None:
        self.days |= other.days
        self.whole |= other.whole
        self.leaves |= other.leaves
        self.why = list(dict.fromkeys([*self.why, *other.why]))[:20]

    def to_json(self) -> dict:
        return {
            "days": sorted(self.days),
            "whole": self.whole,
            "leaves": sorted(self.leaves)[:1000],
            "why": self.why,
        }

    @classmethod
    def from_json(cls, data: Mapping) -> Pending:
        return cls(
            set(data.get("days", [])),
            bool(data.get("whole")),
            set(data.get("leaves", [])),
            list(data.get("why", [])),
        )


@dataclass
class Cursor:
    """The sensor's state between polls (stored by Dagster as the sensor's cursor)."""

    newest: dict[str, str] = field(default_factory=dict)  # source -> ISO updated_at
    # source -> second of updated_at -> the hashes of its rows (or "count:sum" for many)
    seen: dict[str, dict[str, list[str] | str]] = field(default_factory=dict)
    pending: dict[str, Pending] = field(default_factory=dict)  # entity key -> changes

    def to_json(self) -> str:
        return json.dumps(
            {
                "v": CURSOR_VERSION,
                "newest": self.newest,
                "seen": self.seen,
                "pending": {k: p.to_json() for k, p in sorted(self.pending.items())},
            },
            separators=(",", ":"),
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, text: str | None) -> Cursor:
        """The stored cursor; a missing or unreadable one starts afresh (from HR's newest)."""
        if not text:
            return cls()
        try:
            data = json.loads(text)
            if data.get("v") != CURSOR_VERSION:
                return cls()
            return cls(
                dict(data.get("newest", {})),
                {src: dict(seconds) for src, seconds in data.get("seen", {}).items()},
                {k: Pending.from_json(p) for k, p in data.get("pending", {}).items()},
            )
        except (ValueError, TypeError, AttributeError):
            return cls()

    def newest_at(self, source: str) -> dt.datetime | None:
        text = self.newest.get(source)
        return dt.datetime.fromisoformat(text) if text else None


def read_from(newest: dt.datetime, overlap_seconds: int) -> dt.datetime:
    """Where a poll starts reading: ``overlap`` before the newest change seen, on a second."""
    return (newest - dt.timedelta(seconds=overlap_seconds)).replace(microsecond=0)


def _second(at: dt.datetime) -> str:
    return at.replace(microsecond=0).isoformat()


def _row_hash(source_id: object, at: dt.datetime) -> str:
    return hashlib.blake2b(f"{source_id}|{at.isoformat()}".encode(), digest_size=8).hexdigest()


def _seconds(rows: pd.DataFrame, hashes: list[str]) -> dict[str, list[str]]:
    """Per second of updated_at, the hashes of the distinct changed rows in it."""
    out: dict[str, set[str]] = {}
    for at, h in zip(rows["changed_at"], hashes, strict=True):
        out.setdefault(_second(at), set()).add(h)
    return {second: sorted(found) for second, found in out.items()}


def _summary(hashes: list[str]) -> str:
    """An old cursor's large second: its size and the sum of its hashes."""
    total = sum(int(h, 16) for h in hashes) % (1 << 64)
    return f"{len(hashes)}:{total:016x}"


# A large second (a bulk update) is remembered by its row count and an invertible Bloom
# lookup table of its rows' hashes (Eppstein, Goodrich et al., "What's the difference?",
# SIGCOMM 2011): 3 x 16 cells of (count, xor of hashes, xor of check hashes), about 1.3 kB
# whatever the rows. While its count (from the updated_at index alone) is unchanged, or
# dropped by no more than the rows found changed elsewhere (rows updated again leave it),
# it is not read at all. Otherwise it is read, and subtracting the table of its rows now
# and peeling the result lists the rows that arrived (a late commit) and left; when that
# cannot be done (dozens of differences), every row of the second counts as new.
# Past BULK_ROWS rows a second is never fetched (an import): every legal entity reruns.
_SKETCH_PART = 16
_SKETCH_CELLS = 3 * _SKETCH_PART
BULK_ROWS = 5000


def _digest(value: int, person: bytes, size: int) -> bytes:
    return hashlib.blake2b(value.to_bytes(8, "big"), digest_size=size, person=person).digest()


def _cells_of(key: int) -> list[int]:
    raw = _digest(key, b"cells", 12)
    return [
        part * _SKETCH_PART + int.from_bytes(raw[4 * part : 4 * part + 4], "big") % _SKETCH_PART
        for part in range(3)
    ]


def _check_of(key: int) -> int:
    return int.from_bytes(_digest(key, b"check", 8), "big")


def _sketch(hashes: Sequence[str]) -> list[list[int]]:
    cells = [[0, 0, 0] for _ in range(_SKETCH_CELLS)]
    for text in hashes:
        key = int(text, 16)
        check = _check_of(key)
        for i in _cells_of(key):
            cell = cells[i]
            cell[0] += 1
            cell[1] ^= key
            cell[2] ^= check
    return cells


def _encode_sketch(cells: list[list[int]], size: int) -> str:
    packed = b"".join(struct.pack(">iQQ", *cell) for cell in cells)
    return f"s:{size}:" + base64.b64encode(packed).decode()


def _decode_sketch(text: str) -> list[list[int]] | None:
    try:
        raw = base64.b64decode(text.split(":", 2)[2], validate=True)
        cells = [list(struct.unpack_from(">iQQ", raw, 20 * i)) for i in range(_SKETCH_CELLS)]
    except (ValueError, IndexError, struct.error):
        return None
    return cells if len(raw) == 20 * _SKETCH_CELLS else None


def _size_of(before: str) -> int | None:
    """A large second's row count: ``s:<n>:<table>``, ``n:<n>`` or an old ``<n>:<sum>``."""
    parts = before.split(":")
    text = parts[1] if parts[0] in ("s", "n") else parts[0]
    return int(text) if text.isdigit() else None


def _resized(before: str, size: int) -> str:
    if before.startswith("s:"):
        return f"s:{size}:" + before.split(":", 2)[2]
    return f"n:{size}"


def _arrivals(before: str, hashes: Sequence[str]) -> set[str] | None:
    """The hashes in ``hashes`` that the remembered second did not hold; None: unknown."""
    old = _decode_sketch(before)
    if old is None:
        return None
    cells = [
        [a[0] - b[0], a[1] ^ b[1], a[2] ^ b[2]] for a, b in zip(old, _sketch(hashes), strict=True)
    ]
    arrived: set[int] = set()
    progress = True
    while progress:
        progress = False
        for cell in cells:
            count, key, check = cell
            if count in (1, -1) and check == _check_of(key):
                for i in _cells_of(key):
                    cells[i][0] -= count
                    cells[i][1] ^= key
                    cells[i][2] ^= check
                if count == -1:
                    arrived.add(key)
                progress = True
    if any(cell != [0, 0, 0] for cell in cells):
        return None
    return {f"{key:016x}" for key in arrived}


def _fresh_in(before: list[str] | str | None, hashes: list[str]) -> set[str]:
    """The hashes of one second's rows that were not in it when it was remembered."""
    if isinstance(before, list):
        return set(hashes) - set(before)
    if before is None or before.startswith("n:"):
        return set(hashes)
    if before.startswith("s:"):
        arrived = _arrivals(before, hashes)
        return set(hashes) if arrived is None else arrived
    return set() if before == _summary(hashes) else set(hashes)


def _remember(hashes: list[str], size: int) -> list[str] | str:
    if size <= MAX_ROWS_PER_SECOND and len(hashes) <= MAX_ROWS_PER_SECOND:
        return hashes
    return _encode_sketch(_sketch(hashes), max(size, len(hashes)))


Reader = Callable[[dt.datetime, dt.datetime | None], pd.DataFrame]


@dataclass
class SourcePoll:
    """What one poll of a source found: rows not seen before, seconds too large to read."""

    fresh: pd.DataFrame
    bulk: list[str] = field(default_factory=list)


def poll_source(
    cursor: Cursor,
    source: str,
    since: dt.datetime,
    counts: Mapping[dt.datetime, int],
    read: Reader,
    overlap_seconds: int,
) -> SourcePoll:
    """The rows of ``source`` from ``since`` on that the cursor has not seen; advances the
    cursor's newest updated_at and what it remembers of the overlap window.

    ``counts``: rows per updated_at from ``since`` on (HR's index); ``read(a, b)``: the rows
    with a <= updated_at < b (b None: no end). A second remembers its rows' hashes, so a row
    updated again (leaving that second) makes nothing look new; a large one is read only
    when its count says it must be (see _sketch above).
    """
    sizes: dict[str, int] = {}
    for at, n in counts.items():
        sizes[_second(at)] = sizes.get(_second(at), 0) + n
    known = cursor.seen.get(source, {})
    large = {s: n for s, n in sizes.items() if n > MAX_ROWS_PER_SECOND}
    held = {s for s in large if isinstance(known.get(s), str)}
    bulk = sorted(s for s in large if s not in held and large[s] > BULK_ROWS)
    rows = _read_around(read, since, sorted({*held, *bulk}))
    fresh, memory = _fresh_rows(rows, known, sizes)
    changed_elsewhere = fresh["source_id"].nunique() if len(fresh) else 0
    extra = []
    for second in sorted(held):
        before, now = known[second], large[second]
        size = _size_of(before)
        if _unchanged(before, size, now, changed_elsewhere):
            memory[second] = _resized(before, now)
        elif now <= BULK_ROWS:
            start = dt.datetime.fromisoformat(second)
            found, remembered = _fresh_rows(
                read(start, start + dt.timedelta(seconds=1)), {second: before}, sizes
            )
            extra.append(found)
            memory.update(remembered)
        else:
            bulk.append(second)
            memory[second] = f"n:{now}"
    for second in bulk:
        memory.setdefault(second, f"n:{large[second]}")
    stamps = [*counts, *(rows["changed_at"] if len(rows) else [])]
    newest = max([*stamps, *filter(None, [cursor.newest_at(source)])], default=None)
    if newest is None:
        return SourcePoll(fresh)
    cursor.newest[source] = newest.isoformat()
    # What was read (or counted) covers every second from the previous read_from on, so the
    # next poll's window (which starts at or after it) is remembered whole.
    keep_from = read_from(newest, overlap_seconds)
    cursor.seen[source] = {
        second: kept
        for second, kept in memory.items()
        if dt.datetime.fromisoformat(second) >= keep_from
    }
    frames = [f for f in (fresh, *extra) if len(f)]
    found = pd.concat(frames, ignore_index=True) if len(frames) > 1 else (frames or [fresh])[0]
    return SourcePoll(found.reset_index(drop=True), sorted(set(bulk)))


def _unchanged(before: str, size: int | None, now: int, changed_elsewhere: int) -> bool:
    """Whether a large second needs no read: its count tells that no row arrived in it.

    A second we can read is skipped only while its count holds and no row changed
    elsewhere (a row that left it is among those). One too large to read (an import) is
    skipped while its count drops by no more than the rows changed elsewhere: a row
    committed late into it while as many of its rows are updated again, or deleted, in the
    same poll interval waits for the nightly run (README, "Near real time"). Hard deletes
    aside, a second's count cannot hold while a row arrives unless another left it.
    """
    if size is None:
        return False
    if before.startswith("s:"):
        return now == size and changed_elsewhere == 0
    return size - changed_elsewhere <= now <= size


def _read_around(read: Reader, since: dt.datetime, skipped: list[str]) -> pd.DataFrame:
    """The rows from ``since`` on, but those of the ``skipped`` seconds (one range each)."""
    frames, start = [], since
    for second in skipped:
        begin = dt.datetime.fromisoformat(second)
        if begin > start:
            frames.append(read(start, begin))
        start = max(start, begin + dt.timedelta(seconds=1))
    frames.append(read(start, None))
    frames = [f for f in frames if len(f)]
    if not frames:
        return read(start, start)  # no row, with the columns
    return pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]


def _fresh_rows(
    rows: pd.DataFrame, known: Mapping[str, list[str] | str], sizes: Mapping[str, int]
) -> tuple[pd.DataFrame, dict[str, list[str] | str]]:
    """The rows not in what ``known`` remembers of their seconds; what to remember now."""
    if rows.empty:
        return rows, {}
    row_hashes = [
        _row_hash(i, at) for i, at in zip(rows["source_id"], rows["changed_at"], strict=True)
    ]
    now = _seconds(rows, row_hashes)
    fresh_hashes: set[str] = set()
    for second, hashes in now.items():
        fresh_hashes |= _fresh_in(known.get(second), hashes)
    memory = {
        second: _remember(hashes, sizes.get(second, len(hashes))) for second, hashes in now.items()
    }
    return rows[[h in fresh_hashes for h in row_hashes]].reset_index(drop=True), memory


def new_changes(
    cursor: Cursor, source: str, rows: pd.DataFrame, overlap_seconds: int
) -> pd.DataFrame:
    """poll_source over rows already read (every row from the poll's read_from on)."""
    if rows.empty:
        return rows
    counts: dict[dt.datetime, int] = {}
    for at in rows.drop_duplicates(["source_id", "changed_at"])["changed_at"]:
        counts[at] = counts.get(at, 0) + 1

    def read(start: dt.datetime, end: dt.datetime | None) -> pd.DataFrame:
        at = rows["changed_at"]
        keep = (at >= start) & (at < end) if end is not None else at >= start
        return rows[keep.astype(bool)]

    since = min(rows["changed_at"]).replace(microsecond=0)
    return poll_source(cursor, source, since, counts, read, overlap_seconds).fresh


def touched(
    source: str,
    rows: pd.DataFrame,
    exported: pd.DataFrame,
    known_codes: set[str] | None,
    window: Window,
) -> dict[str, Pending]:
    """The legal entity partitions and start dates new changes touch: each leave's current
    partition and, from the snapshot, the one its events were exported under.

    ``known_codes``: HR's legal entity codes (a leave under another code is unassigned);
    None when every non-empty code is HR's own (a custom query).
    """
    out: dict[str, Pending] = {}
    label = {"employees": "employee", "legal_entities": "legal entity"}.get(source, "leave")

    def key_of(code: object) -> str:
        if code is None or (isinstance(code, float) and pd.isna(code)) or code == "":
            return UNASSIGNED
        if known_codes is not None and str(code) not in known_codes:
            return UNASSIGNED
        return entity_partition_key(str(code))

    def add(key: str, day: object, leave: str | None, why: str) -> None:
        pending = out.setdefault(key, Pending())
        if why not in pending.why and len(pending.why) < 20:
            pending.why.append(why)
        if leave is None:
            pending.whole = True  # a legal entity's own change: all of its events
            return
        pending.leaves.add(leave)
        try:
            when = dt.date.fromisoformat(str(day))
        except ValueError:
            # No readable start date: every run of the entity extracts (and quarantines) it.
            pending.days.add(window.start.isoformat())
            return
        if window.holds(when):
            pending.days.add(when.isoformat())

    why_of: dict[str, str] = {}
    for row in rows.itertuples(index=False):
        why = f"{label} {row.source_id}"
        if source == "legal_entities":
            add(key_of(row.legal_entity), None, None, why)
        elif row.leave_id is not None:  # (an employee with no leave in the window: nothing)
            why_of[str(row.leave_id)] = why
            add(key_of(row.legal_entity), row.start_date, str(row.leave_id), why)
    for row in exported.itertuples(index=False):
        leave = str(row.leave_id)
        add(
            entity_partition_key(str(row.legal_entity)),
            row.partition_date,
            leave,
            why_of.get(leave, f"leave {leave}"),
        )
    return out


def merge_pending(cursor: Cursor, new: Mapping[str, Pending], burst: int) -> None:
    """Add new changes to the waiting ones; an entity with ``burst`` or more changed leaves
    (or too many days for a tag) gets its whole window, as the nightly run would."""
    for key, pending in new.items():
        cursor.pending.setdefault(key, Pending()).merge(pending)
    for pending in cursor.pending.values():
        if len(pending.leaves) >= max(burst, 1) or len(pending.days) > MAX_TAGGED_DAYS:
            pending.whole = True


@dataclass(frozen=True)
class QueuedRun:
    """A run not started yet (it will read HR after every change seen so far)."""

    run_id: str
    entities: frozenset[str]
    date_from: dt.date
    date_to: dt.date
    dates: frozenset[str] | None

    def covers(self, key: str, day: str | None, window: Window) -> bool:
        if key not in self.entities:
            return False
        if day is None:  # the whole window
            return (
                self.dates is None and self.date_from <= window.start and self.date_to >= window.end
            )
        when = dt.date.fromisoformat(day)
        return self.date_from <= when <= self.date_to and (self.dates is None or day in self.dates)


def queued_run(run_id: str, tags: Mapping[str, str], window: Window) -> QueuedRun | None:
    """What a queued run will cover, from its tags; None when they do not say."""
    start, end = tags.get(_RANGE_START), tags.get(_RANGE_END)
    if not (start and end) and tags.get(_PARTITION):
        start = end = tags[_PARTITION]
    if not (start and end) or "|" not in start or "|" not in end:
        return None
    first_month, first_entity = start.split("|", 1)
    last_month, last_entity = end.split("|", 1)
    entities = {first_entity, last_entity}
    if tags.get("leavesync/legal_entity"):
        entities |= set(tags["leavesync/legal_entity"].split(","))
    try:
        lo = dt.date.fromisoformat(first_month)
        last = dt.date.fromisoformat(last_month)
    except ValueError:
        return None
    hi = max(window.end, month_end(last)) if last >= window.newest else month_end(last)
    if tags.get(DATE_FROM_TAG):
        lo = max(lo, dt.date.fromisoformat(tags[DATE_FROM_TAG]))
    if tags.get(DATE_TO_TAG):
        hi = min(hi, dt.date.fromisoformat(tags[DATE_TO_TAG]))
    dates = frozenset(tags[DATES_TAG].split(",")) if tags.get(DATES_TAG) else None
    return QueuedRun(run_id, frozenset(entities), lo, hi, dates)


@dataclass(frozen=True)
class PlannedRun:
    """One legal entity's run: its dates (or whole window) and the tags that say so."""

    entity_key: str
    date_from: dt.date
    date_to: dt.date
    dates: tuple[str, ...] | None
    why: str

    def tags(self, window: Window) -> dict[str, str]:
        first, last = (
            partition_of(self.date_from, window.newest),
            partition_of(self.date_to, window.newest),
        )
        tags = {
            _RANGE_START: f"{first.isoformat()}|{self.entity_key}",
            _RANGE_END: f"{last.isoformat()}|{self.entity_key}",
            DATE_FROM_TAG: self.date_from.isoformat(),
            DATE_TO_TAG: self.date_to.isoformat(),
            "leavesync/trigger": TRIGGER,
            CHANGES_TAG: self.why[:250],
        }
        if self.dates is not None:
            tags[DATES_TAG] = ",".join(self.dates)
        return tags


def plan_runs(
    cursor: Cursor, queued: Sequence[QueuedRun], window: Window, cap: int
) -> tuple[list[PlannedRun], dict[str, str]]:
    """Runs to launch now (at most ``cap``), and why each other waiting entity waits.

    Changes a queued run will read anyway are dropped; an entity with a queued run keeps
    its other changes until that run starts (two polls coalesce into one run), then they
    go in one run, queued behind it by the per-entity limit.
    """
    runs: list[PlannedRun] = []
    waiting: dict[str, str] = {}
    for key in sorted(cursor.pending):
        pending = cursor.pending[key]
        mine = [q for q in queued if key in q.entities]
        if pending.whole and any(q.covers(key, None, window) for q in mine):
            del cursor.pending[key]
            continue
        pending.days = {d for d in pending.days if not any(q.covers(key, d, window) for q in mine)}
        if not pending.whole and not pending.days:
            del cursor.pending[key]
            continue
        if mine:
            waiting[key] = f"run {mine[0].run_id[:8]} of {key} is queued"
            continue
        if len(runs) >= cap:
            waiting[key] = f"this poll launched {cap} runs (realtime.max_runs_per_tick)"
            continue
        why = ", ".join(pending.why) or "changes in HR"
        if pending.whole:
            runs.append(PlannedRun(key, window.start, window.end, None, why))
        else:
            days = tuple(sorted(pending.days))
            lo, hi = dt.date.fromisoformat(days[0]), dt.date.fromisoformat(days[-1])
            runs.append(PlannedRun(key, lo, hi, days, why))
        del cursor.pending[key]
    return runs, waiting
