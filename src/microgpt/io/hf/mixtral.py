"""Mixtral (MixtralForCausalLM): Llama's attention (GQA, RMSNorm, RoPE) with every MLP a sparse
mixture of SwiGLU experts: softmax over all experts, top-k, the k weights renormalised.

Files hold one tensor per expert, as `save_pretrained` writes them (and transformers 4 reads):
block_sparse_moe.experts.{e}.w1 (gate), w3 (up), w2 (down) and block_sparse_moe.gate (the router).
transformers 5 fuses them in memory (experts.gate_up_proj (E, 2h, C) rows [gate | up],
experts.down_proj (E, C, h)), which are exactly our expert_fc / expert_proj; a file written in the
fused spelling is read too. The expert helpers here serve Qwen3-MoE and DeepSeek-V3 as well.
"""

from __future__ import annotations

import torch

from microgpt.core.model import GPTConfig
from microgpt.io.hf import llama
from microgpt.io.hf.families import mismatch, refuse, refused

MODEL_TYPE = "mixtral"
ARCHITECTURE = "MixtralForCausalLM"
HF_EMBEDDING, HF_HEAD = llama.HF_EMBEDDING, llama.HF_HEAD
REQUIRED = dict(pos_emb="rope", norm="rmsnorm", norm_placement="pre", qk_norm="none", attention="mha",
                mlp="swiglu", bias=False, n_shared_experts=0, router="softmax", router_norm_topk=True,
                moe_every=1, moe_first_dense=0)
EXPERT_NAMES = ("w1", "w3", "w2")  # gate, up, down
BLOCK = "block_sparse_moe"


def unsupported(config: GPTConfig) -> str | None:
    if not config.n_experts:
        return "model.n_experts=0"
    return mismatch(config, REQUIRED)


def config_to_hf(config: GPTConfig) -> dict:
    keys = llama.base_config_to_hf(config)
    del keys["attention_bias"]  # Mixtral has no biases, and no such key
    return {
        **keys,
        "intermediate_size": config.expert_hidden_size,  # each expert's
        "num_local_experts": config.n_experts,
        "num_experts_per_tok": config.n_experts_per_tok,
        "router_jitter_noise": 0.0,
        "sliding_window": None,
        "output_router_logits": False,
        # A training setting, carried over as it is: HF's loss counts tokens (k times ours) over all layers.
        "router_aux_loss_coef": config.aux_loss_weight,
    }


def config_from_hf(hf: dict, source: str) -> dict:
    problems = refused(hf, {"sliding_window": None})
    settings = llama.base_config_from_hf(hf, problems)
    refuse(source, ARCHITECTURE, problems)
    return {**settings, "bias": False, "moe_intermediate_size": None, **moe_settings(hf, hf.get("num_local_experts", 8)),
            "router_norm_topk": True}


def moe_settings(hf: dict, n_experts: int) -> dict:
    """Our routing settings shared by the softmax-routed families."""
    return dict(n_experts=n_experts, n_experts_per_tok=hf.get("num_experts_per_tok", 2),
                router="softmax", aux_loss_weight=float(hf.get("router_aux_loss_coef", 0.01)),
                z_loss_weight=0.0)  # neither family trains with a router z-loss


# --- tensors ----------------------------------------------------------------------------------------


def experts_to_hf(state: dict, ours: str, theirs: str, names: tuple[str, str, str] = EXPERT_NAMES) -> dict:
    """Our router and 3-D expert tensors (transformers 5's fused ones) as the router and one gate /
    up / down matrix per expert."""
    fused = {f"{theirs}.gate.weight": state[f"{ours}.router.weight"],
             f"{theirs}.experts.gate_up_proj": state[f"{ours}.expert_fc"],
             f"{theirs}.experts.down_proj": state[f"{ours}.expert_proj"]}
    return per_expert_names(fused, names)


def experts_from_hf(state: dict, theirs: str, ours: str, n_experts: int,
                    names: tuple[str, str, str] = EXPERT_NAMES) -> dict:
    gate, up, down = (torch.stack([state[f"{theirs}.experts.{e}.{name}.weight"] for e in range(n_experts)])
                      for name in names)
    return {f"{ours}.router.weight": state[f"{theirs}.gate.weight"],
            f"{ours}.expert_fc": torch.cat([gate, up], dim=1), f"{ours}.expert_proj": down}


def per_expert_names(state: dict, names: tuple[str, str, str] = EXPERT_NAMES) -> dict:
    """`state` with transformers 5's fused expert tensors (experts.gate_up_proj, experts.down_proj)
    split into the per-expert matrices of the file format."""
    out = {}
    for key, tensor in state.items():
        if key.endswith(".experts.gate_up_proj"):
            base = key.removesuffix("gate_up_proj")
            gate, up = tensor.chunk(2, dim=1)
            for e in range(tensor.size(0)):
                out[f"{base}{e}.{names[0]}.weight"], out[f"{base}{e}.{names[1]}.weight"] = gate[e], up[e]
        elif key.endswith(".experts.down_proj"):
            base = key.removesuffix("down_proj")
            for e in range(tensor.size(0)):
                out[f"{base}{e}.{names[2]}.weight"] = tensor[e]
        else:
            out[key] = tensor
    return out


def canonical_hf_names(state: dict) -> dict:
    return per_expert_names({k.replace(".mlp.", f".{BLOCK}."): v for k, v in state.items()})


def moe_to_hf(state: dict, ours: str, theirs: str, config: GPTConfig, index: int) -> dict:
    return experts_to_hf(state, ours, theirs.replace(".mlp", f".{BLOCK}"))


def moe_from_hf(state: dict, theirs: str, ours: str, config: GPTConfig, index: int) -> dict:
    return experts_from_hf(state, theirs.replace(".mlp", f".{BLOCK}"), ours, config.n_experts)


def state_to_hf(state: dict[str, torch.Tensor], config: GPTConfig) -> dict[str, torch.Tensor]:
    return llama.llama_state_to_hf(state, config, mlp=moe_to_hf)


def state_from_hf(state: dict[str, torch.Tensor], config: GPTConfig, source: str) -> dict[str, torch.Tensor]:
    return llama.llama_state_from_hf(state, config, mlp=moe_from_hf)
