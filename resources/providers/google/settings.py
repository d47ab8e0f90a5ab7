"""The ``settings:`` block of a ``google`` target, and the names we write into events."""

from __future__ import annotations

from pydantic import Field

from resources.providers.base import ProviderSettings

SCOPE_EVENTS = "https://www.googleapis.com/auth/calendar.events"
SCOPE_CALENDAR = "https://www.googleapis.com/auth/calendar"
# Private extended properties on every event we write: the tag we filter on, our identity.
# Google drops keys over 44 characters and truncates values over 1024 (Extended properties).
TAG_PROPERTY = "leavesync"
TAG_VALUE = "1"
KEY_PROPERTY = "leavesyncKey"
LEAVE_PROPERTY = "leavesyncLeaveId"
# Not shown by Google but needed to rebuild the payload exactly: an all-day event has no
# zone, and Google has no show-as beyond busy/free, nor categories.
ZONE_PROPERTY = "leavesyncTimezone"
SHOW_AS_PROPERTY = "leavesyncShowAs"
CATEGORIES_PROPERTY = "leavesyncCategories"
DELEGATION_HELP = (
    "In the Google Admin console (Security > Access and data control > API controls > "
    "Manage Domain Wide Delegation) add the service account's client ID {client_id} with "
    "the OAuth scopes {scopes}"
)


class Settings(ProviderSettings):
    """The ``settings:`` block of a ``google`` target."""

    service_account_key_env: str = "LEAVESYNC_GOOGLE_SERVICE_ACCOUNT"
    scopes: tuple[str, ...] = (SCOPE_EVENTS,)
    calendar_id: str = "primary"
    api_base_url: str = "https://www.googleapis.com/"
    token_uri: str = "https://oauth2.googleapis.com/token"
    batch_uri: str | None = None  # default: <api_base_url>batch/calendar/v3
    ca_bundle: str | None = None
    per_user_requests_per_minute: float = Field(600, gt=0)
    per_project_requests_per_minute: float = Field(10_000, gt=0)
    batch_size: int = Field(50, ge=1, le=50)
    max_parallel_users: int = Field(16, ge=1, le=64)
    out_of_office: bool = False
    backoff_base_seconds: float = Field(0.5, ge=0)
    backoff_cap_seconds: float = Field(60.0, ge=0)
    max_attempts: int = Field(8, ge=1)
    usage_limit_pause_seconds: float = Field(60.0, ge=0)
    timeout_seconds: float = Field(60.0, gt=0)
    sample_user: str | None = None
    # A team target: every calendar is a calendar id (a shared, secondary calendar) written
    # as this user, who must have "Make changes to events" on each.
    write_as: str | None = None

    def subject_for(self, calendar: str) -> str:
        """The user whose delegated token writes ``calendar``."""
        return self.write_as or calendar

    def calendar_id_for(self, calendar: str) -> str:
        """The Calendar API's calendarId for ``calendar``."""
        return calendar if self.write_as else self.calendar_id
