"""`python -m microgpt.prepare` in parallel processes and split over nodes: the same shards as one
process, the same validation documents as one node, one manifest covering every node's shards."""

import json
import os
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir

import microgpt.data.prepare as prepare_module
from conftest import fixture_text, run_cli
from microgpt.cli.overrides import CONFIG_DIR
from microgpt.core.errors import ConfigError, DataError
from microgpt.core.tokenizer import TiktokenTokenizer
from microgpt.data.packing import tokenize_documents
from microgpt.data.prepare import prepare_shards, resolve_num_proc
from microgpt.data.shards import BlockEncoder, TokenShards, encode_documents

TOK = TiktokenTokenizer("gpt2")
PARAGRAPHS = [p for p in fixture_text("tinyshakespeare.txt").split("\n\n") if p.strip()]


def write_corpus(folder: Path, files: int = 4, per_file: int = 60) -> Path:
    """`files` JSON-lines files of real paragraphs, each document tagged with its file and line."""
    folder.mkdir(parents=True, exist_ok=True)
    for f in range(files):
        rows = [{"text": f"<f{f} d{i}> " + PARAGRAPHS[(f * per_file + i) % len(PARAGRAPHS)]} for i in range(per_file)]
        (folder / f"part{f}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def prepare_cfg(corpus: Path, out: Path, *extra: str):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose(config_name="prepare", overrides=[
            "data=files", f"data.paths=[{corpus}]", "tokenizer=gpt2", f"out={out}", "data.val_documents=10",
            "shard_tokens=3000", "block_chars=2000", *extra])


def shard_bytes(out: Path, split: str) -> bytes:
    manifest = json.loads((out / "manifest.json").read_text())
    return b"".join((out / s["file"]).read_bytes() for s in manifest[split])


def documents_of(tokens: np.ndarray) -> Counter:
    """The documents of an EOT-separated token stream, as a multiset of token tuples."""
    cuts = np.flatnonzero(tokens == TOK.eot)
    return Counter(tuple(tokens[a + 1 : b].tolist()) for a, b in zip(cuts, [*cuts[1:], len(tokens)]))


def test_workers_give_the_same_stream_as_one_process():
    docs = PARAGRAPHS[:300]
    one = list(BlockEncoder(TOK, num_proc=1, block_chars=500).chunks(docs))
    for method in ("fork", "spawn"):  # spawn: what macOS / Windows use; nothing may rely on fork
        with BlockEncoder(TOK, num_proc=2, block_chars=500, start_method=method) as encoder:
            many = list(encoder.chunks(docs))
            assert encoder._pool is not None  # it really ran in workers
        assert len(many) == len(one) > 10
        assert np.concatenate(many).tolist() == np.concatenate(one).tolist() == tokenize_documents(docs, TOK).tolist()
    assert encode_documents(TOK, ["a", ""]).tolist() == [TOK.eot, *TOK.encode("a"), TOK.eot]


@pytest.mark.parametrize("files", [4, 1])  # workers read whole files; one file: this process reads, workers tokenize
def test_parallel_prepare_is_byte_identical_to_one_process(tmp_path, monkeypatch, files):
    corpus = write_corpus(tmp_path / "corpus", files=files, per_file=240 // files)
    by_pieces = []  # the path in which the workers read whole files, else the identity below proves nothing of it
    real = prepare_module.piece_chunks
    monkeypatch.setattr(prepare_module, "piece_chunks", lambda *a, **k: by_pieces.append(len(a[1])) or real(*a, **k))
    outs = {}
    for n in (1, 2):
        outs[n] = prepare_shards(prepare_cfg(corpus, tmp_path / f"np{n}", f"num_proc={n}"))
    manifests = [json.loads((outs[n] / "manifest.json").read_text()) for n in (1, 2)]
    for m in manifests:
        m.pop("seconds")
    assert manifests[0] == manifests[1] and len(manifests[0]["train"]) > 3
    for split in ("train", "val"):
        assert shard_bytes(outs[1], split) == shard_bytes(outs[2], split)
    assert by_pieces == ([files] if files > 1 else [])  # num_proc=2 only, every file a task
    assert not list(outs[2].glob(".tokens_*"))  # the workers' scratch files are gone
    assert resolve_num_proc(None) == os.cpu_count()
    with pytest.raises(ConfigError, match="num_proc"):
        prepare_shards(prepare_cfg(corpus, tmp_path / "bad", "num_proc=0"))


def test_a_prepare_split_over_nodes_covers_the_corpus_once_with_the_same_validation(tmp_path):
    corpus = write_corpus(tmp_path / "corpus")
    single = prepare_shards(prepare_cfg(corpus, tmp_path / "single", "num_proc=1"))
    out = tmp_path / "nodes"
    prepare_shards(prepare_cfg(corpus, out, "node_rank=1", "num_nodes=2", "num_proc=1"))
    assert not (out / "manifest.json").exists()  # node 0 is not done
    with pytest.raises(DataError, match="lacks node.s. 0"):
        prepare_shards(prepare_cfg(corpus, out, "merge=true", "num_nodes=2"))
    prepare_shards(prepare_cfg(corpus, out, "node_rank=0", "num_nodes=2", "num_proc=2"))
    manifest = json.loads((out / "manifest.json").read_text())  # written by the last node
    files = [s["file"] for s in manifest["train"]]
    assert any("_node000_" in f for f in files) and any("_node001_" in f for f in files) and len(set(files)) == len(files)
    shards, whole = TokenShards(out), TokenShards(single)
    assert np.concatenate(shards.arrays("val")).tolist() == np.concatenate(whole.arrays("val")).tolist()
    train = np.concatenate(shards.arrays("train"))
    assert documents_of(train) == documents_of(np.concatenate(whole.arrays("train")))  # same documents, once each
    # Node 1 read files 1 and 3 only: every document of its shards comes from them.
    node1 = np.concatenate([np.fromfile(out / f, dtype=np.uint16) for f in files if "_node001_" in f])
    tags = {TOK.decode(list(d[:4])).split()[0] for d in documents_of(node1)}
    assert tags == {"<f1", "<f3"}
    # merge=true alone rewrites the same manifest; a one-node rerun replaces the node files.
    assert prepare_shards(prepare_cfg(corpus, out, "merge=true", "num_nodes=2")) == out
    assert json.loads((out / "manifest.json").read_text())["train"] == manifest["train"]
    prepare_shards(prepare_cfg(corpus, out, "num_proc=1"))
    assert not list(out.glob("*_node*")) and not list(out.glob("part_*"))


def test_parts_from_different_settings_are_not_merged(tmp_path):
    corpus = write_corpus(tmp_path / "corpus")
    out = tmp_path / "nodes"
    prepare_shards(prepare_cfg(corpus, out, "node_rank=0", "num_nodes=2", "num_proc=1"))
    prepare_shards(prepare_cfg(corpus, out, "node_rank=1", "num_nodes=2", "num_proc=1", "shard_tokens=5000"))
    assert not (out / "manifest.json").exists()
    with pytest.raises(DataError, match="different settings"):
        prepare_shards(prepare_cfg(corpus, out, "merge=true", "num_nodes=2"))
    with pytest.raises(ConfigError, match="node_rank"):
        prepare_shards(prepare_cfg(corpus, out, "node_rank=2", "num_nodes=2"))


def test_one_job_per_node_through_a_hydra_sweep(tmp_path):
    corpus = write_corpus(tmp_path / "corpus", files=2, per_file=30)
    out = tmp_path / "shards"
    result = run_cli("prepare", "data=files", f"data.paths=[{corpus}]", "tokenizer=gpt2", f"out={out}",
                     "data.val_documents=5", "num_proc=1", "-m", "node_rank=0,1", "num_nodes=2", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["nodes"] == 2 and {s["file"].split("_")[1] for s in manifest["train"]} == {"node000", "node001"}
    assert TokenShards(out).arrays("train") and not list(tmp_path.glob("multirun"))


@pytest.mark.slow
def test_one_job_per_node_through_the_submitit_launcher(tmp_path):
    corpus = write_corpus(tmp_path / "corpus", files=2, per_file=30)
    out = tmp_path / "shards"
    result = run_cli("prepare", "data=files", f"data.paths=[{corpus}]", "tokenizer=gpt2", f"out={out}",
                     "data.val_documents=5", "num_proc=1", "-m", "node_rank=0,1", "num_nodes=2",
                     "hydra/launcher=submitit_local", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((out / "manifest.json").read_text())["nodes"] == 2


def test_a_bad_file_read_in_a_worker_is_one_clear_error_and_leaves_no_scratch(tmp_path):
    corpus = write_corpus(tmp_path / "corpus")
    (corpus / "part9.jsonl").write_text('{"text": "fine"}\n{broken\n')
    out = tmp_path / "shards"
    with pytest.raises(DataError, match=r"part9.jsonl:2 is not valid JSON"):
        prepare_shards(prepare_cfg(corpus, out, "num_proc=2"))
    assert not list(out.glob(".tokens_*")) and not (out / "manifest.json").exists()
