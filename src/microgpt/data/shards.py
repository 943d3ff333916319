"""Pre-tokenized token shards on disk: flat uint16/uint32 files plus a JSON manifest, written by
`python -m microgpt.prepare` (tokenizing in worker processes, optionally split over nodes).

Training memory-maps them and reads random windows, the fastest path for large corpora.

A prepare split over `num_nodes` nodes: node k writes `train_nodeKKK_NNNNNN.bin` (node 0 also the
validation shards) and `part_KKK_of_NNN.json`, the list of its shards; the manifest, written once
every node's part is there (`merge_parts`), lists them all in node order.

This module imports no torch, so a spawned worker that only tokenizes starts in well under a second.
"""

from __future__ import annotations

import collections
import gc
import itertools
import json
import logging
import multiprocessing
import os
import pickle
import re
import sys
from collections.abc import Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from microgpt.core.errors import DataError, MicroGPTError
from microgpt.core.tokenizer import Tokenizer
from microgpt.core.tokenizers import tokenizer_from_state

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
SHARD_NAME = re.compile(r"(train|val)(_node\d{3,})?_\d{6}\.bin")  # what ShardWriter names its files
PART_NAME = re.compile(r"part_(\d{3,})_of_(\d{3,})\.json")  # a node's list of its shards
FORMAT = "microgpt-token-shards"
VERSION = 1


def token_dtype(tokenizer: Tokenizer) -> type:
    """uint16 when every id fits (half the memory and disk), else uint32."""
    return np.uint16 if tokenizer.vocab_size <= 2**16 else np.uint32


# --- tokenizing, in this process or in worker processes ----------------------------------------

def encode_documents(tokenizer: Tokenizer, texts: list[str]) -> np.ndarray:
    """The documents' ids as one array, each document preceded by the EOT id (the same stream as
    `packing.tokenized_chunks`). One document at a time: the parallelism is the processes', and
    tiktoken's thread-pooled batch call measured slower than a plain loop on this machine."""
    ids = [tokenizer.encode(t) for t in texts]
    out = np.empty(sum(map(len, ids)) + len(ids), dtype=token_dtype(tokenizer))
    pos = 0
    for one in ids:
        out[pos] = tokenizer.eot
        out[pos + 1 : pos + 1 + len(one)] = one
        pos += 1 + len(one)
    return out


_worker_tokenizer: Tokenizer | None = None


def _start_worker(payload: tuple[str, object]) -> None:
    global _worker_tokenizer
    # A forked worker shares the parent's heap: keep its collector off those pages (copy-on-write).
    gc.freeze()
    how, value = payload  # forked: the object itself, inherited, never pickled; spawned: rebuilt
    _worker_tokenizer = value if how == "object" else pickle.loads(value) if how == "pickle" else tokenizer_from_state(value)


def _encode_in_worker(texts: list[str]) -> np.ndarray:
    return encode_documents(_worker_tokenizer, texts)


def worker_tokenizer() -> Tokenizer:
    """The tokenizer of this worker process (BlockEncoder's pool)."""
    return _worker_tokenizer


def blocks(documents: Iterable[str], block_chars: int) -> Iterator[list[str]]:
    """Consecutive documents, grouped until a group holds `block_chars` characters."""
    block, size = [], 0
    for doc in documents:
        block.append(doc)
        size += len(doc)
        if size >= block_chars:
            yield block
            block, size = [], 0
    if block:
        yield block


def default_start_method() -> str:
    """fork where it is the platform's own default (Linux, Python < 3.14): a spawned worker imports the
    command's main module again, which here means torch, seconds per worker. Elsewhere spawn; the
    workers need nothing from the parent but their tokenizer, so either works."""
    return "fork" if sys.platform == "linux" and sys.version_info < (3, 14) else "spawn"


class BlockEncoder:
    """Tokenizes documents in `num_proc` worker processes: blocks of about `block_chars` characters go
    to the workers, and the arrays come back in document order, so the output is the same as one
    process's. At most two blocks per worker are in flight (bounded memory on any corpus). The pool
    starts only when a stream has a second block: a small corpus is tokenized here."""

    def __init__(self, tokenizer: Tokenizer, num_proc: int = 1, block_chars: int = 1_000_000,
                 start_method: str | None = None) -> None:
        self.tokenizer, self.num_proc, self.block_chars = tokenizer, num_proc, block_chars
        self.start_method = start_method or default_start_method()
        self._pool: ProcessPoolExecutor | None = None

    def __enter__(self) -> BlockEncoder:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)
            self._pool = None

    def workers(self) -> ProcessPoolExecutor:
        if self._pool is None:
            if self.start_method == "fork":
                payload = ("object", self.tokenizer)
            else:
                try:
                    payload = ("pickle", pickle.dumps(self.tokenizer))
                except Exception:  # a tokenizer that does not pickle is rebuilt from its state
                    payload = ("state", self.tokenizer.state())
            context = multiprocessing.get_context(self.start_method)
            self._pool = ProcessPoolExecutor(self.num_proc, mp_context=context, initializer=_start_worker,
                                             initargs=(payload,))
        return self._pool

    def chunks(self, documents: Iterable[str]) -> Iterator[np.ndarray]:
        parts = blocks(documents, self.block_chars)
        if self.num_proc <= 1:
            for block in parts:
                yield encode_documents(self.tokenizer, block)
            return
        first = list(itertools.islice(parts, 2))
        if len(first) < 2:
            for block in first:
                yield encode_documents(self.tokenizer, block)
            return
        pool, pending = self.workers(), collections.deque()
        for block in itertools.chain(first, parts):
            pending.append(pool.submit(_encode_in_worker, block))
            if len(pending) >= 2 * self.num_proc:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


class ShardWriter:
    """Appends token chunks to `<prefix>_NNNNNN.bin` files of at most `shard_tokens` tokens each."""

    def __init__(self, out_dir: Path, prefix: str, dtype, shard_tokens: int) -> None:
        self.out_dir, self.prefix, self.dtype, self.shard_tokens = out_dir, prefix, np.dtype(dtype), shard_tokens
        self.shards: list[dict] = []
        self._file = None
        self._count = 0

    def write(self, chunk: np.ndarray) -> None:
        while len(chunk):
            if self._file is None or self._count >= self.shard_tokens:
                self._open_next()
            take = chunk[: self.shard_tokens - self._count]
            self._file.write(take.astype(self.dtype, copy=False).tobytes())
            self._count += len(take)
            self.shards[-1]["tokens"] = self._count
            chunk = chunk[len(take):]

    def _open_next(self) -> None:
        self.close()
        name = f"{self.prefix}_{len(self.shards):06d}.bin"
        self._file = open(self.out_dir / (name + ".part"), "wb")
        self.shards.append({"file": name, "tokens": 0})
        self._count = 0

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            name = self.shards[-1]["file"]
            os.replace(self.out_dir / (name + ".part"), self.out_dir / name)
            self._file = None

    @property
    def total(self) -> int:
        return sum(s["tokens"] for s in self.shards)


def write_manifest(out_dir: Path, tokenizer: Tokenizer, dtype, train: list[dict], val: list[dict], meta: dict,
                   name: str = MANIFEST) -> Path:
    """The manifest (or, `name=part_name(...)`, a node's part of one), written last."""
    return write_json(out_dir / name, {
        "format": FORMAT, "version": VERSION, "dtype": np.dtype(dtype).name,
        "tokenizer": tokenizer.state(), "eot": tokenizer.eot, "train": train, "val": val, **meta,
    })


def write_json(path: Path, obj: dict) -> Path:
    """Atomically: a directory whose manifest is missing or whole is never half-written."""
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")  # per process: two nodes may merge at the same moment
    tmp.write_text(json.dumps(obj, indent=1))
    os.replace(tmp, path)
    return path


def shard_prefix(split: str, node: int, nodes: int) -> str:
    """What a (node's) split's shard files start with: `train`, or `train_node001` of a split prepare."""
    return split if nodes == 1 else f"{split}_node{node:03d}"


def part_name(node: int, nodes: int) -> str:
    return f"part_{node:03d}_of_{nodes:03d}.json"


class TokenShards:
    """A prepared directory: its tokenizer and memory-mapped train / val shards."""

    def __init__(self, directory: str | os.PathLike) -> None:
        self.dir = Path(directory)
        path = self.dir / MANIFEST
        if not path.is_file():
            raise DataError(f"{self.dir} has no {MANIFEST}: prepare it with `python -m microgpt.prepare out={self.dir}` "
                            f"(an interrupted prepare leaves no manifest)")
        try:
            self.manifest = json.loads(path.read_text(encoding="utf-8"))
            check_manifest(self.manifest)
            self.dtype = np.dtype(self.manifest["dtype"])
            self.tokenizer = tokenizer_from_state(self.manifest["tokenizer"])
        except (ValueError, KeyError, TypeError, AttributeError, MicroGPTError) as e:
            raise DataError(f"{path} is corrupt ({_first_line(e)}); re-run python -m microgpt.prepare "
                            f"out={self.dir} with the same data= and tokenizer=") from e

    def arrays(self, split: str) -> list[np.ndarray]:
        out = []
        for shard in self.manifest.get(split, []):
            file = self.dir / shard["file"]
            expected = shard["tokens"] * self.dtype.itemsize
            if not file.is_file() or file.stat().st_size != expected:
                raise DataError(f"shard {file} is missing or has the wrong size (want {expected} bytes); prepare again")
            out.append(np.memmap(file, dtype=self.dtype, mode="r"))
        return out


def check_manifest(manifest) -> None:
    """ValueError naming the first field that is missing or of the wrong type."""
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ValueError(f"not a {FORMAT} manifest")
    if manifest.get("dtype") not in ("uint16", "uint32"):
        raise ValueError(f"dtype is {manifest.get('dtype')!r}, not uint16 or uint32")
    if not isinstance(manifest.get("tokenizer"), dict):
        raise ValueError("no tokenizer")
    for split in ("train", "val"):
        shards = manifest.get(split)
        if not isinstance(shards, list):
            raise ValueError(f"{split!r} is not a list of shards")
        for shard in shards:
            if not isinstance(shard, dict) or not SHARD_NAME.fullmatch(str(shard.get("file"))) \
                    or isinstance(shard.get("tokens"), bool) or not isinstance(shard.get("tokens"), int) \
                    or shard["tokens"] < 0:
                raise ValueError(f"a {split} shard entry is not {{file: {split}_NNNNNN.bin, tokens: <count>}}: {shard!r}")


def remove_old_shards(out_dir: Path, node: int = 0, nodes: int = 1) -> int:
    """Delete the files a previous prepare wrote here (shards, their partial files, node parts),
    nothing else. Node k of a split prepare removes only its own: the others may be writing theirs."""
    def old(name: str) -> bool:
        m = SHARD_NAME.fullmatch(name.removesuffix(".part"))
        if nodes == 1:
            return bool(m or PART_NAME.fullmatch(name))
        return (bool(m) and name.startswith(shard_prefix(m.group(1), node, nodes) + "_")) or name == part_name(node, nodes)

    found = [p for p in out_dir.iterdir() if old(p.name)]
    for p in found:
        p.unlink()
    return len(found)


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def write_split(out_dir: Path, prefix: str, chunks: Iterable[np.ndarray], dtype, shard_tokens: int, progress=None) -> list[dict]:
    writer = ShardWriter(out_dir, prefix, dtype, shard_tokens)
    try:
        for chunk in chunks:
            writer.write(chunk)
            if progress is not None:
                progress.update(len(chunk))
    finally:
        writer.close()
    return writer.shards
