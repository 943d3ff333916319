"""The registry of Hugging Face families, and what every family shares: choosing the family for a
config, the config.json keys common to all of them, RoPE settings in both spellings, checking a
directory's tensors against its config.json, and reading / writing a model directory.

A family module (io/hf/<model_type>.py) defines MODEL_TYPE, ARCHITECTURE, HF_EMBEDDING / HF_HEAD
(the embedding and head tensor names, to check a tied head) and
    unsupported(config) -> str | None          the first part it cannot express ("model.norm=rmsnorm")
    config_to_hf(config) -> dict               its own config.json keys
    config_from_hf(hf, source) -> dict         GPTConfig settings (a CheckpointError names each key it refuses)
    state_to_hf(state, config) -> dict         our tensors under its names (must also work on meta tensors)
    state_from_hf(state, config, source) -> dict
and optionally canonical_hf_names(state) -> state (older spellings of its tensor names, renamed).
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from types import ModuleType

import torch
from safetensors.torch import save_file

from microgpt.core.errors import CheckpointError, ConfigError
from microgpt.core.model import GPT, GPTConfig
from microgpt.core.tokenizer import Tokenizer

# The order of preference for export: the first family that expresses a config exactly writes it.
FAMILIES = ("gpt2", "gpt_neox", "llama", "qwen3", "olmo2", "mixtral", "qwen3_moe", "deepseek_v3")
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
GENERATION_CONFIG_FILE = "generation_config.json"
MODEL_FILES = (CONFIG_FILE, WEIGHTS_FILE, GENERATION_CONFIG_FILE)
# Buffers some files carry (causal masks, rotary tables): derived, never weights.
IGNORED_SUFFIXES = (".attn.bias", ".attn.masked_bias", ".attention.bias", ".attention.masked_bias",
                    "rotary_emb.inv_freq")


def family(name: str) -> ModuleType | None:
    """The family module for a model_type, or None when it is not (yet) part of this install."""
    try:
        return importlib.import_module(f"{__package__}.{name}")
    except ModuleNotFoundError as e:
        if e.name == f"{__package__}.{name}":
            return None
        raise


def available() -> list[ModuleType]:
    return [m for m in map(family, FAMILIES) if m is not None]


def family_for_config(config: GPTConfig) -> ModuleType:
    """The first family (in FAMILIES order) that expresses `config` exactly; a ConfigError naming the
    part the closest family lacks otherwise."""
    reasons = {}
    for module in available():
        reason = module.unsupported(config)
        if reason is None:
            return module
        reasons[module.MODEL_TYPE] = (reason, module.ARCHITECTURE)
    closest = closest_family(config, reasons)
    reason, architecture = reasons[closest]
    raise ConfigError(
        f"no Hugging Face family expresses this model: {reason} is not part of {architecture}, the closest "
        f"family; change that setting to export it (the .ckpt itself still loads with load_model)"
    )


def closest_family(config: GPTConfig, reasons: dict) -> str:
    """The family a config is nearest to, by the part that sets the families apart."""
    if config.pos_emb == "learned":
        wanted = "gpt2"
    elif config.attention == "mla":
        wanted = "deepseek_v3"
    elif config.n_experts:
        wanted = "qwen3_moe" if config.qk_norm == "head" else "mixtral"
    elif config.norm == "layernorm":
        wanted = "gpt_neox"
    elif config.norm_placement == "post" or config.qk_norm == "full":
        wanted = "olmo2"
    else:
        wanted = "qwen3" if config.qk_norm == "head" else "llama"
    for name in (wanted, "llama"):  # llama: the most general, while a family module is missing
        if name in reasons:
            return name
    return next(iter(reasons))


def family_for_model_type(model_type, source: str) -> ModuleType:
    module = family(model_type) if model_type in FAMILIES else None
    if module is None:
        known = ", ".join(m.MODEL_TYPE for m in available())
        raise CheckpointError(
            f"{source} holds a {model_type!r} model (config.json model_type), which microgpt does not load; "
            f"supported families: {known}"
        )
    return module


# --- settings --------------------------------------------------------------------------------------


def show(value) -> str:
    """A value as it is written on the command line (model.bias=false, model.rope_scaling=null)."""
    if isinstance(value, bool):
        return str(value).lower()
    return "null" if value is None else str(value)


def mismatch(config: GPTConfig, required: dict) -> str | None:
    """`model.<name>=<value>` for the first setting outside its allowed value(s), else None."""
    for name, allowed in required.items():
        allowed = allowed if isinstance(allowed, tuple) else (allowed,)
        value = getattr(config, name)
        if value not in allowed:
            return f"model.{name}={show(value)}"
    return None


def multi_head_mismatch(config: GPTConfig, required: dict) -> str | None:
    """`mismatch` for the families with plain multi-head attention and a head size derived from the width."""
    if config.kv_heads != config.n_head:
        return f"model.n_kv_head={config.n_kv_head}"
    return mismatch(config, required) or derived_head_dim(config)


def derived_head_dim(config: GPTConfig) -> str | None:
    """Families that derive the head size from the width: an explicit, different one is refused."""
    if config.head_dim is not None and config.head_dim * config.n_head != config.n_embd:
        return f"model.head_dim={config.head_dim}"
    return None


def refused(hf: dict, expected: dict) -> list[str]:
    """`key=value` for each config.json key whose value microgpt does not reproduce (absent: fine)."""
    problems = []
    for key, allowed in expected.items():
        allowed = allowed if isinstance(allowed, tuple) else (allowed,)
        if key in hf and hf[key] not in allowed:
            problems.append(f"{key}={json.dumps(hf[key])}")
    return problems


def refuse(source: str, architecture: str, problems: list[str]) -> None:
    if problems:
        raise CheckpointError(
            f"{source}/config.json: a {architecture} with {', '.join(problems)} computes something microgpt "
            f"does not reproduce; only models without these settings load"
        )


def rope_to_hf(config: GPTConfig, theta_key: str = "rope_theta") -> dict:
    """RoPE keys in both spellings: rope_parameters (transformers 5) and the older theta + rope_scaling
    (transformers 4 reads only those; 5 reads them too, preferring rope_scaling)."""
    params = {"rope_type": config.rope_scaling or "default", "rope_theta": float(config.rope_base)}
    if config.rope_scaling is not None:
        params["factor"] = float(config.rope_factor)
    if config.rope_scaling in ("llama3", "yarn"):
        params["original_max_position_embeddings"] = config.rope_original_block_size
    if config.rope_scaling == "llama3":
        params.update(low_freq_factor=config.rope_low_freq_factor, high_freq_factor=config.rope_high_freq_factor)
    if config.rope_scaling == "yarn":
        params.update(beta_fast=config.rope_beta_fast, beta_slow=config.rope_beta_slow)
    keys = {"rope_parameters": params, theta_key: float(config.rope_base)}
    if config.rope_scaling is not None:
        keys["rope_scaling"] = {k: v for k, v in params.items() if k != "rope_theta"}
    return keys


def rope_from_hf(hf: dict, problems: list[str], theta_key: str = "rope_theta",
                 partial_key: str = "partial_rotary_factor") -> dict:
    """GPTConfig's RoPE settings from either spelling; what we cannot reproduce goes to `problems`."""
    params = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
    if any(isinstance(v, dict) for v in params.values()):
        problems.append("rope_parameters per layer type")
        return {}
    kind = params.get("rope_type", params.get("type", "default"))
    settings = {"pos_emb": "rope", "rope_base": float(params.get("rope_theta", hf.get(theta_key, 10000.0)))}
    partial = params.get("partial_rotary_factor", hf.get(partial_key, 1.0))
    if partial != 1.0:
        problems.append(f"{partial_key}={partial} (microgpt rotates every feature of a head)")
    if kind == "default":
        return settings
    if kind not in ("linear", "llama3", "yarn"):
        problems.append(f"rope_type={kind}")
        return settings
    original = params.get("original_max_position_embeddings",
                          hf.get("original_max_position_embeddings", hf.get("max_position_embeddings")))
    factor = params.get("factor") or (hf["max_position_embeddings"] / original if kind == "yarn" else 1.0)
    settings.update(rope_scaling=kind, rope_factor=float(factor))
    if kind == "llama3":
        settings.update(rope_original_block_size=original, rope_low_freq_factor=float(params["low_freq_factor"]),
                        rope_high_freq_factor=float(params["high_freq_factor"]))
    if kind == "yarn":
        settings.update(rope_original_block_size=original, rope_beta_fast=float(params.get("beta_fast") or 32),
                        rope_beta_slow=float(params.get("beta_slow") or 1))
        for key in ("attention_factor", "mscale", "mscale_all_dim"):
            if params.get(key) is not None:
                problems.append(f"rope_parameters.{key}={params[key]}")
        if params.get("truncate", True) is not True:
            problems.append(f"rope_parameters.truncate={json.dumps(params['truncate'])}")
    return settings


def hf_config(config: GPTConfig, module: ModuleType, tokenizer: Tokenizer, dtype: str) -> dict:
    """config.json for `config` in `module`'s family."""
    return {
        "architectures": [module.ARCHITECTURE],
        "model_type": module.MODEL_TYPE,
        **module.config_to_hf(config),
        "vocab_size": config.vocab_size,
        "tie_word_embeddings": config.tie_embeddings,
        "bos_token_id": tokenizer.eot,
        "eos_token_id": tokenizer.eot,
        "pad_token_id": None,
        "dtype": dtype,
        "torch_dtype": dtype,  # the spelling transformers 4 reads
    }


def gpt_config_from_hf(hf: dict, source: str) -> tuple[ModuleType, GPTConfig]:
    module = family_for_model_type(hf.get("model_type"), source)
    try:
        # Exactly the file's vocabulary: no padding logits to skew the loss.
        settings = {"vocab_size": hf["vocab_size"], "vocab_multiple": 1, "dropout": 0.0}
        return module, GPTConfig(**{**settings, **module.config_from_hf(hf, source)})
    except (KeyError, TypeError, ConfigError) as e:
        raise CheckpointError(f"{source}/config.json is not a usable {module.ARCHITECTURE} config ({e})") from e


# --- tensors ---------------------------------------------------------------------------------------


def zero_biases(state: dict[str, torch.Tensor], modules: list[str]) -> dict[str, torch.Tensor]:
    """`state` with a zero bias for each of `modules` that has none: families whose layers always
    carry biases express a bias-free model exactly this way."""
    out = dict(state)
    for name in modules:
        weight = state[f"{name}.weight"]
        out.setdefault(f"{name}.bias", torch.zeros(weight.shape[0], dtype=weight.dtype, device=weight.device))
    return out


def expected_shapes(module: ModuleType, config: GPTConfig) -> dict[str, torch.Size]:
    """The tensors (names and shapes) a directory of this family and config holds."""
    with torch.device("meta"):  # shapes only: no memory, however large the model
        state = GPT(config).state_dict()
    return {k: v.shape for k, v in module.state_to_hf(state, config).items()}


def check_tensors(module: ModuleType, config: GPTConfig, state: dict[str, torch.Tensor], source: str) -> None:
    """Every tensor config.json implies is there with its shape, and nothing else is."""
    expected = expected_shapes(module, config)
    head, embedding = module.HF_HEAD, module.HF_EMBEDDING
    if config.tie_embeddings and head in state and embedding in state:
        if not torch.equal(state[head], state[embedding]):
            raise CheckpointError(f"{source} has an LM head ({head}) that differs from the embedding though "
                                  f"config.json says tie_word_embeddings=true; set it to false there")
        state.pop(head)
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing:
        raise CheckpointError(
            f"{source} lacks the tensor {first_and_count(missing)} that a {module.ARCHITECTURE} with its config.json "
            f"has; the weights are incomplete or belong to another model (re-save them with save_pretrained)"
        )
    if unexpected:
        raise CheckpointError(
            f"{source} has the tensor {first_and_count(unexpected)}, which a {module.ARCHITECTURE} with its config.json "
            f"does not; config.json does not describe these weights, or they are a variant microgpt lacks"
        )
    for key in sorted(expected):
        if state[key].shape != expected[key]:
            raise CheckpointError(
                f"{source}: {key} has shape {tuple(state[key].shape)} but the model needs {tuple(expected[key])}; "
                f"the weights are for a different model size (or config.json does not describe them)"
            )


def first_and_count(names: list[str]) -> str:
    return names[0] + (f" (and {len(names) - 1} more)" if len(names) > 1 else "")


def hf_state_to_ours(directory: Path, hf: dict, state: dict[str, torch.Tensor]) -> tuple[GPTConfig, dict]:
    """The GPTConfig and our tensors for a Hugging Face directory of any registered family."""
    source = str(directory)
    module, config = gpt_config_from_hf(hf, source)
    canonical = getattr(module, "canonical_hf_names", None)
    state = {k: v for k, v in (canonical(state) if canonical else state).items() if not k.endswith(IGNORED_SUFFIXES)}
    check_tensors(module, config, state, source)
    return config, module.state_from_hf(state, config, source)


def write_hf_model(model: GPT, tokenizer: Tokenizer, out: Path) -> list[Path]:
    """config.json + model.safetensors + generation_config.json of the model's family, into `out`."""
    module = family_for_config(model.config)
    dtype = str(model.transformer.wte.weight.dtype).removeprefix("torch.")
    state = module.state_to_hf(model.state_dict(), model.config)
    # Own storage each: safetensors refuses views of one tensor (q/k/v rows of c_attn).
    state = {k: v.detach().cpu().clone(memory_format=torch.contiguous_format) for k, v in state.items()}
    save_file(state, out / WEIGHTS_FILE, metadata={"format": "pt"})
    config = hf_config(model.config, module, tokenizer, dtype)
    (out / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
    generation = {"bos_token_id": tokenizer.eot, "eos_token_id": tokenizer.eot, "_from_model_config": True}
    (out / GENERATION_CONFIG_FILE).write_text(json.dumps(generation, indent=2) + "\n")
    return [out / name for name in MODEL_FILES]
