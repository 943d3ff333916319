"""Text out of structured records (JSON lines, parquet rows, Hugging Face examples)."""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Iterator


def record_texts(records: Iterable, text_field: str, where: str) -> Iterator[str]:
    """Each record's `text_field` string; records without one are skipped and counted in one warning."""
    missing = 0
    for record in records:
        value = record.get(text_field) if isinstance(record, dict) else None
        if isinstance(value, str):
            yield value
        else:
            missing += 1
    if missing:
        warnings.warn(f"{where}: skipped {missing} records without a string field {text_field!r}", stacklevel=3)
