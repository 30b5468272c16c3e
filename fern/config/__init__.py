"""Config composition helpers: schema registration and the resolvers our YAML uses.

Importing this module is cheap (no torch), so run.py can import it before Hydra parses the command line.
"""

from __future__ import annotations

import importlib

from omegaconf import OmegaConf

from fern.paths import ASSETS_DIR, PROJECT_ROOT, models_dir

# Modules that define ``SCHEMAS = {group: {name: dataclass}}``; stage packages own their schemas.
SCHEMA_MODULES = ("fern.config.schema", "fern.llm.schema", "fern.tts.csm.schema", "fern.vad.silero", "fern.turn.smart_turn",
                  "fern.turn.semantic")

_registered = False


def register() -> None:
    """Register schemas in Hydra's ConfigStore (as ``schema/<group>/<name>``) and our resolvers. Idempotent."""
    global _registered
    if _registered:
        return
    from hydra.core.config_store import ConfigStore

    store = ConfigStore.instance()
    for module_name in SCHEMA_MODULES:
        for group, schemas in importlib.import_module(module_name).SCHEMAS.items():
            for name, node in schemas.items():
                store.store(group=f"schema/{group}", name=name, node=node)
    from fern.config.schema import RunConfig

    store.store(name="run_schema", node=RunConfig)

    OmegaConf.register_new_resolver("fern.root", lambda: str(PROJECT_ROOT), replace=True)
    OmegaConf.register_new_resolver("fern.asset", lambda name: str(ASSETS_DIR / name), replace=True)
    OmegaConf.register_new_resolver("fern.models", lambda name="": str(models_dir() / name), replace=True)
    _registered = True
