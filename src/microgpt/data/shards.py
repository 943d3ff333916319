"""Pre-tokenized token shards on disk: flat uint16/uint32 files plus a JSON manifest.

Training memory-maps them and reads random windows, the fastest path for large corpora.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from microgpt.core.errors import DataError, MicroGPTError
from microgpt.core.tokenizer import Tokenizer
from microgpt.core.tokenizers import tokenizer_from_state

MANIFEST = "manifest.json"
SHARD_NAME = re.compile(r"(train|val)_\d{6}\.bin")  # what ShardWriter names its files
FORMAT = "microgpt-token-shards"
VERSION = 1


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


def write_manifest(out_dir: Path, tokenizer: Tokenizer, dtype, train: list[dict], val: list[dict], meta: dict) -> Path:
    manifest = {
        "format": FORMAT, "version": VERSION, "dtype": np.dtype(dtype).name,
        "tokenizer": tokenizer.state(), "eot": tokenizer.eot,
        "train": train, "val": val, **meta,
    }
    tmp = out_dir / (MANIFEST + ".part")
    tmp.write_text(json.dumps(manifest, indent=1))
    os.replace(tmp, out_dir / MANIFEST)  # the manifest last: a directory without one is incomplete
    return out_dir / MANIFEST


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


def remove_old_shards(out_dir: Path) -> int:
    """Delete the files a previous prepare wrote here (shards and their partial files), nothing else."""
    old = [p for p in out_dir.iterdir() if SHARD_NAME.fullmatch(p.name.removesuffix(".part"))]
    for p in old:
        p.unlink()
    return len(old)


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
