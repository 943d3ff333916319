"""Every tokenizer kind by name, and building one from a config, a saved file (microgpt's own or a
Hugging Face tokenizer.json), a model directory, or a checkpoint's state."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path

from microgpt.core.bpe import BPETokenizer
from microgpt.core.chat import KIND as CHAT_KIND
from microgpt.core.chat import ChatTokenizer
from microgpt.core.errors import ConfigError, DataError
from microgpt.core.tokenizer import FILE_FORMAT, CharTokenizer, TiktokenTokenizer, Tokenizer
from microgpt.core.tokenizer_json import KIND as HF_KIND
from microgpt.core.tokenizer_json import TOKENIZER_JSON, HFTokenizer, read_hf_tokenizer

TOKENIZER_KINDS: dict[str, type[Tokenizer]] = {"tiktoken": TiktokenTokenizer, "char": CharTokenizer, "bpe": BPETokenizer,
                                               HF_KIND: HFTokenizer, CHAT_KIND: ChatTokenizer}
# The tokenizer file an export writes beside the weights: the exact tokenizer the model was trained with.
MICROGPT_TOKENIZER_FILE = "microgpt_tokenizer.json"


def tokenizer_from_state(state: dict) -> Tokenizer:
    kind = state.get("kind")
    if isinstance(state.get("base"), dict):  # a tokenizer around another (chat's special tokens): that one first
        state = {**state, "base": tokenizer_from_state(state["base"])}
    if kind in TOKENIZER_KINDS:
        return TOKENIZER_KINDS[kind].from_state(state)
    raise ConfigError(f"unknown tokenizer kind {kind!r}; known kinds: {sorted(TOKENIZER_KINDS)}")


def load_tokenizer(path: str | os.PathLike, eot: int | str | None = None) -> Tokenizer:
    """A tokenizer file: microgpt's own (Tokenizer.save), a Hugging Face tokenizer.json, or a model
    directory holding one (microgpt_tokenizer.json first, else tokenizer.json).

    `eot`: the end-of-text token of a tokenizer.json (its text or id); None: the one its directory's
    config.json / tokenizer_config.json names.
    """
    path = tokenizer_file(Path(path))
    try:
        text = path.read_text(encoding="utf-8")
        payload = json.loads(text)
        if not isinstance(payload, dict) or (payload.get("format") != FILE_FORMAT and "model" not in payload):
            raise ValueError(f"neither a {FILE_FORMAT} file nor a Hugging Face {TOKENIZER_JSON}")
    except (OSError, ValueError) as e:
        raise DataError(f"tokenizer file {path} is corrupt or truncated ({e}); re-save or re-train it") from e
    if payload.get("format") != FILE_FORMAT:
        return read_hf_tokenizer(path, text, eot)
    if eot is not None:
        raise ConfigError(f"tokenizer.eot={eot!r} applies to a Hugging Face {TOKENIZER_JSON} only; {path} is microgpt's "
                          f"own file, which names its end-of-text token: set tokenizer.eot=null")
    try:
        return tokenizer_from_state(payload)
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise DataError(f"tokenizer file {path} is corrupt or truncated ({e}); re-save or re-train it") from e


def tokenizer_file(path: Path) -> Path:
    """The file `path` names: itself, or the tokenizer file of a directory."""
    if path.is_dir():
        found = [path / name for name in (MICROGPT_TOKENIZER_FILE, TOKENIZER_JSON) if (path / name).is_file()]
        if not found:
            raise DataError(f"{path} holds no {MICROGPT_TOKENIZER_FILE} or {TOKENIZER_JSON}; pass a directory or file "
                            f"that has a tokenizer (a Hugging Face model directory carries {TOKENIZER_JSON})")
        return found[0]
    if not path.is_file():
        raise DataError(f"tokenizer file {path} does not exist; pass a file written by Tokenizer.save or python -m "
                        f"microgpt.train_tokenizer, a Hugging Face {TOKENIZER_JSON}, or a directory holding one")
    return path


def build_tokenizer(cfg: dict, training_texts: Iterable[str] | None = None) -> Tokenizer:
    """The tokenizer a config asks for. `char` without a `path` learns its vocabulary from the texts."""
    if cfg.get("path"):
        return load_tokenizer(cfg["path"], eot=cfg.get("eot"))
    kind = cfg.get("kind")
    if kind == "tiktoken":
        return TiktokenTokenizer(cfg.get("encoding", "gpt2"))
    if kind == "char":
        if training_texts is None:
            raise ConfigError("tokenizer=char needs training text to learn its characters, or tokenizer.path")
        return CharTokenizer.from_texts(training_texts)
    if kind == "bpe":
        raise ConfigError("tokenizer=bpe needs tokenizer.path=<file>; train one with "
                          "python -m microgpt.train_tokenizer data=... tokenizer.out=<file>")
    if kind == HF_KIND:
        raise ConfigError(f"tokenizer=hf needs tokenizer.path=<a Hugging Face model directory or its {TOKENIZER_JSON}>")
    raise ConfigError(f"unknown tokenizer kind {kind!r}; use tokenizer=gpt2, tokenizer=char, tokenizer=bpe or tokenizer=hf")
