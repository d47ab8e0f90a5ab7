"""The code location Dagster loads (workspace.yaml): the Definitions of the configuration."""

from pipelines.definitions import build_definitions
from resources.config import load_config

defs = build_definitions(load_config())
