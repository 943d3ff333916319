"""Tokenize a configured corpus once into token shards (see `shards.py`) with a progress bar."""

from __future__ import annotations

import itertools
import logging
import time
from pathlib import Path

from omegaconf import DictConfig
from tqdm import tqdm

from microgpt.core.errors import ConfigError, DataError, require_positive_int
from microgpt.core.tokenizer import Tokenizer
from microgpt.core.tokenizers import build_tokenizer
from microgpt.data.packing import token_dtype, tokenized_chunks
from microgpt.data.shards import MANIFEST, remove_old_shards, write_manifest, write_split
from microgpt.data.splits import corpus, doc_key, head_of, split_tokens, without
from microgpt.io.config import to_plain

log = logging.getLogger(__name__)


def prepare_shards(cfg: DictConfig) -> Path:
    out = Path(cfg.out)
    shard_tokens = require_positive_int("shard_tokens", cfg.shard_tokens)
    sources = to_plain(cfg.data.sources) or []
    val_sources = to_plain(cfg.data.get("val_sources")) or []
    if not sources:
        raise ConfigError("data.sources is empty: nothing to prepare")
    tok_cfg = to_plain(cfg.tokenizer)
    if tok_cfg.get("kind") == "char" and not tok_cfg.get("path"):
        raise ConfigError("prepare needs a fixed tokenizer (tokenizer=gpt2, or tokenizer.path=<saved file>), not one learned per run")
    tokenizer = build_tokenizer(tok_cfg)
    train_chunks, val_chunks = held_out_chunks(cfg.data, sources, val_sources, tokenizer)
    out.mkdir(parents=True, exist_ok=True)
    (out / MANIFEST).unlink(missing_ok=True)  # incomplete until the new manifest is written
    if removed := remove_old_shards(out):
        log.info("removed %d shard files of an earlier prepare in %s", removed, out)
    dtype = token_dtype(tokenizer)
    start = time.perf_counter()
    with tqdm(desc="tokens", unit="tok", unit_scale=True, disable=None) as bar:
        val = write_split(out, "val", val_chunks, dtype, shard_tokens, bar)
        train = write_split(out, "train", train_chunks, dtype, shard_tokens, bar)
    n_train, n_val_tokens = sum(s["tokens"] for s in train), sum(s["tokens"] for s in val)
    if not n_train or not n_val_tokens:
        raise DataError(f"prepared {n_train} training and {n_val_tokens} validation tokens: the corpus is too small "
                        f"for its validation holdout (give more text, or data.val_sources)")
    elapsed = time.perf_counter() - start
    write_manifest(out, tokenizer, dtype, train, val, {"sources": sources, "val_sources": val_sources,
                                                        "seconds": round(elapsed, 2)})
    log.info("wrote %s train + %s val tokens (%s) to %s in %.1f s", f"{n_train:,}", f"{n_val_tokens:,}",
             dtype.__name__, out, elapsed)
    return out


def held_out_chunks(data, sources: list[dict], val_sources: list[dict], tokenizer: Tokenizer):
    """(train, val) token chunk streams: `val_sources`, else the first `data.val_documents` documents,
    else (a corpus with no more documents than that) the last `data.val_fraction` of its tokens."""
    if val_sources:
        return tokenized_chunks(corpus(sources), tokenizer), tokenized_chunks(corpus(val_sources), tokenizer)
    n_val = require_positive_int("data.val_documents", data.get("val_documents", 100))
    head, rest, whole = head_of(sources, n_val + 1)
    if whole:
        fraction = data.get("val_fraction", 0.1)
        log.info("the corpus has only %d documents (data.val_documents=%d): validation is the last %s of its tokens",
                 len(head), n_val, f"{fraction:.0%}" if isinstance(fraction, float) else fraction)
        train, val = split_tokens(head, tokenizer, fraction)
        return [train], [val]
    val_docs = head[:n_val]
    train_docs = itertools.chain(head[n_val:], rest)
    held = frozenset(doc_key(d) for d in val_docs)
    return tokenized_chunks(without(train_docs, held), tokenizer), tokenized_chunks(val_docs, tokenizer)
