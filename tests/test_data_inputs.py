"""Every data input a user can feed: compressed files, other encodings, binary files, tiny
streams, slow servers, broken or reused shard directories, mixtures and the file form of text."""

import bz2
import codecs
import gzip
import http.server
import json
import lzma
import os
import re
import shutil
import sys
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
from torch.utils.data import DataLoader

from conftest import TINY, assert_clean_error, run_cli
from microgpt.core.errors import ConfigError, DataError
from microgpt.core.tokenizer import CharTokenizer, TiktokenTokenizer
from microgpt.data.packing import tokenize_documents
from microgpt.data.shards import TokenShards
from microgpt.data.sources import documents_from
from microgpt.data.splits import split_tokens
from microgpt.data.text_data import TextData
from microgpt.data.textfiles import read_text
from microgpt.io.download import fetch

TOK = TiktokenTokenizer("gpt2")
TEXT = "".join(f"Line {i}: the quick brown fox jumps over the lazy dog, naïvely — ünïcödé.\n" for i in range(300))
RECORDS = [{"text": f"Record {i}. " + "lorem ipsum dolor sit amet " * (1 + i % 5)} for i in range(30)]


def zstd_compress(data: bytes) -> bytes:
    zstandard = pytest.importorskip("zstandard")
    return zstandard.ZstdCompressor().compress(data)


COMPRESSORS = {".gz": gzip.compress, ".bz2": bz2.compress, ".xz": lzma.compress, ".zst": zstd_compress}
FORMATS = {
    ".txt": (TEXT.encode(), [TEXT]),
    ".jsonl": ("\n".join(json.dumps(r) for r in RECORDS).encode(), [r["text"] for r in RECORDS]),
    ".json": (json.dumps(RECORDS).encode(), [r["text"] for r in RECORDS]),
}


def files_source(*paths):
    return {"kind": "files", "paths": [str(p) for p in paths]}


# --- 1. compressed inputs -------------------------------------------------------------------

@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("compression", COMPRESSORS)
def test_compressed_files_are_read_as_their_text(tmp_path, fmt, compression):
    raw, expected = FORMATS[fmt]
    path = tmp_path / f"corpus{fmt}{compression}"
    path.write_bytes(COMPRESSORS[compression](raw))
    assert list(documents_from(files_source(path))) == expected


def test_compression_is_found_by_its_bytes_not_its_name(tmp_path):
    path = tmp_path / "mislabelled.txt"
    path.write_bytes(gzip.compress(TEXT.encode()))
    assert read_text(path) == TEXT
    broken = tmp_path / "truncated.txt.gz"
    broken.write_bytes(gzip.compress(TEXT.encode())[:200])
    with pytest.raises(DataError, match="truncated.txt.gz.*gzip"):
        read_text(broken)


def test_missing_zstandard_is_one_line_saying_install_it(tmp_path, monkeypatch):
    path = tmp_path / "a.txt.zst"
    path.write_bytes(b"\x28\xb5\x2f\xfd" + b"\0" * 16)
    monkeypatch.setitem(sys.modules, "zstandard", None)  # import zstandard raises ImportError
    with pytest.raises(DataError, match="install zstandard"):
        read_text(path)


def test_train_on_a_gzipped_file_through_the_entry_point(tmp_path):
    path = tmp_path / "notes.txt.gz"
    path.write_bytes(gzip.compress(TEXT.encode()))
    result = run_cli("train", *TINY, "max_steps=2", "eval_every=2", "data=files", f"data.paths=[{path}]",
                     f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    vocab = int(re.search(r"vocabulary (\d+)", result.stdout + result.stderr).group(1))
    assert vocab == len(set(TEXT)) + 1  # the characters of the text (+ end-of-text), not of gzip's bytes
    assert "invalid UTF-8" not in result.stderr


# --- 2. encodings and binary files -----------------------------------------------------------

@pytest.mark.parametrize("encoding, bom", [("utf-8", codecs.BOM_UTF8), ("utf-16-le", codecs.BOM_UTF16_LE),
                                           ("utf-16-be", codecs.BOM_UTF16_BE), ("utf-32-le", codecs.BOM_UTF32_LE),
                                           ("utf-32-be", codecs.BOM_UTF32_BE)])
def test_byte_order_marks_pick_the_encoding(tmp_path, encoding, bom):
    path = tmp_path / "notes.txt"
    path.write_bytes(bom + TEXT.encode(encoding))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert read_text(path) == TEXT  # the BOM itself is not part of the text


def png_bytes() -> bytes:
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    rows = b"".join(b"\0" + bytes(range(16)) * 3 for _ in range(16))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 16, 16, 8, 2, 0, 0, 0)) \
        + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


@pytest.mark.parametrize("name, make, words", [
    ("random.txt", lambda: np.random.default_rng(0).bytes(20_000), ["random.txt", "not utf-8 text"]),
    ("nul.txt", lambda: (TEXT[:500] + "\0" * 100).encode(), ["nul.txt", "nul bytes"]),
    ("utf16_no_bom.txt", lambda: TEXT.encode("utf-16-le"), ["utf16_no_bom.txt", "utf-16"]),
    ("picture.png", png_bytes, ["picture.png", "png"]),
])
def test_binary_files_are_refused_naming_the_file(tmp_path, name, make, words):
    path = tmp_path / name
    path.write_bytes(make())
    with pytest.raises(DataError) as err:
        read_text(path)
    for word in words:
        assert word.lower() in str(err.value).lower()


def test_binary_file_through_the_entry_point_is_one_line(tmp_path):
    path = tmp_path / "picture.png"
    path.write_bytes(png_bytes())
    result = run_cli("train", *TINY, "data=files", f"data.paths=[{path}]", f"hydra.run.dir={tmp_path / 'run'}",
                     cwd=tmp_path, timeout=120)
    assert_clean_error(result, "picture.png", "png")


def test_a_little_invalid_utf8_is_replaced_with_one_warning_more_is_refused(tmp_path):
    data = bytearray(b"plain ascii words " * 2000)
    for i in range(0, len(data), 500):  # 0.2% of the bytes
        data[i] = 0xFF
    path = tmp_path / "latin.txt"
    path.write_bytes(bytes(data))
    with pytest.warns(UserWarning) as caught:
        text = read_text(path)
    messages = [str(w.message) for w in caught]
    assert len(messages) == 1 and "latin.txt" in messages[0] and f"{len(data[::500])} invalid" in messages[0]
    assert text.count("\ufffd") == len(data[::500])
    for i in range(0, len(data), 50):  # 2%
        data[i] = 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(DataError, match="latin.txt is not UTF-8"):
        read_text(path)


# --- 3. streams with few documents -----------------------------------------------------------

def stream_data(sources, **kw):
    kw = {"tokenizer": {"kind": "tiktoken", "encoding": "gpt2"}, "block_size": 16, "batch_size": 2,
          "mode": "stream", **kw}
    data = TextData(sources, **kw)
    data.load()
    return data


def test_a_single_document_stream_splits_by_tokens():
    data = stream_data([{"kind": "text", "text": TEXT}])  # fewer documents than data.val_documents
    full = tokenize_documents([TEXT], TOK)
    assert data.train_tokens is not None and len(data.val_tokens) == int(len(full) * 0.1)
    assert np.concatenate([data.train_tokens, data.val_tokens]).tolist() == full.tolist()
    batch = next(iter(data.train_dataloader()))
    assert batch.shape == (2, 17)


def test_every_stream_reader_gets_documents():
    docs = [{"kind": "text", "text": r["text"]} for r in RECORDS]  # 30 documents
    small = stream_data(docs, val_documents=28, num_workers=2)  # 2 left for 2 readers: streamed
    assert small.train_tokens is None
    loader = small.train_dataloader()
    assert next(iter(loader)).shape == (2, 17)
    tiny = stream_data(docs, val_documents=29, num_workers=2)  # 1 left for 2 readers: read whole
    assert tiny.train_tokens is not None


def test_single_file_stream_trains_through_the_entry_point(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text(TEXT)
    result = run_cli("train", *TINY, "max_steps=3", "eval_every=3", "data=files", f"data.paths=[{path}]",
                     "data.mode=stream", "tokenizer=gpt2", "callbacks.text_samples=null",
                     f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "run" / "checkpoints" / "last.ckpt").is_file()


def test_two_rank_stream_with_fewer_documents_than_readers(tmp_path):
    docs = tmp_path / "docs.jsonl"
    docs.write_text("\n".join(json.dumps({"text": f"{i}: {TEXT}"}) for i in range(3)))  # 1 training doc, 2 ranks
    result = run_cli("train", *TINY, "max_steps=2", "eval_every=2", "trainer=ddp_cpu", "data=files",
                     f"data.paths=[{docs}]", "data.mode=stream", "data.val_documents=2", "tokenizer=gpt2",
                     "callbacks.text_samples=null", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "read whole" in result.stdout + result.stderr


# --- 4. download time bounds -----------------------------------------------------------------

class Trickle(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = b"x" * 100
        self.send_response(200)
        self.send_header("Content-Length", str(len(body) * 100))
        self.end_headers()
        try:
            for _ in range(100):  # 100 bytes every 0.5 s: 50 s for the whole body
                self.wfile.write(body)
                self.wfile.flush()
                time.sleep(0.5)
        except OSError:
            pass

    def log_message(self, *args):
        pass


@pytest.fixture
def trickle_server():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Trickle)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def test_timeout_bounds_a_whole_download_attempt(trickle_server, tmp_path):
    start = time.perf_counter()
    with pytest.raises(DataError) as err:
        fetch(f"{trickle_server}/slow.txt", cache_dir=tmp_path, timeout=1.0, retries=1, backoff=0.01)
    elapsed = time.perf_counter() - start
    assert elapsed < 2 * 1.0 + 1.5, elapsed  # two attempts of ~1 s each, not 50 s per attempt
    assert "timed out" in str(err.value) and "data.timeout" in str(err.value)
    assert not any(p.is_file() for p in tmp_path.rglob("*"))


class Files(http.server.BaseHTTPRequestHandler):
    body = b""

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", str(len(Files.body)))
        self.end_headers()
        self.wfile.write(Files.body)

    def log_message(self, *args):
        pass


def test_a_compressed_url_is_read_as_records(tmp_path):
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Files)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        Files.body = gzip.compress(FORMATS[".jsonl"][0])
        url = f"http://127.0.0.1:{httpd.server_address[1]}/records.jsonl.gz"
        docs = list(documents_from({"kind": "url", "url": url, "cache_dir": str(tmp_path)}))
    finally:
        httpd.shutdown()
    assert docs == FORMATS[".jsonl"][1]


# --- 5. shards ---------------------------------------------------------------------------------

def prepare(tmp_path, *args):
    return run_cli("prepare", "tokenizer=gpt2", *args, cwd=tmp_path, timeout=120)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """One real `prepare` run (a single document, default data.val_documents), copied for each test."""
    tmp = tmp_path_factory.mktemp("prepared")
    corpus = tmp / "corpus.txt"
    corpus.write_text(TEXT * 3)
    result = prepare(tmp, "data=files", f"data.paths=[{corpus}]", f"out={tmp / 'shards'}", "shard_tokens=1000")
    assert result.returncode == 0, result.stderr[-3000:]
    return tmp


@pytest.fixture
def shards(tmp_path, prepared):
    shutil.copy(prepared / "corpus.txt", tmp_path / "corpus.txt")
    return Path(shutil.copytree(prepared / "shards", tmp_path / "shards"))


def test_prepare_splits_a_small_corpus_and_a_rerun_replaces_the_old_shards(tmp_path, shards):
    manifest = json.loads((shards / "manifest.json").read_text())
    assert manifest["val"] and len(manifest["train"]) > 3  # one document: validation by tokens
    (shards / "notes.md").write_text("not a shard")
    result = prepare(tmp_path, "data=files", f"data.paths=[{tmp_path / 'corpus.txt'}]", f"out={shards}",
                     "shard_tokens=100000")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "removed" in result.stdout + result.stderr
    manifest = json.loads((shards / "manifest.json").read_text())
    listed = {s["file"] for s in manifest["train"] + manifest["val"]}
    assert {p.name for p in shards.glob("*.bin")} == listed == {"train_000000.bin", "val_000000.bin"}
    assert (shards / "notes.md").read_text() == "not a shard"  # only prepare's own files go


@pytest.mark.parametrize("corrupt", [
    lambda m: m["train"][0].pop("tokens"),
    lambda m: m.update(train="train_000000.bin"),
    lambda m: m["val"][0].update(tokens="12"),
    lambda m: m.update(dtype="float99"),
    lambda m: m.pop("tokenizer"),
    lambda m: m["train"][0].update(file="../../etc/passwd"),
])
def test_a_corrupt_manifest_is_one_line(shards, corrupt):
    manifest = json.loads((shards / "manifest.json").read_text())
    corrupt(manifest)
    (shards / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(DataError, match="manifest.json is corrupt.*re-run python -m microgpt.prepare"):
        TokenShards(shards)


def test_invalid_manifest_json_through_the_entry_point(tmp_path, shards):
    (shards / "manifest.json").write_text('{"format": "microgpt-token-shards", "train": [')
    result = run_cli("train", *TINY, "data=shards", f"data.shards_dir={shards}", "tokenizer=gpt2",
                     f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path, timeout=120)
    assert_clean_error(result, "manifest.json", "re-run python -m microgpt.prepare")


def test_a_configured_tokenizer_file_must_match_the_shards(tmp_path, shards):
    char = tmp_path / "char.json"
    CharTokenizer.from_texts([TEXT]).save(char)
    same = tmp_path / "gpt2.json"
    TOK.save(same)
    kw = {"block_size": 16, "batch_size": 2, "mode": "shards", "shards_dir": str(shards)}
    with pytest.raises(ConfigError, match="tokenized with the tiktoken tokenizer"):
        TextData(None, tokenizer={"kind": "char", "path": str(char)}, **kw).load()
    assert TextData(None, tokenizer={"kind": "tiktoken", "path": str(same)}, **kw).load().state() == TOK.state()
    assert TextData(None, tokenizer={"kind": "char"}, **kw).load().state() == TOK.state()  # learned: the shards'


# --- 6. mixtures: validation never trained on -------------------------------------------------

def mixture(tmp_path):
    for name, count in (("small", 4), ("big", 40)):
        (tmp_path / name).mkdir()
        for i in range(count):
            (tmp_path / name / f"{i:02d}.txt").write_text(f"<{name} doc {i}> " + f"{name} words " * 30)
    return [{"kind": "mixture", "seed": 0, "sources": [{**files_source(tmp_path / "small"), "weight": 5},
                                                        {**files_source(tmp_path / "big"), "weight": 1}]}]


def doc_ids(tokens) -> list[str]:
    return re.findall(r"<\w+ doc \d+>", TOK.decode(np.asarray(tokens).tolist()))


def test_memory_mixture_validation_documents_never_appear_in_training(tmp_path):
    data = TextData(mixture(tmp_path), tokenizer={"kind": "tiktoken", "encoding": "gpt2"}, block_size=16, batch_size=2)
    data.load()
    train, val = doc_ids(data.train_tokens), doc_ids(data.val_tokens)
    assert val and train and not set(train) & set(val)
    assert len(val) == len(set(val))  # the mixture's repeats do not duplicate validation either


def test_stream_mixture_skips_repeats_of_validation_documents(tmp_path):
    data = stream_data(mixture(tmp_path), val_documents=6)
    val = set(doc_ids(data.val_tokens))
    loader = DataLoader(data.train_dataloader().dataset, batch_size=2)
    seen = set()
    for i, batch in enumerate(loader):
        seen |= {d for row in batch.tolist() for d in doc_ids(row)}
        if i > 200:
            break
    assert val and seen and not seen & val


def test_split_tokens_keeps_a_plain_corpus_as_it_was():
    docs = [r["text"] for r in RECORDS]
    train, val = split_tokens(docs, TOK, 0.1)
    full = tokenize_documents(docs, TOK)
    assert np.concatenate([train, val]).tolist() == full.tolist()  # no duplicates: the plain token split


# --- 7. training text from a file -------------------------------------------------------------

def test_text_naming_a_file_is_literal_with_a_hint(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "notes.txt").write_text(TEXT)
    with pytest.warns(UserWarning, match=r"data=files 'data.paths=\[notes.txt\]'"):
        assert list(documents_from({"kind": "text", "text": "notes.txt"})) == ["notes.txt"]
    assert list(documents_from(files_source("notes.txt"))) == [TEXT]
    assert os.path.isfile("notes.txt")
