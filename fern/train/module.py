"""The LightningModule every task runs in: the task supplies the loss, validation metrics and export; this module
owns logging, the optimiser/schedule and what goes into checkpoints (trainable weights only: a LoRA checkpoint of
CSM-1B is megabytes, not 6 GB)."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch


class TaskModule(L.LightningModule):
    def __init__(self, task: Any, model: torch.nn.Module, tcfg: Any) -> None:
        super().__init__()
        self.task = task
        self.model = model
        self.tcfg = tcfg
        self.strict_loading = False  # checkpoints hold the trainable weights only
        self.step_losses: dict[int, list[float]] = {}
        self._first_loss: float | None = None
        self.resumed_from_step: int | None = None
        self.samples_seen = 0
        self._val_sums: dict[str, list[float]] = {}
        self.n_trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        self.n_total = sum(p.numel() for p in model.parameters())

    # ---- steps ------------------------------------------------------------------------------------------------
    def training_step(self, batch: Any, _batch_idx: int) -> torch.Tensor:
        loss, parts = self.task.loss(self.model, batch, train=True)
        n = self.task.batch_size(batch)
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=False, batch_size=n)
        for key, value in parts.items():
            self.log(f"train/{key}", value, on_step=True, on_epoch=False, batch_size=n)
        opt = self.optimizers(use_pl_optimizer=False) if self._trainer is not None else None
        if opt is not None:
            self.log("train/lr", float(opt.param_groups[0]["lr"]), on_step=True, on_epoch=False, batch_size=n)
        value = float(loss.detach())
        step = int(self.global_step)
        self.step_losses.setdefault(step, []).append(value)
        for old in [s for s in self.step_losses if s not in (min(self.step_losses), step)]:
            del self.step_losses[old]  # keep the first and the current step only
        self.samples_seen += n
        return loss

    def validation_step(self, batch: Any, _batch_idx: int) -> None:
        loss, parts = self.task.loss(self.model, batch, train=False)
        n = self.task.batch_size(batch)
        self.log("val/loss", loss, on_epoch=True, sync_dist=True, batch_size=n, prog_bar=True)
        for key, value in parts.items():
            self.log(f"val/{key}", value, on_epoch=True, sync_dist=True, batch_size=n)
        for key, (num, den) in self.task.val_metrics(self.model, batch).items():
            sums = self._val_sums.setdefault(key, [0.0, 0.0])
            sums[0] += float(num)
            sums[1] += float(den)

    def on_validation_epoch_start(self) -> None:
        self._val_sums = {}

    def on_validation_epoch_end(self) -> None:
        for key, (num, den) in self._val_sums.items():
            # ratio of sums (e.g. WER = word errors / reference words), summed over ranks first
            t = torch.tensor([num, den], dtype=torch.float64, device=self.device)
            t = self.trainer.strategy.reduce(t, reduce_op="sum") if self.trainer.world_size > 1 else t
            self.log(f"val/{key}", float(t[0] / t[1]) if t[1] > 0 else float("nan"), rank_zero_only=True)

    # ---- optimiser --------------------------------------------------------------------------------------------
    def configure_optimizers(self):
        from fern.train.loop import lr_lambda

        params = [p for p in self.model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=float(self.tcfg.lr), weight_decay=float(self.tcfg.weight_decay))
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lr_lambda(int(self.tcfg.warmup_steps), int(self.tcfg.max_steps), float(self.tcfg.min_lr_ratio)))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step", "frequency": 1}}

    # ---- checkpoints ------------------------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        trainable = {f"model.{n}" for n, p in self.model.named_parameters() if p.requires_grad}
        if len(trainable) < len(list(self.model.parameters())):
            checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in trainable}
        checkpoint["fern"] = {"first_loss": self.first_loss(), "samples_seen": self.samples_seen}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.resumed_from_step = int(checkpoint.get("global_step", 0))
        saved = checkpoint.get("fern", {})
        self._first_loss = saved.get("first_loss")

    # ---- figures for summary.json -----------------------------------------------------------------------------
    def first_loss(self) -> float | None:
        """Mean loss of the run's first optimiser step (the original run's, after a resume)."""
        if self._first_loss is not None:
            return self._first_loss
        if not self.step_losses:
            return None
        first = self.step_losses[min(self.step_losses)]
        return sum(first) / len(first)

    def last_loss(self) -> float | None:
        if not self.step_losses:
            return None
        last = self.step_losses[max(self.step_losses)]
        return sum(last) / len(last)
