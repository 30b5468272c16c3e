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


def _output_dir_or(output_dir: str | None, default: str) -> str:
    """``output_dir`` expanded like the app expands it (``~``), or ``default`` when it is unset or empty."""
    from pathlib import Path

    return str(Path(output_dir).expanduser()) if output_dir else default


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
    # Hydra's run directory: io.output_dir where set (as fern.app.output_dir_for reads it), else the default
    OmegaConf.register_new_resolver("fern.output_dir_or", _output_dir_or, replace=True)
    _registered = True
