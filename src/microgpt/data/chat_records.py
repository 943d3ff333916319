"""Conversations from the formats people have: a `messages` column (OpenAI / Hugging Face chat
format), Alpaca's `instruction` / `input` / `output`, or `prompt` / `completion` pairs; in local
jsonl / parquet files or any Hugging Face dataset."""

from __future__ import annotations

import glob
from collections.abc import Iterator
from pathlib import Path

from microgpt.core.chat import check_messages
from microgpt.core.errors import ConfigError, DataError
from microgpt.data.hf import dataset_records, open_dataset

LOCAL_BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet"}
FORMATS = "a `messages` list, Alpaca's `instruction` (+ `input`) / `output`, or `prompt` / `completion`"


def read_records(settings: dict, path_key: str = "path") -> Iterator[tuple[str, dict]]:
    """(where, record) for each record of `settings[path_key]`: a .jsonl / .json / .parquet file or
    glob, a directory written by `Dataset.save_to_disk`, or a Hub dataset name (`name`, `split`)."""
    path = settings.get(path_key)
    if not path:
        raise ConfigError(f"data.{path_key} is not set: give a .jsonl or .parquet file of records, a saved dataset "
                          f"directory or a Hugging Face dataset name")
    path = str(path)
    builder = LOCAL_BUILDERS.get(Path(path).suffix.lower())
    if builder and not glob.glob(path):
        raise DataError(f"data.{path_key}={path} matches no file; check the path")
    dataset = open_dataset(builder or path, settings.get("name"), settings.get("split") or "train",
                           path if builder else settings.get("data_files"), streaming=False)
    limit = settings.get("max_records")
    for i, record in enumerate(dataset_records(dataset)):
        if limit is not None and i >= limit:
            return
        yield f"{path} record {i}", record


def turns_of(value, role: str, where: str) -> list[dict]:
    """A prompt or completion field: a string (one `role` turn) or a list of chat turns."""
    if isinstance(value, str):
        return [{"role": role, "content": value}]
    return check_messages(value, where, need_assistant=False)


def conversation(record: dict, where: str, system: str | None = None) -> list[dict]:
    """The record as checked chat turns (a DataError names the record and what is wrong)."""
    if not isinstance(record, dict):
        raise DataError(f"{where} is not a record of fields; records hold {FORMATS}")
    if record.get("messages") is not None:
        turns = check_messages(record["messages"], where)
    elif record.get("instruction") is not None and record.get("output") is not None:
        extra = record.get("input") or ""
        user = record["instruction"] + (f"\n\n{extra}" if extra else "")
        turns = check_messages([{"role": "user", "content": user}, {"role": "assistant", "content": record["output"]}], where)
    elif record.get("prompt") is not None and record.get("completion") is not None:
        turns = check_messages(turns_of(record["prompt"], "user", where) + turns_of(record["completion"], "assistant", where),
                               where)
    else:
        raise DataError(f"{where} has fields {sorted(record)}, none of the chat formats ({FORMATS}); rename its "
                        f"columns or convert it")
    if system and turns[0]["role"] != "system":
        turns = [{"role": "system", "content": system}, *turns]
    return turns
