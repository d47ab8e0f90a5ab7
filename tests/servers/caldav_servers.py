"""Real CalDAV servers from PyPI (Radicale, Xandikos) started as subprocesses for the tests.

Each server listens on 127.0.0.1 on a port the OS picks. A server that fails to start skips
the test with the reason, except under CI (``CI=true``), where it fails it.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Iterable
from pathlib import Path

import pytest
import requests

from tests.emulators.pki import TestPki

SERVICE_USER = "svc-leavesync"
SERVICE_PASSWORD = "svc-app-token-1"
REQUIRED = os.environ.get("CI", "").lower() in ("1", "true", "yes")
_START_TIMEOUT = 60.0


def server_unavailable(message: str) -> None:
    """Skip the test, or fail it under CI where the servers are required."""
    if REQUIRED:
        pytest.fail(message + " (required under CI)")
    pytest.skip(message)


def quote_user(user: str) -> str:
    return urllib.parse.quote(user, safe="@")


class _Process:
    """A server subprocess whose output is collected on a thread (so it never blocks)."""

    def __init__(self, args: list[str], cwd: Path) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("REQUESTS_", "SSL_"))}
        self.proc = subprocess.Popen(
            args,
            cwd=cwd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip())

    def wait_for(self, pattern: str, timeout: float = _START_TIMEOUT) -> re.Match | None:
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(self.lines):
                if match := regex.search(line):
                    return match
            if self.proc.poll() is not None:
                return None
            time.sleep(0.05)
        return None

    def output(self) -> str:
        return "\n".join(self.lines[-30:])

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class RadicaleServer:
    """Radicale with an htpasswd user per employee and a service account (rights file)."""

    name = "radicale"

    def __init__(
        self,
        directory: Path,
        users: Iterable[str],
        pki: TestPki | None = None,
        service_read_only: Iterable[str] = (),
        service_shared: Iterable[str] = (),
    ) -> None:
        self.directory = directory
        self.users = {u: f"pw-{u}" for u in users}
        self.service_read_only = list(service_read_only)
        # Accounts whose every calendar the service account may write (team calendars).
        self.service_shared = list(service_shared)
        self.pki = pki
        self.process: _Process | None = None
        self.port = 0

    @property
    def scheme(self) -> str:
        return "https" if self.pki else "http"

    @property
    def base_url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    @property
    def ca_bundle(self) -> str | None:
        return str(self.pki.ca_file) if self.pki else None

    def calendar_url(self, user: str, calendar: str = "leaves") -> str:
        return f"{self.base_url}/{quote_user(user)}/{calendar}/"

    def start(self) -> RadicaleServer:
        self.directory.mkdir(parents=True, exist_ok=True)
        htpasswd = self.directory / "users"
        lines = [f"{u}:{p}" for u, p in self.users.items()] + [f"{SERVICE_USER}:{SERVICE_PASSWORD}"]
        htpasswd.write_text("\n".join(lines) + "\n")
        rights = self.directory / "rights"
        # Radicale's rights file: R/W on principal collections, r/w on calendars in them.
        rights.write_text(
            f"""
[root]
user: .+
collection:
permissions: R

[owner-principal]
user: .+
collection: {{user}}
permissions: RW

[owner-calendars]
user: .+
collection: {{user}}/[^/]+
permissions: rw

[service-principals]
user: {SERVICE_USER}
collection: [^/]+
permissions: R

{self._read_only_rule()}
{self._shared_rule()}
[service-leaves]
user: {SERVICE_USER}
collection: [^/]+/leaves
permissions: rw
"""
        )
        # Radicale refuses port 0: take a free port, and another if it was taken meanwhile.
        for _ in range(3):
            self.port = free_port()
            if self._run():
                return self
        output = self.process.output() if self.process else ""
        server_unavailable(f"Radicale did not start:\n{output}")
        return self

    def _shared_rule(self) -> str:
        if not self.service_shared:
            return ""
        names = "|".join(re.escape(u) for u in self.service_shared)
        return (
            f"[service-shared]\nuser: {SERVICE_USER}\ncollection: ({names})/[^/]+\n"
            "permissions: rw\n"
        )

    def _read_only_rule(self) -> str:
        if not self.service_read_only:
            return ""
        names = "|".join(re.escape(u) for u in self.service_read_only)
        # Rules apply in order, the first match wins: these calendars are read-only to it.
        return f"[service-read-only]\nuser: {SERVICE_USER}\ncollection: ({names})/leaves\npermissions: r\n"

    def _run(self) -> bool:
        htpasswd, rights = self.directory / "users", self.directory / "rights"
        config = self.directory / "config"
        tls = (
            f"ssl = True\ncertificate = {self.pki.cert_file}\nkey = {self.pki.key_file}\n"
            if self.pki
            else "ssl = False\n"
        )
        config.write_text(
            f"""
[server]
hosts = 127.0.0.1:{self.port}
max_connections = 20
{tls}
[auth]
type = htpasswd
htpasswd_filename = {htpasswd}
htpasswd_encryption = plain
delay = 0

[rights]
type = from_file
file = {rights}

[storage]
filesystem_folder = {self.storage}

[logging]
level = info
mask_passwords = True
"""
        )
        self.process = _Process(
            [sys.executable, "-m", "radicale", "--config", str(config)], self.directory
        )
        if self.process.wait_for(r"Listening on") is None:
            self.process.stop()
            return False
        return True

    @property
    def storage(self) -> Path:
        return self.directory / "collections"

    def session(self, user: str) -> requests.Session:
        s = requests.Session()
        s.trust_env = False
        s.auth = (user, self.users.get(user, SERVICE_PASSWORD))
        s.verify = self.ca_bundle or True
        return s

    def make_calendar(self, user: str, calendar: str = "leaves") -> str:
        """The employee creates the calendar the service account may write (as in real life)."""
        url = self.calendar_url(user, calendar)
        body = (
            '<?xml version="1.0" encoding="utf-8"?>'
            '<C:mkcalendar xmlns:D="DAV:" xmlns:C="urn:ietf:params:xml:ns:caldav">'
            "<D:set><D:prop><D:displayname>Leaves</D:displayname>"
            '<C:supported-calendar-component-set><C:comp name="VEVENT"/>'
            "</C:supported-calendar-component-set></D:prop></D:set></C:mkcalendar>"
        )
        with self.session(user) as s:
            s.request("PROPFIND", f"{self.base_url}/{quote_user(user)}/", headers={"Depth": "0"})
            r = s.request("MKCALENDAR", url, data=body.encode())
            assert r.status_code == 201, (r.status_code, r.text)
        return url

    def stored_files(self, user: str, calendar: str = "leaves") -> dict[str, str]:
        """The .ics files Radicale stored for one calendar, by resource name."""
        folder = self.storage / "collection-root" / user / calendar
        return {p.name: p.read_text(encoding="utf-8") for p in sorted(folder.glob("*.ics"))}

    def stop(self) -> None:
        if self.process:
            self.process.stop()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class XandikosServer:
    """Xandikos (single-user by design: one account sees every collection), over HTTP."""

    name = "xandikos"

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.process: _Process | None = None
        self.port = 0
        self.ca_bundle: str | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def calendar_url(self, user: str, calendar: str = "leaves") -> str:
        return f"{self.base_url}/{quote_user(user)}/{calendar}/"

    def start(self) -> XandikosServer:
        self.directory.mkdir(parents=True, exist_ok=True)
        # Xandikos logs the port it was given, not the one bound: pick a free one, retry once.
        for _ in range(3):
            self.port = free_port()
            self.process = _Process(
                [
                    sys.executable,
                    "-m",
                    "xandikos",
                    "serve",
                    "-l",
                    "127.0.0.1",
                    "-p",
                    str(self.port),
                    "-d",
                    str(self.storage),
                    "--autocreate",
                    "--current-user-principal",
                    f"/{SERVICE_USER}/",
                    "--state-dir",
                    str(self.directory / "state"),
                    "--no-detect-systemd",
                ],
                self.directory,
            )
            if self._answers():
                return self
            self.process.stop()
        server_unavailable(f"Xandikos did not start:\n{self.process.output()}")
        return self

    def _answers(self) -> bool:
        deadline = time.monotonic() + _START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process and self.process.proc.poll() is not None:
                return False
            try:
                requests.request("OPTIONS", self.base_url + "/", timeout=2)
                return True
            except requests.ConnectionError:
                time.sleep(0.1)
        return False

    @property
    def storage(self) -> Path:
        return self.directory / "data"

    def session(self, user: str) -> requests.Session:
        s = requests.Session()
        s.trust_env = False
        return s

    def make_calendar(self, user: str, calendar: str = "leaves") -> str:
        url = self.calendar_url(user, calendar)
        with self.session(user) as s:
            home = f"{self.base_url}/{quote_user(user)}/"
            r = s.request("MKCOL", home)
            assert r.status_code in (201, 405), (r.status_code, r.text)
            r = s.request("MKCALENDAR", url)
            assert r.status_code == 201, (r.status_code, r.text)
        return url

    def stored_files(self, user: str, calendar: str = "leaves") -> dict[str, str]:
        """The .ics blobs Xandikos committed for one calendar (its git store), by name."""
        from dulwich.repo import Repo

        repo = Repo(str(self.storage / user / calendar))
        try:
            tree = repo[repo[repo.head()].tree]
            out = {}
            for entry in tree.iteritems():
                name = entry.path.decode()
                if name.endswith(".ics"):
                    out[name] = repo[entry.sha].data.decode("utf-8")
            return dict(sorted(out.items()))
        except KeyError:
            return {}
        finally:
            repo.close()

    def stop(self) -> None:
        if self.process:
            self.process.stop()
