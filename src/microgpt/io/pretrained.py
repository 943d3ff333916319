"""Pretrained weights in: GPT-2 from the Hub (downloaded once), or a local Hugging Face directory of
any family io/hf lists (config.json + model.safetensors; config.json's model_type picks the family),
with its tokenizer: microgpt's own file of an export, else the directory's tokenizer.json, else GPT-2's.

Exports made before the Hugging Face families existed (RoPE models: model.safetensors under our
names + microgpt_config.json) still load.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from microgpt.core.errors import CheckpointError, ConfigError
from microgpt.core.model import GPT, GPTConfig
from microgpt.core.tokenizer import TiktokenTokenizer, Tokenizer
from microgpt.core.tokenizer_json import TOKENIZER_JSON
from microgpt.core.tokenizers import MICROGPT_TOKENIZER_FILE, load_tokenizer, tokenizer_from_state
from microgpt.io.hf.families import CONFIG_FILE, WEIGHTS_FILE, hf_state_to_ours

# name -> (Hub repository, shape, our model config)
GPT2_MODELS = {
    "gpt2": ("openai-community/gpt2", dict(n_layer=12, n_head=12, n_embd=768), "gpt2_124m"),
    "gpt2-medium": ("openai-community/gpt2-medium", dict(n_layer=24, n_head=16, n_embd=1024), "gpt2_350m"),
    "gpt2-large": ("openai-community/gpt2-large", dict(n_layer=36, n_head=20, n_embd=1280), "gpt2_774m"),
    "gpt2-xl": ("openai-community/gpt2-xl", dict(n_layer=48, n_head=25, n_embd=1600), "gpt2_1558m"),
}
HF_FILES = (CONFIG_FILE, WEIGHTS_FILE)
MICROGPT_CONFIG_FILE = "microgpt_config.json"  # older microgpt exports of RoPE models
TOKENIZER_FILE = MICROGPT_TOKENIZER_FILE  # a non-GPT-2 tokenizer travelling with an export
EXPORT_FORMAT = "microgpt-export"
GPT2_VOCAB_SIZE = 50257
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class PretrainedModelConfig:
    """Which pretrained weights to load, and where to put them.

    `name`: one of gpt2, gpt2-medium, gpt2-large, gpt2-xl (downloaded from the Hub once, then read
    from the Hugging Face cache), or the path of a directory with config.json + model.safetensors.
    `local_dir`: a local copy of `name`'s files (no download); its shapes must be `name`'s.
    """

    name: str = "gpt2"
    local_dir: str | None = None
    device: str = "cpu"
    dtype: str = "float32"  # float32 | bfloat16 | float16
    revision: str = "main"  # a Hub branch, tag or commit
    cache_dir: str | None = None  # None: the Hugging Face cache (HF_HOME / HF_HUB_CACHE)


def is_pretrained_source(source: str | os.PathLike) -> bool:
    """A GPT-2 name, a directory, or a bare word that is no file (reported as an unknown name),
    rather than a .ckpt file: how `load_model` and `init_from` tell the two apart."""
    text, path = str(source), Path(source)
    return text in GPT2_MODELS or path.is_dir() or (not path.exists() and not path.suffix and os.sep not in text)


def load_pretrained(config: PretrainedModelConfig) -> tuple[GPT, Tokenizer]:
    """The GPT and its tokenizer, weights loaded, in eval mode on `config.device`."""
    if config.dtype not in DTYPES:
        raise ConfigError(f"dtype must be one of {sorted(DTYPES)}, got {config.dtype!r}")
    directory = pretrained_dir(config)
    model, tokenizer = read_pretrained_dir(directory)
    if config.local_dir is not None and config.name in GPT2_MODELS:
        expected = GPT2_MODELS[config.name][1]
        found = {k: getattr(model.config, k) for k in expected}
        if found != expected:
            raise CheckpointError(
                f"{directory} holds a model of shape {found}, not {config.name}'s {expected}; "
                f"pass the name that matches the directory, or name=<directory> to load whatever it holds"
            )
    return model.to(device=config.device, dtype=DTYPES[config.dtype]).eval(), tokenizer


def pretrained_dir(config: PretrainedModelConfig) -> Path:
    """The local directory holding the weights, downloading them first if needed."""
    if config.local_dir is not None:
        return checked_dir(Path(config.local_dir))
    if config.name in GPT2_MODELS:
        return download(config)
    path = Path(config.name)
    if path.is_dir():
        return checked_dir(path)
    if os.sep in config.name or config.name.startswith("."):
        raise CheckpointError(f"directory {config.name} does not exist; pass a directory with {' + '.join(HF_FILES)}")
    raise ConfigError(
        f"unknown pretrained model {config.name!r}; choose one of {', '.join(GPT2_MODELS)} "
        f"or give a directory with {' + '.join(HF_FILES)}"
    )


def checked_dir(path: Path) -> Path:
    if not path.is_dir():
        raise CheckpointError(f"directory {path} does not exist; pass a directory with {' + '.join(HF_FILES)}")
    old_export = (path / MICROGPT_CONFIG_FILE).is_file() and not (path / CONFIG_FILE).is_file()
    needed = (MICROGPT_CONFIG_FILE, WEIGHTS_FILE) if old_export else HF_FILES
    missing = [f for f in needed if not (path / f).is_file()]
    if missing:
        raise CheckpointError(
            f"{path} is missing {', '.join(missing)}; a pretrained model directory needs {' + '.join(needed)} "
            f"(the Hugging Face format: save_pretrained(..., safe_serialization=True))"
        )
    return path


def download(config: PretrainedModelConfig) -> Path:
    """The Hub's config.json + model.safetensors, through the Hugging Face cache (downloaded once)."""
    from huggingface_hub import hf_hub_download

    repo = GPT2_MODELS[config.name][0]
    try:
        paths = [hf_hub_download(repo, f, revision=config.revision, cache_dir=config.cache_dir) for f in HF_FILES]
    except Exception as e:  # offline, no network, bad revision: the Hub raises many types
        reason = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise CheckpointError(
            f"could not download {config.name} ({repo}) from the Hugging Face Hub ({type(e).__name__}: {reason}); "
            f"check the network, or pass a local copy of its {' + '.join(HF_FILES)} as local_dir"
        ) from e
    return Path(paths[0]).parent


def read_pretrained_dir(directory: Path) -> tuple[GPT, Tokenizer]:
    """The model and tokenizer of a Hugging Face directory of any registered family, or of an export
    in the older microgpt format (microgpt_config.json + our tensor names)."""
    if not (directory / CONFIG_FILE).is_file() and (directory / MICROGPT_CONFIG_FILE).is_file():
        payload = read_json(directory / MICROGPT_CONFIG_FILE)
        if payload.get("format") != EXPORT_FORMAT or "model" not in payload or "tokenizer" not in payload:
            raise CheckpointError(f"{directory / MICROGPT_CONFIG_FILE} is not a microgpt export config")
        config = GPTConfig.from_dict(payload["model"])
        tokenizer = tokenizer_from_state(payload["tokenizer"])
        state = read_safetensors(directory / WEIGHTS_FILE)
    else:
        hf = read_json(directory / CONFIG_FILE)
        config, state = hf_state_to_ours(directory, hf, read_safetensors(directory / WEIGHTS_FILE))
        tokenizer = tokenizer_for_hf_dir(directory, config)
    model = GPT(config)
    copy_weights(model, state, str(directory))
    return model, tokenizer


def read_json(path: Path) -> dict:
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path} is unreadable or not JSON ({e})") from e
    if not isinstance(payload, dict):
        raise CheckpointError(f"{path} is not a JSON object; re-save the model")
    return payload


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(path)
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path} is truncated or not a safetensors file ({e})") from e


def tokenizer_for_hf_dir(directory: Path, config: GPTConfig) -> Tokenizer:
    """microgpt_tokenizer.json (an export's exact tokenizer), else tokenizer.json (end-of-text from
    config.json's eos_token_id, else tokenizer_config.json's eos_token), else GPT-2's for its vocabulary."""
    if (directory / TOKENIZER_FILE).is_file() or (directory / TOKENIZER_JSON).is_file():
        tokenizer = load_tokenizer(directory)
        own = getattr(tokenizer, "n_tokens", tokenizer.vocab_size)
        if own > config.vocab_size:
            raise CheckpointError(
                f"{directory}: its tokenizer has {own} ids but the model's embedding only {config.vocab_size} rows "
                f"(config.json vocab_size); the tokenizer belongs to another model: replace it with the model's own"
            )
        return tokenizer
    if config.vocab_size != GPT2_VOCAB_SIZE:
        raise CheckpointError(
            f"{directory} has a vocabulary of {config.vocab_size}, not GPT-2's {GPT2_VOCAB_SIZE}, and no "
            f"{TOKENIZER_JSON} or {TOKENIZER_FILE}; add the model's tokenizer.json (save_pretrained of its tokenizer)"
        )
    return TiktokenTokenizer("gpt2")


def copy_weights(model: GPT, state: dict[str, torch.Tensor], source: str) -> None:
    """Copy `state` (our names) into `model`, checking every name and shape.

    Two shapes may differ on purpose: the embedding may be padded past the real vocabulary (the
    padding rows get the mean embedding, so their logits are the mean logit and, by Jensen's
    inequality, take at most (padding / vocab) of the probability: < 0.001 nats for GPT-2), and a
    learned position table may be cropped to a shorter context (nanoGPT's crop_block_size).
    """
    own = model.state_dict()
    tied = {"lm_head.weight"} if model.config.tie_embeddings else set()  # the embedding itself
    expected = set(own) - tied
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected - tied)
    if missing or unexpected:
        raise CheckpointError(
            f"{source} does not fit this model: missing {missing[:3]}, unexpected {unexpected[:3]} "
            f"(a RoPE/learned-position or bias mismatch?)"
        )
    vocab, block = model.config.vocab_size, model.config.block_size
    with torch.no_grad():
        for key in sorted(expected):
            target, tensor = own[key], state[key]
            if key in ("transformer.wte.weight", "lm_head.weight") and tensor.shape != target.shape and tensor.shape[1:] == target.shape[1:] \
                    and tensor.shape[0] >= vocab:
                target[:vocab].copy_(tensor[:vocab])
                target[vocab:].copy_(tensor[:vocab].mean(dim=0))
            elif key == "transformer.wpe.weight" and tensor.shape[1:] == target.shape[1:] and tensor.shape[0] >= block:
                target.copy_(tensor[:block])
            elif tensor.shape != target.shape:
                raise CheckpointError(
                    f"{source}: {key} has shape {tuple(tensor.shape)} but the model needs {tuple(target.shape)}; "
                    f"the weights are for a different model size"
                )
            else:
                target.copy_(tensor)
