"""Qwen3-MoE (Qwen3MoeForCausalLM): Qwen3's attention (GQA, an RMSNorm per head on queries and keys)
with sparse SwiGLU experts: softmax over all experts, top-k, renormalised only with norm_topk_prob.

Which layers are sparse: layer i is, unless listed in mlp_only_layers, when (i + 1) is a multiple of
decoder_sparse_step; ours are the layers from moe_first_dense on with (i + 1) % moe_every == 0, so
mlp_only_layers must be the leading layers (a list of others is refused). Dense layers are SwiGLU
MLPs of intermediate_size, experts of moe_intermediate_size. Files hold one gate_proj / up_proj /
down_proj per expert, as `save_pretrained` writes them.
"""

from __future__ import annotations

import torch

from microgpt.core.model import GPTConfig
from microgpt.io.hf import llama, mixtral, qwen3
from microgpt.io.hf.families import mismatch, refuse

MODEL_TYPE = "qwen3_moe"
ARCHITECTURE = "Qwen3MoeForCausalLM"
HF_EMBEDDING, HF_HEAD = llama.HF_EMBEDDING, llama.HF_HEAD
REQUIRED = dict(pos_emb="rope", norm="rmsnorm", norm_placement="pre", qk_norm="head", attention="mha",
                mlp="swiglu", bias=False, n_shared_experts=0, router="softmax")
EXPERT_NAMES = ("gate_proj", "up_proj", "down_proj")


def unsupported(config: GPTConfig) -> str | None:
    if not config.n_experts:
        return "model.n_experts=0"
    return mismatch(config, REQUIRED)


def config_to_hf(config: GPTConfig) -> dict:
    return {
        **qwen3.config_to_hf(config),
        "intermediate_size": config.hidden_size,  # the dense layers'
        "moe_intermediate_size": config.expert_hidden_size,
        "num_experts": config.n_experts,
        "num_experts_per_tok": config.n_experts_per_tok,
        "norm_topk_prob": config.router_norm_topk,
        "decoder_sparse_step": config.moe_every,
        "mlp_only_layers": list(range(config.moe_first_dense)),
        "output_router_logits": False,
        "router_aux_loss_coef": config.aux_loss_weight,  # as for Mixtral: a training setting, as it is
    }


def config_from_hf(hf: dict, source: str) -> dict:
    settings = qwen3.config_from_hf(hf, source)  # refuses what Qwen3's attention does not reproduce
    step, layers = hf.get("decoder_sparse_step", 1), hf["num_hidden_layers"]
    dense_only = set(hf.get("mlp_only_layers") or ())
    sparse = [i for i in range(layers) if i not in dense_only and (i + 1) % step == 0]
    first = sparse[0] if sparse else layers
    ours = [i for i in range(layers) if i >= first and (i + 1) % step == 0]
    problems = []
    experts = hf.get("num_experts", hf.get("num_local_experts"))  # transformers 4 / 5 spellings
    if not experts or not sparse:
        problems.append(f"num_experts={experts} with no sparse layer (a dense Qwen3)")
    elif sparse != ours:
        problems.append(f"mlp_only_layers={sorted(dense_only)} (microgpt's dense layers are the leading ones)")
    refuse(source, ARCHITECTURE, problems)
    hidden = hf.get("moe_intermediate_size", 768)
    return {**settings, **mixtral.moe_settings(hf, experts), "moe_every": step, "moe_first_dense": first,
            "moe_intermediate_size": hidden, "router_norm_topk": bool(hf.get("norm_topk_prob", False))}


def canonical_hf_names(state: dict) -> dict:
    return mixtral.per_expert_names(state, EXPERT_NAMES)


def mlp_to_hf(state: dict, ours: str, theirs: str, config: GPTConfig, index: int) -> dict:
    if config.is_moe_layer(index):
        return mixtral.experts_to_hf(state, ours, theirs, EXPERT_NAMES)
    return llama.dense_mlp_to_hf(state, ours, theirs, config, index)


def mlp_from_hf(state: dict, theirs: str, ours: str, config: GPTConfig, index: int) -> dict:
    if config.is_moe_layer(index):
        return mixtral.experts_from_hf(state, theirs, ours, config.n_experts, EXPERT_NAMES)
    return llama.dense_mlp_from_hf(state, theirs, ours, config, index)


def state_to_hf(state: dict[str, torch.Tensor], config: GPTConfig) -> dict[str, torch.Tensor]:
    return llama.llama_state_to_hf(state, config, mlp=mlp_to_hf)


def state_from_hf(state: dict[str, torch.Tensor], config: GPTConfig, source: str) -> dict[str, torch.Tensor]:
    return llama.llama_state_from_hf(state, config, mlp=mlp_from_hf)
