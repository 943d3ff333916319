"""Held-out validation: which documents (or tokens) are validation, so that none of them is ever
trained on, even when a mixture repeats its sources or a corpus holds duplicates."""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Iterable, Iterator

import numpy as np

from microgpt.core.errors import ConfigError
from microgpt.core.tokenizer import Tokenizer
from microgpt.data.packing import token_dtype, tokenized_chunks
from microgpt.data.sources import documents_from


def corpus(sources: list[dict]) -> Iterator[str]:
    """Every source's documents, in order."""
    return itertools.chain.from_iterable(documents_from(s) for s in sources)


def head_of(sources: list[dict], n: int) -> tuple[list[str], Iterator[str], bool]:
    """(the first `n` documents, an iterator over the rest, whether the corpus has fewer than `n`:
    then the head is all of it)."""
    docs = corpus(sources)
    head = list(itertools.islice(docs, n))
    return head, docs, len(head) < n


def doc_key(doc: str) -> bytes:
    """A stable digest of a document (Python's str hash differs between processes)."""
    return hashlib.blake2b(doc.encode("utf-8", "surrogatepass"), digest_size=16).digest()


def without(docs: Iterable[str], held: frozenset[bytes]) -> Iterator[str]:
    """`docs` minus every copy of a held-out (validation) document."""
    return (d for d in docs if not held or doc_key(d) not in held)


def require_fraction(fraction) -> float:
    if not (isinstance(fraction, float) and 0.0 < fraction < 1.0):
        raise ConfigError(f"data.val_fraction must be in (0, 1), got {fraction}")
    return fraction


def split_tokens(docs: list[str], tokenizer: Tokenizer, fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """(train, val) tokens: validation is the last `fraction` of the corpus's tokens (a single
    document is cut in two). A document with any token in validation is validation: its other
    copies (a mixture's repeats, duplicates) leave training, and validation holds each document once."""
    fraction = require_fraction(fraction)
    chunks = list(tokenized_chunks(docs, tokenizer))
    ends = np.cumsum([len(c) for c in chunks]) if chunks else np.zeros(0, dtype=np.int64)
    total = int(ends[-1]) if len(ends) else 0
    cut = total - int(total * fraction)
    held = {doc_key(d) for d, end in zip(docs, ends) if end > cut}
    train, val, in_val = [], [], set()
    for doc, chunk, end in zip(docs, chunks, ends):
        start, key = int(end) - len(chunk), doc_key(doc)
        if end <= cut:
            if key not in held:
                train.append(chunk)
        elif start < cut:  # the document the cut falls in: its head trains, its tail validates
            train.append(chunk[: cut - start])
            val.append(chunk[cut - start:])
            in_val.add(key)
        elif key not in in_val:
            val.append(chunk)
            in_val.add(key)
    empty = np.zeros(0, dtype=token_dtype(tokenizer))
    return (np.concatenate(train) if train else empty), (np.concatenate(val) if val else empty)
