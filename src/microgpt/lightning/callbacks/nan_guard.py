"""Catch a loss that turned NaN or inf before it wrecks the weights (and the checkpoints after them).

Each optimizer step, before the update, the gradients' total norm is checked. The norm is the one
gradient clipping computed for that step (`GPTModule.configure_gradient_clipping` hands it to
`on_gradient_norm`, clipping on or off), so the check adds no norm and no collective of its own:
under DDP the gradients are already all-reduced and under FSDP the norm is the global one, so
every rank sees the same norm and takes the same decision.

- `action: stop` (default): the run stops with one error line naming the step and the last good
  checkpoint; the bad update is never applied, so no checkpoint ever holds NaN weights.
- `action: skip`: the bad batch's update is skipped (weights and optimizer state untouched), a
  warning is logged, and training goes on.

Fused AdamW (our default wherever it runs) skips an update on the device itself when given a
`found_inf` flag, the mechanism GradScaler uses, so on a GPU the check needs no host sync: the
flag is copied to pinned host memory without blocking and read at the next step, waiting only for
that copy (`bool()` of the device tensor would wait for every kernel queued behind it, the next
step's forward and backward too); every rank reads it at the same step. On CPU, or with an
optimizer that cannot skip by itself, it is read at once.
"""

from __future__ import annotations

import logging
from collections import deque
from pathlib import Path

import lightning as L
import torch

from microgpt.core.errors import ConfigError, TrainingDiverged
from microgpt.lightning.module import GPTModule

log = logging.getLogger(__name__)

ACTIONS = ("stop", "skip")


class NanGuard(L.Callback):
    def __init__(self, action: str = "stop") -> None:
        self.action = action  # checked in setup(): Hydra would wrap an error raised here in its own
        self.skipped_steps: list[int] = []
        self._pending: deque[tuple[int, torch.Tensor, torch.cuda.Event | None]] = deque()  # flags not read yet
        self._enabled = True

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self.action not in ACTIONS:
            raise ConfigError(f"callbacks.nan_guard.action must be one of {', '.join(ACTIONS)}, got {self.action!r}")
        if not isinstance(pl_module, GPTModule):  # nothing else calls on_gradient_norm: the guard would be idle
            raise ConfigError(f"callbacks.nan_guard needs microgpt's GPTModule (it reports the gradient norm), "
                              f"got {type(pl_module).__name__}; set callbacks.nan_guard=null")

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if getattr(trainer.precision_plugin, "scaler", None) is not None:
            # precision=16-mixed: the grad scaler skips overflowing steps itself, and owns `found_inf`.
            self._enabled = False
            log.info("nan_guard: off under a gradient scaler (precision=16-mixed skips non-finite steps itself)")

    def on_gradient_norm(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer, norm: torch.Tensor) -> None:
        if not self._enabled:
            return
        self._read_pending(trainer)  # the previous step's flag
        bad = ~torch.isfinite(norm)
        step = trainer.global_step + 1  # the step being taken, numbered like stepNNNNNN.ckpt
        optimizer = getattr(optimizer, "_optimizer", optimizer)  # a LightningOptimizer's torch optimizer
        if getattr(optimizer, "_step_supports_amp_scaling", False):  # fused: skips on the device
            optimizer.found_inf = bad.float()
            self._pending.append((step, *on_host_later(bad)))
            if pl_module.device.type == "cpu":  # reading it now costs nothing
                self._read_pending(trainer)
        elif bool(bad):
            if self.action == "stop":
                self._stop(trainer, step)
            for p in pl_module.parameters():
                p.grad = None  # optimizers leave parameters without gradients alone
            self._skipped(step)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._read_pending(trainer)  # the last steps' flags

    def _read_pending(self, trainer: L.Trainer) -> None:
        while self._pending:
            step, bad, copied = self._pending.popleft()
            if copied is not None:
                copied.synchronize()  # waits for the copy alone, not for the work queued after it
            if bool(bad):  # its update was already skipped on the device
                if self.action == "stop":
                    self._stop(trainer, step)
                self._skipped(step)

    def _skipped(self, step: int) -> None:
        self.skipped_steps.append(step)
        log.warning("step %d: the loss or gradients are NaN/inf; its update was skipped (%d skipped so far)",
                    step, len(self.skipped_steps))

    def _stop(self, trainer: L.Trainer, step: int) -> None:
        raise TrainingDiverged(
            f"the loss or gradients became NaN/inf at step {step}; training stopped before that update, "
            f"{last_checkpoint(trainer)}; lower optim.lr, keep gradient clipping on "
            f"(trainer.gradient_clip_val=1.0), or skip such batches with callbacks.nan_guard.action=skip"
        )


def on_host_later(flag: torch.Tensor) -> tuple[torch.Tensor, torch.cuda.Event | None]:
    """(a host copy of a CUDA flag, queued without blocking, and the event that marks it landed),
    or (the flag, None) for a flag already in host memory."""
    if flag.device.type != "cuda":
        return flag, None
    host = torch.empty(flag.shape, dtype=flag.dtype, pin_memory=True)
    host.copy_(flag, non_blocking=True)
    landed = torch.cuda.Event()
    landed.record()
    return host, landed


def last_checkpoint(trainer: L.Trainer) -> str:
    """Where the newest checkpoint on disk is, in words."""
    folders = {Path(cb.dirpath) for cb in trainer.checkpoint_callbacks if getattr(cb, "dirpath", None)}
    files = [p for folder in folders if folder.is_dir() for p in folder.glob("*.ckpt")]
    if not files:
        return "no checkpoint had been saved yet"
    return f"the last good checkpoint is {max(files, key=lambda p: p.stat().st_mtime)}"
