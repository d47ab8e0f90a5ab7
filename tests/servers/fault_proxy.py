"""A small HTTP(S) proxy in front of a real CalDAV server that injects 503, 429 and drops."""

from __future__ import annotations

import http.client
import ssl
import threading
import urllib.parse
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from tests.emulators.pki import TestPki

_HOP = {"connection", "keep-alive", "transfer-encoding", "proxy-connection", "upgrade"}


@dataclass
class Fault:
    """What to do with the next request matching ``method`` (any when None).

    ``status``: answer it with this status (and ``retry_after``) without forwarding it;
    ``drop="before"``: close the connection without forwarding; ``drop="after"``: forward it
    (the server applies it) and close the connection without answering.
    """

    method: str | None = None
    status: int | None = None
    retry_after: str | None = None
    drop: str | None = None
    times: int = 1


class FaultProxy:
    """Forwards to ``upstream``; ``faults`` are consumed in order as requests match them."""

    def __init__(self, upstream: str, pki: TestPki | None = None, upstream_ca: str | None = None):
        self.upstream = urllib.parse.urlsplit(upstream)
        self.upstream_ca = upstream_ca
        self.faults: list[Fault] = []
        self.always: Fault | None = None
        self.log: list[tuple[str, str, str]] = []  # method, path, what happened
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                fault = proxy._take(self.command)
                if fault and fault.status:
                    proxy._record(self.command, self.path, str(fault.status))
                    payload = b"try later\n"
                    self.send_response(fault.status)
                    if fault.retry_after is not None:
                        self.send_header("Retry-After", fault.retry_after)
                    self.send_header("Content-Type", "text/plain")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                    return
                if fault and fault.drop == "before":
                    proxy._record(self.command, self.path, "dropped before")
                    self.close_connection = True
                    return
                status, headers, data = proxy._forward(self.command, self.path, self.headers, body)
                if fault and fault.drop == "after":
                    proxy._record(self.command, self.path, f"dropped after {status}")
                    self.close_connection = True
                    return
                proxy._record(self.command, self.path, str(status))
                self.send_response(status)
                for name, value in headers:
                    if name.lower() not in _HOP and name.lower() != "content-length":
                        self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_PUT = do_DELETE = do_PROPFIND = do_REPORT = _handle
            do_OPTIONS = do_MKCALENDAR = do_MKCOL = do_PROPPATCH = do_HEAD = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.scheme = "http"
        if pki is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(pki.cert_file, pki.key_file)
            self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
            self.scheme = "https"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.server.server_address[1]}"

    def start(self) -> FaultProxy:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def inject(self, *faults: Fault) -> None:
        with self._lock:
            self.faults.extend(faults)

    def _take(self, method: str) -> Fault | None:
        with self._lock:
            for fault in self.faults:
                if fault.method in (None, method):
                    fault.times -= 1
                    if fault.times <= 0:
                        self.faults.remove(fault)
                    return fault
            return self.always if self.always and self.always.method in (None, method) else None

    def _record(self, method: str, path: str, what: str) -> None:
        with self._lock:
            self.log.append((method, path, what))

    def _forward(self, method: str, path: str, headers, body: bytes):
        host, port = self.upstream.hostname, self.upstream.port
        if self.upstream.scheme == "https":
            context = ssl.create_default_context(cafile=self.upstream_ca)
            conn = http.client.HTTPSConnection(host, port, context=context, timeout=30)
        else:
            conn = http.client.HTTPConnection(host, port, timeout=30)
        try:
            out = {k: v for k, v in headers.items() if k.lower() not in _HOP | {"host"}}
            conn.request(method, path, body=body, headers=out)
            response = conn.getresponse()
            return response.status, response.getheaders(), response.read()
        finally:
            conn.close()
