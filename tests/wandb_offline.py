"""Read back what an offline W&B run recorded (`<run dir>/wandb/offline-run-*/run-<id>.wandb`).

wandb ships no reader for these files. Their layout: a 7-byte header (`:W&B`, a 2-byte magic, a
version byte), then LevelDB log framing: 32 KiB blocks of chunks, each with a 7-byte header
(CRC32 of type byte + payload, little-endian length, type: full / first / middle / last); a block
tail shorter than a header is zero padding. Each reassembled payload is a protobuf
`wandb.proto.wandb_internal_pb2.Record`.

Useful to check offline runs before `wandb sync`, and in tests.
"""

from __future__ import annotations

import json
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path

BLOCK_SIZE = 32 * 1024
CHUNK_HEADER = struct.Struct("<IHB")  # crc32, payload length, chunk type
FILE_HEADER_SIZE = 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


class WandbFileError(ValueError):
    """A file that is not a W&B run file, or one damaged in the middle."""


def read_payloads(path: str | Path) -> Iterator[bytes]:
    """The record payloads of a `.wandb` file, in order, checksums verified."""
    data = Path(path).read_bytes()
    if not data.startswith(b":W&B"):
        raise WandbFileError(f"{path} is not a W&B run file (no :W&B header)")
    pos, pending = FILE_HEADER_SIZE, b""
    while pos + CHUNK_HEADER.size <= len(data):
        room = BLOCK_SIZE - pos % BLOCK_SIZE
        if room < CHUNK_HEADER.size:  # padding at the end of a block
            pos += room
            continue
        crc, length, kind = CHUNK_HEADER.unpack_from(data, pos)
        payload = data[pos + CHUNK_HEADER.size: pos + CHUNK_HEADER.size + length]
        pos += CHUNK_HEADER.size + length
        if kind == 0 and length == 0:  # zero-filled space (preallocated or padded)
            continue
        if len(payload) < length:
            break  # the writer was interrupted mid-record: everything before it is still good
        if zlib.crc32(payload, zlib.crc32(bytes([kind]))) & 0xFFFFFFFF != crc:
            raise WandbFileError(f"{path}: checksum mismatch at byte {pos - length}")
        if kind == FULL:
            yield payload
        elif kind == FIRST:
            pending = payload
        elif kind == MIDDLE:
            pending += payload
        elif kind == LAST:
            yield pending + payload
            pending = b""
        else:
            raise WandbFileError(f"{path}: unknown chunk type {kind} at byte {pos - length}")


def read_records(path: str | Path) -> Iterator:
    """The `Record` protobufs of a `.wandb` file."""
    from wandb.proto import wandb_internal_pb2

    for payload in read_payloads(path):
        record = wandb_internal_pb2.Record()
        record.ParseFromString(payload)
        yield record


def _item_key(item) -> str:
    return item.key or "/".join(item.nested_key)


def history(path: str | Path) -> list[dict]:
    """Every logged row (`run.log(...)`), as a dict of key -> value (W&B's `_step` included)."""
    rows = []
    for record in read_records(path):
        if record.WhichOneof("record_type") == "history":
            rows.append({_item_key(item): json.loads(item.value_json) for item in record.history.item})
    return rows


def config(path: str | Path) -> dict:
    """The run's config as recorded: given to `wandb.init` (the run record) and updated later
    (config records); the last value of each key wins. W&B's own `_wandb` entry is left out."""
    values = {}
    for record in read_records(path):
        kind = record.WhichOneof("record_type")
        updates = record.run.config.update if kind == "run" else record.config.update if kind == "config" else []
        for item in updates:
            values[_item_key(item)] = json.loads(item.value_json)
    values.pop("_wandb", None)
    return values


def run_files(run_dir: str | Path) -> list[Path]:
    """The offline `.wandb` files under a microgpt run directory, oldest first (one per job)."""
    return sorted(Path(run_dir).glob("wandb/offline-run-*/run-*.wandb"))
