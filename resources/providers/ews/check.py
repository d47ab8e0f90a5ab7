"""`leavesync check` for an ``ews`` target: each step of reaching a calendar, writing nothing."""

from __future__ import annotations

from exchangelib.properties import ENTRY_ID, EWS_ID, AlternateId
from exchangelib.protocol import Protocol
from exchangelib.services import ConvertId

from resources.providers.base import CheckReport, FatalProviderError
from resources.providers.ews.connection import EwsConnection, ca_bundle_problem
from resources.providers.ews.errors import connect_advice, impersonation_advice


def check(connection: EwsConnection, sample_calendar: str) -> CheckReport:
    """Sign in, impersonate the sample mailbox, read its calendar and search it; write nothing."""
    settings = connection.settings
    report = CheckReport(connection.target_name)
    if settings.ca_bundle and settings.verify_tls:
        problem = ca_bundle_problem(settings)
        report.add("ca_bundle", problem is None, problem or f"{settings.ca_bundle} is readable")
        if problem:
            return report
    if settings.autodiscover and not settings.ews_url:
        connection.first_mailbox = connection.first_mailbox or sample_calendar.strip().lower()
    try:
        config = connection.configuration()
    except FatalProviderError as error:
        report.add("service account password and EWS endpoint", False, str(error))
        return report
    report.add(
        "service account password",
        True,
        f"read from environment variable {settings.password_env}",
    )
    url = config.service_endpoint
    if settings.autodiscover and not settings.ews_url:
        report.add(f"autodiscover for {connection.first_mailbox}", True, f"EWS at {url}")
    step = f"connect to {url}, TLS and sign in as {settings.username} ({settings.auth_type})"
    protocol = Protocol(config=config)
    try:
        if config.version is None:
            version = protocol.version  # discovery sends a ConvertId probe, signed in
        else:
            # A harmless signed-in request (the same probe exchangelib's discovery uses).
            probe = ConvertId(protocol=protocol)
            list(probe.call([AlternateId(id="DUMMY", format=EWS_ID, mailbox="DUMMY")], ENTRY_ID))
            version = config.version
        report.add(step, True, f"Exchange build {version.build} (API {version.api_version})")
    except Exception as error:  # noqa: BLE001 - every failure becomes an actionable step
        report.add(step, False, connect_advice(url, settings, error))
        return report
    step = f"impersonate {sample_calendar} and read its calendar folder"
    try:
        account, _ = connection.mailbox(sample_calendar)
        calendar = account.calendar  # GetFolder on the distinguished calendar, as the user
        report.add(step, True, f"calendar {calendar.name!r} holds {calendar.total_count} items")
    except Exception as error:  # noqa: BLE001
        report.add(step, False, impersonation_advice(sample_calendar, settings.username, error))
        return report
    step = "search the calendar for leavesync events (FindItem on our property)"
    try:
        _, folder = connection.mailbox(sample_calendar)
        count = folder.filter(leavesync_key__exists=True).count()
        report.add(
            step,
            True,
            f"{count} leavesync events found (write access comes with ApplicationImpersonation;"
            " nothing was written)",
        )
    except Exception as error:  # noqa: BLE001
        report.add(
            step,
            False,
            f"FindItem failed ({type(error).__name__}); check the EWS throttling policy and "
            "that EWS is enabled for the mailbox (Set-CASMailbox -EwsEnabled $true)",
        )
    return report
