"""FERN voice agent: `python run.py [group=option ...]`; `python run.py --help` lists every config group."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from fern.config import register
from fern.paths import CONF_DIR

register()


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="run")
def main(cfg: DictConfig) -> float | None:
    from fern.app import run_session

    return run_session(cfg)


if __name__ == "__main__":
    main()
