"""`load_model`: a checkpoint, an export or pretrained GPT-2, ready to generate."""

from __future__ import annotations

import os

import torch

from microgpt.core.errors import ConfigError
from microgpt.core.language_model import LanguageModel
from microgpt.io.checkpoints import model_from_checkpoint, read_checkpoint
from microgpt.io.pretrained import PretrainedModelConfig, is_pretrained_source, load_pretrained


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


def load_model(
    path: str | os.PathLike | None = None,
    device: str | torch.device = "cpu",
    *,
    config: PretrainedModelConfig | None = None,
) -> LanguageModel:
    """A model with its tokenizer, ready to generate: a microgpt checkpoint (.ckpt), a pretrained
    GPT-2 name (`gpt2` ... `gpt2-xl`), a model directory, or `config=PretrainedModelConfig(...)`.

    Synchronous; the result is also awaitable, so `await load_model(config=...)` works in async code
    (the loading itself blocks: use `await asyncio.to_thread(load_model, ...)` to keep a loop free).
    """
    if (path is None) == (config is None):
        raise TypeError("load_model needs either the path of a checkpoint / pretrained name, or config=PretrainedModelConfig(...)")
    check_device(config.device if config is not None else device)
    if config is None and is_pretrained_source(path):
        config = PretrainedModelConfig(name=str(path), device=str(device))
    if config is not None:
        return LanguageModel(*load_pretrained(config))
    model, tokenizer = model_from_checkpoint(read_checkpoint(path), source=str(path))
    return LanguageModel(model, tokenizer).to(device)
