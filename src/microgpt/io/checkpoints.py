"""Reading training checkpoints safely (weights only) and rebuilding the model they describe."""

from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path

import torch

from microgpt.core.errors import CheckpointError
from microgpt.core.model import GPT, GPTConfig
from microgpt.core.tokenizer import Tokenizer
from microgpt.core.tokenizers import tokenizer_from_state

STATE_PREFIX = "model."  # the GPT is the `model` attribute of the LightningModule


def read_checkpoint(path: str | os.PathLike, map_location="cpu") -> dict:
    """torch.load(weights_only=True): a file that would need to run code to load is refused."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist; check the path (ckpt=... / ckpt_path=...)")
    try:
        try:
            return torch.load(path, map_location=map_location, weights_only=True, mmap=True)
        except RuntimeError as e:
            if "zip" not in str(e).lower() and "mmap" not in str(e).lower():
                raise
            # Memory-mapping needs the zip format; older (legacy) files load without it.
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else "unsafe content"
        raise CheckpointError(f"checkpoint {path} was refused: it holds objects that are not plain weights ({first})") from e
    except (RuntimeError, zipfile.BadZipFile, EOFError, OSError, ValueError) as e:
        raise CheckpointError(f"checkpoint {path} is truncated or corrupt ({type(e).__name__}); use an earlier checkpoint") from e


def model_from_checkpoint(ckpt: dict, source: str = "checkpoint") -> tuple[GPT, Tokenizer]:
    """The GPT and tokenizer a microgpt checkpoint describes, with its weights loaded."""
    hparams = ckpt.get("hyper_parameters") or {}
    if "model" not in hparams or "tokenizer" not in hparams or "state_dict" not in ckpt:
        raise CheckpointError(f"{source} is not a microgpt training checkpoint (no model config, tokenizer or weights)")
    config = GPTConfig.from_dict(hparams["model"])
    state = {k[len(STATE_PREFIX):]: v for k, v in ckpt["state_dict"].items() if k.startswith(STATE_PREFIX)}
    model = GPT(config)
    missing, unexpected = model.load_state_dict(state, strict=False)
    # The LM head is tied to the embedding, so its key may be absent.
    missing = [k for k in missing if k != "lm_head.weight"]
    if missing or unexpected:
        raise CheckpointError(f"{source} does not match its own model config (missing {missing[:3]}, unexpected {unexpected[:3]})")
    return model, tokenizer_from_state(hparams["tokenizer"])
