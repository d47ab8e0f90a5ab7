"""Connecting to the HR and state databases: the URL from the environment, one-line errors."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager

import sqlalchemy as sa

from resources.config import ConfigError


class DatabaseError(ConfigError):
    """An HR or state database cannot be used: one line naming which, where and why."""

    def __init__(self, which: str, where: str, reason: str) -> None:
        self.which, self.where, self.reason = which, where, reason
        super().__init__(f"{which} database{f' {where}' if where else ''}: {reason}")


def resolve_url(which: str, url: str | None, url_env: str | None, setting: str) -> str:
    """The database URL: ``url``, or the value of the environment variable named ``url_env``."""
    if url_env:
        value = os.environ.get(url_env, "").strip()
        if not value:
            raise DatabaseError(
                which,
                "",
                f"environment variable {url_env} ({setting}.url_env) is not set; it must hold "
                "the SQLAlchemy URL, e.g. postgresql+psycopg://user:password@host/db",
            )
        return value
    if not url:
        raise DatabaseError(which, "", f"no URL: set {setting}.url or {setting}.url_env")
    return url


def describe(url: str) -> str:
    """Where a database is, password masked: `host:port/db (driver)` or the SQLite file."""
    try:
        parsed = sa.make_url(url)
    except sa.exc.ArgumentError:
        return "(unparsable URL)"
    if parsed.get_backend_name() == "sqlite":
        return f"SQLite file {parsed.database}" if parsed.database else "in-memory SQLite"
    host = parsed.host or "localhost"
    port = f":{parsed.port}" if parsed.port else ""
    user = f"{parsed.username}@" if parsed.username else ""
    return f"{user}{host}{port}/{parsed.database or ''} ({parsed.drivername})"


def create_engine(which: str, url: str) -> sa.Engine:
    """An engine for ``url``; an unparsable URL or an unknown driver is a DatabaseError."""
    try:
        return sa.create_engine(url, pool_pre_ping=True)
    except Exception as err:  # noqa: BLE001 - every failure here is the URL's or the driver's
        raise DatabaseError(which, describe(url), reason(err, url)) from None


@contextmanager
def guarded(which: str, url: str, what: str = "") -> Iterator[None]:
    """Turn a driver's or SQLAlchemy's failure into one DatabaseError line (password masked)."""
    try:
        yield
    except DatabaseError:
        raise
    except (sa.exc.SQLAlchemyError, ImportError, OSError) as err:
        text = reason(err, url)
        raise DatabaseError(which, describe(url), f"{what} failed: {text}" if what else text) from (
            None
        )


_PREFIX = re.compile(r"^\([\w.]+\)\s*")


def reason(err: BaseException, url: str = "") -> str:
    """The cause in one line, in words an operator can act on; never the password."""
    if isinstance(err, sa.exc.NoSuchModuleError):
        name = str(err).rsplit(":", 1)[-1].replace(".", "+")
        return f"unknown database driver {name!r} in the URL (e.g. postgresql+psycopg, sqlite)"
    if isinstance(err, ImportError):
        module = getattr(err, "name", None) or str(err)
        return f"the database driver module {module!r} is not installed"
    if isinstance(err, sa.exc.ArgumentError):
        return "not a SQLAlchemy URL (expected e.g. postgresql+psycopg://user@host/db)"
    orig = getattr(err, "orig", None) or err
    text = " ".join(str(orig).split())  # one line: drivers spread their messages over several
    text = _PREFIX.sub("", text)
    text = re.sub(r"\s*LINE \d+:.*$", "", text)  # PostgreSQL's echo of the statement
    text = re.sub(r"\s*\[SQL:.*$", "", text)
    if "unable to open database file" in text and url:
        folder = _sqlite_folder(url)
        if folder and not os.path.isdir(folder):
            text += f" (folder {folder} does not exist)"
    password = _password(url)
    if password:
        text = text.replace(password, "***")
    return text or type(err).__name__


def _sqlite_folder(url: str) -> str | None:
    try:
        parsed = sa.make_url(url)
    except sa.exc.ArgumentError:
        return None
    if parsed.get_backend_name() != "sqlite" or not parsed.database:
        return None
    return os.path.dirname(os.path.abspath(parsed.database))


def _password(url: str) -> str | None:
    try:
        return sa.make_url(url).password or None
    except sa.exc.ArgumentError:
        return None
