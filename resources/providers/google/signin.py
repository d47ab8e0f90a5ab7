"""Sign-in: the service-account key, delegated tokens per user, and the one TLS policy."""

from __future__ import annotations

import json
import os
import ssl
import threading
import time
import urllib.parse
from collections.abc import Callable
from typing import Any

import certifi
import google_auth_httplib2
import httplib2
from google.auth import exceptions as auth_exceptions
from google.oauth2 import service_account

from resources.providers.base import FatalProviderError, secret_from_env
from resources.providers.google.settings import DELEGATION_HELP, Settings
from resources.providers.retry import Backoff

TRANSPORT_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    httplib2.HttpLib2Error,
    auth_exceptions.TransportError,
)


class UserFailed(Exception):
    """Every change of this user fails permanently (user unknown, calendar unreachable)."""

    def __init__(self, message: str, unknown_user: bool = False) -> None:
        super().__init__(message)
        # The address is not a user of the domain: nothing of ours can be in its calendar.
        self.unknown_user = unknown_user


class DelegatedCredentials(service_account.Credentials):
    """Service-account credentials whose token refresh always goes through our transport.

    googleapiclient refreshes inside ``BatchHttpRequest.execute`` with a bare
    ``httplib2.Http()`` that would ignore our CA bundle and timeout; this pins the transport.
    """

    _transport_factory: Callable[[], Any] | None = None

    def refresh(self, request: Any) -> None:
        factory = self._transport_factory
        super().refresh(factory() if factory is not None else request)

    def _make_copy(self) -> DelegatedCredentials:
        cred = super()._make_copy()
        cred._transport_factory = self._transport_factory
        return cred

    def _is_regional_access_boundary_lookup_required(self) -> bool:
        # That lookup calls a third Google endpoint which neither our endpoint overrides nor
        # the Calendar API need; delegated (subject) tokens do not use it.
        return False


def certificate_failure(exc: BaseException) -> ssl.SSLCertVerificationError | None:
    """The certificate verification error behind an exception (libraries wrap it), if any."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, ssl.SSLCertVerificationError):
            return current
        seen.add(id(current))
        nested = [a for a in getattr(current, "args", ()) if isinstance(a, BaseException)]
        current = current.__cause__ or current.__context__ or (nested[0] if nested else None)
    return None


def untrusted(target: str, url: str, exc: BaseException) -> FatalProviderError:
    host = urllib.parse.urlsplit(url).netloc or url
    return FatalProviderError(
        f"target {target}: the TLS certificate of {host} is not trusted ({exc}); if a proxy "
        "or private CA signs it, set the target's ca_bundle setting to that CA's PEM file. "
        "Certificate failures are not retried"
    )


class SignIn:
    """The key, one base credential, a delegated credential per user, and HTTP clients."""

    def __init__(self, target: str, settings: Settings) -> None:
        self.target = target
        self.settings = settings
        self.backoff = Backoff(
            settings.backoff_base_seconds, settings.backoff_cap_seconds, settings.max_attempts
        )
        self.client_id = "<client ID>"
        self._base: DelegatedCredentials | None = None
        self._users: dict[str, DelegatedCredentials] = {}
        self._lock = threading.Lock()

    # -- configuration checks (no network) -------------------------------------------------

    def check_ca_bundle(self) -> None:
        """A configured CA bundle must be a readable PEM file: fatal, naming the setting."""
        path = self.settings.ca_bundle
        if path is None:
            return
        where = f"target {self.target}: setting ca_bundle ({path!r})"
        if not os.path.isfile(path):
            raise FatalProviderError(f"{where}: no such file; give the path of a PEM CA file")
        if not os.access(path, os.R_OK):
            raise FatalProviderError(f"{where}: the file is not readable by this process")
        try:
            ssl.create_default_context(cafile=path)
        except (ssl.SSLError, OSError, ValueError) as exc:
            raise FatalProviderError(
                f"{where}: holds no PEM certificate that Python can load ({exc})"
            ) from None

    def key_info(self) -> dict[str, Any]:
        var = self.settings.service_account_key_env
        value = secret_from_env(var, f"target {self.target}: Google service account key")
        try:
            if value.lstrip().startswith("{"):
                info = json.loads(value)
            else:
                with open(value, encoding="utf-8") as handle:
                    info = json.load(handle)
        except (OSError, ValueError):
            raise FatalProviderError(
                f"target {self.target}: environment variable {var} must hold the service "
                "account key JSON, or the path of a readable key file (download it from Google "
                "Cloud console > IAM & Admin > Service accounts > Keys)"
            ) from None
        if not isinstance(info, dict):
            info = {}
        missing = [k for k in ("client_email", "private_key") if not info.get(k)]
        if info.get("type") != "service_account" or missing:
            raise FatalProviderError(
                f"target {self.target}: the key in {var} is not a service account key "
                f"(missing {', '.join(missing) or 'type=service_account'})"
            )
        return info

    def base(self) -> DelegatedCredentials:
        """The service account's credentials (parses the key: no network)."""
        with self._lock:
            if self._base is None:
                self.check_ca_bundle()
                info = dict(self.key_info(), token_uri=self.settings.token_uri)
                try:
                    creds = DelegatedCredentials.from_service_account_info(
                        info, scopes=list(self.settings.scopes)
                    )
                except (ValueError, TypeError, IndexError):
                    raise FatalProviderError(
                        f"target {self.target}: the private key in "
                        f"{self.settings.service_account_key_env} cannot be read; create a new "
                        "key for the service account"
                    ) from None
                creds._transport_factory = lambda: google_auth_httplib2.Request(self.http())
                self._base = creds
                self.client_id = info.get("client_id", "<client ID>")
            return self._base

    # -- HTTP ------------------------------------------------------------------------------

    def http(self) -> httplib2.Http:
        """A verifying HTTP client: ca_bundle, else certifi's bundle; no environment variable."""
        # Passing the bundle explicitly keeps httplib2 from reading HTTPLIB2_CA_CERTS; like
        # every provider, leavesync honours no environment CA variable.
        return httplib2.Http(
            ca_certs=self.settings.ca_bundle or certifi.where(),
            timeout=self.settings.timeout_seconds,
        )

    def credentials_for(self, user: str) -> DelegatedCredentials:
        base = self.base()
        with self._lock:
            creds = self._users.get(user)
            if creds is None:
                creds = self._users[user] = base.with_subject(user)
            return creds

    def authorize(self, user: str) -> google_auth_httplib2.AuthorizedHttp:
        """An authorised http for this user, with a valid token (raises per the token error)."""
        creds = self.credentials_for(user)
        if not creds.valid:
            attempt = 0
            while True:
                attempt += 1
                try:
                    creds.refresh(None)
                    break
                except auth_exceptions.RefreshError as exc:
                    self.raise_for_token_error(user, exc)
                    if attempt >= self.settings.max_attempts:
                        raise UserFailed(f"no token for {user}: {first_line(exc)}") from None
                except TRANSPORT_ERRORS as exc:
                    bad = certificate_failure(exc)
                    if bad is not None:
                        raise untrusted(self.target, self.settings.token_uri, bad) from None
                    if attempt >= self.settings.max_attempts:
                        raise UserFailed(f"token endpoint unreachable: {exc}") from None
                time.sleep(self.backoff.delay(attempt))
        return google_auth_httplib2.AuthorizedHttp(creds, http=self.http())

    def raise_for_token_error(self, user: str, exc: auth_exceptions.RefreshError) -> None:
        data = exc.args[1] if len(exc.args) > 1 and isinstance(exc.args[1], dict) else {}
        error = data.get("error", "")
        description = data.get("error_description", "")
        scopes = ", ".join(self.settings.scopes)
        if error == "unauthorized_client":
            raise FatalProviderError(
                f"target {self.target}: domain-wide delegation is not granted for the "
                f"scopes {scopes} (token request answered unauthorized_client). "
                + DELEGATION_HELP.format(client_id=self.client_id, scopes=scopes)
            )
        if error == "invalid_grant" and "user" in description.lower():
            raise UserFailed(
                f"{user} is not a user of the Workspace domain (Google: {description})",
                unknown_user=True,
            )
        if error in ("invalid_grant", "invalid_client", "invalid_scope", "access_denied"):
            raise FatalProviderError(
                f"target {self.target}: Google refused the service account ({error}: "
                f"{description}). Check that the key in {self.settings.service_account_key_env} "
                "is current and the service account is enabled, and that the scopes are valid"
            )
        if not getattr(exc, "retryable", False) and error:
            raise FatalProviderError(
                f"target {self.target}: token request failed ({error}: {description})"
            )


def first_line(exc: BaseException) -> str:
    return str(exc.args[0] if exc.args else exc).splitlines()[0]
