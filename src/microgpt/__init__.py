"""microgpt: train GPT language models with PyTorch Lightning and Hydra.

The public API, imported on first use (a command that never touches a model does not pay for torch):

    from microgpt import load_model, PretrainedModelConfig, GPT, GPTConfig, load_tokenizer
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_API = {
    "load_model": "microgpt.io.loading",
    "PretrainedModelConfig": "microgpt.io.pretrained",
    "GPT": "microgpt.core.model",
    "GPTConfig": "microgpt.core.model",
    "load_tokenizer": "microgpt.core.tokenizers",
    "LanguageModel": "microgpt.core.language_model",
}
__all__ = list(_API)


def __getattr__(name: str):
    if name in _API:
        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
