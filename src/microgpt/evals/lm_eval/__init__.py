"""lm-evaluation-harness over microgpt models: the `microgpt` lm-eval model and its task runner.

lm-eval is an optional extra (`pip install 'microgpt[eval]'`): nothing here imports it until a
function needs it, and its absence is one ConfigError naming that fix. The model is registered with
lm-eval's registry by `register_microgpt()`, called by the commands that use it: importing
microgpt registers nothing.
"""

from __future__ import annotations

from types import ModuleType

from microgpt.core.errors import ConfigError

MODEL_NAME = "microgpt"
INSTALL_FIX = "pip install 'microgpt[eval]'"


def require_lm_eval() -> ModuleType:
    """The `lm_eval` package, or a ConfigError saying how to install it."""
    try:
        import lm_eval
    except ImportError:
        raise ConfigError(f"lm-eval tasks need the lm-evaluation-harness, which is not installed: {INSTALL_FIX}") from None
    return lm_eval


def register_microgpt() -> type:
    """Register `MicroGPTLM` as lm-eval's `microgpt` model (again: a no-op); the class."""
    require_lm_eval()
    from lm_eval.api.registry import model_registry, register_model

    from microgpt.evals.lm_eval.adapter import MicroGPTLM

    if model_registry.get(MODEL_NAME, None) is not MicroGPTLM:
        register_model(MODEL_NAME)(MicroGPTLM)
    return MicroGPTLM
