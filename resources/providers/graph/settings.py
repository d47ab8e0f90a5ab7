"""The ``settings:`` block of a ``microsoft_graph`` target."""

from __future__ import annotations

from pydantic import Field

from resources.providers.base import ProviderSettings


class GraphSettings(ProviderSettings):
    """Settings of a ``microsoft_graph`` target; secrets are only named, never given."""

    tenant_id: str
    client_id: str
    # Secrets are read from these environment variables at run time, never from the file.
    client_secret_env: str = "LEAVESYNC_GRAPH_CLIENT_SECRET"
    client_certificate_env: str | None = None  # PEM private key (+ certificate) of the app
    certificate_thumbprint: str | None = None  # SHA-1 hex, as the Azure portal shows it
    authority: str = "https://login.microsoftonline.com"
    graph_url: str = "https://graph.microsoft.com"
    ca_bundle: str | None = None
    batch_size: int = Field(20, ge=1, le=20)
    max_concurrency_per_mailbox: int = Field(4, ge=1, le=4)
    parallel_batches: int = Field(4, ge=1, le=32)
    categories: list[str] = Field(default_factory=list)
    extended_property_namespace: str = "6f1c2a9e-4b7d-4e3a-9a51-0c8e2d7b5f41"
    # Outlook limits: 10,000 requests per 10 minutes per mailbox; Graph: 130,000 per 10 s per app.
    mailbox_requests_per_window: int = Field(10_000, ge=1)
    mailbox_window_seconds: float = Field(600.0, gt=0)
    app_requests_per_window: int = Field(130_000, ge=1)
    app_window_seconds: float = Field(10.0, gt=0)
    backoff_base_seconds: float = Field(0.5, ge=0)
    backoff_cap_seconds: float = Field(60.0, ge=0)
    max_attempts: int = Field(8, ge=1)
    timeout_seconds: float = Field(60.0, gt=0)
    page_size: int = Field(100, ge=1, le=1000)
