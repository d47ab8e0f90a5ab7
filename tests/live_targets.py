"""Every target live at once, for whole-pipeline trials (bench/chaos.py, the canary test).

Each ``Live*`` starts its emulator (or real server), gives the target's configuration and
the environment variables holding its secret, and reads the calendars back from the
emulator's own store (feeds with vobject), never through leavesync's provider.
"""

from __future__ import annotations

import datetime as dt
import json
import random
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import vobject

KEY_PROPERTY = "leavesyncKey"
_CALNAME = re.compile(r"\(([^()]*)\)\s*$")


@dataclass(frozen=True)
class Held:
    """One event of ours found in a calendar: its key and its all-day dates (end exclusive)."""

    calendar: str
    event_key: str
    start: str
    end: str


class LiveTarget:
    """One target, live: its configuration, its secrets, and an independent reader."""

    kind = ""
    name = ""
    SECRET_ENV = ""  # the environment variable holding ``secret``
    secret = ""

    def start(self, mailboxes: list[str], secret: str) -> LiveTarget:
        raise NotImplementedError

    def stop(self) -> None:
        pass

    def settings(self) -> dict:
        raise NotImplementedError

    def target(self) -> dict:
        return {"name": self.name, "type": self.kind, "settings": self.settings()}

    def env(self) -> dict[str, str]:
        return {self.SECRET_ENV: self.secret} if self.SECRET_ENV else {}

    def writes(self) -> int:
        """Writes the calendar received so far (a kill is timed from the first one)."""
        raise NotImplementedError

    def held(self) -> list[Held]:
        """Every event of ours, one entry per copy."""
        raise NotImplementedError

    def add_foreign(self, mailbox: str, day: dt.date) -> None:
        """An event the employee made themselves: leavesync must never touch it."""

    def change_address(self, old: str, new: str, how: str) -> None:
        """An employee's address changes on the service's side (``new`` was started empty).

        ``alias``: the mailbox is renamed and the old address stays an alias of it;
        ``renamed``: renamed, the old address reaches nothing; ``deleted``: the old mailbox is
        deleted with its events (a new account). A feed has no mailbox: nothing to do.
        """

    def foreign(self) -> int:
        """How many foreign events are there."""
        return 0

    def faults(self, rate: float, seed: int = 0) -> None:
        """Answer this share of requests with 429/503, dropped connections or slow answers."""

    def faults_injected(self) -> int:
        return 0


def _ics_held(calendar: str, text: str) -> list[Held]:
    cal = vobject.readOne(text)
    out = []
    for ev in getattr(cal, "vevent_list", []):
        key = ev.contents.get("x-leavesync-key")
        if key:
            out.append(
                Held(
                    calendar,
                    key[0].value,
                    ev.dtstart.value.isoformat()[:10],
                    ev.dtend.value.isoformat()[:10],
                )
            )
    return out


class LiveEmulator(LiveTarget):
    """A target served by an in-process emulator of mailboxes (Google, Graph, EWS).

    A subclass starts ``self.emulator`` and says how to list, key, date, remove and rename.
    """

    emulator: Any

    def stop(self) -> None:
        self.emulator.stop()

    def _events(self) -> Iterator[tuple[str, Any]]:
        """Every event held, with its mailbox, mailboxes in order."""
        raise NotImplementedError

    def _key(self, event: Any) -> str | None:
        raise NotImplementedError

    def _days(self, event: Any) -> tuple[str, str]:
        """The event's first and end (exclusive) dates, ISO."""
        raise NotImplementedError

    def _remove(self, address: str) -> None:
        raise NotImplementedError

    def _rename(self, old: str, new: str, keep_alias: bool) -> None:
        raise NotImplementedError

    def held(self) -> list[Held]:
        return [
            Held(mailbox, key, *self._days(e))
            for mailbox, e in self._events()
            if (key := self._key(e))
        ]

    def foreign(self) -> int:
        return sum(1 for _, e in self._events() if self._key(e) is None)

    def change_address(self, old: str, new: str, how: str) -> None:
        if how == "deleted":
            self._remove(old)
        else:
            self._rename(old, new, keep_alias=how == "alias")


class LiveIcs(LiveTarget):
    kind = name = "ics"
    SECRET_ENV = "LEAVESYNC_FEED_KEY"

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def start(self, mailboxes: list[str], secret: str) -> LiveIcs:
        self.secret = secret
        return self

    def settings(self) -> dict:
        return {"directory": str(self.directory)}

    def writes(self) -> int:
        # A feed is rewritten whole: count the feeds written since the last call's baseline.
        state = {p.name: p.stat().st_mtime_ns for p in self.directory.glob("*.ics")}
        seen = getattr(self, "_seen", {})
        self._written = getattr(self, "_written", 0) + sum(
            1 for name, mtime in state.items() if seen.get(name) != mtime
        )
        self._seen = state
        return self._written

    def held(self) -> list[Held]:
        out = []
        for path in sorted(self.directory.glob("*.ics")):
            text = path.read_text(encoding="utf-8")
            cal = vobject.readOne(text)
            name = cal.contents.get("x-wr-calname")
            match = _CALNAME.search(name[0].value) if name else None
            out += _ics_held(match.group(1) if match else path.stem, text)
        return out


class LiveGoogle(LiveEmulator):
    kind, name = "google", "google"
    KINDS = ("429", "503", "drop_before", "drop_after", "slow")

    def start(self, mailboxes: list[str], secret: str) -> LiveGoogle:
        from tests.emulators.google_calendar import GoogleCalendarEmulator, make_service_account

        self.info, public_key = make_service_account()
        # The key's id is the recognisable part; the PEM body is random by nature.
        self.info["private_key_id"] = secret
        self.emulator = GoogleCalendarEmulator(
            self.info["client_email"], public_key, set(mailboxes)
        ).start()
        self.emulator.slow_seconds = 0.5
        return self

    def settings(self) -> dict:
        e = self.emulator
        return {
            "service_account_key_env": "LEAVESYNC_LIVE_GOOGLE_KEY",
            "api_base_url": e.base_url,
            "token_uri": e.token_uri,
            "batch_uri": e.batch_uri,
        }

    def env(self) -> dict[str, str]:
        return {"LEAVESYNC_LIVE_GOOGLE_KEY": json.dumps(self.info)}

    def writes(self) -> int:
        s = self.emulator.stats
        return sum(s[f"{m}_requests"] for m in ("post", "put", "patch", "delete"))

    def _events(self) -> Iterator[tuple[str, dict]]:
        return ((u, e) for u in sorted(self.emulator.users) for e in self.emulator.events(u))

    def _key(self, event: dict) -> str | None:
        return ((event.get("extendedProperties") or {}).get("private") or {}).get(KEY_PROPERTY)

    def _days(self, event: dict) -> tuple[str, str]:
        start, end = event["start"], event["end"]
        return start.get("date") or start["dateTime"][:10], end.get("date") or end["dateTime"][:10]

    def _remove(self, address: str) -> None:
        self.emulator.remove_user(address)

    def _rename(self, old: str, new: str, keep_alias: bool) -> None:
        self.emulator.rename_user(old, new, keep_alias=keep_alias)

    def add_foreign(self, mailbox: str, day: dt.date) -> None:
        self.emulator.put_event(
            mailbox,
            {
                "summary": "Dentist",
                "start": {"date": day.isoformat()},
                "end": {"date": (day + dt.timedelta(days=1)).isoformat()},
            },
        )

    def faults(self, rate: float, seed: int = 0) -> None:
        self.emulator.fault_rate = rate
        self.emulator.fault_kinds = self.KINDS
        self.emulator.rng = random.Random(seed)

    def faults_injected(self) -> int:
        return self.emulator.stats["faults_injected"]


class LiveGraph(LiveEmulator):
    kind, name = "microsoft_graph", "graph"
    SECRET_ENV = "LEAVESYNC_LIVE_GRAPH_SECRET"
    CLIENT_ID = "11111111-2222-3333-4444-555555555555"

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def start(self, mailboxes: list[str], secret: str) -> LiveGraph:
        from tests.emulators.graph import GraphEmulator

        self.secret = secret
        self.emulator = GraphEmulator.start(self.directory)
        self.emulator.register_app(self.CLIENT_ID, secret)
        for m in mailboxes:
            self.emulator.mailbox(m)
        return self

    def settings(self) -> dict:
        e = self.emulator
        return {
            "tenant_id": e.tenant_id,
            "client_id": self.CLIENT_ID,
            "client_secret_env": self.SECRET_ENV,
            "authority": e.base_url,
            "graph_url": e.base_url,
            "ca_bundle": str(e.pki.ca_file),
        }

    def writes(self) -> int:
        m = self.emulator.stats.methods
        return m["POST"] + m["PATCH"] + m["DELETE"]

    def _events(self) -> Iterator[tuple[str, dict]]:
        return ((a, e) for a in sorted(self.emulator.mailboxes) for e in self.emulator.events(a))

    def _key(self, event: dict) -> str | None:
        for p in event.get("singleValueExtendedProperties") or []:
            if p["id"].endswith(KEY_PROPERTY):
                return p["value"]
        return None

    def _days(self, event: dict) -> tuple[str, str]:
        return event["start"]["dateTime"][:10], event["end"]["dateTime"][:10]

    def _remove(self, address: str) -> None:
        self.emulator.remove_mailbox(address)

    def _rename(self, old: str, new: str, keep_alias: bool) -> None:
        self.emulator.rename_user(old, new, keep_alias=keep_alias)

    def add_foreign(self, mailbox: str, day: dt.date) -> None:
        end = day + dt.timedelta(days=1)
        self.emulator.add_foreign_event(mailbox, "Dentist", f"{day}T09:00:00", f"{end}T10:00:00")

    def faults(self, rate: float, seed: int = 0) -> None:
        self.emulator.fault_rate = rate
        self.emulator.rng = random.Random(seed)

    def faults_injected(self) -> int:
        return sum(self.emulator.stats.faults.values())


class LiveEws(LiveEmulator):
    kind, name = "ews", "ews"
    SECRET_ENV = "LEAVESYNC_LIVE_EWS_PASSWORD"
    KINDS = ("busy", "503", "drop", "lost", "slow")

    def start(self, mailboxes: list[str], secret: str) -> LiveEws:
        from tests.emulators.ews import EwsEmulator

        self.secret = secret
        self.emulator = EwsEmulator(mailboxes, password=secret).start()
        return self

    def settings(self) -> dict:
        e = self.emulator
        return {
            "ews_url": e.url,
            "username": e.username,
            "password_env": self.SECRET_ENV,
            "auth_type": "basic",
        }

    def writes(self) -> int:
        from tests.emulators.ews import WRITE_OPS

        return self.emulator.count(*WRITE_OPS)

    def _events(self) -> Iterator[tuple[str, Any]]:
        return ((m, i) for m in sorted(self.emulator.mailboxes) for i in self.emulator.items(m))

    def _key(self, event: Any) -> str | None:
        return event.extended_value(KEY_PROPERTY)

    def _days(self, event: Any) -> tuple[str, str]:
        return event.start.date().isoformat(), event.end.date().isoformat()

    def _remove(self, address: str) -> None:
        self.emulator.remove_mailbox(address)

    def _rename(self, old: str, new: str, keep_alias: bool) -> None:
        self.emulator.rename_mailbox(old, new, keep_alias=keep_alias)

    def add_foreign(self, mailbox: str, day: dt.date) -> None:
        self.emulator.add_foreign_item(mailbox, "Dentist", f"{day}T09:00:00Z", f"{day}T10:00:00Z")

    def faults(self, rate: float, seed: int = 0) -> None:
        self.emulator.fault_rate = rate
        self.emulator.fault_kinds = self.KINDS
        self.emulator._random = random.Random(seed)

    def faults_injected(self) -> int:
        return sum(1 for r in self.emulator.requests if r.outcome not in ("ok", "401"))


class LiveCaldav(LiveTarget):
    """Radicale (a real CalDAV server) behind a proxy that injects faults."""

    kind, name = "caldav", "caldav"
    SECRET_ENV = "LEAVESYNC_LIVE_CALDAV_PASSWORD"
    FAULTS = (
        {"status": 429, "retry_after": "1"},
        {"status": 503},
        {"drop": "before"},
        {"drop": "after"},
        {"slow": 0.5},
    )

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def start(self, mailboxes: list[str], secret: str) -> LiveCaldav:
        from tests.servers import caldav_servers
        from tests.servers.caldav_servers import RadicaleServer
        from tests.servers.fault_proxy import FaultProxy

        # The helper writes the service account's password from its module constant.
        saved, caldav_servers.SERVICE_PASSWORD = caldav_servers.SERVICE_PASSWORD, secret
        try:
            self.server = RadicaleServer(self.directory, mailboxes).start()
        finally:
            caldav_servers.SERVICE_PASSWORD = saved
        self.secret = secret
        for m in mailboxes:
            self.server.make_calendar(m)
        self.mailboxes = list(mailboxes)
        self.proxy = FaultProxy(self.server.base_url).start()
        self.rate, self.rng, self.injected = 0.0, random.Random(0), 0
        self.proxy._take = self._take  # random faults at ``rate`` besides scripted ones
        return self

    def _take(self, method: str):
        import time

        from tests.servers.fault_proxy import Fault

        if method not in ("PUT", "DELETE", "REPORT", "PROPFIND", "GET") or not self.rate:
            return None
        if self.rng.random() >= self.rate:
            return None
        self.injected += 1
        choice = dict(self.rng.choice(self.FAULTS))
        if "slow" in choice:
            time.sleep(choice["slow"])
            return None
        return Fault(**choice)

    def stop(self) -> None:
        self.proxy.stop()
        self.server.stop()

    def settings(self) -> dict:
        from tests.servers.caldav_servers import SERVICE_USER

        return {
            "calendar_url": self.proxy.base_url + "/{email}/leaves/",
            "username": SERVICE_USER,
            "password_env": self.SECRET_ENV,
        }

    def writes(self) -> int:
        return sum(1 for method, _, _ in list(self.proxy.log) if method in ("PUT", "DELETE"))

    def held(self) -> list[Held]:
        out = []
        for user in self.mailboxes:
            for text in self.server.stored_files(user).values():
                out += _ics_held(user, text)
        return out

    def change_address(self, old: str, new: str, how: str) -> None:
        """CalDAV has no address aliases (a calendar is a path): ``alias`` keeps the old
        calendar where it is, ``renamed`` moves its collection to the new path (the server
        renamed the account), ``deleted`` removes it."""
        import shutil

        root = self.server.storage / "collection-root"
        if how == "renamed":
            shutil.rmtree(root / new / "leaves")
            (root / old / "leaves").rename(root / new / "leaves")
        elif how == "deleted":
            shutil.rmtree(root / old)

    def add_foreign(self, mailbox: str, day: dt.date) -> None:
        end = day + dt.timedelta(days=1)
        text = (
            "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//someone//EN\r\nBEGIN:VEVENT\r\n"
            f"UID:dentist-{mailbox}-{day}\r\nDTSTAMP:20260101T000000Z\r\n"
            f"DTSTART;VALUE=DATE:{day:%Y%m%d}\r\nDTEND;VALUE=DATE:{end:%Y%m%d}\r\n"
            "SUMMARY:Dentist\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n"
        )
        with self.server.session(mailbox) as s:
            url = self.server.calendar_url(mailbox) + f"dentist-{day}.ics"
            assert s.put(url, data=text.encode()).status_code in (201, 204)

    def foreign(self) -> int:
        return sum(
            1
            for user in self.mailboxes
            for text in self.server.stored_files(user).values()
            if "X-LEAVESYNC-KEY" not in text
        )

    def faults(self, rate: float, seed: int = 0) -> None:
        self.rate, self.rng = rate, random.Random(seed)

    def faults_injected(self) -> int:
        return self.injected


def live_targets(kinds: list[str], work: Path) -> list[LiveTarget]:
    """The live targets of these kinds (ics, google, microsoft_graph, ews, caldav)."""
    made = {
        "ics": lambda: LiveIcs(work / "feeds"),
        "google": LiveGoogle,
        "microsoft_graph": lambda: LiveGraph(work / "graph-pki"),
        "ews": LiveEws,
        "caldav": lambda: LiveCaldav(work / "radicale"),
    }
    return [made[k]() for k in kinds]
