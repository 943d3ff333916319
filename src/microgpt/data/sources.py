"""Document sources: each yields the documents (strings) of one kind of input."""

from __future__ import annotations

import glob
import itertools
import json
import os
import random
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from microgpt.core.errors import ConfigError, DataError
from microgpt.data.records import record_texts
from microgpt.data.textfiles import data_format, read_text

JSON_SUFFIXES = {".jsonl", ".json"}


SOURCE_KINDS = ("text", "files", "url", "hf", "mixture", "pydoc")


def documents_from(source: dict) -> Iterator[str]:
    """Documents of one source config, e.g. {"kind": "files", "paths": ["data/*.txt"]}.

    Every source takes `max_documents` to read only its first N documents.
    """
    docs = _documents(source)
    limit = source.get("max_documents")
    return itertools.islice(docs, limit) if limit else docs


def _documents(source: dict) -> Iterator[str]:
    kind = source.get("kind")
    if kind == "text":
        yield literal_text(source.get("text"))
    elif kind == "files":
        yield from file_documents(source.get("paths"), source.get("text_field", "text"))
    elif kind == "url":
        yield from url_documents(source)
    elif kind == "hf":
        from microgpt.data.hf import hf_documents

        yield from hf_documents(source)
    elif kind == "mixture":
        yield from mixture_documents(source.get("sources") or [], source.get("seed", 0))
    elif kind == "pydoc":
        yield from pydoc_documents()
    else:
        raise ConfigError(f"unknown data source kind {kind!r}; known: {', '.join(SOURCE_KINDS)}")


def literal_text(text) -> str:
    """`data=text`: the string itself is the corpus. A string that names an existing file is still
    taken literally, with a warning pointing at the file form."""
    if not isinstance(text, str):
        raise ConfigError("a text source needs `text:` (a string); for a file use data=files 'data.paths=[notes.txt]'")
    if len(text) < 4096 and "\n" not in text and os.path.isfile(os.path.expanduser(text)):
        warnings.warn(f"data.text is the literal text {text!r}, which is also a file name; to train on the file, "
                      f"use data=files 'data.paths=[{text}]'", stacklevel=2)
    return text


def url_documents(source: dict) -> Iterator[str]:
    """A file over HTTP(S), downloaded once into the cache, then read like a local file."""
    from microgpt.io.download import fetch

    url = source.get("url")
    if not url:
        raise ConfigError("a url source needs `url:`")
    kwargs = {k: source[k] for k in ("sha256", "max_bytes", "timeout", "retries") if source.get(k) is not None}
    path = fetch(url, cache_dir=source.get("cache_dir"), **kwargs)
    yield from file_documents([path], source.get("text_field", "text"), suffix=data_format(url.split("?")[0]))


def mixture_documents(components: list[dict], seed, part: tuple[int, int] = (0, 1)) -> Iterator[str]:
    """Documents drawn from several sources with probability proportional to their `weight`.

    A source that runs out starts again until every source has been read through once, so a
    small high-weight source is repeated rather than starving the mix. Deterministic given `seed`.

    `part=(k, n)`: reader k of n mixes its own part of every source (`part_documents`), with a
    seed of its own; a source whose part is empty (fewer documents than readers) leaves this
    reader's mix rather than failing it.
    """
    if not components:
        raise ConfigError("a mixture needs `sources:`, each a source with a `weight`")
    weights = []
    for c in components:
        w = c.get("weight", 1.0)
        if not isinstance(w, (int, float)) or w <= 0:
            raise ConfigError(f"mixture weights must be positive numbers, got {w!r}")
        weights.append(float(w))
    specs = [{k: v for k, v in c.items() if k != "weight"} for c in components]
    index, count = part

    def read(spec: dict) -> Iterator[str]:
        return documents_from(spec) if count == 1 else part_documents([spec], index, count)

    streams = [read(s) for s in specs]
    finished = [False] * len(specs)
    produced = [0] * len(specs)
    rng = random.Random(seed if count == 1 else f"{seed}/{index}/{count}")
    while not all(finished):
        i = rng.choices(range(len(specs)), weights=weights)[0]
        doc = next(streams[i], None)
        if doc is None:
            if produced[i] == 0:
                if count == 1:
                    raise DataError(f"mixture source {i} ({specs[i].get('kind')}) has no documents")
                finished[i], weights[i] = True, 0.0  # nothing in this reader's part of it
                if not any(weights):
                    return
                continue
            finished[i] = True
            streams[i] = read(specs[i])
            doc = next(streams[i])
        produced[i] += 1
        yield doc


@dataclass
class Piece:
    """A unit of a source that one reader can read alone: a file, a Hugging Face dataset, a mixture,
    or a whole small source. `split(k, n)`, when given, reads share k of n while reading less than
    the whole piece (a Hugging Face dataset's own shards); otherwise a share keeps every n-th document."""

    read: Callable[[], Iterator[str]]
    split: Callable[[int, int], Iterator[str]] | None = None

    def share(self, index: int, count: int) -> Iterator[str]:
        if count == 1:
            return self.read()
        if self.split is not None:
            return self.split(index, count)
        return itertools.islice(self.read(), index, None, count)


def source_pieces(source: dict) -> list[Piece]:
    """The pieces of one source config, in document order. `max_documents` bounds a whole source,
    so such a source is one piece."""
    kind = source.get("kind")
    if source.get("max_documents"):
        return [Piece(lambda: documents_from(source))]
    if kind == "files":
        field = source.get("text_field", "text")
        return [Piece(lambda p=path: file_documents([p], field)) for path in expand_paths(source.get("paths"))]
    if kind == "hf":
        from microgpt.data.hf import hf_documents

        return [Piece(lambda: hf_documents(source), lambda k, n: hf_documents(source, part=(k, n)))]
    if kind == "mixture":
        components, seed = source.get("sources") or [], source.get("seed", 0)
        return [Piece(lambda: mixture_documents(components, seed),
                      lambda k, n: mixture_documents(components, seed, part=(k, n)))]
    return [Piece(lambda: documents_from(source))]


def part_tasks(sources: list[dict], part: int, parts: int) -> list[tuple[int, int, int, int]]:
    """Part `part` of `parts` as pieces to read: (source index, piece index, share, shares); see
    `part_documents`."""
    if not 0 <= part < parts:
        raise ValueError(f"part {part} of {parts}")
    pieces = [(s, p) for s, source in enumerate(sources) for p in range(len(source_pieces(source)))]
    if parts == 1 or len(pieces) >= parts:
        return [(s, p, 0, 1) for s, p in pieces[part::parts]]
    first = part % len(pieces)
    return [(*pieces[first], part // len(pieces), len(range(first, parts, len(pieces))))]


def part_documents(sources: list[dict], part: int, parts: int) -> Iterator[str]:
    """Part `part` of `parts` of the documents of `sources`: the parts are disjoint and together hold
    every document once, and each reads only its own share of the input.

    The sources are cut into pieces (`source_pieces`: a file each, a Hugging Face dataset, ...).
    With at least as many pieces as parts, part k reads pieces k, k + n, k + 2n, ... whole. With
    fewer, the parts share pieces: part k reads piece k % P only, keeping every m-th of its documents
    (m = the parts that share it), or for a Hugging Face dataset its own shards
    (`datasets.distributed.split_dataset_by_node`). One part is the corpus itself, in order.
    """
    if parts == 1:
        for source in sources:
            yield from documents_from(source)
        return
    pieces = [source_pieces(source) for source in sources]
    for s, p, share, shares in part_tasks(sources, part, parts):
        yield from pieces[s][p].share(share, shares)


def pydoc_documents() -> Iterator[str]:
    """The Python documentation topics every CPython install ships (pydoc_data): ~460 kB of English."""
    from pydoc_data.topics import topics

    for name in sorted(topics):
        yield topics[name]


def expand_paths(patterns) -> list[Path]:
    if isinstance(patterns, (str, os.PathLike)):
        patterns = [patterns]
    if not patterns:
        raise ConfigError("a files source needs `paths:` (a list of files, folders or globs)")
    found: list[Path] = []
    for pattern in patterns:
        pattern = os.path.expanduser(str(pattern))
        if os.path.isdir(pattern):
            matches = sorted(p for p in Path(pattern).rglob("*") if p.is_file())
        elif glob.has_magic(pattern):
            matches = sorted(Path(p) for p in glob.glob(pattern, recursive=True) if os.path.isfile(p))
        elif os.path.isfile(pattern):
            matches = [Path(pattern)]
        else:
            raise DataError(f"data file {pattern} does not exist; check data.sources paths (relative to {os.getcwd()})")
        if not matches:
            raise DataError(f"no files match {pattern!r}; check the glob or folder in data.sources")
        found.extend(matches)
    return found


def file_documents(patterns, text_field: str = "text", suffix: str | None = None) -> Iterator[str]:
    """.txt (and anything else) is one document per file; .jsonl/.json/.parquet give one per record.
    Any of them may be compressed (gzip, bzip2, xz, zstd: `corpus.jsonl.gz`)."""
    for path in expand_paths(patterns):
        kind = suffix if suffix is not None else data_format(path)
        if kind in JSON_SUFFIXES:
            yield from json_documents(path, text_field, is_array=kind == ".json")
        elif kind == ".parquet":
            yield from parquet_documents(path, text_field)
        else:
            yield read_text(path)


def parquet_documents(path: Path, text_field: str) -> Iterator[str]:
    import pyarrow.parquet as pq

    try:
        table = pq.ParquetFile(path)
    except Exception as e:
        raise DataError(f"{path} is not a readable parquet file ({e})") from e
    if text_field not in table.schema_arrow.names:
        raise DataError(f"{path} has no column {text_field!r} (columns: {table.schema_arrow.names}); set text_field")
    for batch in table.iter_batches(columns=[text_field]):
        for value in batch.column(0).to_pylist():
            if isinstance(value, str):
                yield value


def json_documents(path: Path, text_field: str, is_array: bool = False) -> Iterator[str]:
    text = read_text(path)
    lines = text.splitlines()
    if is_array and text.lstrip().startswith("["):
        try:
            records = json.loads(text)
        except json.JSONDecodeError as e:
            raise DataError(f"{path} is not valid JSON ({e}); fix the file or use one record per line (.jsonl)") from e
    else:
        records = []
        for n, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{n} is not valid JSON ({e}); fix or remove that line") from e
    yield from record_texts(records, text_field, str(path))
