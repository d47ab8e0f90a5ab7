"""The HR database: the one parameterised extract per partition range, on any SQL server."""

from __future__ import annotations

import atexit
import datetime as dt
import re
import threading
from collections.abc import Sequence
from operator import methodcaller

import pandas as pd
import sqlalchemy as sa
from dagster import ConfigurableResource
from pydantic import PrivateAttr

from resources.database import DatabaseError, create_engine, describe, guarded, resolve_url

# The canonical columns of one leave (DESIGN.md); a custom SELECT must return these.
CANONICAL_COLUMNS: tuple[str, ...] = (
    "leave_id",
    "employee_id",
    "employee_email",
    "employee_name",
    "legal_entity",
    "timezone",
    "leave_type",
    "leave_type_name",
    "sensitive",
    "status",
    "start_date",
    "end_date",
    "start_half",
    "end_half",
    "start_time",
    "end_time",
    "updated_at",
    "sync_enabled",
)
# Optional columns: the default query returns them; a custom SELECT may.
OPTIONAL_COLUMNS: tuple[str, ...] = (
    "team",  # the group of team calendars grouped by team (e.g. a department)
    "active",
    "workday_start",
    "midday",
    "workday_end",
    "employee_known",
    "leave_type_known",
    "legal_entity_known",
)

DEFAULT_QUERY = """
SELECT l.id AS leave_id, l.employee_id AS employee_id, e.email AS employee_email,
       e.display_name AS employee_name, e.legal_entity AS legal_entity, le.timezone AS timezone,
       l.leave_type AS leave_type, lt.name AS leave_type_name, lt.sensitive AS {sensitive},
       l.status AS status, l.start_date AS start_date, l.end_date AS end_date,
       l.start_half AS start_half, l.end_half AS end_half, l.start_time AS start_time,
       l.end_time AS end_time, l.updated_at AS updated_at, e.sync_enabled AS sync_enabled,
       e.active AS active, e.team AS team, le.workday_start AS workday_start, le.midday AS midday,
       le.workday_end AS workday_end,
       CASE WHEN e.id IS NULL THEN 0 ELSE 1 END AS employee_known,
       CASE WHEN lt.code IS NULL THEN 0 ELSE 1 END AS leave_type_known,
       CASE WHEN le.code IS NULL THEN 0 ELSE 1 END AS legal_entity_known
FROM leaves l
LEFT JOIN employees e ON e.id = l.employee_id
LEFT JOIN legal_entities le ON le.code = e.legal_entity
LEFT JOIN leave_types lt ON lt.code = l.leave_type
"""

# Partition key of leaves whose employee or legal entity is unknown: they are extracted
# there, quarantined and reported, never silently dropped.
UNASSIGNED = "_unassigned"
_KEY_FORBIDDEN = re.compile(r"[|\[\],\s]")


def entity_partition_key(code: str) -> str:
    """Dagster forbids ``| [ ] ,`` in partition keys: a sanitised legal entity code."""
    return _KEY_FORBIDDEN.sub("_", str(code)).strip() or "_blank"


class HRExtractError(DatabaseError):
    """The HR database could not be read (the message says where, which query and why)."""

    def __init__(self, reason: str, where: str = "") -> None:
        super().__init__("HR", where, reason)


# The default query's tables (the reference schema); another schema is mapped by hr.query.
_REFERENCE_TABLES = "leaves, employees, legal_entities, leave_types"


class HRDatabase(ConfigurableResource):
    """Read-only access to the HR database (SQLAlchemy URL; the driver is named in it).

    ``url_env`` names the environment variable holding the URL; it is read when the
    database is first used, so the URL (and its password) never enters Dagster's config.
    """

    url: str | None = None
    url_env: str | None = None
    query: str | None = None

    _engine: sa.Engine | None = PrivateAttr(default=None)
    _url: str | None = PrivateAttr(default=None)
    _query_checked: bool = PrivateAttr(default=False)
    _change_sources: list[str] | None = PrivateAttr(default=None)  # hr_changes sensor
    _has_team: bool | None = PrivateAttr(default=None)

    def resolved_url(self) -> str:
        if self._url is None:
            self._url = resolve_url("HR", self.url, self.url_env, "hr")
        return self._url

    def engine(self) -> sa.Engine:
        if self._engine is None:
            self._engine = create_engine("HR", self.resolved_url())
        return self._engine

    def preflight(self) -> None:
        """Connect once and read the legal entities: a DatabaseError says what is wrong."""
        self.legal_entities()

    def check_query(self) -> None:
        """Fail early, naming them, when a custom SELECT lacks canonical columns."""
        if self._query_checked or not self.query:
            return
        probe = self._read(
            sa.text(f"SELECT * FROM {self._source()} WHERE 1 = 0"), {}, "custom query"
        )
        missing = [c for c in CANONICAL_COLUMNS if c not in probe.columns]
        if missing:
            raise HRExtractError(
                "hr.query does not return the canonical columns: missing " + ", ".join(missing),
                describe(self.resolved_url()),
            )
        self._query_checked = True

    def _source(self) -> str:
        if self.query:
            sql = self.query
        else:
            # SENSITIVE is a reserved word in MySQL/MariaDB: quote the alias the dialect's way.
            quote = self.engine().dialect.identifier_preparer.quote_identifier
            sql = DEFAULT_QUERY.format(sensitive=quote("sensitive"))
            if not self._has_team_column():
                sql = sql.replace("e.team AS team", "NULL AS team")
        return f"({sql.strip().rstrip(';')}) src"

    def _has_team_column(self) -> bool:
        """False in a reference database created before employees had a team."""
        if self._has_team is None:
            # An empty SELECT first: the resource is built anew for each run, and reflecting
            # the table costs several catalog queries (~0.15 s a run on PostgreSQL).
            try:
                with self.engine().connect() as conn:
                    conn.execute(sa.text("SELECT team FROM employees WHERE 1 = 0")).close()
                self._has_team = True
                return True
            except sa.exc.SQLAlchemyError:
                pass
            try:
                columns = sa.inspect(self.engine()).get_columns("employees")
                self._has_team = any(c["name"].lower() == "team" for c in columns)
            except sa.exc.SQLAlchemyError:
                self._has_team = True  # let the query itself say what is wrong
        return self._has_team

    def legal_entities(self) -> list[str]:
        """Legal entity codes known to HR."""
        if self.query:
            self.check_query()
            stmt = f"SELECT DISTINCT src.legal_entity FROM {self._source()} WHERE src.legal_entity IS NOT NULL"
        else:
            stmt = "SELECT code FROM legal_entities"
        rows = self._read(sa.text(stmt), {}, "listing legal entities")
        return sorted(str(v) for v in rows.iloc[:, 0].dropna())

    def sample_email(self) -> str:
        """One employee email, for "test settings" on a real mailbox."""
        stmt = sa.text(
            f"SELECT src.employee_email FROM {self._source()} WHERE src.employee_email IS NOT NULL LIMIT 1"
        )
        rows = self._read(stmt, {}, "reading a sample mailbox")
        if rows.empty:
            raise HRExtractError(
                "the HR database has no employee with an email", describe(self.resolved_url())
            )
        return str(rows.iloc[0, 0])

    def employee_emails(self, codes: Sequence[str]) -> pd.DataFrame:
        """Every employee email HR knows in these legal entities (employee_email, legal_entity),
        lower-cased like calendars; drift reads them back when its registry cannot be trusted."""
        if not codes:
            return pd.DataFrame(columns=["employee_email", "legal_entity"])
        stmt = sa.text(
            f"SELECT DISTINCT src.employee_email, src.legal_entity FROM {self._source()} "
            "WHERE src.legal_entity IN :codes AND src.employee_email IS NOT NULL"
        ).bindparams(sa.bindparam("codes", expanding=True))
        rows = self._read(stmt, {"codes": list(codes)}, "listing employees")
        rows.columns = ["employee_email", "legal_entity"]
        rows["employee_email"] = rows["employee_email"].astype(str).str.strip().str.lower()
        return rows.drop_duplicates().reset_index(drop=True)

    def partition_keys(self) -> list[str]:
        """Partition keys: one per legal entity, plus the one for unassigned leaves."""
        return sorted({entity_partition_key(c) for c in self.legal_entities()} | {UNASSIGNED})

    def codes_for_key(self, key: str) -> list[str]:
        return [c for c in self.legal_entities() if entity_partition_key(c) == key]

    def extract(self, entity_key: str, date_from: dt.date, date_to: dt.date) -> pd.DataFrame:
        """All leaves starting in [date_from, date_to] of one legal entity partition."""
        codes = self.legal_entities()
        # A leave with no start date belongs to no date partition: every run of its legal
        # entity extracts it, so validation quarantines it with its rule instead of losing it.
        where = (
            "((src.start_date >= :date_from AND src.start_date <= :date_to) "
            "OR src.start_date IS NULL)"
        )
        params: dict[str, object] = {"date_from": date_from, "date_to": date_to}
        if entity_key == UNASSIGNED:
            stmt = sa.text(
                f"SELECT * FROM {self._source()} WHERE {where} AND (src.legal_entity IS NULL"
                + (" OR src.legal_entity NOT IN :codes)" if codes else ")")
            )
            if codes:
                stmt = stmt.bindparams(sa.bindparam("codes", expanding=True))
                params["codes"] = codes
        else:
            wanted = [c for c in codes if entity_partition_key(c) == entity_key] or [entity_key]
            stmt = sa.text(
                f"SELECT * FROM {self._source()} WHERE {where} AND src.legal_entity IN :codes"
            ).bindparams(sa.bindparam("codes", expanding=True))
            params["codes"] = wanted
        what = f"extract of {entity_key} {date_from}..{date_to}"
        raw = self._read_arrow(stmt, params, what) if self._arrow() else None
        if raw is None:
            raw = self._read(stmt, params, what)
        return normalise_extract(raw)

    # --- the extract through Arrow (PostgreSQL, ADBC): columnar, no Python row objects ------
    def _arrow(self) -> bool:
        if self.engine().dialect.name != "postgresql":
            return False
        try:
            import adbc_driver_postgresql.dbapi  # noqa: F401
        except ImportError:
            return False
        return True

    def _read_arrow(
        self, stmt: sa.TextClause, params: dict[str, object], what: str
    ) -> pd.DataFrame | None:
        """The rows through ADBC, the values bound as $1, $2, ...; None where the SQLAlchemy
        path must do (a column of a type this path does not convert as psycopg would)."""
        import adbc_driver_postgresql.dbapi as adbc

        engine = self.engine()
        try:
            compiled = stmt.bindparams(**params).compile(
                dialect=_numbered_dialect(), compile_kwargs={"render_postcompile": True}
            )
        except sa.exc.CompileError:
            return None
        values = [compiled.params[name] for name in compiled.positiontup or ()]
        uri = engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
        for attempt in range(2):
            kept = attempt == 0 and _ADBC.kept(uri)
            try:
                with _ADBC.connection(uri, fresh=attempt > 0).cursor() as cursor:
                    cursor.execute(compiled.string, values or None)
                    table = cursor.fetch_arrow_table()
                break
            except adbc.NotSupportedError:
                return None
            except adbc.Error as err:
                if kept:  # the server may have closed a kept connection: once more, anew
                    continue
                detail = (
                    str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
                )
                raise HRExtractError(
                    f"HR database ({engine.url.render_as_string(hide_password=True)}): "
                    f"{what} failed: {detail}"
                ) from err
        return _arrow_frame(table)

    def leaves_by_id(self, leave_ids: Sequence[str]) -> pd.DataFrame:
        """Current rows of these leaves, wherever they are now (a leave that moved partition)."""
        frames = []
        ids = list(leave_ids)
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            # Bind with the ids' own type: a cast would differ between SQL dialects.
            values: list[object] = (
                [int(i) for i in chunk] if all(i.isdigit() for i in chunk) else list(chunk)
            )
            stmt = sa.text(f"SELECT * FROM {self._source()} WHERE src.leave_id IN :ids").bindparams(
                sa.bindparam("ids", expanding=True)
            )
            frames.append(self._read(stmt, {"ids": values}, "look-up of moved leaves"))
        if not frames:
            return normalise_extract(pd.DataFrame(columns=list(CANONICAL_COLUMNS)))
        return normalise_extract(pd.concat(frames, ignore_index=True))

    def _read(self, stmt: sa.TextClause, params: dict[str, object], what: str) -> pd.DataFrame:
        engine = self.engine()
        try:
            with guarded("HR", self.resolved_url(), what), engine.connect() as conn:
                result = conn.execute(stmt, params)
                # Plain tuples: pandas probes SQLAlchemy rows for attributes, slowly.
                return pd.DataFrame(list(map(tuple, result)), columns=list(result.keys()))
        except DatabaseError as err:
            if not self.query and _missing_table(err.reason):
                reason = f"{err.reason} (the default query reads the tables {_REFERENCE_TABLES}; map another schema with hr.query)"
                raise HRExtractError(reason, err.where) from None
            raise HRExtractError(err.reason, err.where) from None

    # --- changes since a cursor (the hr_changes sensor) ------------------------------------
    # Each source is read through its updated_at index alone, so a poll costs what changed,
    # not what HR holds. A custom hr.query is one source: its updated_at must cover the
    # leave's employee and legal entity too (README, "Near real time").
    def change_sources(self) -> list[str]:
        """What the sensor polls: the tables of the reference schema that have updated_at,
        or the custom query."""
        if self.query:
            return [CUSTOM_SOURCE]
        if self._change_sources is None:
            with guarded("HR", self.resolved_url(), "reading the schema"):
                inspector = sa.inspect(self.engine())
                found = [
                    table
                    for table in CHANGE_TABLES
                    if inspector.has_table(table)
                    and "updated_at" in {c["name"] for c in inspector.get_columns(table)}
                ]
            if "leaves" not in found:
                raise HRExtractError(
                    "leaves.updated_at is missing: the hr_changes sensor needs it (set "
                    "realtime.enabled: false to rely on the nightly run alone)",
                    describe(self.resolved_url()),
                )
            self._change_sources = found
        return list(self._change_sources)

    def change_warnings(self) -> list[str]:
        """What makes polling costly or partial: a table without updated_at or its index."""
        if self.query:
            return []
        sources = self.change_sources()
        out = []
        with guarded("HR", self.resolved_url(), "reading the schema"):
            inspector = sa.inspect(self.engine())
            for table in CHANGE_TABLES:
                if table not in sources:
                    out.append(
                        f"{table}.updated_at is missing: its changes wait for the nightly run"
                    )
                    continue
                indexes = inspector.get_indexes(table)
                if not any((ix.get("column_names") or [None])[0] == "updated_at" for ix in indexes):
                    out.append(
                        f"{table}.updated_at has no index: every poll scans {table} "
                        f"(CREATE INDEX ix_{table}_updated_at ON {table} (updated_at))"
                    )
        return out

    def latest_change(self, source: str) -> dt.datetime | None:
        """The newest updated_at of a source (its index's last entry); None when empty."""
        column = "src.updated_at" if source == CUSTOM_SOURCE else "updated_at"
        table = self._source() if source == CUSTOM_SOURCE else _change_table(source)
        rows = self._read(
            sa.text(f"SELECT MAX({column}) FROM {table}"), {}, f"reading the newest {source} change"
        )
        return changed_at_value(rows.iloc[0, 0]) if len(rows) else None

    def change_counts(self, source: str, since: dt.datetime) -> dict[dt.datetime, int]:
        """How many rows of ``source`` carry each updated_at from ``since`` on: read from the
        updated_at index alone, so a bulk of rows stamped alike costs one index range scan
        and is only fetched when its count says something in it changed."""
        column = _CHANGE_COLUMNS.get(source, "src.updated_at")
        table = (
            self._source()
            if source == CUSTOM_SOURCE
            else f"{_change_table(source)} {column.split('.')[0]}"
        )
        stmt = sa.text(
            f"SELECT {column} AS changed_at, COUNT(*) AS n FROM {table} "
            f"WHERE {column} >= :since GROUP BY {column}"
        ).bindparams(sa.bindparam("since", type_=sa.DateTime(timezone=since.tzinfo is not None)))
        raw = self._read(stmt, {"since": since}, f"counting {source} changes")
        out: dict[dt.datetime, int] = {}
        for at, n in zip(raw["changed_at"], raw["n"], strict=True):
            when = changed_at_value(at)
            if when is not None:
                out[when] = out.get(when, 0) + int(n)
        return out

    def changes_since(
        self,
        source: str,
        since: dt.datetime,
        window_start: dt.date,
        until: dt.datetime | None = None,
    ) -> pd.DataFrame:
        """Rows of ``source`` with ``since`` <= updated_at (< ``until``), HR's own clock, as the
        leaves they touch: source_id, leave_id, legal_entity, start_date (ISO), changed_at."""
        sql = self._change_sql(source)
        stamp = sa.DateTime(timezone=since.tzinfo is not None)
        binds = [sa.bindparam("since", type_=stamp)]
        params: dict[str, object] = {"since": since}
        if until is not None:
            sql += f" AND {_CHANGE_COLUMNS.get(source, 'src.updated_at')} < :until"
            binds.append(sa.bindparam("until", type_=stamp))
            params["until"] = until
        if ":window_start" in sql:
            binds.append(sa.bindparam("window_start", type_=sa.Date()))
            params["window_start"] = window_start
        raw = self._read(sa.text(sql).bindparams(*binds), params, f"reading {source} changes")
        out = pd.DataFrame(
            {
                "source_id": _text(raw["source_id"]),
                "leave_id": _text(raw["leave_id"]),
                "legal_entity": _text(raw["legal_entity"]),
                "start_date": _date_text(raw["start_date"]),
                "changed_at": raw["changed_at"].map(changed_at_value).astype(object),
            }
        )
        return out[out["changed_at"].notna()].reset_index(drop=True)

    def _change_sql(self, source: str) -> str:
        if source == CUSTOM_SOURCE:
            return (
                "SELECT src.leave_id AS source_id, src.leave_id AS leave_id, "
                "src.legal_entity AS legal_entity, src.start_date AS start_date, "
                f"src.updated_at AS changed_at FROM {self._source()} "
                "WHERE src.updated_at >= :since"
            )
        if source == "leaves":
            return (
                "SELECT l.id AS source_id, l.id AS leave_id, e.legal_entity AS legal_entity, "
                "l.start_date AS start_date, l.updated_at AS changed_at "
                "FROM leaves l LEFT JOIN employees e ON e.id = l.employee_id "
                "WHERE l.updated_at >= :since"
            )
        if source == "employees":
            # Each of the employee's leaves in the window: a new entity, email, opt-out or
            # departure changes (or moves) their events.
            return (
                "SELECT e.id AS source_id, l.id AS leave_id, e.legal_entity AS legal_entity, "
                "l.start_date AS start_date, e.updated_at AS changed_at "
                "FROM employees e LEFT JOIN leaves l ON l.employee_id = e.id "
                "AND l.start_date >= :window_start WHERE e.updated_at >= :since"
            )
        if source == "legal_entities":
            # Time zone or workday hours: every event of the entity may change.
            return (
                "SELECT le.code AS source_id, NULL AS leave_id, le.code AS legal_entity, "
                "NULL AS start_date, le.updated_at AS changed_at FROM legal_entities le "
                "WHERE le.updated_at >= :since"
            )
        raise ValueError(f"unknown change source {source!r}")


def _missing_table(reason: str) -> bool:
    low = reason.lower()
    return (
        "no such table" in low
        or ("relation" in low and "does not exist" in low)
        or ("table" in low and "doesn't exist" in low)
    )


# --- the hr_changes sensor's sources --------------------------------------------------------
CHANGE_TABLES: tuple[str, ...] = ("leaves", "employees", "legal_entities")
CUSTOM_SOURCE = "query"  # a custom hr.query is polled as one source
# The updated_at column of each source in _change_sql (with its alias there).
_CHANGE_COLUMNS = {
    "leaves": "l.updated_at",
    "employees": "e.updated_at",
    "legal_entities": "le.updated_at",
}


def _change_table(source: str) -> str:
    if source not in CHANGE_TABLES:
        raise ValueError(f"unknown change source {source!r}")
    return source


def changed_at_value(value: object) -> dt.datetime | None:
    """An updated_at as a datetime (SQLite returns text); None when absent or unreadable."""
    if value is None or (isinstance(value, float) and pd.isna(value)) or value is pd.NaT:
        return None
    if isinstance(value, pd.Timestamp):
        return value.to_pydatetime()
    if isinstance(value, dt.datetime):
        return value
    if isinstance(value, dt.date):
        return dt.datetime.combine(value, dt.time())
    try:
        return dt.datetime.fromisoformat(str(value).strip().replace("Z", "+00:00"))
    except ValueError:
        return None


class _AdbcConnections:
    """Each thread keeps its last ADBC connection: connecting reads the server's type
    catalogue (~0.1 s), and the resource is built anew for each run. One per thread, so a
    process reading many databases (tests) holds no pile of them; autocommit, so a kept
    connection holds no transaction open between extracts."""

    def __init__(self) -> None:
        self._local = threading.local()
        self._all: set = set()
        self._lock = threading.Lock()

    def kept(self, uri: str) -> bool:
        return getattr(self._local, "uri", None) == uri

    def connection(self, uri: str, fresh: bool = False):
        import adbc_driver_postgresql.dbapi as adbc

        if fresh or not self.kept(uri):
            old = getattr(self._local, "conn", None)
            self._local.conn = self._local.uri = None
            if old is not None:
                self._close(old)
            conn = adbc.connect(uri, autocommit=True)
            with self._lock:
                self._all.add(conn)
            self._local.conn, self._local.uri = conn, uri
        return self._local.conn

    def _close(self, conn) -> None:
        with self._lock:
            self._all.discard(conn)
        try:
            conn.close()
        except Exception:  # noqa: BLE001 - a connection the server already dropped
            pass

    def close_all(self) -> None:
        for conn in list(self._all):
            self._close(conn)


_ADBC = _AdbcConnections()
atexit.register(_ADBC.close_all)


def _numbered_dialect():
    """PostgreSQL with $1, $2, ... placeholders, as the server (and ADBC) number them."""
    from sqlalchemy.dialects.postgresql.psycopg import PGDialect_psycopg

    return PGDialect_psycopg(paramstyle="numeric_dollar")


# PostgreSQL types whose Arrow values convert here to what psycopg's give normalise_extract.
_ARROW_TYPES = frozenset(
    {"int2", "int4", "int8", "text", "varchar", "bpchar", "bool", "date", "time", "timestamp"}
)
# Canonical columns normalise_extract parses (dates, times, flags); it reads the others as
# text, and integers become their decimal text in Arrow.
_TYPED_COLUMNS = frozenset(
    {"sensitive", "start_date", "end_date", "start_time", "end_time", "updated_at", "sync_enabled"}
)
TEXT_COLUMNS: tuple[str, ...] = tuple(c for c in CANONICAL_COLUMNS if c not in _TYPED_COLUMNS)
_TEXT_COLUMNS = frozenset({*TEXT_COLUMNS, "team"})


def _arrow_frame(table) -> pd.DataFrame | None:
    """An Arrow table as normalise_extract's input: dates, times, timestamps and the integers
    of text columns converted column-wise to the text their Python objects become there
    ('YYYY-MM-DD', 'HH:MM:SS.ffffff', str(datetime), digits) and kept in Arrow, so the
    string methods run column-wise; the database's own text as Python strings, as the
    SQLAlchemy path has it. None when a column has a type this does not convert."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    converted: dict[str, pa.ChunkedArray] = {}
    for field, column in zip(table.schema, table.columns, strict=True):
        typname = (field.metadata or {}).get(b"POSTGRESQL:type", b"").decode()
        if typname not in _ARROW_TYPES and not pa.types.is_null(field.type):
            return None
        kind = field.type
        if pa.types.is_date32(kind) or pa.types.is_time64(kind):
            converted[field.name] = column.cast(pa.string())
        elif pa.types.is_timestamp(kind):
            if kind.tz is not None:
                return None
            text = column.cast(pa.string())  # 'YYYY-MM-DD HH:MM:SS.ffffff'
            whole = pc.equal(pc.subsecond(column), 0)  # str(datetime) drops a zero fraction
            converted[field.name] = pc.if_else(whole, pc.utf8_slice_codeunits(text, 0, 19), text)
        elif pa.types.is_integer(kind) and field.name in _TEXT_COLUMNS:
            converted[field.name] = column.cast(pa.string())
    integers = {pa.int8(), pa.int16(), pa.int32(), pa.int64()}
    frame = table.drop_columns(list(converted)).to_pandas(
        types_mapper=lambda t: pd.Int64Dtype() if t in integers else None
    )
    arrow_text = pd.StringDtype("pyarrow", na_value=np.nan)
    for name, column in converted.items():
        frame[name] = column.to_pandas(types_mapper=lambda _: arrow_text)
    return frame[table.column_names]


_TIME_TEXT = r"^\d{2}:\d{2}:\d{2}"
_DATE_TEXT = r"^\d{4}-\d{2}-\d{2}"


def _kind(values: pd.Series) -> str:
    return pd.api.types.infer_dtype(values, skipna=True)


def _time_text(values: pd.Series) -> pd.Series:
    """TIME values as 'HH:MM:SS' text, whatever the driver returned (time, timedelta, str)."""
    present = values.notna()
    if not present.any():
        return pd.Series(None, index=values.index, dtype=object)
    kind = _kind(values)
    if kind == "time":
        out = values.map(methodcaller("strftime", "%H:%M:%S"), na_action="ignore")
    elif kind == "string" and values[present].str.match(_TIME_TEXT).all():
        out = values.str.slice(0, 8)  # SQLite: 'HH:MM:SS.ffffff'
    else:
        out = values.map(_one_time, na_action="ignore")
    return out.astype("object").where(present, None)


def _one_time(v: object) -> object:
    if isinstance(v, dt.time):
        return v.strftime("%H:%M:%S")
    if isinstance(v, dt.timedelta):  # MySQL/MariaDB TIME
        secs = int(v.total_seconds())
        return f"{secs // 3600:02d}:{secs % 3600 // 60:02d}:{secs % 60:02d}"
    text = str(v).strip()
    m = re.fullmatch(r"(\d{1,2}):(\d{2})(?::(\d{2}))?(?:\.\d+)?", text)
    return f"{int(m[1]):02d}:{m[2]}:{m[3] or '00'}" if m else text


def _date_text(values: pd.Series) -> pd.Series:
    """DATE values as 'YYYY-MM-DD' text (the raw text is kept when it is not a date)."""
    present = values.notna()
    if not present.any():
        return pd.Series(None, index=values.index, dtype=object)
    kind = _kind(values)
    if kind == "date":
        out = values.map(dt.date.isoformat, na_action="ignore")
    elif kind == "string" and values[present].str.match(_DATE_TEXT).all():
        out = values.str.slice(0, 10)  # SQLite stores dates as text
    else:
        out = values.map(_one_date, na_action="ignore")
    return out.astype("object").where(present, None)


def _one_date(v: object) -> object:
    if isinstance(v, dt.datetime):
        return v.date().isoformat()
    if isinstance(v, dt.date):
        return v.isoformat()
    text = str(v).strip()
    return text[:10] if re.match(_DATE_TEXT, text) else text


def _flag(values: pd.Series, default: bool) -> pd.Series:
    if pd.api.types.is_bool_dtype(values) or pd.api.types.is_integer_dtype(values):
        return values.astype(bool)
    if _kind(values) in ("boolean", "integer", "empty"):
        return values.fillna(default).astype(bool)
    return values.map(lambda v: _one_flag(v, default)).astype(bool)


def _one_flag(v: object, default: bool) -> bool:
    if v is None or (isinstance(v, float) and pd.isna(v)):
        return default
    if isinstance(v, str):
        return v.strip().lower() in ("1", "true", "t", "yes", "y")
    return bool(v)


def _text(values: pd.Series) -> pd.Series:
    present = values.notna()
    if _kind(values) == "string":
        return values.astype("object").where(present, None)
    return values.map(str, na_action="ignore").astype("object").where(present, None)


def normalise_extract(raw: pd.DataFrame) -> pd.DataFrame:
    """Canonical frame: text ids, ISO dates and times, boolean flags; bad values kept as text."""
    missing = [c for c in CANONICAL_COLUMNS if c not in raw.columns]
    if missing:
        raise HRExtractError(
            "the HR query does not return the canonical columns: missing " + ", ".join(missing)
        )
    out = pd.DataFrame(index=range(len(raw)))
    raw = raw.reset_index(drop=True)
    for col in TEXT_COLUMNS:
        out[col] = _text(raw[col])
    out["employee_email"] = _stripped(out["employee_email"])
    out["status"] = _stripped(out["status"]).str.lower().astype("object")
    for col in ("start_half", "end_half"):
        half = _stripped(out[col]).str.upper()
        out[col] = half.where(half.notna() & half.ne(""), None).astype("object")
    out["start_date"] = _date_text(raw["start_date"])
    out["end_date"] = _date_text(raw["end_date"])
    for col in ("start_time", "end_time"):
        out[col] = _time_text(raw[col])
    out["updated_at"] = _text(raw["updated_at"])
    out["sensitive"] = _flag(raw["sensitive"], False)
    out["sync_enabled"] = _flag(raw["sync_enabled"], True)
    out["active"] = _flag(raw["active"], True) if "active" in raw else True
    out["team"] = _stripped(_text(raw["team"])) if "team" in raw else None
    for col in ("workday_start", "midday", "workday_end"):
        out[col] = _time_text(raw[col]) if col in raw else None
    if "employee_known" in raw:
        out["employee_known"] = _flag(raw["employee_known"], False)
    else:
        out["employee_known"] = (
            raw["employee_email"].notna()
            | raw["employee_name"].notna()
            | raw["legal_entity"].notna()
        )
    out["leave_type_known"] = (
        _flag(raw["leave_type_known"], False)
        if "leave_type_known" in raw
        else raw["leave_type"].notna()
    )
    out["legal_entity_known"] = (
        _flag(raw["legal_entity_known"], False)
        if "legal_entity_known" in raw
        else raw["timezone"].notna()
    )
    return out


def _stripped(values: pd.Series) -> pd.Series:
    return values.astype("str").str.strip().where(values.notna(), None).astype("object")
