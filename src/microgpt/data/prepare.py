"""Tokenize a configured corpus once into token shards (see `shards.py`) with a progress bar."""

from __future__ import annotations

import itertools
import logging
import time
from pathlib import Path

from omegaconf import DictConfig
from tqdm import tqdm

from microgpt.core.errors import ConfigError, DataError, require_positive_int
from microgpt.core.tokenizers import build_tokenizer, load_tokenizer
from microgpt.data.packing import token_dtype, tokenized_chunks
from microgpt.data.shards import write_manifest, write_split
from microgpt.data.sources import documents_from
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
    tokenizer = load_tokenizer(tok_cfg["path"]) if tok_cfg.get("path") else build_tokenizer(tok_cfg)
    out.mkdir(parents=True, exist_ok=True)
    (out / "manifest.json").unlink(missing_ok=True)  # incomplete until the new manifest is written

    docs = itertools.chain.from_iterable(documents_from(s) for s in sources)
    if val_sources:
        val_docs = itertools.chain.from_iterable(documents_from(s) for s in val_sources)
    else:
        n_val = cfg.data.get("val_documents", 100)
        val_docs = list(itertools.islice(docs, n_val))
    dtype = token_dtype(tokenizer)
    start = time.perf_counter()
    with tqdm(desc="tokens", unit="tok", unit_scale=True, disable=None) as bar:
        val = write_split(out, "val", tokenized_chunks(val_docs, tokenizer), dtype, shard_tokens, bar)
        train = write_split(out, "train", tokenized_chunks(docs, tokenizer), dtype, shard_tokens, bar)
    n_train, n_val_tokens = sum(s["tokens"] for s in train), sum(s["tokens"] for s in val)
    if not n_train or not n_val_tokens:
        raise DataError(f"prepared {n_train} training and {n_val_tokens} validation tokens: the corpus is too small "
                        f"for its validation holdout (lower data.val_documents or give data.val_sources)")
    elapsed = time.perf_counter() - start
    write_manifest(out, tokenizer, dtype, train, val, {"sources": sources, "val_sources": val_sources,
                                                        "seconds": round(elapsed, 2)})
    log.info("wrote %s train + %s val tokens (%s) to %s in %.1f s", f"{n_train:,}", f"{n_val_tokens:,}",
             dtype.__name__, out, elapsed)
    return out
