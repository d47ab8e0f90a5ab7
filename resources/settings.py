"""The validated configuration as a Dagster resource, and the calendar targets built from it."""

from __future__ import annotations

from dagster import ConfigurableResource
from pydantic import PrivateAttr

from resources.config import AppConfig, TargetConfig
from resources.providers import provider_class
from resources.providers.base import CalendarProvider
from resources.providers.retry import RetryRounds


class LeavesyncSettings(ConfigurableResource):
    """Event rules, window, safety and targets (no secrets: those stay in the environment)."""

    config_json: str

    _app: AppConfig | None = PrivateAttr(default=None)
    _providers: dict[str, CalendarProvider] = PrivateAttr(default_factory=dict)

    def app(self) -> AppConfig:
        if self._app is None:
            self._app = AppConfig.model_validate_json(self.config_json)
        return self._app

    def target(self, name: str) -> TargetConfig:
        return next(t for t in self.app().targets if t.name == name)

    def retry_rounds(self, name: str) -> RetryRounds:
        """A target's rounds for changes that failed with a transient error."""
        target = self.target(name)
        return RetryRounds(target.retry_rounds, target.retry_pause_seconds)

    def provider(self, name: str) -> CalendarProvider:
        """The provider of a target, built on first use (secrets are read from the environment then)."""
        if name not in self._providers:
            target = self.target(name)
            cls = provider_class(target.type)
            self._providers[name] = cls(target.name, cls.Settings.model_validate(target.settings))
        return self._providers[name]
