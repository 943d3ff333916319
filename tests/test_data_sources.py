"""URL and Hugging Face sources, against a real HTTP server on 127.0.0.1 and real local datasets."""

import hashlib
import http.server
import json
import threading
import time

import pytest

from conftest import TINY, assert_clean_error, compose_train, run_cli
from microgpt.core.errors import DataError
from microgpt.data.sources import documents_from
from microgpt.io.download import cache_path_for, fetch

BODY = ("The quick brown fox jumps over the lazy dog. " * 400).encode()


class Handler(http.server.BaseHTTPRequestHandler):
    files: dict[str, bytes] = {}
    hits: dict[str, int] = {}

    def do_GET(self):
        Handler.hits[self.path] = Handler.hits.get(self.path, 0) + 1
        if self.path.startswith("/slow"):
            time.sleep(2)
        if self.path.startswith("/truncated"):
            self.send_response(200)
            self.send_header("Content-Length", str(len(BODY)))
            self.end_headers()
            self.wfile.write(BODY[: len(BODY) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        body = Handler.files.get(self.path, BODY if self.path.startswith(("/ok", "/slow")) else None)
        if body is None:
            self.send_error(404, "Not Found")
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def server():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def test_download_is_cached(server, tmp_path):
    url = f"{server}/ok/corpus.txt"
    path = fetch(url, cache_dir=tmp_path, sha256=hashlib.sha256(BODY).hexdigest())
    assert path.read_bytes() == BODY
    hits = Handler.hits[url[len(server):]]
    assert fetch(url, cache_dir=tmp_path) == path
    assert Handler.hits[url[len(server):]] == hits  # served from the cache


@pytest.mark.parametrize("path, kwargs, words", [
    ("/missing.txt", {}, ["404"]),
    ("/truncated/a.txt", {"retries": 1, "backoff": 0.01}, ["truncated"]),
    ("/slow/a.txt", {"timeout": 0.3, "retries": 1, "backoff": 0.01}, ["timed out"]),
    ("/ok/big.txt", {"max_bytes": 100}, ["cap"]),
    ("/ok/hash.txt", {"sha256": "0" * 64}, ["sha256"]),
])
def test_failed_downloads_are_clear_and_leave_no_cache_entry(server, tmp_path, path, kwargs, words):
    url = server + path
    start = time.perf_counter()
    with pytest.raises(DataError) as err:
        fetch(url, cache_dir=tmp_path, **kwargs)
    assert time.perf_counter() - start < 10  # never a hang
    for word in words:
        assert word in str(err.value).lower()
    assert not cache_path_for(url, tmp_path).exists()
    assert not any(p.is_file() for p in tmp_path.rglob("*"))  # no partial files either


def test_only_http_urls(tmp_path):
    with pytest.raises(DataError, match="only http"):
        fetch("file:///etc/passwd", cache_dir=tmp_path)


def test_train_from_a_url_through_the_entry_point(server, tmp_path):
    url = f"{server}/ok/train.txt"
    result = run_cli("train", *TINY, "max_steps=4", "eval_every=2", "data=url", f"data.url={url}",
                     f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path, env={"MICROGPT_CACHE": str(tmp_path / "cache")})
    assert result.returncode == 0, result.stderr[-3000:]
    assert cache_path_for(url, tmp_path / "cache").read_bytes() == BODY


def test_unreachable_url_is_one_clear_line(server, tmp_path):
    result = run_cli("train", "data=url", f"data.url={server}/nothing-here.txt", f"hydra.run.dir={tmp_path / 'run'}",
                     cwd=tmp_path, env={"MICROGPT_CACHE": str(tmp_path / "cache")})
    assert_clean_error(result, "404")


def test_shakespeare_config_downloads_and_verifies_the_real_file(server, tmp_path, shakespeare):
    """The ready `data=shakespeare` config, pointed at a loopback copy: its sha256 is the real file's."""
    Handler.files["/input.txt"] = shakespeare.read_bytes()
    cfg = compose_train("data=shakespeare", f"data.sources.0.url={server}/input.txt", f"+data.sources.0.cache_dir={tmp_path}")
    (text,) = documents_from(dict(cfg.data.sources[0]))
    assert text.startswith("First Citizen:") and len(text) == 1_115_394
    Handler.files["/input.txt"] = shakespeare.read_bytes()[:-10] + b"tampered!!"
    with pytest.raises(DataError, match="sha256"):
        list(documents_from({**cfg.data.sources[0], "url": f"{server}/input.txt", "cache_dir": str(tmp_path / "other")}))


def write_jsonl(path, texts, field="text"):
    path.write_text("\n".join(json.dumps({field: t, "int_score": i % 5}) for i, t in enumerate(texts)))
    return path


def test_hf_local_files_saved_dirs_and_filters(tmp_path):
    datasets = pytest.importorskip("datasets")
    data = write_jsonl(tmp_path / "d.jsonl", [f"document {i}" for i in range(10)])
    spec = {"kind": "hf", "path": "json", "data_files": str(data)}
    assert list(documents_from(spec)) == [f"document {i}" for i in range(10)]
    assert list(documents_from({**spec, "streaming": False, "max_documents": 3})) == ["document 0", "document 1", "document 2"]
    assert list(documents_from({**spec, "filter": {"field": "int_score", "min": 4}})) == ["document 4", "document 9"]
    datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": ["a", "b"]})}).save_to_disk(tmp_path / "saved")
    assert list(documents_from({"kind": "hf", "path": str(tmp_path / "saved")})) == ["a", "b"]
    with pytest.raises(DataError, match="no split 'test'"):
        list(documents_from({"kind": "hf", "path": str(tmp_path / "saved"), "split": "test"}))
    with pytest.raises(DataError, match="no split"):
        list(documents_from({**spec, "split": "validation"}))


def test_unknown_hf_dataset_is_one_clear_line(tmp_path):
    result = run_cli("train", "data=hf", "data.path=no-such-org/no-such-dataset", "tokenizer=gpt2",
                     f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path, timeout=120)
    assert_clean_error(result, "no-such-org/no-such-dataset")


def test_fineweb_edu_config_streams_local_parquet_through_the_same_code(tmp_path):
    """data=fineweb_edu composes; pointed at a local parquet copy (same schema), it trains in stream mode."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    texts = [f"Educational page {i}: photosynthesis converts light into chemical energy. " * 3 for i in range(60)]
    pq.write_table(pa.table({"text": texts, "int_score": [3] * 60}), tmp_path / "part.parquet")
    cfg = compose_train("data=fineweb_edu", "tokenizer=gpt2")
    assert cfg.data.sources[0].path == "HuggingFaceFW/fineweb-edu" and cfg.data.sources[0].name == "sample-10BT"
    result = run_cli("train", *TINY, "max_steps=4", "eval_every=2", "data=fineweb_edu", "tokenizer=gpt2",
                     "data.sources.0.path=parquet", "data.sources.0.name=null",
                     f"data.sources.0.data_files={tmp_path / 'part.parquet'}", "data.num_workers=2",
                     "data.val_documents=5", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "data (stream)" in result.stderr + result.stdout


def test_stage2_mix_composes_with_weights():
    cfg = compose_train("data=stage2_hq", "tokenizer=gpt2")
    (mix,) = cfg.data.sources
    assert mix.kind == "mixture" and abs(sum(s.weight for s in mix.sources) - 1.0) < 1e-9


def test_mixture_follows_weights_and_seed():
    spec = {"kind": "mixture", "seed": 3, "sources": [
        {"kind": "text", "text": "A", "weight": 3.0},
        {"kind": "mixture", "seed": 0, "weight": 1.0, "sources": [{"kind": "text", "text": "B"}]},
    ]}
    first = [d for _, d in zip(range(4000), documents_from({**spec}))]
    assert first == [d for _, d in zip(range(4000), documents_from({**spec}))]
    assert set(first) == {"A", "B"}


def test_parquet_files_source(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"body": ["one", "two"]}), tmp_path / "x.parquet")
    assert list(documents_from({"kind": "files", "paths": [str(tmp_path / "x.parquet")], "text_field": "body"})) == ["one", "two"]
    with pytest.raises(DataError, match="no column 'text'"):
        list(documents_from({"kind": "files", "paths": [str(tmp_path / "x.parquet")]}))
