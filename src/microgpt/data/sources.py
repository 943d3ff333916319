"""Document sources: each yields the documents (strings) of one kind of input."""

from __future__ import annotations

import glob
import json
import os
from pathlib import Path
from typing import Iterator

from microgpt.errors import ConfigError, DataError

TEXT_SUFFIXES = {".txt", ".md", ".text", ""}
JSON_SUFFIXES = {".jsonl", ".json"}


def documents_from(source: dict) -> Iterator[str]:
    """Documents of one source config, e.g. {"kind": "files", "paths": ["data/*.txt"]}."""
    kind = source.get("kind")
    if kind == "text":
        text = source.get("text")
        if not isinstance(text, str):
            raise ConfigError("a text source needs `text:` (a string)")
        yield text
    elif kind == "files":
        yield from file_documents(source.get("paths"), source.get("text_field", "text"))
    elif kind == "pydoc":
        yield from pydoc_documents()
    else:
        raise ConfigError(f"unknown data source kind {kind!r}; known: text, files, pydoc")


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


def file_documents(patterns, text_field: str = "text") -> Iterator[str]:
    for path in expand_paths(patterns):
        suffix = path.suffix.lower()
        if suffix in JSON_SUFFIXES:
            yield from json_documents(path, text_field)
        else:
            yield read_text(path)


def read_text(path: Path) -> str:
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        text = data.decode("utf-8", errors="replace")
        bad = text.count("\ufffd") - data.decode("utf-8", errors="ignore").count("\ufffd")
        import warnings

        warnings.warn(f"{path}: {bad} invalid UTF-8 sequences replaced with U+FFFD", stacklevel=2)
        return text


def json_documents(path: Path, text_field: str) -> Iterator[str]:
    text = read_text(path)
    lines = text.splitlines()
    if path.suffix.lower() == ".json" and text.lstrip().startswith("["):
        try:
            records = json.loads(text)
        except json.JSONDecodeError as e:
            raise DataError(f"{path} is not valid JSON ({e}); fix the file or use one record per line (.jsonl)") from None
        lines = None
    else:
        records = []
        for n, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{n} is not valid JSON ({e}); fix or remove that line") from None
    missing = 0
    for record in records:
        value = record.get(text_field) if isinstance(record, dict) else None
        if isinstance(value, str):
            yield value
        else:
            missing += 1
    if missing:
        import warnings

        warnings.warn(f"{path}: skipped {missing} records without a string field {text_field!r}", stacklevel=2)
