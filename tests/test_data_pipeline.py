"""Streaming windows across ranks and workers, pre-tokenized shards, and exact resume of both."""

import itertools
import json
from collections import Counter

import numpy as np
import pytest
from torch.utils.data import DataLoader

from conftest import TINY, assert_clean_error, assert_resume_is_exact, run_cli
from microgpt.core.errors import ConfigError, DataError
from microgpt.core.tokenizer import TiktokenTokenizer
from microgpt.data.packing import tokenize_documents
from microgpt.data.shards import TokenShards
from microgpt.data.streaming import StreamingWindows, pack
from microgpt.lightning.datamodule import TextDataModule

TOK = TiktokenTokenizer("gpt2")
DOCS = [f"Document number {i} says: " + "lorem ipsum dolor sit amet " * (1 + i % 7) for i in range(40)]


def stream(rank=0, world=1, start_batches=0, epochs=1, batch=2):
    return StreamingWindows([{"kind": "text", "text": d} for d in DOCS], TOK, block_size=16, batch_size=batch,
                            rank=rank, world_size=world, start_batches=start_batches, epochs=epochs)


def loader_windows(ds, workers, batch=2, max_batches=None):
    loader = DataLoader(ds, batch_size=batch, num_workers=workers)
    return [row for b in itertools.islice(loader, max_batches) for row in b.tolist()]


def test_two_ranks_by_two_workers_cover_the_stream_once():
    slots = [doc for rank in (0, 1) for worker in (0, 1)
             for doc in stream(rank=rank, world=2).slot_documents(rank * 2 + worker, 4)]
    assert Counter(slots) == Counter(DOCS)  # disjoint, no gaps, no duplicates
    # And what real DataLoader workers yield is exactly the packing of their own documents.
    for rank in (0, 1):
        got = loader_windows(stream(rank=rank, world=2), workers=2, batch=1)
        expected = []
        for worker in (0, 1):
            docs = list(stream(rank=rank, world=2).slot_documents(rank * 2 + worker, 4))
            expected.append([w.tolist() for w in pack(iter([tokenize_documents(docs, TOK)]), 16)])
        interleaved = [w for pair in zip(*expected) for w in pair]  # batch j comes from worker j % 2
        assert got[: len(interleaved)] == interleaved


def test_single_process_stream_tokens_equal_the_corpus():
    windows = loader_windows(stream(), workers=0)
    tokens = [windows[0][0]] + [t for w in windows for t in w[1:]]
    full = tokenize_documents(DOCS, TOK).tolist()
    assert tokens == full[: len(tokens)] and len(full) - len(tokens) < 16


@pytest.mark.parametrize("workers", [0, 2])
def test_stream_resumes_at_the_exact_batch(workers):
    # An endless stream (as in training): batch j always comes from worker j % workers.
    straight = loader_windows(stream(epochs=None), workers, max_batches=60)
    resumed = loader_windows(stream(epochs=None, start_batches=5), workers, max_batches=55)
    assert len(resumed) == 110 and resumed == straight[10:]


def test_stream_mode_rejects_a_char_tokenizer():
    dm = TextDataModule(sources=[{"kind": "text", "text": "abc"}], tokenizer={"kind": "char"},
                        block_size=4, batch_size=2, mode="stream")
    with pytest.raises(ConfigError, match="streaming"):
        dm.load()


def prepare(tmp_path, corpus, *extra):
    out = tmp_path / "shards"
    result = run_cli("prepare", "data=files", f"data.paths=[{corpus}]", "data.val_documents=1",
                     "tokenizer=gpt2", f"out={out}", "shard_tokens=4000", *extra, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    return out


def test_prepare_writes_shards_that_match_the_tokenizer(tmp_path, small_corpus):
    (tmp_path / "corpus").mkdir()
    val_doc = tmp_path / "corpus" / "a_val.txt"
    val_doc.write_text("A held-out document for validation. " * 20)
    train_doc = tmp_path / "corpus" / "b_train.txt"
    train_doc.write_text(small_corpus.read_text())
    out = prepare(tmp_path, tmp_path / "corpus" / "*.txt")
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["dtype"] == "uint16" and manifest["tokenizer"] == {"kind": "tiktoken", "encoding": "gpt2"}
    assert len(manifest["train"]) > 1 and all(s["tokens"] <= 4000 for s in manifest["train"])
    shards = TokenShards(out)
    train_tokens = np.concatenate(shards.arrays("train")).tolist()
    assert train_tokens == tokenize_documents([train_doc.read_text()], TOK).tolist()
    assert np.concatenate(shards.arrays("val")).tolist() == tokenize_documents([val_doc.read_text()], TOK).tolist()


def test_train_from_shards_and_resume_exactly(tmp_path, small_corpus):
    out = prepare(tmp_path, small_corpus, "data.val_documents=0", f"data.val_sources=[{{kind: files, paths: [{small_corpus}]}}]")
    assert_resume_is_exact([*TINY, "data=shards", f"data.shards_dir={out}", "tokenizer=gpt2",
                            "callbacks.text_samples=null"], tmp_path)


def test_stream_mode_resumes_exactly_through_the_trainer(tmp_path, small_corpus):
    docs = small_corpus.read_text().split("\n\n")
    jsonl = tmp_path / "docs.jsonl"
    jsonl.write_text("\n".join(json.dumps({"text": d}) for d in docs))
    assert_resume_is_exact([*TINY, "data=files", f"data.paths=[{jsonl}]", "data.mode=stream", "data.val_documents=20",
                            "tokenizer=gpt2", "callbacks.text_samples=null"], tmp_path)


def test_broken_shard_directories(tmp_path, small_corpus):
    with pytest.raises(DataError, match="no manifest.json"):
        TokenShards(tmp_path)
    out = prepare(tmp_path, small_corpus, "data.val_documents=0", f"data.val_sources=[{{kind: files, paths: [{small_corpus}]}}]")
    first = out / json.loads((out / "manifest.json").read_text())["train"][0]["file"]
    first.write_bytes(first.read_bytes()[:-10])
    with pytest.raises(DataError, match="wrong size"):
        TokenShards(out).arrays("train")
    (out / "manifest.json").write_text("{broken")
    result = run_cli("train", "data=shards", f"data.shards_dir={out}", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert_clean_error(result, "corrupt")
