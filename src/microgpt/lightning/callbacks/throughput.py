"""Tokens seen, tokens/s, samples/s and MFU, logged every N optimizer steps.

Only wall-clock time and batch shapes are read, never a tensor's value, so nothing here waits for
the device between logging points (on CUDA a synchronize where an interval starts and ends makes
the clock honest: two per N steps).
"""

from __future__ import annotations

import logging
import time

import lightning as L
import torch

from microgpt.core.flops import flops_per_token, resolve_peak_flops

log = logging.getLogger(__name__)


class Throughput(L.Callback):
    """Rates cover training alone: each interval starts at the first batch after a logging point, so
    work that other callbacks do at that point (samples, HellaSwag) and validation runs are left out."""

    def __init__(self, every_n_steps: int = 10, peak_flops: float | str | None = "auto") -> None:
        """`peak_flops`: FLOP/s of one device for MFU: a number, `auto` (the datasheet figure of a
        known GPU), `measure` (a timed matmul), or None for no MFU."""
        self.every_n_steps = max(1, every_n_steps)
        self.peak_flops = peak_flops
        self._peak: float | None = None
        self._interval_start: float | None = None  # None: the next batch starts an interval
        self._interval_step = 0
        self._warmed_up = False  # the steps before the first logging point hold start-up costs
        self._excluded = 0.0  # seconds of validation inside the current interval
        self._validation_start = 0.0
        self._samples_per_step = 0
        self._tokens_per_step = 0
        self._flops_per_token: float | None = None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._interval_start, self._warmed_up = None, False
        self._peak, source = resolve_peak_flops(self.peak_flops, pl_module.device, str(trainer.precision))
        if self._peak:
            log.info("MFU against %.3g FLOP/s per device (%s)", self._peak, source)
        elif self.peak_flops is not None:
            log.info("MFU not logged: %s; set callbacks.throughput.peak_flops=<FLOP/s> or =measure", source)

    def _now(self, pl_module) -> float:
        if pl_module.device.type == "cuda":  # queued kernels belong to the interval they were queued in
            torch.cuda.synchronize(pl_module.device)
        return time.perf_counter()

    def on_train_batch_start(self, trainer: L.Trainer, pl_module, batch, batch_idx: int) -> None:
        if self._warmed_up and self._interval_start is None:
            self._interval_start, self._interval_step, self._excluded = self._now(pl_module), trainer.global_step, 0.0

    def on_validation_start(self, trainer: L.Trainer, pl_module) -> None:
        self._validation_start = time.perf_counter()

    def on_validation_end(self, trainer: L.Trainer, pl_module) -> None:
        if self._interval_start is not None:
            self._excluded += time.perf_counter() - self._validation_start

    def _measure_batch(self, trainer: L.Trainer, pl_module, batch: torch.Tensor) -> None:
        rows, cols = batch.shape  # (batch, block_size + 1): inputs and shifted targets
        self._samples_per_step = rows * trainer.accumulate_grad_batches * trainer.world_size
        self._tokens_per_step = self._samples_per_step * (cols - 1)
        config = getattr(getattr(pl_module, "model", None), "config", None)
        if config is not None:
            self._flops_per_token = flops_per_token(config, seq_len=cols - 1)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if not self._tokens_per_step:
            self._measure_batch(trainer, pl_module, batch)
        step = trainer.global_step
        if step % self.every_n_steps or step == self._interval_step:
            return
        if self._interval_start is not None:
            elapsed = self._now(pl_module) - self._interval_start - self._excluded
            steps = step - self._interval_step
            tokens_per_sec = steps * self._tokens_per_step / elapsed
            pl_module.log("train/tokens_per_sec", tokens_per_sec, prog_bar=True)
            pl_module.log("train/samples_per_sec", steps * self._samples_per_step / elapsed)
            if self._peak and self._flops_per_token:
                pl_module.log("train/mfu", self._flops_per_token * tokens_per_sec / (self._peak * trainer.world_size))
        pl_module.log("train/tokens", float(step * self._tokens_per_step))
        self._interval_start, self._interval_step, self._warmed_up = None, step, True
