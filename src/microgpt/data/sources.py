"""Document sources: each yields the documents (strings) of one kind of input."""

from __future__ import annotations

import glob
import itertools
import json
import os
import random
import warnings
from collections.abc import Iterator
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
    streams = [part_documents([s], index, count) for s in specs]
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
            streams[i] = part_documents([specs[i]], index, count)
            doc = next(streams[i])
        produced[i] += 1
        yield doc


def source_pieces(source: dict) -> list[dict]:
    """The pieces of one source config, in document order, each a source config that one reader can
    read alone (plain data, so a worker process can be sent one): a files source's files, one each;
    any other source is one piece, and so is one bounded by `max_documents` (the bound is the whole's)."""
    if source.get("kind") == "files" and not source.get("max_documents"):
        return [{**source, "paths": [str(path)]} for path in expand_paths(source.get("paths"))]
    return [source]


def piece_share(piece: dict, share: int, shares: int) -> Iterator[str]:
    """Share `share` of `shares` of one piece's documents. A Hugging Face dataset or a mixture splits
    itself, reading less than the whole (a dataset's own shards); anything else keeps every
    `shares`-th document."""
    if shares == 1:
        return documents_from(piece)
    if not piece.get("max_documents"):
        if piece.get("kind") == "hf":
            from microgpt.data.hf import hf_documents

            return hf_documents(piece, part=(share, shares))
        if piece.get("kind") == "mixture":
            return mixture_documents(piece.get("sources") or [], piece.get("seed", 0), part=(share, shares))
    return itertools.islice(documents_from(piece), share, None, shares)


def part_tasks(sources: list[dict], part: int, parts: int) -> list[tuple[dict, int, int]]:
    """Part `part` of `parts` as pieces to read: (piece, share, shares), see `part_documents`."""
    if not 0 <= part < parts:
        raise ValueError(f"part {part} of {parts}")
    pieces = [piece for source in sources for piece in source_pieces(source)]
    if len(pieces) >= parts or not pieces:
        return [(piece, 0, 1) for piece in pieces[part::parts]]
    first = part % len(pieces)
    return [(pieces[first], part // len(pieces), len(range(first, parts, len(pieces))))]


def part_documents(sources: list[dict], part: int, parts: int) -> Iterator[str]:
    """Part `part` of `parts` of the documents of `sources`: the parts are disjoint and together hold
    every document once, and each reads only its own share of the input.

    The sources are cut into pieces (`source_pieces`: a file each, a Hugging Face dataset, ...).
    With at least as many pieces as parts, part k reads pieces k, k + n, k + 2n, ... whole. With
    fewer, the parts share pieces: part k reads piece k % P only, keeping every m-th of its documents
    (m = the parts that share it), or for a Hugging Face dataset its own shards
    (`datasets.distributed.split_dataset_by_node`). One part is the corpus itself, in order.
    """
    for piece, share, shares in part_tasks(sources, part, parts):
        yield from piece_share(piece, share, shares)


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
        elif os.path.isfile(pattern):  # before globbing: a piece (`source_pieces`) names its file as is
            matches = [Path(pattern)]
        elif glob.has_magic(pattern):
            matches = sorted(Path(p) for p in glob.glob(pattern, recursive=True) if os.path.isfile(p))
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
