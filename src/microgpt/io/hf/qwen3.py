"""Qwen3 (Qwen3ForCausalLM): Llama's layout plus an RMSNorm per head on queries and keys (before
RoPE), an explicit head_dim, no MLP biases, and YaRN for long contexts. Sliding-window attention is
not reproduced, so a config that turns it on is refused."""

from __future__ import annotations

import torch

from microgpt.core.model import GPTConfig
from microgpt.io.hf import llama
from microgpt.io.hf.families import mismatch, refuse, refused

MODEL_TYPE = "qwen3"
ARCHITECTURE = "Qwen3ForCausalLM"
HF_EMBEDDING, HF_HEAD = llama.HF_EMBEDDING, llama.HF_HEAD
REQUIRED = dict(pos_emb="rope", norm="rmsnorm", norm_placement="pre", qk_norm="head", attention="mha",
                n_experts=0, mlp="swiglu", bias=False)


def unsupported(config: GPTConfig) -> str | None:
    return mismatch(config, REQUIRED)


def config_to_hf(config: GPTConfig) -> dict:
    return {
        **llama.base_config_to_hf(config),
        "use_sliding_window": False,
        "sliding_window": None,
        "max_window_layers": config.n_layer,
        "layer_types": ["full_attention"] * config.n_layer,
    }


def config_from_hf(hf: dict, source: str) -> dict:
    # Qwen3's MLP has no biases: attention_bias=true would need ours, which model.bias also adds.
    problems = refused(hf, {"use_sliding_window": False, "attention_bias": False})
    if any(t != "full_attention" for t in hf.get("layer_types") or ()):
        problems.append(f"layer_types={sorted(set(hf['layer_types']))}")
    settings = llama.base_config_from_hf(hf, problems)
    refuse(source, ARCHITECTURE, problems)
    head_dim = hf.get("head_dim", 128)  # Qwen3's default, not width / heads
    explicit = None if head_dim * hf["num_attention_heads"] == hf["hidden_size"] else head_dim
    return {**settings, "qk_norm": "head", "head_dim": explicit, "bias": False}


def state_to_hf(state: dict[str, torch.Tensor], config: GPTConfig) -> dict[str, torch.Tensor]:
    return llama.llama_state_to_hf(state, config)


def state_from_hf(state: dict[str, torch.Tensor], config: GPTConfig, source: str) -> dict[str, torch.Tensor]:
    return llama.llama_state_from_hf(state, config)
