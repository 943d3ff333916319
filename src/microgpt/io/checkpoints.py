"""Reading training checkpoints safely (weights only) and rebuilding the model they describe."""

from __future__ import annotations

import os
import pickle
import re
import zipfile
from pathlib import Path

import torch

from microgpt.core.errors import CheckpointError
from microgpt.core.lora import add_lora, has_lora, merge_lora
from microgpt.core.model import GPT, GPTConfig
from microgpt.core.tokenizer import Tokenizer
from microgpt.core.tokenizers import tokenizer_from_state

STATE_PREFIX = "model."  # the GPT is the `model` attribute of the LightningModule
TORCH_MAGIC = (b"PK\x03\x04", b"\x80")  # torch.save's zip archive; the legacy format's pickle protocol byte


def read_checkpoint(path: str | os.PathLike, map_location="cpu") -> dict:
    """torch.load(weights_only=True): a file that would need to run code to load is refused."""
    path = Path(path)
    if not path.is_file():
        what = "is a directory, not a checkpoint file" if path.is_dir() else "does not exist"
        raise CheckpointError(f"checkpoint {path} {what}; check the path (ckpt=... / ckpt_path=...)")
    check_torch_file(path)
    try:
        try:
            return torch.load(path, map_location=map_location, weights_only=True, mmap=True)
        except RuntimeError as e:
            if "zip" not in str(e).lower() and "mmap" not in str(e).lower():
                raise
            # Memory-mapping needs the zip format; older (legacy) files load without it.
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(f"checkpoint {path} was refused: it holds objects that are not plain weights "
                              f"({unsafe_content(e)}); loading it could run code from the file. Use a checkpoint "
                              f"that microgpt wrote, from a source you trust") from e
    except (RuntimeError, zipfile.BadZipFile, EOFError, OSError, ValueError, IndexError, KeyError) as e:
        raise CheckpointError(f"checkpoint {path} is truncated or corrupt ({type(e).__name__}); use an earlier checkpoint") from e


def unsafe_content(error: Exception) -> str:
    """What torch's weights-only loader refused, without its advice on how to load it anyway."""
    found = re.search(r"(Unsupported global: GLOBAL \S+|Unsupported operand \S+)", str(error))
    return found.group(1).rstrip(".") if found else "an object torch's weights-only loader does not allow"


def check_torch_file(path: Path) -> None:
    """A file torch.save did not write (a text file passed as ckpt=) named as such, before torch
    reads it: torch's own complaint would be about pickles or zip archives."""
    try:
        with open(path, "rb") as f:
            head = f.read(16)
    except OSError as e:
        raise CheckpointError(f"checkpoint {path} cannot be read ({e.strerror}); check its permissions") from e
    if head.startswith(TORCH_MAGIC):
        return
    seen = "it is empty" if not head else f"it starts with {head[:12].decode('utf-8', 'replace')!r}"
    raise CheckpointError(f"{path} is not a microgpt checkpoint (not a file torch.save wrote: {seen}); "
                          f"pass a .ckpt that training wrote, e.g. <run dir>/checkpoints/last.ckpt")


def model_from_checkpoint(ckpt: dict, source: str = "checkpoint") -> tuple[GPT, Tokenizer]:
    """The GPT and tokenizer a microgpt checkpoint describes, with its weights loaded."""
    config, state = check_checkpoint(ckpt, source)
    model = GPT(config)
    lora = ckpt["hyper_parameters"].get("lora")
    if lora and has_lora(state):  # a LoRA run: its adapters merged into the weights they adapt
        add_lora(model, lora)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if lora and has_lora(state):
        merge_lora(model)
    # The LM head is tied to the embedding, so its key may be absent.
    missing = [k for k in missing if k != "lm_head.weight"]
    if missing or unexpected:
        raise CheckpointError(f"{source} does not match its own model config (missing {missing[:3]}, unexpected {unexpected[:3]})")
    return model, tokenizer_from_state(ckpt["hyper_parameters"]["tokenizer"])


def check_checkpoint(ckpt: dict, source: str = "checkpoint") -> tuple[GPTConfig, dict[str, torch.Tensor]]:
    """(model config, the GPT's weights) of a microgpt checkpoint whose stored config describes its
    stored weights; a CheckpointError naming the first tensor that disagrees otherwise. The model
    the config describes is built on the meta device: shapes only, no memory."""
    hparams = ckpt.get("hyper_parameters") or {}
    if "model" not in hparams or "tokenizer" not in hparams or "state_dict" not in ckpt:
        raise CheckpointError(f"{source} is not a microgpt training checkpoint (no model config, tokenizer or weights)")
    config = GPTConfig.from_dict(hparams["model"])
    state = {k[len(STATE_PREFIX):]: v for k, v in ckpt["state_dict"].items() if k.startswith(STATE_PREFIX)}
    with torch.device("meta"):
        expected = GPT(config).state_dict()
    check_shapes(expected, state, hparams["model"], source)
    return config, state


def check_shapes(expected: dict[str, torch.Tensor], state: dict, settings: dict, source: str) -> None:
    """The stored weights against the model the stored config builds, named tensor by tensor."""
    wrong = [f"{k} is {tuple(v.shape)} in the weights, {tuple(expected[k].shape)} by the config"
             for k, v in state.items() if k in expected and tuple(v.shape) != tuple(expected[k].shape)]
    if wrong:
        sizes = ", ".join(f"{k}={settings[k]}" for k in ("n_layer", "n_head", "n_embd", "vocab_size", "block_size")
                          if k in settings)
        more = f" (and {len(wrong) - 1} more tensors)" if len(wrong) > 1 else ""
        raise CheckpointError(f"{source} does not match its own model config ({sizes}): {wrong[0]}{more}; "
                              f"the file was edited or mixes two runs: use a checkpoint written by training")
