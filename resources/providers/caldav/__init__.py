"""CalDAV target (Nextcloud, Fastmail, Radicale, Baikal, SOGo, Zimbra, iCloud): see provider.py."""

from resources.providers.caldav.provider import CalDavProvider
from resources.providers.caldav.settings import CalDavSettings

__all__ = ["CalDavProvider", "CalDavSettings"]
