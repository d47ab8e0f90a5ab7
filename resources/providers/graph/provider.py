"""The ``microsoft_graph`` provider: its one public class, tying the modules together."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Iterator, Sequence

from resources.providers.base import (
    FINGERPRINT_FIELDS,
    CalendarProvider,
    ChangeResult,
    CheckReport,
    EventChange,
    RemoteEvent,
)
from resources.providers.graph import check as check_module
from resources.providers.graph import readback
from resources.providers.graph.changes import DENIED_ERRORS, Run
from resources.providers.graph.client import GraphClient, Reply, check_ca_bundle, make_session
from resources.providers.graph.mapping import Tags
from resources.providers.graph.settings import GraphSettings
from resources.providers.graph.signin import SignIn


class GraphCalendarProvider(CalendarProvider):
    """Writes leaves into Microsoft 365 calendars through Microsoft Graph."""

    type_name = "microsoft_graph"
    Settings = GraphSettings
    # Graph has no event status: a pending leave shows as tentative instead.
    compared_fields = tuple(f for f in FINGERPRINT_FIELDS if f != "status")
    addresses_may_alias = True

    def __init__(self, target_name: str, settings: GraphSettings) -> None:
        super().__init__(target_name, settings)
        self.settings: GraphSettings = settings
        self.tags = Tags(settings.extended_property_namespace)
        # One session for msal and Graph, verifying TLS against ca_bundle only.
        self.session = make_session(settings)
        self.signin = SignIn(settings, self.session)
        self.client = GraphClient(settings, self.session, self.signin)

    def preflight(self) -> None:
        """The secret or certificate variable is set and parses; a ca_bundle file is readable."""
        self.signin.check_credential()
        check_ca_bundle(self.settings.ca_bundle)

    def apply(self, changes: Sequence[EventChange]) -> Iterator[ChangeResult]:
        """Look up, then write through $batch within each mailbox's limits; yield as they land."""
        if not changes:
            return
        self.signin.current()  # bad credentials stop the run before anything is sent
        run = Run(self, list(changes))
        try:
            yield from run.execute()
        finally:
            run.close()

    def read_back(
        self, calendars: Iterable[str], start: dt.date, end: dt.date
    ) -> Iterator[RemoteEvent]:
        """Our tagged events overlapping [start, end), via calendarView with our tags expanded."""
        return readback.read_back(self, calendars, start, end)

    def check(self, sample_calendar: str) -> CheckReport:
        """Token, permission and read access to a sample mailbox's calendar; writes nothing."""
        return check_module.check(self, sample_calendar)

    def explain_mailbox_error(self, mailbox: str, reply: Reply) -> str:
        """Why a mailbox cannot be written, and what to do about it."""
        if reply.code in DENIED_ERRORS or reply.status in (401, 403):
            return (
                f"{reply.describe()} - grant the application permission Calendars.ReadWrite with "
                "admin consent; if the app is scoped to some mailboxes (RBAC for Applications or "
                f"an application access policy), add {mailbox} to that scope"
            )
        if reply.code == "MailboxNotEnabledForRESTAPI":
            return (
                f"{mailbox} has no Exchange Online mailbox (unlicensed, inactive or on "
                "premises): sync it with the ews target or license it"
            )
        if reply.status == 404:
            return f"{reply.describe()} - no such user in the tenant: check the address"
        return reply.describe()

    def close(self) -> None:
        """Release pooled connections."""
        self.session.close()
