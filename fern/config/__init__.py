"""Config composition helpers: schema registration and the resolvers our YAML uses.

Every module of the package that defines ``SCHEMAS = {group: {name: dataclass}}`` is registered in Hydra's
ConfigStore as ``schema/<group>/<name>``, so adding a backend is its module (with its schema) plus one preset file:
no list to keep. Modules are found by reading the source for that name, and only those are imported; they keep their
heavy imports inside functions, so this stays cheap (run.py imports it before Hydra parses the command line).
"""

from __future__ import annotations

import importlib
import re

from omegaconf import OmegaConf

from fern.paths import ASSETS_DIR, PROJECT_ROOT, models_dir

PACKAGE_DIR = PROJECT_ROOT / "fern"
_DEFINES_SCHEMAS = re.compile(r"^SCHEMAS\b.*=", re.MULTILINE)
_registered = False


def schema_modules() -> list[str]:
    """Dotted names of the modules that define SCHEMAS, in a stable order."""
    found = []
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        if _DEFINES_SCHEMAS.search(path.read_text(encoding="utf-8")):
            found.append(".".join(path.relative_to(PROJECT_ROOT).with_suffix("").parts))
    return found


def register() -> None:
    """Register schemas in Hydra's ConfigStore (as ``schema/<group>/<name>``) and our resolvers. Idempotent."""
    global _registered
    if _registered:
        return
    from hydra.core.config_store import ConfigStore

    store = ConfigStore.instance()
    for module_name in schema_modules():
        for group, schemas in importlib.import_module(module_name).SCHEMAS.items():
            for name, node in schemas.items():
                store.store(group=f"schema/{group}", name=name, node=node)
    from fern.config.schema import RunConfig

    store.store(name="run_schema", node=RunConfig)

    OmegaConf.register_new_resolver("fern.root", lambda: str(PROJECT_ROOT), replace=True)
    OmegaConf.register_new_resolver("fern.asset", lambda name: str(ASSETS_DIR / name), replace=True)
    OmegaConf.register_new_resolver("fern.models", lambda name="": str(models_dir() / name), replace=True)
    # the first argument that is set: ${fern.first:${io.output_dir},<default>} (oc.select keeps an explicit null)
    OmegaConf.register_new_resolver("fern.first", lambda *values: next((v for v in values if v is not None), None),
                                    replace=True)
    _registered = True
