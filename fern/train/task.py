"""What every task shares: the LoRA settings schema, peft wrapping, and the Task base class the loop drives.

A task: ``read()`` (cheap: find the rows, fail fast), ``prepare()`` -> (train items, val items) (decode / encode /
tokenize; bad rows go to ``skips``), ``build_model()``, ``collate``, ``loss(model, batch, train)`` -> (loss, parts),
``val_metrics`` -> {name: (numerator, denominator)}, ``export(model, state_dict, out_dir, config)`` -> summary
entries (``adapter`` or ``export``: the path run.py loads).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fern.train.data import Skips


@dataclass
class LoraSettings:
    r: int = 32
    alpha: int = 32
    dropout: float = 0.0
    # a regex (matched against the whole module name) or a list of module-name suffixes
    target_modules: Any = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                                        "up_proj", "down_proj"])


def apply_lora(model: Any, settings: Any):
    """Freeze ``model`` and wrap it with fresh peft LoRA layers (only those train)."""
    from omegaconf import ListConfig, OmegaConf
    from peft import LoraConfig, get_peft_model

    targets = settings.target_modules
    if isinstance(targets, ListConfig):
        targets = OmegaConf.to_container(targets)
    config = LoraConfig(r=int(settings.r), lora_alpha=int(settings.alpha), lora_dropout=float(settings.dropout),
                        target_modules=targets, bias="none")
    return get_peft_model(model, config)


def save_adapter(model: Any, state_dict: dict | None, path: Path, config: dict) -> Path:
    """peft adapter (adapter_model.safetensors + adapter_config.json) plus the config it was trained with."""
    from omegaconf import OmegaConf

    from fern.tracking.mlflow_tracker import redact_tree

    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(path), state_dict=state_dict, safe_serialization=True)
    (path / "fern_train.yaml").write_text(OmegaConf.to_yaml(redact_tree(config)))
    return path


class Task:
    """Base of the three tasks (see the module docstring)."""

    def __init__(self, cfg: Any) -> None:
        self.cfg = cfg
        self.skips = Skips()
        self.val_is_train = False

    def read(self) -> None:
        raise NotImplementedError

    def prepare(self) -> tuple[list, list]:
        raise NotImplementedError

    def build_model(self) -> Any:
        raise NotImplementedError

    def collate(self, items: list) -> Any:
        raise NotImplementedError

    def loss(self, model: Any, batch: Any, train: bool) -> tuple[Any, dict[str, Any]]:
        raise NotImplementedError

    def batch_size(self, batch: Any) -> int:
        return int(batch["input_ids"].shape[0])

    def val_metrics(self, model: Any, batch: Any) -> dict[str, tuple[float, float]]:
        return {}

    def layer_classes(self, model: Any) -> set[type]:
        """Module classes FSDP wraps one by one (the decoder layers)."""
        return {type(m) for m in model.modules() if type(m).__name__.endswith("DecoderLayer")}

    def export(self, model: Any, state_dict: dict, out_dir: Path, config: dict) -> dict[str, Any]:
        raise NotImplementedError

    # ---- shared helpers ---------------------------------------------------------------------------------------
    def train_device(self) -> str:
        """Where the model will train (for the dtype choice)."""
        import torch

        acc = str(self.cfg.trainer.accelerator)
        return "cuda" if acc in ("gpu", "cuda") or (acc == "auto" and torch.cuda.is_available()) else "cpu"

    def model_dtype(self):
        from fern.devices import resolve_torch_dtype

        return resolve_torch_dtype(str(self.cfg.model.dtype), self.train_device(), "model.dtype", half=True)

    def split(self, items: list, fraction: float, seed: int) -> tuple[list, list]:
        from fern.train.data import split

        self.val_is_train = fraction <= 0 or len(items) < 2
        return split(items, fraction, seed)
