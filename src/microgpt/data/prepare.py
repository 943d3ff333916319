"""Tokenize a configured corpus once into token shards (see `shards.py`) with a progress bar.

`num_proc` worker processes tokenize blocks of documents; the shards are written in document
order, so they are byte-identical to one process's. `node_rank` / `num_nodes` split a prepare
over machines writing into one directory: node k tokenizes part k of the training documents
(`sources.part_documents`: files k, k + n, ... of a multi-file corpus, else every n-th document),
node 0 also the validation documents, which are the same as a one-node prepare's. The node that
finds every part written merges them into the manifest (or run `merge=true` after all of them).
"""

from __future__ import annotations

import collections
import hashlib
import itertools
import json
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from omegaconf import DictConfig
from tqdm import tqdm

from microgpt.core.errors import ConfigError, DataError, require_positive_int
from microgpt.core.tokenizers import build_tokenizer
from microgpt.data.packing import token_dtype
from microgpt.data.shards import (
    MANIFEST,
    PART_NAME,
    SHARD_NAME,
    BlockEncoder,
    blocks,
    check_manifest,
    encode_documents,
    part_name,
    remove_old_shards,
    shard_prefix,
    worker_tokenizer,
    write_json,
    write_manifest,
    write_split,
)
from microgpt.data.sources import part_documents, part_tasks, piece_share
from microgpt.data.splits import corpus, doc_key, head_of, split_tokens, without
from microgpt.io.config import to_plain

log = logging.getLogger(__name__)


def resolve_num_proc(value) -> int:
    """`null`: every core."""
    if value is None:
        return os.cpu_count() or 1
    return require_positive_int("num_proc", value)


def node_settings(cfg: DictConfig) -> tuple[int, int]:
    nodes = require_positive_int("num_nodes", cfg.get("num_nodes", 1))
    node = cfg.get("node_rank", 0)
    if isinstance(node, bool) or not isinstance(node, int) or not 0 <= node < nodes:
        raise ConfigError(f"node_rank must be an integer in [0, num_nodes={nodes}), got {node!r}")
    return node, nodes


def prepare_shards(cfg: DictConfig) -> Path:
    out = Path(cfg.out)
    node, nodes = node_settings(cfg)
    if cfg.get("merge", False):
        if nodes == 1:
            raise ConfigError("merge=true merges a prepare split over nodes: give its num_nodes=<n>")
        return merge_parts(out, nodes).parent
    shard_tokens = require_positive_int("shard_tokens", cfg.shard_tokens)
    num_proc = resolve_num_proc(cfg.get("num_proc"))
    block_chars = require_positive_int("block_chars", cfg.get("block_chars", 1_000_000))
    sources = to_plain(cfg.data.sources) or []
    val_sources = to_plain(cfg.data.get("val_sources")) or []
    if not sources:
        raise ConfigError("data.sources is empty: nothing to prepare")
    tok_cfg = to_plain(cfg.tokenizer)
    if tok_cfg.get("kind") == "char" and not tok_cfg.get("path"):
        raise ConfigError("prepare needs a fixed tokenizer (tokenizer=gpt2, or tokenizer.path=<saved file>), not one learned per run")
    tokenizer = build_tokenizer(tok_cfg)
    out.mkdir(parents=True, exist_ok=True)
    (out / MANIFEST).unlink(missing_ok=True)  # incomplete until the new manifest is written
    if removed := remove_old_shards(out, node, nodes):
        log.info("removed %d files of an earlier prepare in %s", removed, out)
    dtype = token_dtype(tokenizer)
    start = time.perf_counter()
    with BlockEncoder(tokenizer, num_proc, block_chars) as encoder, \
            tqdm(desc="tokens", unit="tok", unit_scale=True, disable=None) as bar:
        train_chunks, val_chunks = held_out_chunks(cfg.data, sources, val_sources, tokenizer, encoder, node, nodes, out)
        val = write_split(out, shard_prefix("val", node, nodes), val_chunks, dtype, shard_tokens, bar)
        train = write_split(out, shard_prefix("train", node, nodes), train_chunks, dtype, shard_tokens, bar)
    elapsed = time.perf_counter() - start
    n_train, n_val_tokens = sum(s["tokens"] for s in train), sum(s["tokens"] for s in val)
    meta = {"sources": sources, "val_sources": val_sources, "seconds": round(elapsed, 2)}
    if nodes == 1:
        if not n_train or not n_val_tokens:
            raise DataError(f"prepared {n_train} training and {n_val_tokens} validation tokens: the corpus is too small "
                            f"for its validation holdout (give more text, or data.val_sources)")
        write_manifest(out, tokenizer, dtype, train, val, meta)
        log.info("wrote %s train + %s val tokens (%s) to %s in %.1f s with %d process(es)", f"{n_train:,}",
                 f"{n_val_tokens:,}", dtype.__name__, out, elapsed, num_proc)
        return out
    key = run_key({"sources": sources, "val_sources": val_sources, "tokenizer": tokenizer.state(), "nodes": nodes,
                   "shard_tokens": shard_tokens, "val_documents": cfg.data.get("val_documents", 100),
                   "val_fraction": cfg.data.get("val_fraction", 0.1)})
    write_manifest(out, tokenizer, dtype, train, val, {**meta, "node_rank": node, "num_nodes": nodes, "key": key},
                   name=part_name(node, nodes))
    log.info("node %d of %d: wrote %s train + %s val tokens to %s in %.1f s with %d process(es)", node, nodes,
             f"{n_train:,}", f"{n_val_tokens:,}", out, elapsed, num_proc)
    if parts_complete(out, nodes, key):  # the last node to finish writes the manifest
        merge_parts(out, nodes)
    else:
        log.info("waiting for the other nodes' parts: the last one to finish writes %s "
                 "(or run merge=true num_nodes=%d afterwards)", MANIFEST, nodes)
    return out


def held_out_chunks(data, sources: list[dict], val_sources: list[dict], tokenizer, encoder: BlockEncoder,
                    node: int = 0, nodes: int = 1, scratch: Path | None = None):
    """(train, val) token chunk streams: `val_sources`, else the first `data.val_documents` documents,
    else (a corpus with no more documents than that) the last `data.val_fraction` of its tokens.
    Node k of n: its part of the training documents; validation on node 0 only (the same documents
    whatever the number of nodes)."""
    first = node == 0
    if val_sources:
        val = encoder.chunks(corpus(val_sources)) if first else iter(())
        return train_chunks(sources, frozenset(), encoder, node, nodes, scratch), val
    n_val = require_positive_int("data.val_documents", data.get("val_documents", 100))
    head, rest, whole = head_of(sources, n_val + 1)
    if whole:
        fraction = data.get("val_fraction", 0.1)
        if not first:
            log.info("the corpus has only %d documents: node 0 prepares all of it", len(head))
            return iter(()), iter(())
        log.info("the corpus has only %d documents (data.val_documents=%d): validation is the last %s of its tokens",
                 len(head), n_val, f"{fraction:.0%}" if isinstance(fraction, float) else fraction)
        train, val = split_tokens(head, tokenizer, fraction)
        return [train], [val]
    val_docs = head[:n_val]
    held = frozenset(doc_key(d) for d in val_docs)
    rest_docs = itertools.chain(head[n_val:], rest) if nodes == 1 else None  # the head is read already
    return train_chunks(sources, held, encoder, node, nodes, scratch, rest_docs), \
        (encoder.chunks(val_docs) if first else iter(()))


def train_chunks(sources, held, encoder: BlockEncoder, node: int, nodes: int, scratch: Path | None, docs=None):
    """This node's training documents minus `held`, tokenized. With worker processes and several
    pieces (files), each worker reads whole pieces itself; else this process reads and sends blocks."""
    tasks = part_tasks(sources, node, nodes)
    if encoder.num_proc > 1 and len(tasks) > 1 and scratch is not None:
        return piece_chunks(encoder, tasks, held, scratch)
    return encoder.chunks(without(docs if docs is not None else part_documents(sources, node, nodes), held))


def _encode_piece(held: frozenset[bytes], task: tuple[dict, int, int], path: str, block_chars: int) -> int:
    """Read, filter and tokenize one piece of the sources (`sources.part_tasks`) in a worker, into
    the file `path`; returns its token count. The worker reads the files itself: parsing records
    costs about as much as tokenizing them, too much to leave to the one parent process."""
    docs = without(piece_share(*task), held)
    count = 0
    with open(path, "wb") as f:
        for block in blocks(docs, block_chars):
            tokens = encode_documents(worker_tokenizer(), block)
            f.write(tokens.tobytes())
            count += len(tokens)
    return count


def piece_chunks(encoder: BlockEncoder, tasks: list[tuple[dict, int, int]], held: frozenset[bytes], scratch: Path,
                 read_tokens: int = 1 << 24) -> Iterator[np.ndarray]:
    """The documents of `tasks` (`sources.part_tasks`) minus `held`, tokenized, in task order: each
    worker reads, filters and tokenizes whole pieces into a scratch file (bounded memory whatever a
    piece's size), which this process then streams out and deletes."""
    pool, pending = encoder.workers(), collections.deque()
    dtype = token_dtype(encoder.tokenizer)

    def drain():
        path, future = pending.popleft()
        try:
            count = future.result()
            if count:
                tokens = np.memmap(path, dtype=dtype, mode="r")
                for start in range(0, count, read_tokens):
                    yield np.array(tokens[start : start + read_tokens])
                del tokens
        finally:
            path.unlink(missing_ok=True)

    try:
        for i, task in enumerate(tasks):
            path = scratch / f".tokens_{os.getpid()}_{i:06d}.tmp"
            pending.append((path, pool.submit(_encode_piece, held, task, str(path), encoder.block_chars)))
            if len(pending) >= 2 * encoder.num_proc:
                yield from drain()
        while pending:
            yield from drain()
    finally:
        for path, future in pending:
            future.cancel()
            try:
                future.result()
            except Exception:  # noqa: S110 - the error that stopped us is already on its way
                pass
            path.unlink(missing_ok=True)


def run_key(settings: dict) -> str:
    """A digest of what a prepare depends on: the parts of one merged manifest must share it."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


def merge_parts(out_dir: Path, nodes: int) -> Path:
    """Write the manifest of a prepare split over `nodes` nodes: every node's part must be there, from
    the same settings, with each of its shard files whole. Shard and part files of other prepares
    into this directory (not listed) are removed."""
    out_dir = Path(out_dir)
    parts, missing = [], []
    for node in range(nodes):
        path = out_dir / part_name(node, nodes)
        if not path.is_file():
            missing.append(node)
            continue
        try:
            part = json.loads(path.read_text(encoding="utf-8"))
            check_manifest(part)
        except ValueError as e:
            raise DataError(f"{path} is corrupt ({e}); run node_rank={node} num_nodes={nodes} again") from e
        parts.append(part)
    if missing:
        raise DataError(f"{out_dir}: the prepare split over {nodes} nodes lacks node(s) {', '.join(map(str, missing))}; "
                        f"run python -m microgpt.prepare ... node_rank=<i> num_nodes={nodes} for each, then merge=true")
    keys = {p.get("key") for p in parts}
    if len(keys) != 1:
        raise DataError(f"{out_dir}: the {nodes} parts come from different settings (data, tokenizer or shard_tokens "
                        f"differ between nodes); run every node with the same ones")
    dtype = np.dtype(parts[0]["dtype"])
    train = [s for p in parts for s in p["train"]]
    val = [s for p in parts for s in p["val"]]
    for shard in train + val:
        file = out_dir / shard["file"]
        if not file.is_file() or file.stat().st_size != shard["tokens"] * dtype.itemsize:
            raise DataError(f"shard {file} is missing or has the wrong size; run its node again, then merge=true")
    n_train, n_val = sum(s["tokens"] for s in train), sum(s["tokens"] for s in val)
    if not n_train or not n_val:
        raise DataError(f"prepared {n_train} training and {n_val} validation tokens over {nodes} nodes: the corpus is "
                        f"too small for its validation holdout (give more text, or data.val_sources)")
    manifest = {k: v for k, v in parts[0].items() if k not in ("node_rank", "num_nodes")}
    manifest.update(train=train, val=val, nodes=nodes, seconds=round(max(p.get("seconds", 0) for p in parts), 2))
    listed = {s["file"] for s in train + val}
    stale = [p for p in out_dir.iterdir()
             if (SHARD_NAME.fullmatch(p.name) and p.name not in listed)
             or ((m := PART_NAME.fullmatch(p.name)) and int(m.group(2)) != nodes)]
    for p in stale:
        p.unlink(missing_ok=True)
    path = write_json(out_dir / MANIFEST, manifest)
    log.info("merged %d parts: %s train + %s val tokens in %s", nodes, f"{n_train:,}", f"{n_val:,}", out_dir)
    return path


def parts_complete(out_dir: Path, nodes: int, key: str) -> bool:
    """Whether every node of this prepare (same settings) has written its part."""
    for node in range(nodes):
        try:
            if json.loads((Path(out_dir) / part_name(node, nodes)).read_text(encoding="utf-8")).get("key") != key:
                return False
        except (OSError, ValueError):
            return False
    return True


