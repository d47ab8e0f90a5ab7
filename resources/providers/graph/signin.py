"""Sign-in to Entra ID with the app's secret or certificate (client credentials, msal)."""

from __future__ import annotations

import threading
import time
from typing import Any

import jwt
import msal
import requests
from cryptography import x509
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from resources.providers.base import FatalProviderError, secret_from_env
from resources.providers.graph.client import TRANSPORT_ERRORS, certificate_problem
from resources.providers.graph.settings import GraphSettings
from resources.providers.retry import Backoff

GRAPH_SCOPE_SUFFIX = "/.default"


class SignIn:
    """The app's access token: fetched once, reused until msal renews it, renewed on demand."""

    def __init__(self, settings: GraphSettings, session: requests.Session) -> None:
        self.settings = settings
        self.session = session
        self.scope = settings.graph_url.rstrip("/") + GRAPH_SCOPE_SUFFIX
        self.backoff = Backoff(
            settings.backoff_base_seconds, settings.backoff_cap_seconds, settings.max_attempts
        )
        self._msal: msal.ConfidentialClientApplication | None = None
        self._lock = threading.Lock()
        self.token: str | None = None

    # ------------------------------------------------------------------ credentials

    def credential(self) -> str | dict[str, str]:
        """The client secret, or msal's certificate credential, from the environment."""
        s = self.settings
        if s.client_certificate_env:
            pem = secret_from_env(s.client_certificate_env, "Microsoft Graph client certificate")
            cred: dict[str, str] = {"private_key": pem}
            if s.certificate_thumbprint:
                cred["thumbprint"] = s.certificate_thumbprint.replace(":", "")
            elif "BEGIN CERTIFICATE" in pem:
                cred["public_certificate"] = pem[pem.index("-----BEGIN CERTIFICATE") :]
            else:
                raise FatalProviderError(
                    f"{s.client_certificate_env} holds no certificate: set certificate_thumbprint "
                    "to the thumbprint shown under Certificates & secrets, or append the "
                    "certificate PEM to the private key"
                )
            return cred
        return secret_from_env(s.client_secret_env, "Microsoft Graph client secret")

    def check_credential(self) -> None:
        """The secret is set, or the certificate variable holds a key (and certificate) that parse."""
        cred = self.credential()
        if isinstance(cred, str):
            return
        var = self.settings.client_certificate_env
        try:
            load_pem_private_key(cred["private_key"].encode(), password=None)
        except (ValueError, TypeError) as err:
            raise FatalProviderError(
                f"{var}: no readable unencrypted PEM private key ({_first_line(err)}); put the "
                "app's private key (BEGIN PRIVATE KEY), optionally followed by its certificate, "
                f"in {var}"
            ) from None
        if "public_certificate" in cred:
            try:
                x509.load_pem_x509_certificate(cred["public_certificate"].encode())
            except ValueError as err:
                raise FatalProviderError(
                    f"{var}: the certificate after the key does not parse ({_first_line(err)})"
                ) from None
        thumbprint = self.settings.certificate_thumbprint
        if thumbprint and not _is_hex(thumbprint.replace(":", ""), 40):
            raise FatalProviderError(
                f"certificate_thumbprint: {thumbprint!r} is not a SHA-1 thumbprint (40 hex "
                "digits, as the Azure portal shows under Certificates & secrets)"
            )

    # ------------------------------------------------------------------ tokens

    def current(self) -> str:
        """The token in use, fetching one if none yet."""
        return self.token or self.fetch()

    def renew(self) -> str:
        return self.fetch(force_new=True)

    def fetch(self, force_new: bool = False) -> str:
        """A Graph access token for the app; msal reuses it until shortly before expiry."""
        with self._lock:
            if force_new:
                self._msal = None  # a new msal app has an empty token cache
            for attempt in range(1, self.backoff.max_attempts + 1):
                try:
                    result = self._app().acquire_token_for_client(scopes=[self.scope])
                except TRANSPORT_ERRORS as err:
                    self._raise_if_certificate(err)
                    if attempt == self.backoff.max_attempts:
                        raise FatalProviderError(
                            f"cannot reach the Entra ID token endpoint at "
                            f"{self.settings.authority}: {type(err).__name__}"
                        ) from None
                    time.sleep(self.backoff.delay(attempt))
                    continue
                if "access_token" in result:
                    self.token = result["access_token"]
                    return self.token
                raise FatalProviderError(self._explain(result))
            raise AssertionError("unreachable")

    def _app(self) -> msal.ConfidentialClientApplication:
        if self._msal is None:
            s = self.settings
            try:
                self._msal = msal.ConfidentialClientApplication(
                    s.client_id,
                    client_credential=self.credential(),
                    authority=f"{s.authority.rstrip('/')}/{s.tenant_id}",
                    http_client=self.session,
                    # No call to the public cloud's instance discovery (sovereign clouds, tests).
                    instance_discovery=False,
                    timeout=s.timeout_seconds,
                )
            except TRANSPORT_ERRORS as err:
                self._raise_if_certificate(err)
                raise
            except ValueError as err:
                raise FatalProviderError(
                    f"cannot use tenant {s.tenant_id!r} at {s.authority}: check tenant_id (the "
                    f"Directory (tenant) ID of the app registration) and authority ({err})"
                ) from None
        return self._msal

    def _raise_if_certificate(self, err: BaseException) -> None:
        problem = certificate_problem(err, self.settings.authority, self.settings.ca_bundle)
        if problem:
            raise FatalProviderError(problem) from None

    def _explain(self, result: dict[str, Any]) -> str:
        s = self.settings
        error = result.get("error", "unknown_error")
        description = str(result.get("error_description", "")).split(" Trace ID")[0].strip()
        codes = {int(c) for c in result.get("error_codes", []) if str(c).isdigit()}
        prefix = f"Entra ID refused a token for app {s.client_id} in tenant {s.tenant_id}"
        if error == "invalid_client" and s.client_certificate_env:
            fix = (
                "the certificate was not accepted: upload its public part under App registrations "
                "> Certificates & secrets > Certificates, and check certificate_thumbprint"
            )
        elif error == "invalid_client":
            fix = (
                f"the client secret in {s.client_secret_env} is wrong or expired: create a new "
                "one under App registrations > Certificates & secrets and put its Value (not its "
                f"Secret ID) in {s.client_secret_env}"
            )
        elif error == "unauthorized_client" or codes & {700016, 7000016}:
            fix = (
                f"no application with client_id {s.client_id} in this tenant: check client_id "
                "(Application (client) ID) and tenant_id"
            )
        elif codes & {90002} or error == "invalid_tenant":
            fix = f"tenant {s.tenant_id} does not exist at {s.authority}: check tenant_id"
        elif codes & {65001, 7000112}:
            fix = "an administrator must grant admin consent to the app (API permissions)"
        else:
            fix = "see the error above"
        return f"{prefix} ({error}: {description}): {fix}"


def token_roles(token: str) -> set[str] | None:
    """The application permissions in an access token, when it is a readable JWT."""
    try:
        claims = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError:
        return None
    roles = claims.get("roles")
    return set(roles) if isinstance(roles, list) else set()


def _first_line(err: BaseException) -> str:
    return (str(err).splitlines() or [type(err).__name__])[0]


def _is_hex(text: str, length: int) -> bool:
    return len(text) == length and all(c in "0123456789abcdefABCDEF" for c in text)
