"""CalDAV clients are built one at a time, whatever the number of threads asking at once.

The caldav library's DAVClient constructor fills a class-level feature table lazily, which is
not thread-safe (a run's first requests starting together once failed with KeyError 'http'
inside caldav.compatibility_hints). The session serialises construction; this test holds each
construction open for a moment and counts how many overlap.
"""

from __future__ import annotations

import threading
import time

import caldav

from resources.providers.caldav import session as session_module
from resources.providers.caldav.session import DavSession
from resources.providers.caldav.settings import CalDavSettings


def test_clients_of_sixteen_threads_are_built_one_at_a_time(monkeypatch):
    monkeypatch.setenv("LEAVESYNC_TEST_DAV_PASSWORD", "x")
    real = caldav.DAVClient
    inside, most = [0], [0]
    guard = threading.Lock()

    def slow_client(*args, **kwargs):
        with guard:
            inside[0] += 1
            most[0] = max(most[0], inside[0])
        time.sleep(0.02)
        try:
            return real(*args, **kwargs)
        finally:
            with guard:
                inside[0] -= 1

    monkeypatch.setattr(session_module.caldav, "DAVClient", slow_client)
    settings = CalDavSettings(
        calendar_url="https://dav.invalid/{email}/leaves/",
        username="svc",
        password_env="LEAVESYNC_TEST_DAV_PASSWORD",
    )
    session = DavSession(settings)
    start, errors = threading.Barrier(16), []

    def build() -> None:
        start.wait()
        try:
            session._client()
        except Exception as err:  # noqa: BLE001 - collected and asserted below
            errors.append(repr(err))

    threads = [threading.Thread(target=build) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert errors == []
    assert len(session._clients) == 16  # one per thread
    assert most[0] == 1
