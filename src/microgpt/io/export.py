"""Export a GPT to a directory `transformers` loads (GPT2LMHeadModel) or our safetensors format."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import save_file

from microgpt.core.model import GPT, GPTConfig
from microgpt.core.tokenizer import TiktokenTokenizer, Tokenizer
from microgpt.io.pretrained import CONV1D_WEIGHTS, EXPORT_FORMAT, MICROGPT_CONFIG_FILE, TOKENIZER_FILE, WEIGHTS_FILE


def hf_from_ours(model: GPT) -> dict[str, torch.Tensor]:
    """Our weights as a Hugging Face GPT2LMHeadModel state dict (absent biases written as zeros)."""
    config = model.config
    state = {}
    for key, tensor in model.state_dict().items():
        if key == "lm_head.weight":
            continue  # tied to wte; transformers re-ties it on load
        if key == "transformer.wte.weight":
            tensor = tensor[: config.vocab_size]  # drop the padding rows
        elif key.endswith(CONV1D_WEIGHTS):
            tensor = tensor.t()
        state[key] = tensor.detach().contiguous().cpu()
    if not config.bias:  # GPT-2 always has biases: zeros are the same function
        for key, module in model.named_modules():
            if isinstance(module, (torch.nn.Linear, torch.nn.LayerNorm)) and module.bias is None and key != "lm_head":
                width = module.weight.shape[0] if isinstance(module, torch.nn.Linear) else module.weight.shape[-1]
                state[f"{key}.bias"] = torch.zeros(width, dtype=module.weight.dtype)
    return state


def export(model: GPT, tokenizer: Tokenizer, out: str | os.PathLike) -> list[Path]:
    """Write `out/` for the Hugging Face ecosystem; returns the files written.

    Learned positions: config.json + model.safetensors that `transformers.GPT2LMHeadModel`
    loads. RoPE: model.safetensors (our names) + microgpt_config.json, loadable by `load_model`.
    A tokenizer other than GPT-2's is written alongside as microgpt_tokenizer.json.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    config = model.config
    written = [out / WEIGHTS_FILE]
    if config.pos_emb == "learned":
        save_file(hf_from_ours(model), out / WEIGHTS_FILE, metadata={"format": "pt"})
        (out / "config.json").write_text(json.dumps(hf_config(config, tokenizer, dtype_name(model)), indent=2))
        written.append(out / "config.json")
    else:
        state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items() if k != "lm_head.weight"}
        save_file(state, out / WEIGHTS_FILE, metadata={"format": "pt"})
        payload = {"format": EXPORT_FORMAT, "model": config.to_dict(), "tokenizer": tokenizer.state()}
        (out / MICROGPT_CONFIG_FILE).write_text(json.dumps(payload, indent=2))
        written.append(out / MICROGPT_CONFIG_FILE)
    if tokenizer.state() != TiktokenTokenizer("gpt2").state():
        tokenizer.save(out / TOKENIZER_FILE)
        written.append(out / TOKENIZER_FILE)
    return written


def export_files(model: GPT, tokenizer: Tokenizer, out: str | os.PathLike) -> list[Path]:
    """The files `export` writes into `out` for this model (to check them before writing)."""
    out = Path(out)
    names = [WEIGHTS_FILE, "config.json" if model.config.pos_emb == "learned" else MICROGPT_CONFIG_FILE]
    if tokenizer.state() != TiktokenTokenizer("gpt2").state():
        names.append(TOKENIZER_FILE)
    return [out / name for name in names]


def dtype_name(model: GPT) -> str:
    return str(model.transformer.wte.weight.dtype).removeprefix("torch.")


def hf_config(config: GPTConfig, tokenizer: Tokenizer, dtype: str) -> dict:
    return {
        "model_type": "gpt2",
        "architectures": ["GPT2LMHeadModel"],
        "vocab_size": config.vocab_size,
        "n_positions": config.block_size,
        "n_ctx": config.block_size,
        "n_embd": config.n_embd,
        "n_layer": config.n_layer,
        "n_head": config.n_head,
        "n_inner": None,
        "activation_function": "gelu_new",
        "layer_norm_epsilon": 1e-5,
        "resid_pdrop": config.dropout,
        "embd_pdrop": config.dropout,
        "attn_pdrop": config.dropout,
        "initializer_range": 0.02,
        "scale_attn_weights": True,
        "tie_word_embeddings": True,
        "bos_token_id": tokenizer.eot,
        "eos_token_id": tokenizer.eot,
        "torch_dtype": dtype,
    }
