"""Llama (LlamaForCausalLM): RMSNorm, SwiGLU, grouped-query attention, tied or untied head, RoPE with
linear / Llama 3 / YaRN scaling.

The tensor mapping here is shared by the Llama-shaped families (Qwen3, OLMo 2, Mixtral, Qwen3-MoE):
our fused c_attn rows [q heads | k heads | v heads] are q_proj / k_proj / v_proj, and a SwiGLU
c_fc's rows [gate | up] are gate_proj / up_proj.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from microgpt.core.model import GPTConfig
from microgpt.io.hf.families import mismatch, refuse, refused, rope_from_hf, rope_to_hf

MODEL_TYPE = "llama"
ARCHITECTURE = "LlamaForCausalLM"
HF_EMBEDDING = "model.embed_tokens.weight"
HF_HEAD = "lm_head.weight"
REQUIRED = dict(pos_emb="rope", norm="rmsnorm", norm_placement="pre", qk_norm="none", attention="mha",
                n_experts=0, mlp="swiglu")
PRE_NORMS = {"ln_1": "input_layernorm", "ln_2": "post_attention_layernorm"}
QKV, GATE_UP = ("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj")
MlpMap = Callable[[dict, str, str, GPTConfig, int], dict]


def unsupported(config: GPTConfig) -> str | None:
    return mismatch(config, REQUIRED)


def base_config_to_hf(config: GPTConfig) -> dict:
    """The config.json keys every Llama-shaped family shares."""
    return {
        "hidden_size": config.n_embd,
        "intermediate_size": config.hidden_size,
        "num_hidden_layers": config.n_layer,
        "num_attention_heads": config.n_head,
        "num_key_value_heads": config.kv_heads,
        "head_dim": config.head_size,
        "hidden_act": "silu",
        "max_position_embeddings": config.block_size,
        "rms_norm_eps": config.norm_eps,
        "attention_bias": config.bias,
        "attention_dropout": config.dropout,
        "initializer_range": 0.02,
        **rope_to_hf(config),
    }


def config_to_hf(config: GPTConfig) -> dict:
    return {**base_config_to_hf(config), "mlp_bias": config.bias, "pretraining_tp": 1}


def base_config_from_hf(hf: dict, problems: list[str]) -> dict:
    """GPTConfig settings from the keys every Llama-shaped family shares; refusals go to `problems`."""
    problems += refused(hf, {"hidden_act": "silu"})
    width, heads = hf["hidden_size"], hf["num_attention_heads"]
    head_dim = hf.get("head_dim") or width // heads
    hidden = hf.get("intermediate_size", 4 * width)
    return dict(
        block_size=hf.get("max_position_embeddings", 2048), n_layer=hf["num_hidden_layers"], n_head=heads,
        n_embd=width, n_kv_head=None if hf.get("num_key_value_heads") in (None, heads) else hf["num_key_value_heads"],
        head_dim=None if head_dim * heads == width else head_dim, norm="rmsnorm",
        norm_eps=float(hf.get("rms_norm_eps", 1e-6)), mlp="swiglu", bias=bool(hf.get("attention_bias", False)),
        intermediate_size=None if hidden == 4 * width else hidden,
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)), **rope_from_hf(hf, problems),
    )


def config_from_hf(hf: dict, source: str) -> dict:
    problems = []
    settings = base_config_from_hf(hf, problems)
    if bool(hf.get("mlp_bias", False)) != settings["bias"]:
        problems.append(f"mlp_bias={str(hf.get('mlp_bias', False)).lower()} with attention_bias="
                        f"{str(settings['bias']).lower()} (microgpt's model.bias is all biases or none)")
    refuse(source, ARCHITECTURE, problems)
    return settings


# --- tensors: shared by the Llama-shaped families --------------------------------------------------


def biased(state: dict, ours: str, theirs: str, out: dict, split: tuple[str, ...] = (), sizes=None) -> None:
    """Copy `ours`.weight/.bias to `theirs`, or its row blocks (`sizes`, else equal) to the names in `split`."""
    for key in ("weight", "bias"):
        tensor = state.get(f"{ours}.{key}")
        if tensor is None:
            continue
        if split:
            parts = tensor.split(sizes, dim=0) if sizes else tensor.chunk(len(split), dim=0)
            for name, part in zip(split, parts):
                out[f"{theirs}.{name}.{key}"] = part
        else:
            out[f"{theirs}.{key}"] = tensor


def joined(state: dict, theirs: str, ours: str, out: dict, parts: tuple[str, ...] = ()) -> None:
    """The inverse of `biased`: `theirs` (or its parts' rows, concatenated) as `ours`."""
    for key in ("weight", "bias"):
        names = [f"{theirs}.{p}.{key}" for p in parts] if parts else [f"{theirs}.{key}"]
        if all(n in state for n in names):
            out[f"{ours}.{key}"] = torch.cat([state[n] for n in names]) if parts else state[names[0]]


def dense_mlp_to_hf(state: dict, ours: str, theirs: str, config: GPTConfig, index: int) -> dict:
    """A SwiGLU MLP (c_fc rows [gate | up]); DeepSeek's shared experts are one too."""
    out = {}
    biased(state, f"{ours}.c_fc", theirs, out, GATE_UP)
    biased(state, f"{ours}.c_proj", f"{theirs}.down_proj", out)
    return out


def dense_mlp_from_hf(state: dict, theirs: str, ours: str, config: GPTConfig, index: int) -> dict:
    out = {}
    joined(state, theirs, f"{ours}.c_fc", out, GATE_UP)
    joined(state, f"{theirs}.down_proj", f"{ours}.c_proj", out)
    return out


def attention_split(config: GPTConfig) -> list[int]:
    q, kv = config.n_head * config.head_size, config.kv_heads * config.head_size
    return [q, kv, kv]


def renamed(config: GPTConfig, norms: dict) -> dict[str, str]:
    """Our name -> Llama's for every tensor that maps unchanged (c_attn and the MLPs aside): one
    table for both directions."""
    names = {"transformer.wte.weight": HF_EMBEDDING, "transformer.ln_f.weight": "model.norm.weight"}
    if not config.tie_embeddings:
        names["lm_head.weight"] = HF_HEAD
    for i in range(config.n_layer):
        ours, theirs = f"transformer.h.{i}", f"model.layers.{i}"
        names.update({f"{ours}.{norm}.weight": f"{theirs}.{name}.weight" for norm, name in norms.items()})
        names.update({f"{ours}.attn.{qk}.weight": f"{theirs}.self_attn.{qk}.weight" for qk in ("q_norm", "k_norm")})
        names.update({f"{ours}.attn.c_proj.{key}": f"{theirs}.self_attn.o_proj.{key}" for key in ("weight", "bias")})
    return names


def llama_state_to_hf(state: dict, config: GPTConfig, norms: dict = PRE_NORMS,
                      mlp: MlpMap = dense_mlp_to_hf) -> dict[str, torch.Tensor]:
    """Our tensors under Llama's names; `norms` names ln_1 / ln_2, `mlp` maps each layer's MLP."""
    out = {theirs: state[ours] for ours, theirs in renamed(config, norms).items() if ours in state}
    for key in (HF_EMBEDDING, HF_HEAD):
        if key in out:
            out[key] = out[key][: config.vocab_size]  # the file carries exactly the vocabulary
    for i in range(config.n_layer):
        ours, theirs = f"transformer.h.{i}", f"model.layers.{i}"
        biased(state, f"{ours}.attn.c_attn", f"{theirs}.self_attn", out, QKV, attention_split(config))
        out.update(mlp(state, f"{ours}.mlp", f"{theirs}.mlp", config, i))
    return out


def llama_state_from_hf(state: dict, config: GPTConfig, norms: dict = PRE_NORMS,
                        mlp: MlpMap = dense_mlp_from_hf) -> dict[str, torch.Tensor]:
    out = {ours: state[theirs] for ours, theirs in renamed(config, norms).items() if theirs in state}
    for i in range(config.n_layer):
        ours, theirs = f"transformer.h.{i}", f"model.layers.{i}"
        joined(state, f"{theirs}.self_attn", f"{ours}.attn.c_attn", out, QKV)
        out.update(mlp(state, f"{theirs}.mlp", f"{ours}.mlp", config, i))
    return out


def state_to_hf(state: dict[str, torch.Tensor], config: GPTConfig) -> dict[str, torch.Tensor]:
    return llama_state_to_hf(state, config)


def state_from_hf(state: dict[str, torch.Tensor], config: GPTConfig, source: str) -> dict[str, torch.Tensor]:
    return llama_state_from_hf(state, config)
