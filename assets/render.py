"""From leaves to the events they should be: whole-frame rendering, no Dagster import."""

from __future__ import annotations

import re
from collections.abc import Iterator

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from resources.config import EventRules, TargetConfig
from resources.providers.base import (
    EVENT_KEY_PREFIX,
    FINGERPRINT_FIELDS,
    TEAM_EVENT_KEY_PREFIX,
    EventPayload,
    fingerprint_texts,
)

EVENT_COLUMNS: tuple[str, ...] = (
    "target",
    "event_key",
    "leave_id",
    "calendar",
    "legal_entity",
    "partition_date",
    *FINGERPRINT_FIELDS,
    "fingerprint",
)
SYNCED_STATUSES = ("pending", "approved")


def _hhmmss(value: object) -> str:
    return value.strftime("%H:%M:%S")  # type: ignore[attr-defined]


def should_have_event(leaves: pd.DataFrame, rules: EventRules, pending: bool = True) -> pd.Series:
    """Pending (if ``pending``) and approved leaves of active, sync-enabled employees (and
    synced types)."""
    unsynced_types = [code for code, rule in rules.leave_types.items() if not rule.sync]
    return (
        leaves["status"].isin(SYNCED_STATUSES if pending else ("approved",))
        & leaves["sync_enabled"].astype(bool)
        & leaves["active"].astype(bool)
        & ~leaves["leave_type"].isin(unsynced_types)
    )


def served_by(leaves: pd.DataFrame, target: TargetConfig) -> pd.Series:
    """Which leaves' employees this target serves (by legal entity and/or email domain)."""
    mask = pd.Series(True, index=leaves.index)
    if target.serves.legal_entities:
        mask &= leaves["legal_entity"].isin(target.serves.legal_entities)
    if target.serves.email_domains:
        domains = {d.lower().lstrip("@") for d in target.serves.email_domains}
        domain = leaves["employee_email"].str.rsplit("@", n=1).str[-1].str.lower()
        mask &= domain.isin(domains)
    return mask


def team_calendars(leaves: pd.DataFrame, target: TargetConfig) -> pd.Series:
    """The shared calendar of each leave's group in a team target (None: the group has none).

    ics: the feed ``teams/<name>``, named by the configuration or after the group itself.
    """
    team = target.team
    assert team is not None, "a team target"
    if leaves.empty:
        return pd.Series(None, index=leaves.index, dtype=object)
    group = leaves[team.group_by] if team.group_by in leaves else pd.Series(None, leaves.index)
    group = group.astype(object).where(group.notna() & group.astype(str).str.strip().ne(""))
    calendar = group.map(team.calendars, na_action="ignore")
    if team.calendar:
        calendar = calendar.where(calendar.notna(), team.calendar)
    if target.type == "ics":
        feeds = {g: _feed_name(g) for g in pd.unique(group.dropna())}  # per group, not per row
        named = calendar.where(calendar.notna(), group.map(feeds, na_action="ignore"))
        return ("teams/" + named).where(named.notna(), None)
    return calendar.astype(object).where(calendar.notna(), None)


def configured_calendars(target: TargetConfig) -> list[str]:
    """The shared calendars a team target's configuration names (as the diff writes them)."""
    team = target.team
    if team is None:
        return []
    names = sorted(set(team.calendars.values()) | ({team.calendar} if team.calendar else set()))
    return ["teams/" + n for n in names] if target.type == "ics" else names


def _feed_name(group: object) -> str:
    """A group's feed name when the configuration names none: the group, file-name safe."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", str(group).strip())


def team_feed_of(group: object) -> str:
    """The calendar of a group's ics team feed when the configuration names none."""
    return "teams/" + _feed_name(group)


def render_events(leaves: pd.DataFrame, target: TargetConfig, rules: EventRules) -> pd.DataFrame:
    """The events ``target`` should hold for these (already validated) leaves."""
    df = leaves[should_have_event(leaves, rules, target.pending_shown) & served_by(leaves, target)]
    team = target.team
    if team is not None:
        calendar = team_calendars(df, target)
        df = df[calendar.notna()]  # a group with no shared calendar has no team events
        calendar = calendar[calendar.notna()]
    else:
        calendar = df["employee_email"].str.lower()
    out = pd.DataFrame(index=df.index)
    out["target"] = target.name
    prefix = TEAM_EVENT_KEY_PREFIX if team is not None else EVENT_KEY_PREFIX
    out["event_key"] = prefix + df["leave_id"].astype(str)
    out["leave_id"] = df["leave_id"].astype(str)
    out["calendar"] = calendar
    out["legal_entity"] = df["legal_entity"].astype(str)
    out["partition_date"] = df["start_date"].astype(str)
    if df.empty:
        return pd.DataFrame(columns=list(EVENT_COLUMNS))

    # Title: "Absent" unless configured otherwise; a sensitive type is never named.
    title = pd.Series(rules.absent_title, index=df.index, dtype=object)
    if rules.title_mode == "leave_type":
        title = df["leave_type_name"].where(df["leave_type_name"].notna(), rules.absent_title)
    overrides = {c: r.title for c, r in rules.leave_types.items() if r.title}
    if overrides:
        over = df["leave_type"].map(overrides)
        title = over.where(over.notna(), title)
    out["title"] = title.where(~df["sensitive"].astype(bool), rules.absent_title).astype(str)
    if team is not None:
        out["title"] = _team_titles(df, out["title"], team.title)

    start_date = df["start_date"].astype(str)
    end_date = df["end_date"].astype(str)
    work_start = df["workday_start"].fillna(_hhmmss(rules.workday_start)).astype(str)
    midday = df["midday"].fillna(_hhmmss(rules.midday)).astype(str)
    work_end = df["workday_end"].fillna(_hhmmss(rules.workday_end)).astype(str)
    hourly = df["start_time"].notna() & df["end_time"].notna()
    starts_pm = df["start_half"].eq("PM").fillna(False).astype(bool)
    ends_am = df["end_half"].eq("AM").fillna(False).astype(bool)
    timed = hourly | starts_pm | ends_am | target.hours_instead_of_all_day

    day_after_end = (
        pd.to_datetime(end_date, format="%Y-%m-%d") + pd.Timedelta(days=1)
    ).dt.strftime("%Y-%m-%d")
    timed_start = start_date + "T" + work_start.where(~starts_pm, midday)
    timed_end = end_date + "T" + work_end.where(~ends_am, midday)
    out["all_day"] = ~timed
    out["start"] = np.where(
        hourly,
        start_date + "T" + df["start_time"].fillna(""),
        np.where(timed, timed_start, start_date),
    )
    out["end"] = np.where(
        hourly,
        start_date + "T" + df["end_time"].fillna(""),
        np.where(timed, timed_end, day_after_end),
    )
    out["timezone"] = df["timezone"].astype(str)

    approved = df["status"].eq("approved")
    out["status"] = np.where(approved, "confirmed", "tentative")
    show_as = pd.Series(rules.approved_show_as, index=df.index, dtype=object)
    show_over = {c: r.show_as for c, r in rules.leave_types.items() if r.show_as}
    if show_over:
        over = df["leave_type"].map(show_over)
        show_as = over.where(over.notna(), show_as)
    out["show_as"] = show_as.where(approved, rules.pending_show_as).astype(str)
    out["private"] = True
    if team is not None:
        # A shared calendar blocks nobody's availability; a private event there is hidden
        # from the very people who read it, so visibility is the configuration's choice.
        out["show_as"] = "free"
        out["private"] = team.visibility == "private"
    out["description"] = rules.description
    out["categories"] = rules.categories
    out["fingerprint"] = fingerprints(out)
    return out.reset_index(drop=True)[list(EVENT_COLUMNS)]


def _team_titles(df: pd.DataFrame, titles: pd.Series, template: str) -> pd.Series:
    """ "Claire Martin – Absent": the template filled with the person and the event's title."""
    name = df["employee_name"].astype(object)
    email = df["employee_email"].astype(object)
    name = name.where(name.notna() & name.astype(str).str.strip().ne(""), email)
    name = name.astype(str).str.strip()
    if template == "{name} – {title}":  # the default, column-wise
        return name + " – " + titles
    return pd.Series(
        [template.format(name=n, title=t) for n, t in zip(name, titles, strict=True)],
        index=df.index,
        dtype=object,
    )


def canonical_texts(events: pd.DataFrame) -> pd.Series:
    """The canonical text of each event, column-wise (same as EventPayload.canonical_text)."""
    parts = []
    for name in FINGERPRINT_FIELDS:
        col = events[name]
        if col.dtype == bool:
            part = col.map({True: "1", False: "0"}).astype(str)
        else:
            part = col.fillna("").astype(str)
        parts.append(pa.array(part.to_numpy(dtype=object), type=pa.string()))
    # Joined in Arrow: pandas concatenates its Python-backed strings one pair at a time.
    text = pc.binary_join_element_wise(*parts, "\x1f")
    return pd.Series(text.to_numpy(zero_copy_only=False), index=events.index, dtype=object)


def fingerprints(events: pd.DataFrame) -> np.ndarray:
    return fingerprint_texts(canonical_texts(events).to_numpy(dtype=object))


def payloads(events: pd.DataFrame) -> Iterator[EventPayload]:
    """Event rows as provider-neutral payloads (only for the rows that change)."""
    cols = ["event_key", "leave_id", *FINGERPRINT_FIELDS]
    for row in events[cols].itertuples(index=False):
        values = {c: getattr(row, c) for c in cols}
        # Plain Python values: payloads are stored as JSON and compared after read-back.
        values["all_day"], values["private"] = bool(values["all_day"]), bool(values["private"])
        yield EventPayload(
            **{k: v if not isinstance(v, str) else str(v) for k, v in values.items()}
        )
