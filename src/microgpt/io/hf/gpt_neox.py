"""GPT-NeoX (GPTNeoXForCausalLM): the default RoPE GPT exactly — LayerNorm, GELU, biases, rotary
positions over the whole head, sequential residuals (use_parallel_residual=false).

NeoX fuses q, k and v per head: its query_key_value rows are [head 0: q k v | head 1: q k v | ...]
where ours are [q heads | k heads | v heads]. Its LayerNorms and MLP always have biases: a bias-free
model exports with zero biases there (and attention_bias=false), the same function.
"""

from __future__ import annotations

import torch

from microgpt.core.errors import CheckpointError
from microgpt.core.model import GPTConfig
from microgpt.io.hf.families import multi_head_mismatch, refuse, refused, rope_from_hf, rope_to_hf, zero_biases

MODEL_TYPE = "gpt_neox"
ARCHITECTURE = "GPTNeoXForCausalLM"
HF_EMBEDDING = "gpt_neox.embed_in.weight"
HF_HEAD = "embed_out.weight"  # the name transformers 4 writes; 5 renames it to lm_head on load
ACTIVATIONS = {"gelu_tanh": "gelu_pytorch_tanh", "gelu": "gelu", "relu2": "relu2"}
ACTIVATIONS_IN = {"gelu_pytorch_tanh": "gelu_tanh", "gelu_new": "gelu_tanh", "gelu": "gelu", "relu2": "relu2"}
REQUIRED = dict(pos_emb="rope", norm="layernorm", norm_placement="pre", qk_norm="none", attention="mha",
                n_experts=0, mlp=tuple(ACTIVATIONS))
# our module -> NeoX's, per layer
LAYER = {"ln_1": "input_layernorm", "ln_2": "post_attention_layernorm", "attn.c_attn": "attention.query_key_value",
         "attn.c_proj": "attention.dense", "mlp.c_fc": "mlp.dense_h_to_4h", "mlp.c_proj": "mlp.dense_4h_to_h"}
ALWAYS_BIASED = ("ln_1", "ln_2", "mlp.c_fc", "mlp.c_proj")


def unsupported(config: GPTConfig) -> str | None:
    return multi_head_mismatch(config, REQUIRED)


def config_to_hf(config: GPTConfig) -> dict:
    return {
        "hidden_size": config.n_embd,
        "num_hidden_layers": config.n_layer,
        "num_attention_heads": config.n_head,
        "intermediate_size": config.hidden_size,
        "hidden_act": ACTIVATIONS[config.mlp],
        "max_position_embeddings": config.block_size,
        "layer_norm_eps": config.norm_eps,
        "use_parallel_residual": False,
        "rotary_pct": 1.0,
        **rope_to_hf(config, theta_key="rotary_emb_base"),
        "attention_bias": config.bias,
        "attention_dropout": config.dropout,
        "hidden_dropout": config.dropout,
        "initializer_range": 0.02,
    }


def config_from_hf(hf: dict, source: str) -> dict:
    problems = refused(hf, {"hidden_act": tuple(ACTIVATIONS_IN), "use_parallel_residual": False})
    if "use_parallel_residual" not in hf:
        problems.append("use_parallel_residual (absent: true)")
    rope = rope_from_hf(hf, problems, theta_key="rotary_emb_base", partial_key="rotary_pct")
    if "rotary_pct" not in hf and "partial_rotary_factor" not in hf.get("rope_parameters", {}):
        problems.append("rotary_pct (absent: 0.25)")
    refuse(source, ARCHITECTURE, problems)
    hidden = hf.get("intermediate_size", 4 * hf["hidden_size"])
    return dict(
        block_size=hf.get("max_position_embeddings", 2048), n_layer=hf["num_hidden_layers"],
        n_head=hf["num_attention_heads"], n_embd=hf["hidden_size"], bias=bool(hf.get("attention_bias", True)),
        mlp=ACTIVATIONS_IN[hf.get("hidden_act", "gelu")], norm_eps=float(hf.get("layer_norm_eps", 1e-5)),
        intermediate_size=None if hidden == 4 * hf["hidden_size"] else hidden,
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)), **rope,
    )


def qkv_order(tensor: torch.Tensor, config: GPTConfig, to_hf: bool) -> torch.Tensor:
    """c_attn's rows between our [3, heads, head_dim] and NeoX's [heads, 3, head_dim]."""
    H, D = config.n_head, config.head_size
    shape = (3, H, D) if to_hf else (H, 3, D)
    return tensor.reshape(*shape, *tensor.shape[1:]).transpose(0, 1).reshape(tensor.shape)


def state_to_hf(state: dict[str, torch.Tensor], config: GPTConfig) -> dict[str, torch.Tensor]:
    if not config.bias:
        modules = [f"transformer.h.{i}.{m}" for i in range(config.n_layer) for m in ALWAYS_BIASED]
        state = zero_biases(state, [*modules, "transformer.ln_f"])
    out = {HF_EMBEDDING: state["transformer.wte.weight"][: config.vocab_size]}
    if not config.tie_embeddings:
        out[HF_HEAD] = state["lm_head.weight"][: config.vocab_size]
    for key in ("weight", "bias"):
        if f"transformer.ln_f.{key}" in state:
            out[f"gpt_neox.final_layer_norm.{key}"] = state[f"transformer.ln_f.{key}"]
    for i in range(config.n_layer):
        for ours, theirs in LAYER.items():
            for key in ("weight", "bias"):
                tensor = state.get(f"transformer.h.{i}.{ours}.{key}")
                if tensor is not None:
                    tensor = qkv_order(tensor, config, True) if ours == "attn.c_attn" else tensor
                    out[f"gpt_neox.layers.{i}.{theirs}.{key}"] = tensor
    return out


def canonical_hf_names(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {HF_HEAD if k == "lm_head.weight" else k: v for k, v in state.items()}


def state_from_hf(state: dict[str, torch.Tensor], config: GPTConfig, source: str) -> dict[str, torch.Tensor]:
    out = {"transformer.wte.weight": state[HF_EMBEDDING]}
    if not config.tie_embeddings:
        out["lm_head.weight"] = state[HF_HEAD]
    renames = {"gpt_neox.final_layer_norm": "transformer.ln_f"}
    renames.update({f"gpt_neox.layers.{i}.{theirs}": f"transformer.h.{i}.{ours}"
                    for i in range(config.n_layer) for ours, theirs in LAYER.items()})
    for theirs, ours in renames.items():
        for key in ("weight", "bias"):
            tensor = state.get(f"{theirs}.{key}")
            if tensor is None:
                continue
            if key == "bias" and not config.bias:  # zeros where NeoX always has a bias (checked)
                if torch.count_nonzero(tensor):
                    raise CheckpointError(
                        f"{source}: {theirs}.bias is not zero while config.json says attention_bias=false; "
                        f"microgpt's model.bias is all biases or none, so these weights do not load"
                    )
                continue
            out[f"{ours}.{key}"] = qkv_order(tensor, config, False) if ours.endswith("attn.c_attn") else tensor
    return out
