"""OLMo 2 (Olmo2ForCausalLM): Llama's layout with the norms moved after each sublayer
(x = x + norm(attn(x)); x = x + norm(mlp(x))) and an RMSNorm over the whole query and key
projections (all heads at once, before RoPE). No MLP biases; the head size is width / heads."""

from __future__ import annotations

import torch

from microgpt.core.model import GPTConfig
from microgpt.io.hf import llama
from microgpt.io.hf.families import derived_head_dim, mismatch, refuse, refused

MODEL_TYPE = "olmo2"
ARCHITECTURE = "Olmo2ForCausalLM"
HF_EMBEDDING, HF_HEAD = llama.HF_EMBEDDING, llama.HF_HEAD
REQUIRED = dict(pos_emb="rope", norm="rmsnorm", norm_placement="post", qk_norm="full", attention="mha",
                n_experts=0, mlp="swiglu", bias=False)
POST_NORMS = {"ln_1": "post_attention_layernorm", "ln_2": "post_feedforward_layernorm"}


def unsupported(config: GPTConfig) -> str | None:
    return mismatch(config, REQUIRED) or derived_head_dim(config)


def config_to_hf(config: GPTConfig) -> dict:
    keys = llama.base_config_to_hf(config)
    del keys["head_dim"]  # Olmo2Config has none: width / heads
    return keys


def config_from_hf(hf: dict, source: str) -> dict:
    problems = refused(hf, {"attention_bias": False})
    if hf.get("head_dim") not in (None, hf["hidden_size"] // hf["num_attention_heads"]):
        problems.append(f"head_dim={hf['head_dim']}")
    settings = llama.base_config_from_hf(hf, problems)
    refuse(source, ARCHITECTURE, problems)
    return {**settings, "norm_placement": "post", "qk_norm": "full", "bias": False,
            "norm_eps": float(hf.get("rms_norm_eps", 1e-5))}


def state_to_hf(state: dict[str, torch.Tensor], config: GPTConfig) -> dict[str, torch.Tensor]:
    return llama.llama_state_to_hf(state, config, POST_NORMS)


def state_from_hf(state: dict[str, torch.Tensor], config: GPTConfig, source: str) -> dict[str, torch.Tensor]:
    return llama.llama_state_from_hf(state, config, POST_NORMS)
