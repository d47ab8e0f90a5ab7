"""The ``settings:`` block of a ``caldav`` target."""

from __future__ import annotations

import urllib.parse
from typing import Literal

from pydantic import Field, model_validator

from resources.providers.base import ProviderSettings

PLACEHOLDERS = ("{email}", "{local_part}", "{domain}")


class CalDavSettings(ProviderSettings):
    """Where each employee's events go, who writes them, and how hard to push the server."""

    # Calendar collection per employee, e.g. https://dav.example.com/calendars/{email}/leaves/
    calendar_url: str | None = None
    # Or the employee's principal, whose calendar-home-set is searched for ``calendar_name``.
    principal_url: str | None = None
    # Or, for a team target, only the server: its calendars are collection URLs on it.
    server_url: str | None = None
    calendar_name: str = "Leaves"
    username: str
    password_env: str = "LEAVESYNC_CALDAV_PASSWORD"
    auth_type: Literal["basic", "digest", "bearer"] = "basic"
    ca_bundle: str | None = None
    max_parallel_calendars: int = Field(4, ge=1, le=64)
    max_requests_per_second: float | None = Field(None, gt=0)
    timeout_seconds: float = Field(30.0, gt=0)
    backoff_base_seconds: float = Field(0.5, ge=0)
    backoff_cap_seconds: float = Field(60.0, ge=0)
    max_attempts: int = Field(6, ge=1)

    @model_validator(mode="after")
    def _one_place(self) -> CalDavSettings:
        given = [u for u in (self.calendar_url, self.principal_url, self.server_url) if u]
        if len(given) != 1:
            raise ValueError(
                "set exactly one of calendar_url and principal_url (or server_url for a team "
                "target, whose calendars are collection URLs)"
            )
        template = given[0]
        parts = urllib.parse.urlsplit(template.replace("{", "").replace("}", ""))
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"{template!r} is not an http(s) URL")
        if template != self.server_url and not any(p in template for p in PLACEHOLDERS):
            raise ValueError(
                f"{template!r} names no employee: use one of {', '.join(PLACEHOLDERS)}"
            )
        return self

    @property
    def template(self) -> str:
        return self.calendar_url or self.principal_url or self.server_url or ""

    def on_server(self, url: str) -> bool:
        """``url`` is on this target's server (same scheme, host and port): our credentials
        go only there."""
        mine, theirs = urllib.parse.urlsplit(self.template), urllib.parse.urlsplit(url)
        return (mine.scheme, mine.netloc.lower()) == (theirs.scheme, theirs.netloc.lower())

    def url_for(self, calendar: str) -> str:
        """The template filled in for one employee (an email), path-quoted, ending in '/'."""
        local, _, domain = calendar.partition("@")
        url = self.template
        for name, value in (("email", calendar), ("local_part", local), ("domain", domain)):
            url = url.replace("{" + name + "}", urllib.parse.quote(value, safe="@"))
        return url if url.endswith("/") else url + "/"

    @property
    def server_root(self) -> str:
        parts = urllib.parse.urlsplit(self.template)
        return f"{parts.scheme}://{parts.netloc}/"

    @property
    def host(self) -> str:
        return urllib.parse.urlsplit(self.template).netloc
