"""Google Workspace calendars, written by a service account with domain-wide delegation.

Modules: settings, signin (key, tokens, TLS), mapping (event fields and ids), batching,
lookup (our events before a create), writes (one user's changes), check, readback.
"""

from resources.providers.google.provider import GoogleCalendarProvider

__all__ = ["GoogleCalendarProvider"]
