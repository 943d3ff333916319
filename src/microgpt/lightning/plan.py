"""The numbers a run is built from: world size, micro-batch, gradient accumulation, tokens per
step, and a per-device memory estimate, derived from the composed config before anything runs."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass

import torch
from omegaconf import DictConfig

from microgpt.core.errors import ConfigError, require_positive_int
from microgpt.core.flops import active_param_count, flops_per_token, param_count
from microgpt.core.model import GPTConfig

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
    active_params: int     # what one token passes through (an MoE model's routed experts only)
    flops_per_token: float  # training FLOPs per token at block_size (the MFU numerator)
    sharded: bool
    state_gib: float       # weights, gradients, optimizer state on one device
    activation_gib: float  # activations of one micro-batch on one device
    memory_gib: float

    def table(self) -> str:
        rows = asdict(self)
        width = max(map(len, rows))
        def show(v) -> str:
            if isinstance(v, float):
                return f"{v:,.3g}" if v >= 1e6 else f"{v:,.2f}"
            return str(v) if isinstance(v, bool) else f"{v:,}"

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


def _attention_values(config: GPTConfig) -> int:
    """Values per token one layer's attention keeps for backward: the projections' inputs and
    outputs that backward reads (fused attention keeps no T x T scores)."""
    C, H = config.n_embd, config.n_head
    if config.attention == "mla":
        rank, latent, qk = config.q_lora_rank or 0, config.kv_lora_rank, config.head_size
        # x; q (and its low-rank input, normalised); the latent (+ its norm) and shared rope key; k, v
        return C + 2 * rank + H * qk + 2 * latent + config.qk_rope_head_dim + H * qk + 2 * H * config.v_head_dim
    q, kv = H * config.head_size, config.kv_heads * config.head_size
    qk_norm = 0 if config.qk_norm == "none" else q + kv  # the norms' inputs
    return C + q + 2 * kv + qk_norm + q  # x; q, k, v; the output projection's input


def _mlp_values(config: GPTConfig, index: int) -> int:
    """Values per token one layer's MLP keeps: its input, c_fc's output and the activation's
    (SwiGLU: gate and value, silu(gate) and the product); per routed copy for an MoE layer."""
    def dense(hidden: int) -> int:
        return 4 * hidden if config.mlp == "swiglu" else 2 * hidden

    if not config.is_moe_layer(index):
        return config.n_embd + dense(config.hidden_size)
    shared = dense(config.n_shared_experts * config.expert_hidden_size)
    routed = config.n_experts_per_tok * (config.n_embd + dense(config.expert_hidden_size))
    return config.n_embd + config.n_experts + routed + shared


def activation_bytes(config: GPTConfig, micro_batch: int, block: int, precision: str, checkpointing: bool) -> int:
    """Korthikanti et al. (2022): ~34 bytes x tokens x width per layer in 16-bit with fused attention
    (no T x T score matrix kept) for GPT-2's block: 2 norm inputs + 5 attention + 9 MLP tensors of
    the width, 2 bytes each, plus two 1-byte dropout masks. The variants keep what their own
    shapes say (GQA's narrower k/v, SwiGLU's gate, MLA's latent, top-k routed copies of MoE
    tokens); fp32 doubles it; activation checkpointing keeps only layer inputs. Plus the logits,
    kept in 16-bit and in fp32 for the loss."""
    tokens = micro_batch * block
    C = config.n_embd
    if checkpointing:
        per_token = 2 * C * config.n_layer
    else:
        per_token = sum(2 * (2 * C + _attention_values(config) + _mlp_values(config, i)) + 2 * C
                        for i in range(config.n_layer))
    width = 1 if "16" in str(precision) else 2
    logits = tokens * config.padded_vocab_size * (2 + 4 if width == 1 else 8)
    return tokens * per_token * width + logits


def make_plan(cfg: DictConfig, model_config: GPTConfig) -> RunPlan:
    world = world_size(cfg.trainer)
    micro = require_positive_int("data.batch_size", cfg.data.batch_size)
    block = require_positive_int("data.block_size", cfg.data.block_size)
    accumulate = gradient_accumulation(cfg.get("global_batch_tokens"), micro * block * world,
                                       require_positive_int("trainer.accumulate_grad_batches",
                                                            cfg.trainer.get("accumulate_grad_batches", 1)))
    positions = model_config.block_size * model_config.n_embd if model_config.pos_emb == "learned" else 0
    params = param_count(model_config) + positions  # = GPT(model_config).count_params()
    sharded = is_sharded(cfg.trainer)
    state = params * ADAM_STATE_BYTES / (world if sharded else 1)
    strategy = cfg.trainer.get("strategy")
    checkpointing = bool(hasattr(strategy, "get") and strategy.get("activation_checkpointing_policy"))
    activations = activation_bytes(model_config, micro, block, cfg.trainer.get("precision", "32"), checkpointing)
    return RunPlan(world, micro, block, accumulate, micro * block * world * accumulate, params,
                   active_param_count(model_config) + positions, flops_per_token(model_config, block), sharded,
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
