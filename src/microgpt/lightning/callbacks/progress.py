"""Progress: a live bar on a terminal; one plain log line every N steps anywhere else (CI, SLURM).

Both know the run's length (the train loader is endless), so both show an ETA. And the model
summary at the start, as log lines (console and train.log) rather than a table printed past them.
"""

from __future__ import annotations

import logging
import sys
import time

import lightning as L
from lightning.pytorch.callbacks import ModelSummary, ProgressBar, TQDMProgressBar
from lightning.pytorch.utilities.model_summary.model_summary import _format_summary_table

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


class ModelSummaryLines(ModelSummary):
    """Lightning's model summary through the run's log, without FLOPs it did not count.

    Lightning counts FLOPs only for a module with an `example_input_array`; ours has none (the
    throughput callback computes FLOPs in closed form), so its table said `Total FLOPs: 0`. Its
    rich variant also printed straight to the console, missing train.log.
    """

    @staticmethod
    def summarize(summary_data, total_parameters, trainable_parameters, model_size, total_training_modes,
                  total_flops, **summarize_kwargs) -> None:
        if not total_flops:
            summary_data = [column for column in summary_data if column[0] != "FLOPs"]
        table = _format_summary_table(total_parameters, trainable_parameters, model_size, total_training_modes,
                                      total_flops, *summary_data)
        if not total_flops:
            table = "\n".join(line for line in table.splitlines() if not line.rstrip().endswith("Total Flops"))
        log.info("model summary:\n%s", table)


def use_summary_lines(trainer: L.Trainer) -> None:
    """Swap the model summary Lightning added for `enable_model_summary=true` for ModelSummaryLines
    (a summary callback the config chose itself stays)."""
    for i, callback in enumerate(trainer.callbacks):
        if type(callback).__name__ in ("ModelSummary", "RichModelSummary") and type(callback).__module__.startswith("lightning."):
            trainer.callbacks[i] = ModelSummaryLines(max_depth=callback._max_depth)
