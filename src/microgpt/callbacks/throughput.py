"""Tokens seen and tokens/s, logged every N optimizer steps without a host sync in between."""

from __future__ import annotations

import time

import lightning as L
import torch


class Throughput(L.Callback):
    def __init__(self, every_n_steps: int = 10) -> None:
        self.every_n_steps = max(1, every_n_steps)
        self._last_time: float | None = None
        self._last_step = 0
        self._tokens_per_step = 0

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._last_time, self._last_step = None, trainer.global_step

    def on_train_batch_end(self, trainer: L.Trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if not self._tokens_per_step:
            rows, cols = batch.shape
            self._tokens_per_step = rows * (cols - 1) * trainer.accumulate_grad_batches * trainer.world_size
        step = trainer.global_step
        if step == self._last_step or step % self.every_n_steps:
            return
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        now = time.perf_counter()
        if self._last_time is not None:
            elapsed = now - self._last_time
            tokens = (step - self._last_step) * self._tokens_per_step
            pl_module.log("train/tokens_per_sec", tokens / elapsed, prog_bar=True)
        pl_module.log("train/tokens", float(step * self._tokens_per_step))
        self._last_time, self._last_step = now, step
