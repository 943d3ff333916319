"""DeepSeek-V3 (DeepseekV3ForCausalLM): multi-head latent attention, RMSNorm, SwiGLU; dense layers
first, then (optionally) sigmoid-routed experts plus shared experts.

MLA's tensors map one to one (q_proj or q_a_proj / q_a_layernorm / q_b_proj, kv_a_proj_with_mqa,
kv_a_layernorm, kv_b_proj, o_proj). DeepSeek's files lay the rotary features out in interleaved
pairs (rope_interleave=true: (x0, x1), (x2, x3), ...) where ours rotate halves, so the rotary rows
of q_(b_)proj and kv_a_proj_with_mqa are permuted on the way in and out (evens first, then odds).

What we do not reproduce is refused, naming the key: scaled RoPE (DeepSeek's YaRN with mscale),
rope_interleave=false, grouped expert choice (n_group / topk_group above 1), a routed_scaling_factor
other than 1, a nonzero e_score_correction_bias (aux-loss-free balancing), no shared expert.
"""

from __future__ import annotations

import torch

from microgpt.core.errors import CheckpointError
from microgpt.core.model import GPTConfig
from microgpt.io.hf import llama, mixtral
from microgpt.io.hf.families import mismatch, refuse, refused, rope_from_hf, rope_to_hf

MODEL_TYPE = "deepseek_v3"
ARCHITECTURE = "DeepseekV3ForCausalLM"
HF_EMBEDDING, HF_HEAD = llama.HF_EMBEDDING, llama.HF_HEAD
REQUIRED = dict(attention="mla", pos_emb="rope", norm="rmsnorm", norm_placement="pre", mlp="swiglu", bias=False,
                rope_scaling=None)
MOE_REQUIRED = dict(router="sigmoid", moe_every=1)
EXPERT_NAMES = ("gate_proj", "up_proj", "down_proj")
ATTENTION = {"q_proj": "q_proj", "q_a_proj": "q_a_proj", "q_a_norm": "q_a_layernorm", "q_b_proj": "q_b_proj",
             "kv_a_proj": "kv_a_proj_with_mqa", "kv_a_norm": "kv_a_layernorm", "kv_b_proj": "kv_b_proj"}
BIAS = "gate.e_score_correction_bias"


def unsupported(config: GPTConfig) -> str | None:
    reason = mismatch(config, REQUIRED)
    if reason is None and config.n_experts:
        reason = mismatch(config, MOE_REQUIRED)
        if reason is None and not config.n_shared_experts:
            reason = "model.n_shared_experts=0"
    return reason


def config_to_hf(config: GPTConfig) -> dict:
    moe = bool(config.n_experts)
    return {
        "hidden_size": config.n_embd, "intermediate_size": config.hidden_size,
        "moe_intermediate_size": config.expert_hidden_size, "num_hidden_layers": config.n_layer,
        "num_attention_heads": config.n_head, "num_key_value_heads": config.n_head,
        "n_shared_experts": config.n_shared_experts, "n_routed_experts": config.n_experts if moe else 1,
        "num_experts_per_tok": config.n_experts_per_tok if moe else 1, "routed_scaling_factor": 1.0,
        "n_group": 1, "topk_group": 1, "norm_topk_prob": config.router_norm_topk,
        "first_k_dense_replace": config.moe_first_dense if moe else config.n_layer,
        "kv_lora_rank": config.kv_lora_rank, "q_lora_rank": config.q_lora_rank,
        "qk_rope_head_dim": config.qk_rope_head_dim, "qk_nope_head_dim": config.qk_nope_head_dim,
        "v_head_dim": config.v_head_dim, "hidden_act": "silu", "max_position_embeddings": config.block_size,
        "rms_norm_eps": config.norm_eps, "attention_bias": False, "attention_dropout": config.dropout,
        "rope_interleave": True, "num_nextn_predict_layers": 0, "initializer_range": 0.02,
        **rope_to_hf(config),  # unscaled (REQUIRED)
    }


def config_from_hf(hf: dict, source: str) -> dict:
    problems = refused(hf, {"hidden_act": "silu", "attention_bias": False, "rope_interleave": True})
    rope = rope_from_hf(hf, problems)
    if "rope_scaling" in rope:
        problems.append(f"rope_parameters.rope_type={rope['rope_scaling']} (scaled RoPE)")
    heads, layers, width = hf["num_attention_heads"], hf["num_hidden_layers"], hf["hidden_size"]
    # num_key_value_heads means nothing to MLA: kv_b_proj makes every head's keys and values.
    first = min(hf.get("first_k_dense_replace", 3), layers)
    if first < layers:  # routed experts in layers first..: only the plain top-k of sigmoid scores
        problems += refused(hf, {"n_group": (1, None), "topk_group": (1, None), "routed_scaling_factor": (1, 1.0),
                                 "scoring_func": "sigmoid"})
        if not hf.get("n_shared_experts", 1):
            problems.append("n_shared_experts=0")
    refuse(source, ARCHITECTURE, problems)
    hidden = hf.get("intermediate_size", 4 * width)
    settings = dict(
        n_embd=width, n_layer=layers, n_head=heads, block_size=hf.get("max_position_embeddings", 4096),
        norm="rmsnorm", norm_eps=float(hf.get("rms_norm_eps", 1e-6)), mlp="swiglu", bias=False, attention="mla",
        q_lora_rank=hf.get("q_lora_rank"), kv_lora_rank=hf["kv_lora_rank"], qk_nope_head_dim=hf["qk_nope_head_dim"],
        qk_rope_head_dim=hf["qk_rope_head_dim"], v_head_dim=hf["v_head_dim"],
        intermediate_size=None if hidden == 4 * width else hidden,
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)), **rope,
    )
    if first < layers:
        settings.update(n_experts=hf["n_routed_experts"], n_experts_per_tok=hf["num_experts_per_tok"],
                        n_shared_experts=hf["n_shared_experts"], moe_intermediate_size=hf["moe_intermediate_size"],
                        moe_first_dense=first, router="sigmoid", router_norm_topk=bool(hf.get("norm_topk_prob", True)))
    return settings


# --- tensors ----------------------------------------------------------------------------------------


def rope_rows(weight: torch.Tensor, groups: int, plain: int, rope: int, to_hf: bool) -> torch.Tensor:
    """`weight` whose rows are `groups` blocks of [plain | rope] features, with each block's rope
    rows moved between our rotate-half order and DeepSeek's interleaved pairs."""
    ours = list(range(0, rope, 2)) + list(range(1, rope, 2))  # our feature j is their feature ours[j]
    order = sorted(range(rope), key=ours.__getitem__) if to_hf else ours
    blocks = weight.view(groups, plain + rope, -1)
    rotary = blocks[:, plain:][:, order]
    return torch.cat([blocks[:, :plain], rotary], dim=1).reshape(weight.shape)


def attention_to_hf(state: dict, ours: str, theirs: str, config: GPTConfig, to_hf: bool = True) -> dict:
    """One layer's MLA tensors, renamed (either way: `ours` / `theirs` are source / target prefixes)
    and their rotary rows permuted."""
    names = ATTENTION if to_hf else {v: k for k, v in ATTENTION.items()}
    out = {}
    for source, target in names.items():
        key = f"{ours}.{source}.weight"
        if key not in state:
            continue
        tensor = state[key]
        base = source if to_hf else target
        if base in ("q_proj", "q_b_proj"):
            tensor = rope_rows(tensor, config.n_head, config.qk_nope_head_dim, config.qk_rope_head_dim, to_hf)
        elif base == "kv_a_proj":
            tensor = rope_rows(tensor, 1, config.kv_lora_rank, config.qk_rope_head_dim, to_hf)
        out[f"{theirs}.{target}.weight"] = tensor
    return out


def mlp_to_hf(state: dict, ours: str, theirs: str, config: GPTConfig, index: int) -> dict:
    if not config.is_moe_layer(index):
        return llama.dense_mlp_to_hf(state, ours, theirs, config, index)
    out = mixtral.experts_to_hf(state, ours, theirs, EXPERT_NAMES)
    router = state[f"{ours}.router.weight"]
    out[f"{theirs}.{BIAS}"] = torch.zeros(config.n_experts, dtype=torch.float32, device=router.device)
    out.update(llama.dense_mlp_to_hf(state, f"{ours}.shared", f"{theirs}.shared_experts", config, index))
    return out


def mlp_from_hf(state: dict, theirs: str, ours: str, config: GPTConfig, index: int) -> dict:
    if not config.is_moe_layer(index):
        return llama.dense_mlp_from_hf(state, theirs, ours, config, index)
    bias = state[f"{theirs}.{BIAS}"]
    if not bias.is_meta and bias.abs().max() > 0:
        raise CheckpointError(
            f"{theirs}.{BIAS} is nonzero: DeepSeek's aux-loss-free balancing bias changes which experts a "
            f"token goes to, which microgpt does not reproduce; only models with a zero bias load"
        )
    out = mixtral.experts_from_hf(state, theirs, ours, config.n_experts, EXPERT_NAMES)
    out.update(llama.dense_mlp_from_hf(state, f"{theirs}.shared_experts", f"{ours}.shared", config, index))
    return out


def state_to_hf(state: dict[str, torch.Tensor], config: GPTConfig) -> dict[str, torch.Tensor]:
    out = llama.llama_state_to_hf(state, config, mlp=mlp_to_hf)
    for i in range(config.n_layer):
        out.update(attention_to_hf(state, f"transformer.h.{i}.attn", f"model.layers.{i}.self_attn", config))
    return out


def state_from_hf(state: dict[str, torch.Tensor], config: GPTConfig, source: str) -> dict[str, torch.Tensor]:
    out = llama.llama_state_from_hf(state, config, mlp=mlp_from_hf)
    for i in range(config.n_layer):
        out.update(attention_to_hf(state, f"model.layers.{i}.self_attn", f"transformer.h.{i}.attn", config, False))
    return out


def canonical_hf_names(state: dict) -> dict:
    return mixtral.per_expert_names(state, EXPERT_NAMES)
