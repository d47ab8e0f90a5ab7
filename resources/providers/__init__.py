"""Calendar providers: one class per calendar system behind resources.providers.base."""

from __future__ import annotations

import importlib

from resources.providers.base import CalendarProvider

# type name in the configuration -> "module:Class"; imported lazily so that a deployment
# that only uses .ics feeds never imports the Google, Microsoft or Exchange libraries.
PROVIDER_TYPES: dict[str, str] = {
    "ics": "resources.providers.ics:IcsProvider",
    "google": "resources.providers.google.provider:GoogleCalendarProvider",
    "microsoft_graph": "resources.providers.graph.provider:GraphCalendarProvider",
    "ews": "resources.providers.ews:EwsCalendarProvider",
    "caldav": "resources.providers.caldav:CalDavProvider",
}


def provider_class(type_name: str) -> type[CalendarProvider]:
    try:
        module_name, class_name = PROVIDER_TYPES[type_name].split(":")
    except KeyError:
        raise ValueError(
            f"unknown target type {type_name!r}; expected one of {sorted(PROVIDER_TYPES)}"
        ) from None
    return getattr(importlib.import_module(module_name), class_name)
