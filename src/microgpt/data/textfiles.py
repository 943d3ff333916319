"""Bytes on disk -> text: the one place a file (local, downloaded, a record file, a prepare input)
becomes a string. Compressed files are unpacked by their magic bytes (gzip, bzip2, xz, zstd),
BOMs pick the encoding (UTF-8/16/32), binary files are refused, and a little invalid UTF-8 is
replaced with U+FFFD and reported in one warning."""

from __future__ import annotations

import bz2
import codecs
import gzip
import lzma
import re
import warnings
from pathlib import Path

from microgpt.core.errors import DataError

# Compressed containers, by the bytes they start with.
COMPRESSED = {
    b"\x1f\x8b": ("gzip", gzip.decompress),
    b"BZh": ("bzip2", bz2.decompress),
    b"\xfd7zXZ\x00": ("xz", lzma.decompress),
    b"\x28\xb5\x2f\xfd": ("zstd", None),  # zstandard, imported only when needed
}
COMPRESSION_SUFFIXES = {".gz", ".gzip", ".bz2", ".xz", ".zst", ".zstd"}
# Byte-order marks, longest first (UTF-32 LE starts with UTF-16 LE's mark).
BOMS = ((codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"), (codecs.BOM_UTF8, "utf-8-sig"),
        (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16"))
# Binary formats worth naming when someone passes one as text.
BINARY = {b"\x89PNG": "a PNG image", b"\xff\xd8\xff": "a JPEG image", b"GIF8": "a GIF image", b"%PDF": "a PDF",
          b"PK\x03\x04": "a zip archive", b"\x7fELF": "an executable", b"PAR1": "a parquet file",
          b"\x93NUMPY": "a numpy array", b"7z\xbc\xaf": "a 7-zip archive"}
# At most this share of a file's bytes may be invalid UTF-8 (replaced, with a warning) or NUL.
MAX_BAD_SHARE = 0.01
INVALID = re.compile("[\udc80-\udcff]")


def data_format(name: str | Path) -> str:
    """The suffix that says how to read a file, under any compression: `a.jsonl.gz` -> `.jsonl`."""
    suffixes = [s.lower() for s in Path(str(name)).suffixes]
    while suffixes and suffixes[-1] in COMPRESSION_SUFFIXES:
        suffixes.pop()
    return suffixes[-1] if suffixes else ""


def read_bytes(path: Path) -> bytes:
    """The file's bytes, decompressed when they are gzip, bzip2, xz or zstd (whatever the name says)."""
    data = Path(path).read_bytes()
    for magic, (name, decompress) in COMPRESSED.items():
        if data.startswith(magic):
            try:
                return (decompress or _zstd_decompress)(data)
            except DataError:
                raise
            except Exception as e:  # each codec has its own error type
                raise DataError(f"{path} looks {name}-compressed but does not decompress ({e}); "
                                f"is it truncated? download or compress it again") from e
    return data


def _zstd_decompress(data: bytes) -> bytes:
    try:
        import zstandard
    except ImportError as e:
        raise DataError("reading .zst files needs the zstandard package: install zstandard (pip install zstandard)") from e
    with zstandard.ZstdDecompressor().stream_reader(data) as reader:  # also frames without a size
        return reader.read()


def read_text(path: str | Path) -> str:
    """The text of a file: decompressed, decoded by its BOM (else UTF-8), binary files refused."""
    path = Path(path)
    data = read_bytes(path)
    for bom, encoding in BOMS:
        if data.startswith(bom):
            try:
                return data.decode(encoding)
            except UnicodeDecodeError as e:
                raise DataError(f"{path} starts with a {encoding.upper()} byte-order mark but is not valid "
                                f"{encoding.upper()} ({e.reason} at byte {e.start}); re-save it as UTF-8") from e
    kind = next((what for magic, what in BINARY.items() if data.startswith(magic)), None)
    if kind is not None:
        raise DataError(f"{path} is {kind}, not text; give text files (.txt, .md, .jsonl, .json, .parquet)")
    return _decode_utf8(path, data)


def _decode_utf8(path: Path, data: bytes) -> str:
    limit = max(1, int(len(data) * MAX_BAD_SHARE))
    nuls = data.count(0)
    if nuls > limit:
        raise DataError(f"{path} is not text ({nuls:,} NUL bytes in {len(data):,}): a binary file, or UTF-16 "
                        f"without a byte-order mark; give text files, or convert it to UTF-8 (iconv -t UTF-8)")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        pass
    # Each invalid byte becomes one lone surrogate (U+DC80..U+DCFF): count and replace them.
    text, bad = INVALID.subn("\ufffd", data.decode("utf-8", errors="surrogateescape"))
    if bad > limit:
        raise DataError(f"{path} is not UTF-8 text ({bad:,} of {len(data):,} bytes are invalid UTF-8, over "
                        f"{MAX_BAD_SHARE:.0%}): a binary file or another encoding; convert it to UTF-8 (iconv -t UTF-8)")
    warnings.warn(f"{path}: {bad} invalid UTF-8 bytes replaced with U+FFFD", stacklevel=3)
    return text
