"""Exchange Server 2013-2019 on premises over EWS (exchangelib), with one impersonating account.

Modules: settings, connection (TLS, sign-in, retries), mapping (event <-> calendar item),
bulk (look-up, adoption, create/update/delete batches), read_back, check; the provider class
is the only public face.
"""

from resources.providers.ews.provider import EwsCalendarProvider

__all__ = ["EwsCalendarProvider"]
