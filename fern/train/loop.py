"""One training run: config schemas of train.py, MLflow (Lightning's MLFlowLogger on the project's store), the
Lightning Trainer, the export and ``<out_dir>/summary.json``.

Order matters for the user: the data source is checked first (seconds), then MLflow is opened (an unusable store fails
before minutes of model loading), then data is prepared (audio decoded / encoded once and cached), then the model.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from omegaconf import MISSING

from fern.config.schema import TrackingConfig
from fern.errors import ConfigValueError, FernError

log = logging.getLogger("fern.train")


# ---- schemas ----------------------------------------------------------------------------------------------------
@dataclass
class TrainerConfig:
    """Lightning Trainer settings plus the optimiser and schedule (AdamW, linear warm-up then cosine)."""

    accelerator: str = "auto"  # auto | cpu | gpu
    devices: Any = 1  # an int, a list of ids, or "auto"
    num_nodes: int = 1
    strategy: str = "auto"  # auto | ddp | ddp_spawn | fsdp (FSDP wraps the task's decoder layers, FULL state dicts)
    precision: str = "auto"  # auto: bf16-mixed on a GPU with bf16, else 32-true; or any Lightning precision
    max_steps: int = 60  # optimiser steps
    batch_size: int = 8  # per device
    accumulate_grad_batches: int = 1
    lr: float = 2e-4
    weight_decay: float = 0.0
    warmup_steps: int = 5
    min_lr_ratio: float = 0.1  # the cosine ends at lr * min_lr_ratio
    gradient_clip_val: Optional[float] = 1.0
    val_every_n_steps: Optional[int] = None  # null: validate once, after the last step
    limit_val_batches: Optional[int] = None
    checkpoint_every_n_steps: int = 50
    resume: bool = False  # continue from <out_dir>/checkpoints/last.ckpt (pass the earlier run's out_dir)
    log_every_n_steps: int = 1
    progress_bar: bool = True
    num_workers: int = 0
    deterministic: bool = False


@dataclass
class ModelConfig:
    size: str = "full"  # full: the checkpoint in ``name`` | tiny: a random tiny config of the same architecture
    name: Optional[str] = "${task.base_model}"  # hub id or local dir; default: the task's
    gguf_file: Optional[str] = "${task.base_gguf_file}"  # a GGUF file inside ``name`` (llm_lora)
    dtype: str = "auto"  # auto: bf16 on a GPU with bf16, else float32 | float32 | bfloat16 | float16
    random_weights: bool = False  # full-size architecture with random weights (benchmarks; no download)


@dataclass
class TrainConfig:
    task: Any = MISSING
    data: Any = MISSING
    trainer: TrainerConfig = MISSING
    tracking: TrackingConfig = MISSING
    model: ModelConfig = field(default_factory=ModelConfig)
    out_dir: Optional[str] = None  # null: the Hydra run directory (outputs/train/<time>)
    device: str = "auto"  # used by data preparation (Mimi encoding); training follows trainer.accelerator
    seed: int = 0


SCHEMAS: dict[str, dict[str, type]] = {"trainer": {"trainer": TrainerConfig}}

TASKS = {"csm_lora": "fern.train.csm:CsmLoraTask", "whisper": "fern.train.whisper:WhisperTask",
         "llm_lora": "fern.train.llm:LlmLoraTask"}


def register() -> None:
    """fern.config.register() plus train.py's root schema (``train_schema``). Idempotent."""
    from hydra.core.config_store import ConfigStore

    from fern.config import register as register_schemas

    register_schemas()
    ConfigStore.instance().store(name="train_schema", node=TrainConfig)


# ---- helpers ----------------------------------------------------------------------------------------------------
def out_dir_for(cfg: Any) -> Path:
    if cfg.get("out_dir"):
        return Path(str(cfg.out_dir)).expanduser().resolve()
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():
        return Path(HydraConfig.get().runtime.output_dir)
    raise ConfigValueError("out_dir is not set and Hydra is not running: pass out_dir=<dir>")


def make_task(cfg: Any):
    import importlib

    kind = cfg.task.kind
    if kind not in TASKS:
        raise ConfigValueError(f"task.kind={kind} is not one of {', '.join(TASKS)}")
    module, _, name = TASKS[kind].partition(":")
    return getattr(importlib.import_module(module), name)(cfg)


def resolve_precision(tcfg: Any) -> str:
    if tcfg.precision != "auto":
        return str(tcfg.precision)
    import torch

    if tcfg.accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return "bf16-mixed"
    return "32-true"


def lr_lambda(warmup: int, total: int, min_ratio: float):
    """Linear warm-up to 1 over ``warmup`` steps, then cosine down to ``min_ratio`` at ``total``."""
    import math

    def f(step: int) -> float:
        if warmup > 0 and step < warmup:
            return (step + 1) / warmup
        span = max(1, total - warmup)
        progress = min(1.0, (step - warmup) / span)
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return f


def _mlflow_logger(cfg: Any, out_dir: Path, run_name: str, tags: dict[str, str]):
    """Lightning's MLFlowLogger on the same store as run.py (its own default is a file store). A resumed run reopens
    its MLflow run (id kept in <out_dir>/mlflow_run.json), so the step series continues there."""
    from lightning.pytorch.loggers import MLFlowLogger

    from fern.errors import ServiceError
    from fern.tracking.mlflow_tracker import resolve_tracking_uri, strip_credentials

    uri = resolve_tracking_uri(cfg.tracking.tracking_uri)
    location = None
    if uri.startswith("sqlite:///"):
        db = Path(uri[len("sqlite:///"):])
        db.parent.mkdir(parents=True, exist_ok=True)
        location = (db.parent / "artifacts").resolve().as_uri()  # beside the DB, as MlflowTracker does
    run_id = None
    marker = out_dir / "mlflow_run.json"
    if cfg.trainer.resume and marker.is_file():
        saved = json.loads(marker.read_text())
        if saved.get("tracking_uri") == strip_credentials(uri):
            run_id = saved.get("run_id")
    try:
        logger = MLFlowLogger(experiment_name=cfg.tracking.experiment, run_name=run_name, tracking_uri=uri,
                              tags=tags, artifact_location=location, run_id=run_id,
                              synchronous=False)  # metrics queue in the background: a SQLite write per step is slow
        _ = logger.experiment, logger.run_id  # create the experiment / run now: an unusable store fails here
    except Exception as exc:
        raise ServiceError(f"MLflow tracking at {strip_credentials(uri)} is unusable ({type(exc).__name__}: "
                           f"{strip_credentials(str(exc))[:300]}); fix MLFLOW_TRACKING_URI / tracking.tracking_uri or "
                           f"run with tracking.enabled=false") from exc
    return logger, strip_credentials(uri)


def _log_params(logger: Any, params: dict[str, Any], resumed: bool) -> None:
    """Redacted, flattened config. A resumed run keeps its earlier values (MLflow refuses to change a param)."""
    from mlflow.entities import Param

    from fern.tracking.mlflow_tracker import redact

    clean = {k: ("null" if v is None else str(v))[:500] for k, v in redact(params).items()}
    client, run_id = logger.experiment, logger.run_id
    if resumed:
        have = client.get_run(run_id).data.params
        clean = {k: v for k, v in clean.items() if k not in have}
    items = [Param(k, v) for k, v in clean.items()]
    for i in range(0, len(items), 100):
        client.log_batch(run_id, params=items[i:i + 100])


def _run_name(cfg: Any) -> str:
    if cfg.tracking.run_name:
        return str(cfg.tracking.run_name)
    from hydra.core.hydra_config import HydraConfig

    base = f"train-{cfg.task.kind}"
    if HydraConfig.initialized():
        over = HydraConfig.get().job.override_dirname
        return f"{base}-{over}" if over else base
    return base


# ---- the run ----------------------------------------------------------------------------------------------------
def train(cfg: Any) -> dict[str, Any]:
    """Run one fine-tune and return its summary (also written to <out_dir>/summary.json)."""
    from omegaconf import OmegaConf

    from fern.tracking.mlflow_tracker import git_sha, redact_tree

    t0 = time.perf_counter()
    out_dir = out_dir_for(cfg)
    out_dir.mkdir(parents=True, exist_ok=True)
    task = make_task(cfg)
    task.read()  # the data source exists and has rows: checked before anything heavy is imported or loaded

    import lightning as L

    L.seed_everything(int(cfg.seed), workers=True, verbose=False)
    tcfg = cfg.trainer
    ckpt_dir = out_dir / "checkpoints"
    ckpt_path = None
    if tcfg.resume:
        last = ckpt_dir / "last.ckpt"
        if not last.is_file():
            raise ConfigValueError(f"trainer.resume=true but {last} does not exist; pass out_dir=<the run to resume>")
        ckpt_path = str(last)

    logger, display_uri = None, None
    if cfg.tracking.enabled and _launching_rank_zero():
        logger, display_uri = _mlflow_logger(cfg, out_dir, _run_name(cfg), {
            "git_sha": git_sha(), "host": socket.gethostname(), "task": cfg.task.kind, "entry": "train.py"})

    resolved = OmegaConf.to_container(cfg, resolve=True)
    (out_dir / "config.yaml").write_text(OmegaConf.to_yaml(redact_tree(resolved)))
    status = "FAILED"
    try:
        train_set, val_set = task.prepare()
        if not train_set:
            from fern.train.data import nothing_left

            raise nothing_left(cfg.data.kind, task.skips)
        log.info("data: %d train, %d validation rows, %d skipped", len(train_set), len(val_set), len(task.skips))
        model = task.build_model()
        model.train()  # loaders return eval-mode models (dropout off); LoRA dropout etc. must train
        summary = _fit(cfg, task, model, train_set, val_set, out_dir, ckpt_dir, ckpt_path, logger, resolved)
        summary["wall_s"] = round(time.perf_counter() - t0, 2)
        if logger is not None:
            summary["mlflow_run_id"], summary["tracking_uri"] = logger.run_id, display_uri
        if summary.get("is_global_zero", True):
            summary.pop("is_global_zero", None)
            path = out_dir / "summary.json"
            path.write_text(json.dumps(summary, indent=1))
            if logger is not None:
                client = logger.experiment
                for f in (path, out_dir / "config.yaml"):
                    client.log_artifact(logger.run_id, str(f))
                metrics = {k: summary[k] for k in ("first_loss", "last_loss", "val_loss", "val_wer", "wall_s")
                           if isinstance(summary.get(k), (int, float))}
                metrics["skipped_rows"] = summary["skipped_rows"]["count"]
                logger.log_metrics({f"summary/{k}": float(v) for k, v in metrics.items()}, step=summary["steps"])
            print(f"summary: {path}")
        status = "FINISHED"
        return summary
    finally:
        if logger is not None:
            import mlflow

            mlflow.flush_async_logging()
            logger.finalize("success" if status == "FINISHED" else "failed")
            if display_uri:
                print(f"mlflow run {logger.run_id} in {display_uri}")


def _fit(cfg, task, model, train_set, val_set, out_dir, ckpt_dir, ckpt_path, logger, resolved) -> dict[str, Any]:
    import lightning as L
    from lightning.pytorch.callbacks import ModelCheckpoint
    from torch.utils.data import DataLoader

    from fern.tracking.mlflow_tracker import flatten
    from fern.train.module import TaskModule

    tcfg = cfg.trainer
    module = TaskModule(task, model, tcfg)
    loader = DataLoader(train_set, batch_size=int(tcfg.batch_size), shuffle=True, collate_fn=task.collate,
                        num_workers=int(tcfg.num_workers), drop_last=False)
    val_loader = DataLoader(val_set, batch_size=int(tcfg.batch_size), shuffle=False, collate_fn=task.collate,
                            num_workers=int(tcfg.num_workers))
    # only last.ckpt, rewritten every N steps and at the end; with LoRA it holds the adapter + optimiser state only
    checkpoint = ModelCheckpoint(dirpath=str(ckpt_dir), save_last=True, save_top_k=0, enable_version_counter=False,
                                 every_n_train_steps=int(tcfg.checkpoint_every_n_steps), save_on_train_epoch_end=False)
    strategy: Any = tcfg.strategy
    if strategy == "fsdp":
        from lightning.pytorch.strategies import FSDPStrategy

        strategy = FSDPStrategy(auto_wrap_policy=set(task.layer_classes(model)), use_orig_params=True,
                                state_dict_type="full")
    val_kw: dict[str, Any] = {"limit_val_batches": tcfg.limit_val_batches}
    if tcfg.val_every_n_steps:
        val_kw.update(val_check_interval=int(tcfg.val_every_n_steps) * int(tcfg.accumulate_grad_batches),
                      check_val_every_n_epoch=None)
    trainer = L.Trainer(
        accelerator=tcfg.accelerator, devices=tcfg.devices, num_nodes=int(tcfg.num_nodes), strategy=strategy,
        precision=resolve_precision(tcfg), max_steps=int(tcfg.max_steps), max_epochs=-1,
        accumulate_grad_batches=int(tcfg.accumulate_grad_batches), gradient_clip_val=tcfg.gradient_clip_val,
        log_every_n_steps=int(tcfg.log_every_n_steps), enable_progress_bar=bool(tcfg.progress_bar),
        callbacks=[checkpoint], logger=logger if logger is not None else False, default_root_dir=str(out_dir),
        num_sanity_val_steps=0, deterministic=bool(tcfg.deterministic), enable_model_summary=False, **val_kw)
    if logger is not None and trainer.is_global_zero:
        _log_params(logger, {**flatten(resolved), "data.train_rows": len(train_set), "data.val_rows": len(val_set),
                             "data.skipped_rows": len(task.skips), "model.trainable_params": module.n_trainable,
                             "model.total_params": module.n_total}, resumed=ckpt_path is not None)
        (out_dir / "mlflow_run.json").write_text(json.dumps({"run_id": logger.run_id,  # what a resume reopens
                                                             "tracking_uri": _display(logger._tracking_uri)}))
    t_fit = time.perf_counter()
    trainer.fit(module, train_dataloaders=loader, val_dataloaders=val_loader if tcfg.val_every_n_steps else None,
                ckpt_path=ckpt_path)
    fit_s = time.perf_counter() - t_fit
    trainer.save_checkpoint(str(ckpt_dir / "last.ckpt"))  # the final step too, whatever checkpoint_every_n_steps
    if module.resumed_from_step is not None and logger is not None and trainer.is_global_zero:
        logger.experiment.set_tag(logger.run_id, "resumed_from_step", str(module.resumed_from_step))
    val = trainer.validate(module, dataloaders=val_loader, verbose=False)
    val_metrics = {k.replace("val/", "val_"): float(v) for k, v in (val[0] if val else {}).items()}
    exported: dict[str, Any] = {}
    state = trainer.strategy.lightning_module_state_dict()  # collective under FSDP: every rank calls it
    if trainer.is_global_zero:
        prefix = "model."
        exported = task.export(model, {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)},
                               out_dir, resolved)
    steps_run = trainer.global_step - (module.resumed_from_step or 0)
    summary = {
        "task": cfg.task.kind, "data": cfg.data.kind, "model": {"size": cfg.model.size, "name": cfg.model.name},
        "out_dir": str(out_dir), "steps": int(trainer.global_step), "steps_this_run": int(steps_run),
        "resumed_from_step": module.resumed_from_step,
        "first_loss": module.first_loss(), "last_loss": module.last_loss(), **val_metrics,
        "train_rows": len(train_set), "val_rows": len(val_set), "val_is_train": task.val_is_train,
        "skipped_rows": task.skips.summary(), "trainable_params": module.n_trainable, "total_params": module.n_total,
        "fit_s": round(fit_s, 2), "samples_per_s": round(module.samples_seen / fit_s, 3) if fit_s > 0 else None,
        "world_size": trainer.world_size, "precision": str(trainer.precision),
        "checkpoint": str(out_dir / "checkpoints" / "last.ckpt"), **exported,
        "is_global_zero": trainer.is_global_zero,
    }
    return summary


def _launching_rank_zero() -> bool:
    """True in the process that started the run (DDP children started by Lightning carry LOCAL_RANK/NODE_RANK)."""
    if "RANK" in os.environ:
        return os.environ["RANK"] == "0"
    return os.environ.get("LOCAL_RANK", "0") == "0" and os.environ.get("NODE_RANK", "0") == "0"


def _display(uri: str) -> str:
    from fern.tracking.mlflow_tracker import strip_credentials

    return strip_credentials(uri)


def run_training(cfg: Any) -> float | None:
    """train.py's body: logging set-up, one line and exit 2 on a user error; returns val_loss (for sweepers)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    for noisy in ("httpx", "urllib3", "alembic", "mlflow", "datasets", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    try:
        summary = train(cfg)
    except FernError as exc:
        print(f"fern: error: {exc}", file=sys.stderr)
        sys.exit(2)
    return summary.get("val_loss")
