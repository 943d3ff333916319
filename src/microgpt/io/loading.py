"""`load_model`: a checkpoint, an export or pretrained GPT-2, ready to generate."""

from __future__ import annotations

import os

import torch

from microgpt.core.errors import ConfigError
from microgpt.core.language_model import LanguageModel
from microgpt.io.checkpoints import model_from_checkpoint, read_checkpoint
from microgpt.io.pretrained import DTYPES, PretrainedModelConfig, is_pretrained_source, load_pretrained


def check_device(device: str | torch.device) -> torch.device:
    """`device` as a torch.device this machine has; a ConfigError naming the choices otherwise
    (before a checkpoint is read: `device=cuda` on a CPU-only machine fails in one line)."""
    try:
        parsed = device if isinstance(device, torch.device) else torch.device(str(device))
    except (RuntimeError, ValueError, TypeError):
        raise ConfigError(f"device={device!r} is not a device name; use cpu, cuda, cuda:<index> or mps") from None
    if parsed.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ConfigError(f"device={device} was asked for, but this machine has no usable CUDA GPU "
                              f"(torch {torch.__version__}); use device=cpu")
        if parsed.index is not None and parsed.index >= count:
            raise ConfigError(f"device={device}: this machine has {count} CUDA GPU(s) (cuda:0 to cuda:{count - 1})")
    elif parsed.type == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise ConfigError(f"device={device} was asked for, but Apple's MPS is not available here; use device=cpu")
    elif parsed.type not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"device={device} is not supported for generation and evaluation; use cpu, cuda or mps")
    return parsed


def check_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """`dtype` (float32, bfloat16 or float16, by name or as a torch.dtype) as a torch.dtype; a
    ConfigError naming the choices otherwise (before a checkpoint is read, as check_device)."""
    if isinstance(dtype, torch.dtype) and dtype in DTYPES.values():
        return dtype
    if isinstance(dtype, str) and dtype in DTYPES:
        return DTYPES[dtype]
    raise ConfigError(f"dtype={dtype} is not an inference dtype; use one of {', '.join(DTYPES)}")


def load_model(
    path: str | os.PathLike | None = None,
    device: str | torch.device = "cpu",
    *,
    dtype: str | torch.dtype = "float32",
    config: PretrainedModelConfig | None = None,
) -> LanguageModel:
    """A model with its tokenizer, ready to generate: a microgpt checkpoint (.ckpt), a pretrained
    GPT-2 name (`gpt2` ... `gpt2-xl`), a model directory, or `config=PretrainedModelConfig(...)`
    (which carries its own dtype). `dtype`: the weights' (and the KV cache's) dtype, float32,
    bfloat16 or float16; half the bytes per token make CPU decoding faster (bench_generate.py).

    Synchronous; the result is also awaitable, so `await load_model(config=...)` works in async code
    (the loading itself blocks: use `await asyncio.to_thread(load_model, ...)` to keep a loop free).
    """
    if (path is None) == (config is None):
        raise TypeError("load_model needs either the path of a checkpoint / pretrained name, or config=PretrainedModelConfig(...)")
    check_device(config.device if config is not None else device)
    dtype = check_dtype(dtype)
    if config is None and is_pretrained_source(path):
        name = next(k for k, v in DTYPES.items() if v == dtype)
        config = PretrainedModelConfig(name=str(path), device=str(device), dtype=name)
    if config is not None:
        return LanguageModel(*load_pretrained(config))
    model, tokenizer = model_from_checkpoint(read_checkpoint(path), source=str(path))
    return LanguageModel(model.to(dtype), tokenizer).to(device)
