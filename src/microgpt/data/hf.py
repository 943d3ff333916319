"""Hugging Face datasets as a document source: Hub names (streamed), builders over local files,
and directories written by `Dataset.save_to_disk`."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from microgpt.core.errors import ConfigError, DataError
from microgpt.data.records import record_texts


def hf_documents(source: dict, part: tuple[int, int] | None = None) -> Iterator[str]:
    """Documents of {"kind": "hf", "path": ..., "name": ..., "split": ..., "text_field": ..., "streaming": ...}.

    `part=(k, n)`: only reader k of n's share, by `datasets.distributed.split_dataset_by_node`: a
    streamed dataset whose shard (file) count n divides gives each reader its own shards and
    reads nothing else; otherwise every reader reads it all and keeps every n-th record. A saved
    or non-streamed dataset is cut into n contiguous blocks.
    """
    path = source.get("path")
    if not path:
        raise ConfigError("an hf source needs `path:` (a Hub dataset name, a builder such as json/parquet/text, or a saved dataset directory)")
    split = source.get("split", "train")
    field = source.get("text_field", "text")
    dataset = open_dataset(path, source.get("name"), split, source.get("data_files"), bool(source.get("streaming", True)))
    if part is not None and part[1] > 1:
        from datasets.distributed import split_dataset_by_node

        dataset = split_dataset_by_node(dataset, rank=part[0], world_size=part[1])
    keep = record_filter(source.get("filter"))
    yield from record_texts((r for r in dataset_records(dataset) if keep(r)), field, f"hf dataset {path}")


def dataset_records(dataset) -> Iterator[dict]:
    """The rows of a dataset. A streamed one is read through `.iter()`: iterating it directly inside a
    DataLoader worker would also split its shards among the workers, on top of our own split, and
    silently drop the documents of the workers it gives no shard."""
    import datasets

    if not isinstance(dataset, datasets.IterableDataset):
        yield from dataset
        return
    for batch in dataset.iter(batch_size=256):
        columns = list(batch)
        if columns:
            for values in zip(*(batch[c] for c in columns)):
                yield dict(zip(columns, values))


def record_filter(spec: dict | None):
    """`filter: {field: int_score, min: 4}` keeps records whose field is at least `min` (and/or at most `max`)."""
    if not spec:
        return lambda record: True
    field, low, high = spec.get("field"), spec.get("min"), spec.get("max")
    if not field or (low is None and high is None):
        raise ConfigError("an hf filter needs `field` and `min` and/or `max`")

    def keep(record: dict) -> bool:
        value = record.get(field)
        if not isinstance(value, (int, float)):
            return False
        return (low is None or value >= low) and (high is None or value <= high)

    return keep


def open_dataset(path: str, name: str | None, split: str, data_files, streaming: bool):
    import datasets

    if Path(path).is_dir() and any((Path(path) / f).exists() for f in ("dataset_info.json", "dataset_dict.json", "state.json")):
        loaded = datasets.load_from_disk(path)
        if isinstance(loaded, datasets.DatasetDict):
            if split not in loaded:
                raise DataError(f"saved dataset {path} has no split {split!r} (splits: {sorted(loaded)})")
            loaded = loaded[split]
        return loaded
    try:
        return datasets.load_dataset(path, name, split=split, data_files=data_files, streaming=streaming)
    except ValueError as e:
        if "split" in str(e).lower():
            raise DataError(f"hf dataset {path!r} has no split {split!r} ({_first_line(e)})") from e
        raise DataError(f"could not load hf dataset {path!r}: {_first_line(e)}") from e
    except FileNotFoundError as e:
        raise DataError(f"hf dataset {path!r} not found ({_first_line(e)}); check the name, or the data_files paths") from e
    except Exception as e:  # the Hub raises many types (offline, gated, not found)
        raise DataError(f"could not load hf dataset {path!r} ({type(e).__name__}: {_first_line(e)}); "
                        f"check the name and network (HF_DATASETS_OFFLINE=1 allows only local data)") from e


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
