"""The ``settings:`` block of an ``ews`` target, and the Exchange releases it supports."""

from __future__ import annotations

from typing import Literal

from exchangelib.version import Build
from pydantic import Field, model_validator

from resources.providers.base import ProviderSettings

# RequestServerVersion names of the on-premises releases we support, and a build of each.
EXCHANGE_BUILDS: dict[str, Build] = {
    "Exchange2013": Build(15, 0),
    "Exchange2013_SP1": Build(15, 0, 847),
    "Exchange2016": Build(15, 1),
    "Exchange2019": Build(15, 2),
}


class EwsSettings(ProviderSettings):
    """The ``settings:`` block of an ``ews`` target."""

    ews_url: str | None = None
    username: str
    password_env: str = "LEAVESYNC_EWS_PASSWORD"
    auth_type: Literal["NTLM", "basic"] = "NTLM"
    version: Literal["Exchange2013", "Exchange2013_SP1", "Exchange2016", "Exchange2019"] | None = (
        None
    )
    autodiscover: bool = False
    ca_bundle: str | None = None
    verify_tls: bool = True
    max_wait: float = Field(default=300.0, gt=0)
    chunk_size: int = Field(default=100, ge=1, le=500)
    timeout: float = Field(default=120.0, gt=0)
    backoff_base: float = Field(default=1.0, ge=0)
    backoff_cap: float = Field(default=60.0, ge=0)
    max_attempts: int = Field(default=6, ge=1)
    concurrent_mailboxes: int = Field(default=4, ge=1, le=27)
    max_requests_per_second: float | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _endpoint(self) -> EwsSettings:
        if not self.ews_url and not self.autodiscover:
            raise ValueError(
                "set ews_url (https://<server>/EWS/Exchange.asmx) or autodiscover: true"
            )
        if self.ews_url and not self.ews_url.lower().startswith(("https://", "http://")):
            raise ValueError(
                "ews_url must be a full URL, e.g. https://mail.example.com/EWS/Exchange.asmx"
            )
        return self
