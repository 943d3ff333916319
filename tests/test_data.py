import json

import numpy as np
import pytest
import torch

from microgpt.core.errors import ConfigError, DataError
from microgpt.core.tokenizer import CharTokenizer
from microgpt.data.packing import PackedWindows, StepIndexedSampler, tokenize_documents
from microgpt.data.sources import documents_from, pydoc_documents
from microgpt.lightning.datamodule import TextDataModule


def test_default_corpus_is_real_english_shipped_with_python():
    text = "".join(pydoc_documents())
    assert len(text) > 300_000
    words = text.split()
    assert sum(w.lower() in {"the", "of", "and", "is", "a"} for w in words) / len(words) > 0.05


def test_documents_are_separated_by_eot_and_packed_into_windows():
    tok = CharTokenizer.from_texts(["abcdef"])
    tokens = tokenize_documents(["abc", "def"], tok)
    eot = tok.eot
    assert tokens.tolist() == [eot, 0, 1, 2, eot, 3, 4, 5]
    assert tokens.dtype == np.uint16
    windows = PackedWindows(tokens, block_size=3)
    assert len(windows) == 2
    assert windows[0].tolist() == [eot, 0, 1, 2] and windows[0].dtype == torch.int64
    assert windows[1].tolist() == [2, eot, 3, 4]


def test_sampler_covers_each_epoch_once_and_reshuffles():
    sampler = StepIndexedSampler(num_windows=10, batch_size=5, seed=3)
    it = iter(sampler)
    epoch0 = next(it) + next(it)
    epoch1 = next(it) + next(it)
    assert sorted(epoch0) == list(range(10)) and sorted(epoch1) == list(range(10))
    assert epoch0 != epoch1


def test_sampler_resumes_exactly_from_a_step():
    straight = iter(StepIndexedSampler(num_windows=7, batch_size=3, seed=0))
    batches = [next(straight) for _ in range(9)]
    resumed = iter(StepIndexedSampler(num_windows=7, batch_size=3, seed=0, start_micro_batch=4))
    assert [next(resumed) for _ in range(5)] == batches[4:]


def test_ranks_split_the_stream_without_overlap_or_gaps():
    single = iter(StepIndexedSampler(num_windows=20, batch_size=2, seed=1))
    reference = [next(single) for _ in range(6)]
    r0 = iter(StepIndexedSampler(num_windows=20, batch_size=2, seed=1, rank=0, world_size=2))
    r1 = iter(StepIndexedSampler(num_windows=20, batch_size=2, seed=1, rank=1, world_size=2))
    interleaved = [b for _ in range(3) for b in (next(r0), next(r1))]
    assert interleaved == reference


def test_files_globs_folders_and_jsonl(tmp_path):
    (tmp_path / "a.txt").write_text("alpha")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.txt").write_text("beta")
    (tmp_path / "c.jsonl").write_text(json.dumps({"text": "gamma"}) + "\n" + json.dumps({"body": "x"}) + "\n")
    assert list(documents_from({"kind": "files", "paths": [str(tmp_path / "*.txt")]})) == ["alpha"]
    assert sorted(documents_from({"kind": "files", "paths": [str(tmp_path / "sub")]})) == ["beta"]
    with pytest.warns(UserWarning, match="skipped 1 records"):
        assert list(documents_from({"kind": "files", "paths": [str(tmp_path / "c.jsonl")]})) == ["gamma"]


def test_invalid_utf8_is_replaced_with_a_warning(tmp_path):
    path = tmp_path / "bad.txt"
    path.write_bytes(b"ok \xff\xfe ok" + b" fine" * 100)  # 2 bad bytes in 510: replaced (over 1%: refused)
    with pytest.warns(UserWarning, match="2 invalid UTF-8"):
        (text,) = documents_from({"kind": "files", "paths": [str(path)]})
    assert text == "ok \ufffd\ufffd ok" + " fine" * 100


def test_missing_file_and_empty_glob(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        list(documents_from({"kind": "files", "paths": [str(tmp_path / "nope.txt")]}))
    with pytest.raises(DataError, match="no files match"):
        list(documents_from({"kind": "files", "paths": [str(tmp_path / "*.md")]}))
    with pytest.raises(ConfigError, match="unknown data source"):
        list(documents_from({"kind": "ftp"}))


def datamodule(text: str, **kwargs) -> TextDataModule:
    return TextDataModule(sources=[{"kind": "text", "text": text}], tokenizer={"kind": "char"},
                          **{"block_size": 8, "batch_size": 2, **kwargs})


def test_split_is_the_tail_and_fixed():
    dm = datamodule("abcdefghij" * 10)
    dm.load()
    assert len(dm.val_tokens) == 10  # 10% of 101 tokens (1 EOT + 100 chars)
    again = datamodule("abcdefghij" * 10)
    again.load()
    assert np.array_equal(dm.val_tokens, again.val_tokens)


def test_empty_and_too_short_corpora():
    with pytest.raises(DataError, match="empty"):
        datamodule("   \n").load()
    with pytest.raises(DataError, match="fewer than one block"):
        datamodule("abcdefghij" * 3).load()  # 3 validation tokens < 9


def test_separate_validation_source():
    dm = TextDataModule(sources=[{"kind": "text", "text": "abc" * 20}], val_sources=[{"kind": "text", "text": "cba" * 5}],
                        tokenizer={"kind": "char"}, block_size=4, batch_size=2)
    dm.load()
    assert len(dm.train_tokens) == 61 and len(dm.val_tokens) == 16
