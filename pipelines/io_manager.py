"""Pickled frames per asset and partition set: the default IO manager refuses partition ranges."""

from __future__ import annotations

import hashlib
import pickle
from pathlib import Path
from typing import Any

from dagster import ConfigurableIOManager, InputContext, OutputContext


class PartitionSetPickleIOManager(ConfigurableIOManager):
    """Stores one file per (asset, set of partition keys), so single-run ranges work."""

    base_dir: str

    def _path(self, context: InputContext | OutputContext) -> Path:
        keys = sorted(context.asset_partition_keys) if context.has_asset_partitions else []
        digest = hashlib.sha1("\n".join(keys).encode()).hexdigest()[:20]
        return Path(self.base_dir) / "/".join(context.asset_key.path) / f"{digest}.pkl"

    def handle_output(self, context: OutputContext, obj: Any) -> None:
        if obj is None:
            return
        path = self._path(context)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        with tmp.open("wb") as handle:
            pickle.dump(obj, handle, protocol=pickle.HIGHEST_PROTOCOL)
        tmp.replace(path)

    def load_input(self, context: InputContext) -> Any:
        path = self._path(context)
        if not path.exists():
            raise FileNotFoundError(
                f"{path}: no stored output of {context.asset_key.to_user_string()} for these "
                "partitions; materialize it first (run the whole job)"
            )
        with path.open("rb") as handle:
            return pickle.load(handle)
