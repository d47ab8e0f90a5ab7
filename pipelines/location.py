"""The code location Dagster loads (workspace.yaml): the Definitions of the configuration."""

from pipelines.definitions import build_definitions
from resources.config import load_config

# workspace.yaml's location_name: the CLI's runs carry it, so the UI lists them with the rest.
LOCATION_NAME = "leavesync"

defs = build_definitions(load_config())
