"""The numbers a run is built from: world size, micro-batch, gradient accumulation, tokens per
step, and a per-device memory estimate, derived from the composed config before anything runs."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass

import torch
from omegaconf import DictConfig

from microgpt.core.errors import ConfigError, require_positive_int
from microgpt.core.model import GPT, GPTConfig

ADAM_STATE_BYTES = 16  # fp32 weights 4 + gradients 4 + Adam moments 8, per parameter
GIB = 1024**3


@dataclass(frozen=True)
class RunPlan:
    world_size: int
    micro_batch: int
    block_size: int
    accumulate: int
    tokens_per_step: int
    params: int
    sharded: bool
    state_gib: float       # weights, gradients, optimizer state on one device
    activation_gib: float  # activations of one micro-batch on one device
    memory_gib: float

    def table(self) -> str:
        rows = asdict(self)
        width = max(map(len, rows))
        def show(v) -> str:
            return f"{v:,.2f}" if isinstance(v, float) else str(v) if isinstance(v, bool) else f"{v:,}"

        return "\n".join(f"{k:<{width}}  {show(v)}" for k, v in rows.items())


def world_size(trainer: DictConfig) -> int:
    devices = trainer.get("devices", 1)
    if devices in ("auto", -1, "-1"):
        devices = torch.cuda.device_count() if trainer.get("accelerator") == "gpu" else 1
    if isinstance(devices, (list, tuple)) or hasattr(devices, "__len__") and not isinstance(devices, str):
        devices = len(devices)
    return require_positive_int("trainer.devices", int(devices)) * require_positive_int("trainer.num_nodes", trainer.get("num_nodes", 1))


def gradient_accumulation(global_batch_tokens: int | None, per_micro_step_tokens: int, configured: int) -> int:
    """Micro-batches per optimizer step; derived from the global batch over all devices and nodes."""
    if global_batch_tokens is None:
        return configured
    require_positive_int("global_batch_tokens", global_batch_tokens)
    if global_batch_tokens % per_micro_step_tokens:
        raise ConfigError(
            f"global_batch_tokens={global_batch_tokens:,} is not a multiple of data.batch_size x data.block_size x "
            f"devices x nodes = {per_micro_step_tokens:,}; change data.batch_size or global_batch_tokens"
        )
    accumulate = global_batch_tokens // per_micro_step_tokens
    if configured not in (1, accumulate):
        raise ConfigError(f"trainer.accumulate_grad_batches={configured} contradicts global_batch_tokens, which "
                          f"needs {accumulate}; drop one of the two")
    return accumulate


def is_sharded(trainer: DictConfig) -> bool:
    strategy = trainer.get("strategy")
    name = strategy.get("_target_", "") if hasattr(strategy, "get") else str(strategy)
    return "fsdp" in name.lower() or "deepspeed" in name.lower()


def activation_bytes(config: GPTConfig, micro_batch: int, block: int, precision: str, checkpointing: bool) -> int:
    """Korthikanti et al. (2022): ~34 bytes x tokens x width per layer in 16-bit with fused attention
    (no T x T score matrix kept); fp32 doubles it; activation checkpointing keeps only layer inputs.
    Plus the logits, kept in 16-bit and in fp32 for the loss."""
    tokens = micro_batch * block
    per_layer = (2 if checkpointing else 34) * tokens * config.n_embd
    width = 1 if "16" in str(precision) else 2
    logits = tokens * config.padded_vocab_size * (2 + 4 if width == 1 else 8)
    return config.n_layer * per_layer * width + logits


def make_plan(cfg: DictConfig, model_config: GPTConfig) -> RunPlan:
    world = world_size(cfg.trainer)
    micro = require_positive_int("data.batch_size", cfg.data.batch_size)
    block = require_positive_int("data.block_size", cfg.data.block_size)
    accumulate = gradient_accumulation(cfg.get("global_batch_tokens"), micro * block * world,
                                       require_positive_int("trainer.accumulate_grad_batches",
                                                            cfg.trainer.get("accumulate_grad_batches", 1)))
    with torch.device("meta"):
        params = GPT(model_config).count_params()
    sharded = is_sharded(cfg.trainer)
    state = params * ADAM_STATE_BYTES / (world if sharded else 1)
    strategy = cfg.trainer.get("strategy")
    checkpointing = bool(hasattr(strategy, "get") and strategy.get("activation_checkpointing_policy"))
    activations = activation_bytes(model_config, micro, block, cfg.trainer.get("precision", "32"), checkpointing)
    return RunPlan(world, micro, block, accumulate, micro * block * world * accumulate, params, sharded,
                   state / GIB, activations / GIB, (state + activations) / GIB)


def check_devices_available(trainer: DictConfig, plan: RunPlan) -> None:
    per_node = plan.world_size // trainer.get("num_nodes", 1)
    accelerator = trainer.get("accelerator", "cpu")
    if accelerator in ("gpu", "cuda"):
        visible = torch.cuda.device_count()
        if per_node > visible:
            raise ConfigError(f"trainer.devices={per_node} GPUs requested but {visible} visible on this machine; "
                              f"lower trainer.devices or use trainer=cpu")
    elif accelerator == "cpu" and per_node > (os.cpu_count() or 1):
        raise ConfigError(f"trainer.devices={per_node} CPU processes requested but this machine has "
                          f"{os.cpu_count()} cores; lower trainer.devices")
