"""Test settings: the key, a delegated token for a sample user, one read of their calendar."""

from __future__ import annotations

import datetime as dt

from googleapiclient.errors import HttpError

from resources.providers.base import CheckReport, FatalProviderError
from resources.providers.google.batching import SEND_ERRORS, Batcher, api_error
from resources.providers.google.settings import (
    SCOPE_CALENDAR,
    SCOPE_EVENTS,
    TAG_PROPERTY,
    TAG_VALUE,
)
from resources.providers.google.signin import UserFailed, certificate_failure


def check(batcher: Batcher, target: str, calendar: str) -> CheckReport:
    """Each step with what passed and what to fix; changes nothing."""
    settings, signin = batcher.settings, batcher.signin
    user, calendar_id = settings.subject_for(calendar), settings.calendar_id_for(calendar)
    report = CheckReport(target)
    try:
        base = signin.base()
    except FatalProviderError as exc:
        step = "CA bundle" if "ca_bundle" in str(exc) else "service account key"
        report.add(step, False, str(exc))
        return report
    report.add(
        "service account key",
        True,
        f"{base.service_account_email} (client ID {signin.client_id}) from "
        f"${settings.service_account_key_env}",
    )
    if not user:
        report.add("sample user", False, "give a sample user's email (settings.sample_user)")
        return report
    writes = {SCOPE_EVENTS, SCOPE_CALENDAR} & set(settings.scopes)
    report.add(
        "write scope configured",
        bool(writes),
        ", ".join(settings.scopes)
        if writes
        else f"add {SCOPE_EVENTS} to scopes (and to the domain-wide delegation)",
    )
    try:
        authed = signin.authorize(user)
    except FatalProviderError as exc:
        report.add(f"domain-wide delegation (token for {user})", False, str(exc))
        return report
    except UserFailed as exc:
        report.add(f"token for {user}", False, f"{exc}; check the sample user's address")
        return report
    report.add(f"domain-wide delegation (token for {user})", True, ", ".join(settings.scopes))
    today = dt.datetime.now(dt.UTC).replace(microsecond=0)
    step = f"read calendar of {user}" if not settings.write_as else f"read calendar {calendar_id}"
    try:
        batcher.user_limiter(user).acquire()
        batcher.project_limiter.acquire()
        listed = (
            batcher.events()
            .list(
                calendarId=calendar_id,
                timeMin=today.isoformat(),
                timeMax=(today + dt.timedelta(days=1)).isoformat(),
                privateExtendedProperty=f"{TAG_PROPERTY}={TAG_VALUE}",
                maxResults=1,
            )
            .execute(http=authed)
        )
    except HttpError as exc:
        error = api_error(exc)
        if error.reason in ("accessNotConfigured", "SERVICE_DISABLED"):
            detail = (
                "the Google Calendar API is disabled: enable it in Google Cloud console > "
                "APIs & Services > Library > Google Calendar API"
            )
        elif error.reason in ("insufficientPermissions", "ACCESS_TOKEN_SCOPE_INSUFFICIENT"):
            detail = f"the delegated scopes do not allow reading events: grant {SCOPE_EVENTS}"
        elif error.status == 404:
            detail = f"calendar {calendar_id!r} of {user} not found"
            if settings.write_as:
                detail += f": share it with {user} (Make changes to events)"
        else:
            detail = error.text
        report.add(step, False, detail)
        return report
    except SEND_ERRORS as exc:
        bad = certificate_failure(exc)
        detail = (
            f"the TLS certificate of the Calendar API is not trusted ({bad}); set ca_bundle"
            if bad is not None
            else f"cannot reach the Calendar API: {exc}"
        )
        report.add(step, False, detail)
        return report
    report.add(step, True, f"calendar {calendar_id!r}")
    # Events: list says the caller's access role on the calendar: writing needs writer/owner.
    role = str(listed.get("accessRole") or "")
    if role:
        report.add(
            f"write access to {calendar_id}",
            role in ("writer", "owner"),
            f"{user} is {role}"
            + ("" if role in ("writer", "owner") else ": share it with Make changes to events"),
        )
    return report
