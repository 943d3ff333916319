"""GPT-2 (GPT2LMHeadModel): learned positions, LayerNorm, GELU, biases, a tied head.

Our parameter names are GPT-2's, so the only translation is HF's Conv1D layers, which store their
weight as (in, out) where `nn.Linear` wants (out, in). GPT-2 always has biases: a bias-free model
exports with zero biases, the same function.
"""

from __future__ import annotations

import torch

from microgpt.core.model import GPTConfig
from microgpt.io.hf.families import multi_head_mismatch, refuse, refused, zero_biases

MODEL_TYPE = "gpt2"
ARCHITECTURE = "GPT2LMHeadModel"
HF_EMBEDDING = "transformer.wte.weight"
HF_HEAD = "lm_head.weight"
CONV1D_WEIGHTS = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
ACTIVATIONS = {"gelu_tanh": "gelu_new", "gelu": "gelu", "relu2": "relu2"}
ACTIVATIONS_IN = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu", "relu2": "relu2"}
REQUIRED = dict(pos_emb="learned", norm="layernorm", norm_placement="pre", qk_norm="none", attention="mha",
                n_experts=0, tie_embeddings=True, mlp=tuple(ACTIVATIONS))


def unsupported(config: GPTConfig) -> str | None:
    return multi_head_mismatch(config, REQUIRED)


def config_to_hf(config: GPTConfig) -> dict:
    return {
        "n_positions": config.block_size,
        "n_ctx": config.block_size,
        "n_embd": config.n_embd,
        "n_layer": config.n_layer,
        "n_head": config.n_head,
        "n_inner": config.intermediate_size,
        "activation_function": ACTIVATIONS[config.mlp],
        "layer_norm_epsilon": config.norm_eps,
        "resid_pdrop": config.dropout,
        "embd_pdrop": config.dropout,
        "attn_pdrop": config.dropout,
        "initializer_range": 0.02,
        "scale_attn_weights": True,
    }


def config_from_hf(hf: dict, source: str) -> dict:
    problems = refused(hf, {"activation_function": tuple(ACTIVATIONS_IN), "scale_attn_weights": True,
                            "scale_attn_by_inverse_layer_idx": False, "tie_word_embeddings": True,
                            "add_cross_attention": False})
    refuse(source, ARCHITECTURE, problems)
    n_inner = hf.get("n_inner")
    return dict(
        block_size=hf.get("n_positions", hf.get("n_ctx")), n_layer=hf["n_layer"], n_head=hf["n_head"],
        n_embd=hf["n_embd"], pos_emb="learned", bias=True, mlp=ACTIVATIONS_IN[hf.get("activation_function", "gelu_new")],
        intermediate_size=None if n_inner in (None, 4 * hf["n_embd"]) else n_inner,
        norm_eps=float(hf.get("layer_norm_epsilon", 1e-5)),
    )


def bias_modules(config: GPTConfig) -> list[str]:
    layers = [f"transformer.h.{i}.{m}" for i in range(config.n_layer)
              for m in ("ln_1", "attn.c_attn", "attn.c_proj", "ln_2", "mlp.c_fc", "mlp.c_proj")]
    return [*layers, "transformer.ln_f"]


def state_to_hf(state: dict[str, torch.Tensor], config: GPTConfig) -> dict[str, torch.Tensor]:
    if not config.bias:
        state = zero_biases(state, bias_modules(config))
    out = {}
    for key, tensor in state.items():
        if key == "lm_head.weight":
            continue  # tied to wte; transformers re-ties it on load
        if key == "transformer.wte.weight":
            tensor = tensor[: config.vocab_size]  # the file carries exactly the vocabulary
        elif key.endswith(CONV1D_WEIGHTS):
            tensor = tensor.t()
        out[key] = tensor
    return out


def canonical_hf_names(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """OpenAI's own files name the tensors without the `transformer.` prefix."""
    return {k if k.startswith(("transformer.", "lm_head.")) else f"transformer.{k}": v for k, v in state.items()}


def state_from_hf(state: dict[str, torch.Tensor], config: GPTConfig, source: str) -> dict[str, torch.Tensor]:
    return {k: v.t() if k.endswith(CONV1D_WEIGHTS) else v for k, v in state.items() if k != HF_HEAD}
