"""`load_model`: a checkpoint, an export or pretrained GPT-2, ready to generate."""

from __future__ import annotations

import os

import torch

from microgpt.core.language_model import LanguageModel
from microgpt.io.checkpoints import model_from_checkpoint, read_checkpoint
from microgpt.io.pretrained import PretrainedModelConfig, is_pretrained_source, load_pretrained


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
    if config is None and is_pretrained_source(path):
        config = PretrainedModelConfig(name=str(path), device=str(device))
    if config is not None:
        return LanguageModel(*load_pretrained(config))
    model, tokenizer = model_from_checkpoint(read_checkpoint(path), source=str(path))
    return LanguageModel(model, tokenizer).to(device)
