"""Tokens seen, tokens/s, samples/s and MFU of training, every N optimizer steps: Lightning's
`ThroughputMonitor`, with Fabric's `Throughput` doing the arithmetic and Fabric's
`get_available_flops` giving the peak.

What the subclass changes, and why:

- One update per logging interval, holding that interval's micro-batches, where Lightning updates
  after every micro-batch. Its update synchronizes CUDA, so that the clock counts queued kernels
  where they were queued; once a step that would stop the host from running ahead of the device.
  Here it is two synchronizations per N steps, and a window of two updates spans one interval.
- Training alone is timed. The clock stops at the update of a logging point and when validation
  starts, and goes on at the next training batch: validation, samples, HellaSwag and checkpoints
  are left out. (Lightning leaves out validation batches, yet counts what follows the last one,
  such as checkpointing; and logs validation rates with the validation batch index as the step.)
- The run's own metric names: `train/tokens_per_sec` and `train/samples_per_sec` of all ranks,
  `train/mfu` per device, and `train/tokens` since step 0 (a resumed run counts on).
- `time/process_s`, the wall seconds since the process started (start-up included), at every
  logging point and evaluation: what a time-to-quality curve is drawn against
  (`python -m microgpt.plot <run> --x seconds`).
- FLOPs from the closed form per token (`microgpt.core.flops.flops_per_token`) times the rate,
  where Lightning reads a `flops_per_batch` attribute of the module.
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass
from operator import attrgetter
from pathlib import Path
from unittest import mock

import lightning as L
import torch
from lightning.fabric.utilities.throughput import Throughput as FabricThroughput
from lightning.fabric.utilities.throughput import get_available_flops
from lightning.pytorch.callbacks import ThroughputMonitor
from lightning.pytorch.callbacks.throughput_monitor import _plugin_to_compute_dtype
from lightning.pytorch.trainer.states import RunningStage, TrainerFn
from lightning.pytorch.utilities.rank_zero import rank_zero_only

from microgpt.core.errors import ConfigError
from microgpt.core.flops import flops_per_token, measure_matmul_flops
from microgpt.lightning.objectives.base import batch_ids

log = logging.getLogger(__name__)
_IMPORTED_AT = time.time()

TRAINING = RunningStage.TRAINING

# torch names every H200 "NVIDIA H200", SXM and NVL alike. Lightning 2.6's table misses that name
# (its H200 rows want "sxm1"/"nvl1" in it, and hold the 2:4-sparse figures, twice the dense peak).
# An H200 SXM computes like an H100 SXM: the same GH100 tensor cores and clocks, more memory. So
# Fabric is asked under that name. An H200 NVL peaks ~15% lower: give its number (bf16: 835e12).
FABRIC_NAMES = {"NVIDIA H200": "NVIDIA H100 80GB HBM3"}


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else device.type


def fabric_peak_flops(device: torch.device, dtype: torch.dtype) -> int | None:
    """Fabric's dense datasheet peak FLOP/s of one device computing in `dtype` (fp32 counts as TF32
    where matmul precision allows it); None for a CPU or a GPU its table does not list."""
    alias = FABRIC_NAMES.get(device_name(device))
    if alias is None:
        return get_available_flops(device, dtype)
    with mock.patch.object(torch.cuda, "get_device_name", return_value=alias):  # Fabric reads the name itself
        return get_available_flops(device, dtype)


def given_flops(setting) -> float:
    """A `peak_flops` number (YAML may hand it over as a string, e.g. `2.5e12`)."""
    try:
        peak = math.nan if isinstance(setting, bool) else float(setting)
    except (TypeError, ValueError):
        peak = math.nan
    if not peak > 0:
        raise ConfigError(f"callbacks.throughput.peak_flops must be a positive number of FLOP/s (e.g. 989e12), "
                          f"auto, measure or null, got {setting!r}")
    return peak


def resolve_peak_flops(setting, device: torch.device, dtype: torch.dtype) -> tuple[float | None, str]:
    """The per-device peak FLOP/s MFU divides by, and where it came from.

    `setting`: a number (FLOP/s); `auto`: Fabric's table for this GPU in the run's compute dtype,
    else no MFU; `measure`: time a matmul here; null: no MFU. `auto` does not measure a CPU: on a
    busy machine a short measurement came out 10x low (MFU above 1), so that is left to the user.
    """
    if setting is None:
        return None, "off"
    if setting == "auto":
        peak = fabric_peak_flops(device, dtype)
        if peak is None:
            return None, f"no datasheet peak for {device_name(device)}"
        return float(peak), f"{device_name(device)}, {dtype}, Lightning Fabric's datasheet table"
    if setting == "measure":
        return measure_matmul_flops(device.type, dtype), f"measured {dtype} matmul on {device.type}"
    return given_flops(setting), "given"


@dataclass
class Interval:
    """What one rank trained on since the monitor's last update: its `batch_size_fn` and
    `length_fn` count these, not one micro-batch."""

    samples: int = 0
    tokens: int = 0

    def add(self, batch) -> None:
        rows, cols = batch_ids(batch).shape  # (batch, block_size + 1): inputs and shifted targets
        self.samples += rows
        self.tokens += rows * (cols - 1)


def process_start_time() -> float:
    """When this process started (seconds since the epoch): from /proc on Linux, else when this
    module was imported (which misses the interpreter's and torch's start-up)."""
    try:
        fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        started_after_boot = int(fields[19]) / os.sysconf("SC_CLK_TCK")  # field 22 of stat(5)
        return time.time() - (time.clock_gettime(time.CLOCK_BOOTTIME) - started_after_boot)
    except (OSError, ValueError, IndexError, AttributeError):
        return _IMPORTED_AT


class Throughput(ThroughputMonitor):
    """Logs train/tokens, and after the first interval (start-up costs) train/tokens_per_sec,
    train/samples_per_sec and train/mfu, every `every_n_steps` optimizer steps."""

    def __init__(self, every_n_steps: int = 10, peak_flops: float | str | None = "auto") -> None:
        """`peak_flops`: FLOP/s of one device for MFU: a number, `auto` (Fabric's datasheet figure
        for the GPU; none on a CPU), `measure` (a timed matmul), or None for no MFU."""
        super().__init__(batch_size_fn=attrgetter("samples"), length_fn=attrgetter("tokens"), window_size=2)
        self.every_n_steps = max(1, every_n_steps)
        self.peak_flops = peak_flops
        self._module_has_flops = False  # FLOPs come from the closed form, not a module attribute
        self._interval = Interval()
        self._last_step = 0
        self._paused_at: float | None = None  # the clock stands still from here to the next training batch
        self._process_start = process_start_time()

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != TrainerFn.FITTING:
            return  # the rates of training only; a validate() after fit() logs none
        dtype = _plugin_to_compute_dtype(trainer.precision_plugin)
        self.available_flops, source = resolve_peak_flops(self.peak_flops, trainer.strategy.root_device, dtype)
        if trainer.is_global_zero and self.available_flops:
            log.info("MFU against %.4g FLOP/s per device (%s)", self.available_flops, source)
        elif trainer.is_global_zero and self.peak_flops is not None:
            log.info("MFU not logged: %s; set callbacks.throughput.peak_flops=<FLOP/s> or =measure", source)
        self._throughputs[TRAINING] = FabricThroughput(
            available_flops=self.available_flops, world_size=trainer.world_size, **self.kwargs)

    @rank_zero_only
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_start(trainer)
        self._interval, self._last_step, self._paused_at = Interval(), trainer.global_step, None

    def _clock(self, trainer: L.Trainer) -> float:
        if trainer.strategy.root_device.type == "cuda":  # queued kernels belong to the time they were queued in
            torch.cuda.synchronize()
        return time.perf_counter()

    @rank_zero_only
    def on_train_batch_start(self, trainer: L.Trainer, pl_module, batch, batch_idx: int) -> None:
        if self._paused_at is not None:
            self._t0s[TRAINING] += self._clock(trainer) - self._paused_at
            self._paused_at = None

    @rank_zero_only
    def on_train_batch_end(self, trainer: L.Trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        self._interval.add(batch)
        step = trainer.global_step
        if step == self._last_step or step % self.every_n_steps:  # mid-accumulation, or no logging point
            return
        self._update(trainer, pl_module, self._interval, step)
        self._paused_at = time.perf_counter()
        self._interval, self._last_step = Interval(), step
        self._log(trainer, pl_module, batch)

    def _log(self, trainer: L.Trainer, pl_module: L.LightningModule, batch) -> None:
        rows, cols = batch_ids(batch).shape
        world = trainer.world_size
        tokens_per_step = rows * (cols - 1) * trainer.accumulate_grad_batches * world
        pl_module.log("train/tokens", float(trainer.global_step * tokens_per_step), rank_zero_only=True)
        self._log_process_seconds(pl_module)
        metrics = self._throughputs[TRAINING].compute()
        tokens_per_sec = metrics.get("device/items_per_sec")  # one rank's; absent until two updates
        if tokens_per_sec is None:
            return
        pl_module.log("train/tokens_per_sec", tokens_per_sec * world, prog_bar=True, rank_zero_only=True)
        pl_module.log("train/samples_per_sec", metrics["device/samples_per_sec"] * world, rank_zero_only=True)
        config = getattr(getattr(pl_module, "model", None), "config", None)
        if self.available_flops and config is not None:
            mfu = flops_per_token(config, seq_len=cols - 1) * tokens_per_sec / self.available_flops
            pl_module.log("train/mfu", mfu, rank_zero_only=True)

    @rank_zero_only
    def on_validation_start(self, trainer: L.Trainer, pl_module) -> None:
        if trainer.state.fn == TrainerFn.FITTING and not trainer.sanity_checking and self._paused_at is None:
            self._paused_at = self._clock(trainer)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.state.fn == TrainerFn.FITTING and not trainer.sanity_checking:
            self._log_process_seconds(pl_module)  # in the row of this evaluation's val/loss

    def _log_process_seconds(self, pl_module: L.LightningModule) -> None:
        pl_module.log("time/process_s", time.time() - self._process_start, rank_zero_only=True)

    def _not_timed(self, *args, **kwargs) -> None:
        """Evaluation loops: stopping the training clock (above) is all this callback does there."""

    on_validation_batch_end = on_validation_end = _not_timed
    on_test_start = on_test_batch_end = on_predict_start = on_predict_batch_end = _not_timed
