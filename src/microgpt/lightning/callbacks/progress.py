"""Progress: a live bar on a terminal; one plain log line every N steps anywhere else (CI, SLURM).

Both know the run's length (the train loader is endless), so both show an ETA.
"""

from __future__ import annotations

import logging
import sys
import time

import lightning as L
from lightning.pytorch.callbacks import ProgressBar, TQDMProgressBar

log = logging.getLogger(__name__)


def progress_bar(refresh_rate: int = 10, log_every_n_steps: int = 50, plain: bool | None = None) -> ProgressBar:
    """The progress display for where stdout goes: a tqdm bar on a terminal, log lines otherwise
    (a redrawn bar in a log file is thousands of carriage returns). `plain` forces either."""
    if plain is None:
        plain = not sys.stdout.isatty()
    return StepLogLines(every_n_steps=log_every_n_steps) if plain else StepProgressBar(refresh_rate=refresh_rate)


class StepProgressBar(TQDMProgressBar):
    @property
    def total_train_batches(self) -> int | float:
        trainer = self.trainer
        if trainer.max_steps and trainer.max_steps > 0:
            return trainer.max_steps * trainer.accumulate_grad_batches
        return super().total_train_batches

    def get_metrics(self, trainer, pl_module) -> dict:
        metrics = super().get_metrics(trainer, pl_module)
        metrics.pop("v_num", None)  # the logger's version number: noise on the bar
        return metrics


def format_duration(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}"


class StepLogLines(ProgressBar):
    """`step 120/800 (15%) | loss 2.3412 | val/loss 2.4107 | 12,345 tok/s | elapsed 0:01:02 | eta 0:05:40`"""

    def __init__(self, every_n_steps: int = 50) -> None:
        super().__init__()
        self.every_n_steps = max(1, every_n_steps)
        self._enabled = True
        self._start_time = 0.0
        self._start_step = 0
        self._last_step = -1

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    def on_train_start(self, trainer: L.Trainer, pl_module) -> None:
        self._start_time, self._start_step = time.perf_counter(), trainer.global_step

    def on_train_batch_end(self, trainer: L.Trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        step = trainer.global_step
        if step == self._last_step or not (step % self.every_n_steps == 0 or step == trainer.max_steps):
            return
        self._last_step = step
        if self._enabled and trainer.is_global_zero:
            log.info(self.line(trainer, pl_module))

    def on_validation_end(self, trainer: L.Trainer, pl_module) -> None:
        if self._enabled and trainer.is_global_zero and not trainer.sanity_checking:
            metrics = self.get_metrics(trainer, pl_module)
            values = " | ".join(f"{k} {v:.4f}" for k, v in metrics.items() if k.startswith("val/"))
            log.info("step %d validation | %s", trainer.global_step, values)

    def line(self, trainer: L.Trainer, pl_module) -> str:
        step, total = trainer.global_step, trainer.max_steps
        parts = [f"step {step}/{total} ({100 * step / total:.0f}%)" if total and total > 0 else f"step {step}"]
        metrics = self.get_metrics(trainer, pl_module)
        if "train/loss" in metrics:
            parts.append(f"loss {metrics['train/loss']:.4f}")
        if "val/loss" in metrics:
            parts.append(f"val/loss {metrics['val/loss']:.4f}")
        if "train/tokens_per_sec" in metrics:
            parts.append(f"{metrics['train/tokens_per_sec']:,.0f} tok/s")
        elapsed = time.perf_counter() - self._start_time
        parts.append(f"elapsed {format_duration(elapsed)}")
        done = step - self._start_step
        if total and total > 0 and done > 0:
            parts.append(f"eta {format_duration(elapsed / done * (total - step))}")
        return " | ".join(parts)
