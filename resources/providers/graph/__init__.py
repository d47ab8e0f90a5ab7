"""Microsoft 365 / Exchange Online calendars over Microsoft Graph (target type ``microsoft_graph``).

An app registration with the application permission Calendars.ReadWrite writes each leave
into the employee's own calendar. The provider class is this package's only public face;
its parts: settings, signin (Entra ID), client (HTTP, budgets, TLS), batching (batch shapes),
changes (look-up, adoption, writes), mapping (fields, time zones), readback, check.
"""

from resources.providers.graph.provider import GraphCalendarProvider
from resources.providers.graph.settings import GraphSettings

__all__ = ["GraphCalendarProvider", "GraphSettings"]
