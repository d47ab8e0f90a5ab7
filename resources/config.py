"""The one configuration file (YAML), its defaults, and its validation on load."""

from __future__ import annotations

import datetime as dt
import os
import re
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

CONFIG_ENV = "LEAVESYNC_CONFIG"
_FEED_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
HOME_ENV = "LEAVESYNC_HOME"


class ConfigError(ValueError):
    """The configuration file is wrong; the message names the key and what is wrong."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _DatabaseConfig(_Model):
    """A database URL in the file (no password), or the name of a variable that holds it."""

    url: str | None = Field(default=None, description="SQLAlchemy URL without a password")
    url_env: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
        description="environment variable holding the URL (when it has a password)",
    )

    @field_validator("url")
    @classmethod
    def _no_password(cls, value: str | None) -> str | None:
        # A password in the file would reach Dagster's run config and job snapshots (and
        # every copy of the file): refused, so it can only come from the environment.
        if value and _has_password(value):
            raise ValueError(
                "contains a password; secrets never go in the configuration file: put the "
                "whole URL in an environment variable and name it in url_env instead"
            )
        return value

    @model_validator(mode="after")
    def _one_url(self) -> _DatabaseConfig:
        if self.url and self.url_env:
            raise ValueError("give either url or url_env, not both")
        return self


class HRConfig(_DatabaseConfig):
    """Where the leaves come from."""

    query: str | None = Field(
        default=None, description="custom SELECT returning the canonical columns"
    )


class StateConfig(_DatabaseConfig):
    """The state store: snapshot, quarantine, intent journal, calendar registry, drift history."""


class WindowConfig(_Model):
    """The nightly reconciliation window and its schedule."""

    lookback_days: int = Field(default=30, ge=0, le=3650)
    horizon_days: int = Field(default=365, ge=0, le=3650)
    cron: str = "0 2 * * *"
    drift_cron: str = "0 5 * * *"
    timezone: str = "UTC"
    partitions_start: dt.date | None = Field(
        default=None,
        description="first month partition (default: the month the lookback window starts in)",
    )
    schedules_running: bool = Field(
        default=True,
        description="schedules and sensors start running when the daemon first sees them "
        "(a stop or start in the UI is kept over this)",
    )

    @field_validator("timezone")
    @classmethod
    def _tz(cls, value: str) -> str:
        return _check_tz(value)


class LeaveTypeRule(_Model):
    """Per-leave-type override of the event rules."""

    title: str | None = None
    sync: bool = True
    show_as: Literal["oof", "busy", "tentative", "free"] | None = None


class EventRules(_Model):
    """How a leave becomes an event (DESIGN.md defaults)."""

    title_mode: Literal["absent", "leave_type"] = "absent"
    absent_title: str = "Absent"
    approved_show_as: Literal["oof", "busy", "free"] = "oof"
    pending_show_as: Literal["tentative", "busy", "oof", "free"] = "tentative"
    description: str = ""
    categories: str = ""
    leave_types: dict[str, LeaveTypeRule] = Field(default_factory=dict)
    workday_start: dt.time = dt.time(9, 0)
    midday: dt.time = dt.time(13, 0)
    workday_end: dt.time = dt.time(17, 30)

    @field_validator("categories")
    @classmethod
    def _categories(cls, value: str) -> str:
        # Calendars store categories as a list and give them back without the spaces around
        # commas: written as "HR, Leave", read back as "HR,Leave", drift would flag every event.
        return ",".join(c.strip() for c in value.split(",") if c.strip())


class Serves(_Model):
    """Which employees a target serves; empty lists mean everyone."""

    legal_entities: list[str] = Field(default_factory=list)
    email_domains: list[str] = Field(default_factory=list)


TEAM_GROUPS = ("legal_entity", "team")
TITLE_FIELDS = frozenset({"name", "title"})


class TeamCalendars(_Model):
    """A team target's shared calendars: one per group (legal entity or HR ``team``), or one."""

    group_by: Literal["legal_entity", "team"] = "legal_entity"
    # group -> the provider's calendar: an ics feed name, a Google calendar id, a shared
    # mailbox (Graph, EWS), a CalDAV collection URL.
    calendars: dict[str, str] = Field(default_factory=dict)
    # The calendar of every group not named in ``calendars`` (one calendar for everyone).
    calendar: str | None = None
    title: str = Field(default="{name} – {title}", min_length=1, max_length=200)
    # A private event in a shared calendar is invisible to its readers: public by default.
    visibility: Literal["public", "private"] = "public"

    @field_validator("title")
    @classmethod
    def _title_fields(cls, value: str) -> str:
        import string

        try:
            names = {f for _, f, _, _ in string.Formatter().parse(value) if f is not None}
        except ValueError as err:
            raise ValueError(f"{value!r} is not a title template: {err}") from None
        unknown = names - TITLE_FIELDS
        if unknown:
            raise ValueError(
                f"unknown field(s) {', '.join(sorted(unknown))} in the title template; use "
                "{name} (the employee) and {title} (the event's title, e.g. Absent)"
            )
        return value

    @field_validator("calendars")
    @classmethod
    def _named(cls, value: dict[str, str]) -> dict[str, str]:
        empty = sorted(g for g, c in value.items() if not str(c).strip())
        if empty:
            raise ValueError(f"no calendar named for group(s) {', '.join(empty)}")
        return value


class TargetConfig(_Model):
    """One calendar target (provider instance)."""

    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,40}$")
    type: str
    # personal: each employee's own calendar; team: one shared calendar per group.
    kind: Literal["personal", "team"] = "personal"
    team: TeamCalendars | None = None
    # Pending leaves have an event; default: yes in personal calendars, no in team ones.
    include_pending: bool | None = None
    serves: Serves = Serves()
    hours_instead_of_all_day: bool = False
    drift_policy: Literal["repair", "report"] = "repair"
    retry_rounds: int = Field(
        default=1,
        ge=0,
        le=5,
        description="times a change that failed with a transient error (the service kept "
        "answering 429/503 or dropping the connection past the provider's max_attempts) is "
        "sent again at the end of the apply",
    )
    retry_pause_seconds: float = Field(
        default=10.0, ge=0, le=600, description="pause before each such round"
    )
    settings: dict[str, Any] = Field(default_factory=dict)

    @field_validator("type")
    @classmethod
    def _known_type(cls, value: str) -> str:
        from resources.providers import PROVIDER_TYPES

        if value not in PROVIDER_TYPES:
            raise ValueError(
                f"unknown target type {value!r}; expected one of {sorted(PROVIDER_TYPES)}"
            )
        return value

    @model_validator(mode="after")
    def _team(self) -> TargetConfig:
        if self.kind == "personal" and self.team is not None:
            raise ValueError("team: only a target of kind team has team calendars")
        if self.kind == "team" and self.team is None:
            object.__setattr__(self, "team", TeamCalendars())
        team = self.team
        if team is not None and self.type != "ics" and not (team.calendars or team.calendar):
            raise ValueError(
                "team.calendars (group: calendar) or team.calendar (one for everyone) is "
                f"needed: a {self.type} team target has no calendar of its own"
            )
        if team is not None and self.type == "caldav":
            bad = [
                c
                for c in (*team.calendars.values(), team.calendar or "")
                if c and not c.startswith(("https://", "http://"))
            ]
            if bad:
                raise ValueError(f"caldav team calendars are collection URLs: {bad[0]!r}")
        if team is not None and self.type == "ics":
            bad = [
                c
                for c in (*team.calendars.values(), team.calendar or "")
                if c and not _FEED_NAME.fullmatch(c)
            ]
            if bad:
                raise ValueError(
                    f"ics team feed names are file names (letters, digits, . _ -): {bad[0]!r}"
                )
        return self

    @property
    def pending_shown(self) -> bool:
        if self.include_pending is not None:
            return self.include_pending
        return self.kind == "personal"


class SafetyConfig(_Model):
    """Blast-radius rules."""

    max_delete_share: float = Field(default=0.2, ge=0, le=1)
    min_deletes: int = Field(
        default=10, ge=0, description="the share rule applies from this many deletes on"
    )
    refuse_empty_extract: bool = True
    min_date: dt.date = dt.date(2000, 1, 1)
    max_date: dt.date = dt.date(2100, 12, 31)


class ReportsConfig(_Model):
    """Where reports go: GX Data Docs of every diff validation, the drift report and plot."""

    directory: str | None = Field(
        default=None, description="reports folder (default: <LEAVESYNC_HOME>/reports)"
    )
    data_docs_directory: str | None = Field(
        default=None, description="GX Data Docs site (default: <reports folder>/data_docs)"
    )
    base_url: str | None = Field(
        default=None,
        pattern=r"^https?://",
        description="http(s) URL where the reports folder is served; the UI links reports there",
    )
    data_docs_keep: int = Field(
        default=100, ge=1, le=100_000, description="validation runs kept in the Data Docs site"
    )


class RealtimeConfig(_Model):
    """The hr_changes sensor: HR changes reach the calendars in seconds (README "Near real time")."""

    enabled: bool | None = Field(
        default=None,
        description="poll HR for changes; default: on for the embedded demo HR database, off "
        "for a configured one (it needs a trustworthy, indexed updated_at)",
    )
    poll_seconds: int = Field(
        default=20, ge=5, le=3600, description="seconds between two polls of the HR database"
    )
    max_runs_per_tick: int = Field(
        default=20,
        ge=1,
        le=1000,
        description="legal entity runs one poll may launch; the others wait for the next poll",
    )
    overlap_seconds: int = Field(
        default=600,
        ge=0,
        le=86_400,
        description="how far behind the newest updated_at each poll reads again: covers HR "
        "transactions committed late and clock differences between HR's writers",
    )


class AppConfig(_Model):
    """The whole configuration file."""

    hr: HRConfig = HRConfig()
    state: StateConfig = StateConfig()
    window: WindowConfig = WindowConfig()
    events: EventRules = EventRules()
    # Embedded default (the demo): each employee's feed, and a team feed per legal entity.
    targets: list[TargetConfig] = Field(
        default_factory=lambda: [
            TargetConfig(name="feeds", type="ics"),
            TargetConfig(name="team", type="ics", kind="team"),
        ]
    )
    safety: SafetyConfig = SafetyConfig()
    reports: ReportsConfig = ReportsConfig()
    realtime: RealtimeConfig = RealtimeConfig()

    @field_validator("targets")
    @classmethod
    def _unique_targets(cls, value: list[TargetConfig]) -> list[TargetConfig]:
        names = [t.name for t in value]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"target names must be unique; repeated: {', '.join(dupes)}")
        if not value:
            raise ValueError("at least one target is needed")
        return value

    # Resolved locations (relative defaults live under LEAVESYNC_HOME, default ./.leavesync).
    def home(self) -> Path:
        return Path(os.environ.get(HOME_ENV, ".leavesync")).resolve()

    def hr_url(self) -> str:
        """The HR database URL; with url_env, read from the environment now."""
        return _database_url("HR", "hr", self.hr, self.home() / "hr.sqlite")

    def state_url(self) -> str:
        """The state store URL; with url_env, read from the environment now."""
        return _database_url("state", "state", self.state, self.home() / "state.sqlite")

    def hr_url_in_file(self) -> str | None:
        """What the file says (or the embedded default): None when the URL is in url_env."""
        return None if self.hr.url_env else self.hr_url()

    def state_url_in_file(self) -> str | None:
        return None if self.state.url_env else self.state_url()

    def realtime_enabled(self) -> bool:
        """realtime.enabled, or by default: on for the embedded (demo) HR database only."""
        if self.realtime.enabled is not None:
            return self.realtime.enabled
        return not (self.hr.url or self.hr.url_env or self.hr.query)

    def reports_dir(self) -> Path:
        return (
            Path(self.reports.directory).resolve()
            if self.reports.directory
            else self.home() / "reports"
        )

    def data_docs_dir(self) -> Path:
        if self.reports.data_docs_directory:
            return Path(self.reports.data_docs_directory).resolve()
        return self.reports_dir() / "data_docs"


def _has_password(url: str) -> bool:
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return bool(make_url(url).password)
    except ArgumentError:
        return False  # not a URL at all: the database resource says so, naming the database


def _database_url(which: str, section: str, db: _DatabaseConfig, default: Path) -> str:
    from resources.database import resolve_url

    if db.url_env:
        return resolve_url(which, None, db.url_env, section)
    return db.url or f"sqlite:///{default}"


def _check_tz(value: str) -> str:
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"{value!r} is not an IANA time zone (e.g. Europe/Paris)") from None
    return value


def _format_errors(err: ValidationError, source: str) -> str:
    lines = [f"{source}: invalid configuration"]
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
        lines.append(f"  {key}: {msg}")
    return "\n".join(lines)


def parse_config(data: dict[str, Any] | None, source: str = "configuration") -> AppConfig:
    """Validate a configuration mapping, target settings included."""
    try:
        cfg = AppConfig.model_validate(data or {})
    except ValidationError as err:
        raise ConfigError(_format_errors(err, source)) from None
    from resources.providers import provider_class

    for i, target in enumerate(cfg.targets):
        settings_model = provider_class(target.type).Settings
        try:
            settings_model.model_validate(target.settings)
        except ValidationError as err:
            lines = [f"{source}: invalid configuration"]
            for e in err.errors():
                key = ".".join(str(p) for p in e["loc"])
                msg = "unknown key" if e["type"] == "extra_forbidden" else e["msg"]
                lines.append(f"  targets.{i}.settings.{key} (target {target.name!r}): {msg}")
            raise ConfigError("\n".join(lines)) from None
    return cfg


def load_config(path: str | os.PathLike[str] | None = None) -> AppConfig:
    """Load the YAML file at ``path`` (or $LEAVESYNC_CONFIG); no file: the embedded defaults."""
    path = path or os.environ.get(CONFIG_ENV)
    if not path:
        return parse_config({}, "embedded defaults")
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"{file}: configuration file not found")
    try:
        data = yaml.safe_load(file.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise ConfigError(f"{file}: not valid YAML: {err}") from None
    if data is not None and not isinstance(data, dict):
        raise ConfigError(f"{file}: the top level must be a mapping of sections")
    return parse_config(data, str(file))
