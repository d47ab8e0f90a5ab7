"""A feed file as text: its components found and replaced in place, never all re-parsed.

A team feed holds a whole team's year (20,000 events, 7 MB); parsing and re-serialising it
with icalendar for one changed leave takes seconds. We wrote every byte of the feed, so its
components are found by their BEGIN/END lines and only the changed ones are rendered.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

_COMPONENT = re.compile(rb"BEGIN:(VEVENT|VTIMEZONE)\r\n.*?END:\1\r\n", re.DOTALL)
_FOLD = re.compile(rb"\r\n[ \t]")
_HEAD = b"BEGIN:VCALENDAR\r\n"
_TAIL = b"END:VCALENDAR\r\n"


def _unescape(value: str) -> str:
    """An RFC 5545 TEXT value (3.3.11) back to its characters."""
    return re.sub(r"\\([\\;,nN])", lambda m: "\n" if m.group(1) in "nN" else m.group(1), value)


@dataclass
class Block:
    """One top-level component: its bytes, and (for a VEVENT) its UID, our key, its SEQUENCE."""

    kind: str
    text: bytes
    props: dict[str, str] = field(default_factory=dict)

    @classmethod
    def parse(cls, kind: str, text: bytes, wanted: re.Pattern[bytes]) -> Block:
        props: dict[str, str] = {}
        if kind == "VEVENT":
            for match in wanted.finditer(_FOLD.sub(b"", text)):
                name = match.group(1).decode("ascii").upper()
                if name not in props:
                    value = match.group(2).decode("utf-8")
                    props[name] = _unescape(value) if "\\" in value else value
        return cls(kind, text, props)


def _property_lines(names: tuple[str, ...]) -> re.Pattern[bytes]:
    """The content lines (RFC 5545 3.1) of these properties: name, parameters, value."""
    alternatives = b"|".join(re.escape(n.encode("ascii")) for n in names)
    return re.compile(rb"^(" + alternatives + rb")(?:;[^:\r\n]*)?:([^\r\n]*)", re.M | re.I)


@dataclass
class FeedText:
    """head (BEGIN:VCALENDAR and its properties), the components in order, the END line."""

    head: bytes
    blocks: list[Block]

    @classmethod
    def parse(cls, data: bytes, wanted: tuple[str, ...]) -> FeedText:
        """ValueError when the bytes are not a feed of ours (a VCALENDAR of VEVENTs and
        VTIMEZONEs, CRLF lines): the caller reports it, it never guesses."""
        if not data.startswith(_HEAD) or not data.endswith(_TAIL):
            raise ValueError("not an iCalendar feed (BEGIN:VCALENDAR ... END:VCALENDAR)")
        body_end = len(data) - len(_TAIL)
        blocks: list[Block] = []
        pattern = _property_lines(wanted)
        head_end = None
        position = None
        for match in _COMPONENT.finditer(data, 0, body_end):
            if head_end is None:
                head_end = position = match.start()
            if match.start() != position:
                raise ValueError(f"unexpected content at byte {position}")
            kind = match.group(1).decode("ascii")
            blocks.append(Block.parse(kind, match.group(0), pattern))
            position = match.end()
        if head_end is None:
            head_end = position = body_end
        if position != body_end or b"BEGIN:" in data[len(_HEAD) : head_end]:
            raise ValueError(f"unexpected content at byte {position}")
        return cls(data[:head_end], blocks)

    @classmethod
    def empty(cls, calendar_bytes: bytes) -> FeedText:
        """A new feed from an empty VCALENDAR's bytes."""
        return cls(calendar_bytes[: len(calendar_bytes) - len(_TAIL)], [])

    def to_bytes(self) -> bytes:
        return b"".join([self.head, *(b.text for b in self.blocks), _TAIL])
