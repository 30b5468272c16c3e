"""FERN fine-tuning: `python train.py task=<csm_lora|whisper|llm_lora> data=<preset> [trainer=<preset>] [k=v ...]`;
`python train.py --help` lists every config group."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from fern.paths import CONF_DIR
from fern.train.loop import register

register()


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="train")
def main(cfg: DictConfig) -> float | None:
    from fern.train.loop import run_training

    return run_training(cfg)


if __name__ == "__main__":
    main()
