"""Deprecated: the seed project's `from microgpt.model import load_model` (and GPT, GPTConfig).
Import them from `microgpt` instead; this module only forwards, it defines nothing."""

from __future__ import annotations

import warnings

from microgpt.core.model import GPT, GPTConfig
from microgpt.io.loading import load_model
from microgpt.io.pretrained import PretrainedModelConfig

__all__ = ["GPT", "GPTConfig", "PretrainedModelConfig", "load_model"]

warnings.warn("microgpt.model is deprecated: use `from microgpt import load_model, GPT, GPTConfig`",
              DeprecationWarning, stacklevel=2)
