"""Every tokenizer kind by name, and building one from a config, a saved file or a checkpoint's state."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path

from microgpt.core.bpe import BPETokenizer
from microgpt.core.errors import ConfigError, DataError
from microgpt.core.tokenizer import FILE_FORMAT, CharTokenizer, TiktokenTokenizer, Tokenizer

TOKENIZER_KINDS: dict[str, type[Tokenizer]] = {"tiktoken": TiktokenTokenizer, "char": CharTokenizer, "bpe": BPETokenizer}


def tokenizer_from_state(state: dict) -> Tokenizer:
    kind = state.get("kind")
    if kind in TOKENIZER_KINDS:
        return TOKENIZER_KINDS[kind].from_state(state)
    raise ConfigError(f"unknown tokenizer kind {kind!r}; known kinds: {sorted(TOKENIZER_KINDS)}")


def load_tokenizer(path: str | os.PathLike) -> Tokenizer:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"tokenizer file {path} does not exist; pass a file written by Tokenizer.save or python -m microgpt.train_tokenizer")
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
        if payload.get("format") != FILE_FORMAT:
            raise ValueError(f"not a {FILE_FORMAT} file")
        return tokenizer_from_state(payload)
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise DataError(f"tokenizer file {path} is corrupt or truncated ({e}); re-save or re-train it") from e


def build_tokenizer(cfg: dict, training_texts: Iterable[str] | None = None) -> Tokenizer:
    """The tokenizer a config asks for. `char` without a `path` learns its vocabulary from the texts."""
    if cfg.get("path"):
        return load_tokenizer(cfg["path"])
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
    raise ConfigError(f"unknown tokenizer kind {kind!r}; use tokenizer=gpt2, tokenizer=char or tokenizer=bpe")
