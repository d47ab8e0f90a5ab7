"""What each Exchange error means for us (retry, this mailbox, this item, the whole target)."""

from __future__ import annotations

from urllib.parse import urlsplit

import requests
from exchangelib import errors as ews_errors

from resources.providers.base import FatalProviderError
from resources.providers.ews.settings import EwsSettings

# A whole request may simply be sent again ("EWS throttling in Exchange": 503, ErrorServerBusy,
# ErrorExceededConnectionCount; plus timeouts and dropped connections). exchangelib itself
# already waited out ErrorServerBusy and HTTP 503 up to max_wait before raising.
RETRYABLE = (
    ews_errors.ErrorServerBusy,
    ews_errors.ErrorTimeoutExpired,
    ews_errors.ErrorInternalServerError,
    ews_errors.ErrorInternalServerTransientError,
    ews_errors.ErrorTooManyObjectsOpened,
    ews_errors.ErrorExceededConnectionCount,
    ews_errors.ErrorMailboxStoreUnavailable,
    ews_errors.ErrorConnectionFailed,
    ews_errors.MalformedResponseError,
    ews_errors.SOAPError,
    requests.exceptions.ConnectionError,
    requests.exceptions.Timeout,
)
# Errors that concern one mailbox (the employee's calendar), never the whole target.
MAILBOX_ERRORS = (
    ews_errors.ErrorNonExistentMailbox,
    ews_errors.ErrorImpersonateUserDenied,
    ews_errors.ErrorImpersonationDenied,
    ews_errors.ErrorAccessDenied,
    ews_errors.ErrorMailboxMoveInProgress,
    ews_errors.ErrorFolderNotFound,
    ews_errors.ErrorMissingEmailAddress,
    ews_errors.ErrorInvalidSmtpAddress,
    ews_errors.ErrorNonPrimarySmtpAddress,
)
# ... of which this says the address names no mailbox (renamed without keeping it, deleted).
MAILBOX_GONE = (ews_errors.ErrorNonExistentMailbox,)
# Per-item answers of a batch.
ITEM_GONE = (ews_errors.ErrorItemNotFound,)
# The ChangeKey we sent is not the item's current one (ItemId, ResponseCode pages).
ITEM_STALE = (
    ews_errors.ErrorIrresolvableConflict,
    ews_errors.ErrorStaleObject,
    ews_errors.ErrorChangeKeyRequired,
    ews_errors.ErrorChangeKeyRequiredForWriteOperations,
    ews_errors.ErrorInvalidChangeKey,
)
# Not processed this time: send those items again ("EWS throttling in Exchange", HTTP 200 with
# ErrorInternalServerError / inner ErrorServerBusy; ErrorBatchProcessingStopped warnings).
ITEM_TRANSIENT = (
    ews_errors.ErrorBatchProcessingStopped,
    ews_errors.ErrorServerBusy,
    ews_errors.ErrorInternalServerError,
    ews_errors.ErrorInternalServerTransientError,
    ews_errors.ErrorTimeoutExpired,
    ews_errors.ErrorTooManyObjectsOpened,
    ews_errors.ErrorExceededConnectionCount,
    ews_errors.ErrorMailboxStoreUnavailable,
    ews_errors.ErrorConnectionFailed,
)


class MailboxUnavailable(Exception):
    """This calendar cannot be written (no mailbox, impersonation denied): its changes fail.

    ``gone``: the address names no mailbox any more, a delete there is done; ``alias``: it is
    a proxy address of another mailbox, a move's delete there is done (the create adopts).
    """

    def __init__(self, message: str, gone: bool = False, alias: bool = False) -> None:
        super().__init__(message)
        self.gone, self.alias = gone, alias


class GaveUp(Exception):
    """Retryable failures persisted through every attempt."""


class ItemsPending(Exception):
    """Some items of a batch were not processed this time; the attempt must run again."""


def is_tls_error(error: BaseException) -> bool:
    text = str(error)
    return isinstance(error, requests.exceptions.SSLError) or (
        isinstance(error, ews_errors.TransportError | OSError)
        and any(sign in text for sign in ("CERTIFICATE_VERIFY_FAILED", "SSLError", "SSL:"))
    )


def tls_fatal(target: str, url: str, error: BaseException) -> FatalProviderError:
    """A certificate failure: a configuration error, never retried."""
    parts = urlsplit(url)
    host = f"{parts.hostname}:{parts.port or 443}" if parts.hostname else url
    reason = "certificate verify failed"
    text = str(error)
    if "certificate verify failed:" in text:
        reason = "certificate verify failed: " + text.split("certificate verify failed:")[1]
        reason = reason.split("(_ssl")[0].split("')")[0].strip()
    return FatalProviderError(
        f"target {target}: the TLS certificate of {host} is not trusted ({reason}). Set ca_bundle "
        "in this target's settings to the PEM file of the CA that issued the Exchange "
        "certificate (export it from the server's certificate chain); environment variables "
        "such as REQUESTS_CA_BUNDLE are not used, and verify_tls: false is for a lab only."
    )


def unauthorized(target: str, url: str, settings: EwsSettings) -> FatalProviderError:
    return FatalProviderError(
        f"target {target}: {url} rejected the service account {settings.username!r} (HTTP 401). "
        f"Check the username (DOMAIN\\user or user@domain), the password in environment "
        f"variable {settings.password_env}, that the account is not locked, and that auth_type "
        f"({settings.auth_type}) is enabled on the EWS virtual directory."
    )


def mailbox_reason(calendar: str, error: Exception) -> str:
    if isinstance(error, ews_errors.ErrorNonExistentMailbox):
        return (
            f"no mailbox {calendar} on this Exchange server (ErrorNonExistentMailbox): check the "
            "employee's email in HR, or that the mailbox is on premises and not migrated"
        )
    if isinstance(error, ews_errors.ErrorNonPrimarySmtpAddress):
        return (
            f"{calendar} is not the primary address of its mailbox (ErrorNonPrimarySmtpAddress): "
            "set the employee's email in HR to the mailbox's primary SMTP address"
        )
    if isinstance(
        error, ews_errors.ErrorImpersonateUserDenied | ews_errors.ErrorImpersonationDenied
    ):
        return (
            f"the service account may not impersonate {calendar} (ErrorImpersonateUserDenied): "
            "add the mailbox to the management scope of the ApplicationImpersonation role "
            "assignment (Get-ManagementRoleAssignment -Role ApplicationImpersonation)"
        )
    return f"mailbox {calendar} cannot be accessed ({type(error).__name__})"


def item_reason(op: str, key: str, error: Exception) -> str:
    return f"Exchange refused the {op} of {key} ({type(error).__name__}: {error})"


def connect_advice(url: str, settings: EwsSettings, error: Exception) -> str:
    """What `leavesync check` tells the operator when connecting or signing in failed."""
    if isinstance(error, ews_errors.UnauthorizedError):
        return (
            f"credentials rejected (HTTP 401): check username {settings.username!r}, the password "
            f"in {settings.password_env}, that the account is not locked and that "
            f"{settings.auth_type} authentication is enabled on the EWS virtual directory"
        )
    if is_tls_error(error):
        host = urlsplit(url).hostname or url
        return (
            f"certificate of {host} not trusted: set ca_bundle to the PEM file of the CA that "
            "issued the Exchange server's certificate"
        )
    if isinstance(error, ews_errors.ErrorInvalidServerVersion) or "ErrorInvalidServerVersion" in (
        str(error)
    ):
        return (
            f"the server refused RequestServerVersion {settings.version}: set version to the "
            "Exchange release the server runs, or leave it out to ask the server"
        )
    text = str(error)
    if isinstance(
        error, ews_errors.ErrorTimeoutExpired | requests.exceptions.ConnectionError
    ) or any(sign in text for sign in ("ErrorTimeoutExpired", "ConnectionError", "timed out")):
        return (
            f"cannot reach {url} (connection failed): check ews_url, DNS and the firewall "
            "(HTTPS to the Exchange server)"
        )
    return (
        f"{url} did not answer as Exchange Web Services ({type(error).__name__}): check ews_url; "
        "it is usually https://<mail server>/EWS/Exchange.asmx"
    )


def impersonation_advice(calendar: str, username: str, error: Exception) -> str:
    if isinstance(
        error, ews_errors.ErrorImpersonateUserDenied | ews_errors.ErrorImpersonationDenied
    ):
        return (
            f"{username} has no ApplicationImpersonation right on {calendar}: run "
            f"New-ManagementRoleAssignment -Name leavesync-impersonation -Role "
            f"ApplicationImpersonation -User {username} -CustomRecipientWriteScope <your scope>, "
            "and make sure the scope includes this mailbox"
        )
    if isinstance(error, ews_errors.ErrorNonExistentMailbox):
        return f"no mailbox {calendar} on this Exchange server: use an existing employee mailbox"
    if isinstance(error, ews_errors.ErrorNonPrimarySmtpAddress):
        return (
            f"{calendar} is a secondary (proxy) address of a mailbox (ErrorNonPrimarySmtpAddress): "
            "use the mailbox's primary SMTP address"
        )
    if isinstance(error, FatalProviderError):
        return str(error)
    return (
        f"could not read the calendar of {calendar} ({type(error).__name__}); if EWS is switched "
        f"off for it: Set-CASMailbox {calendar} -EwsEnabled $true (and check "
        "Get-OrganizationConfig | Format-List Ews*)"
    )
