"""Project-anchored paths, so nothing depends on the working directory."""

from __future__ import annotations

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
CONF_DIR = PROJECT_ROOT / "conf"
ASSETS_DIR = PROJECT_ROOT / "assets"
TRACKING_DIR = PROJECT_ROOT / "tracking"


def models_dir() -> Path:
    """Where set-up puts offline model files (git-ignored); FERN_MODELS_DIR overrides it."""
    return Path(os.environ.get("FERN_MODELS_DIR", PROJECT_ROOT / "models"))
