"""Stream mode reads by index: each (rank, worker) slot opens only its own files (or its own shards of
a Hugging Face dataset), the slots still cover the corpus once, validation stays held out, and a
resumed run still sees exactly the batches it would have."""

import itertools
import json
import re
from collections import Counter
from pathlib import Path

import pytest
from torch.utils.data import DataLoader

import microgpt.data.sources as sources_module
from microgpt.core.tokenizer import TiktokenTokenizer
from microgpt.data.sources import part_documents
from microgpt.data.streaming import StreamingWindows
from microgpt.data.text_data import TextData

TOK = TiktokenTokenizer("gpt2")


def write_files(folder: Path, files: int, per_file: int, words: int = 12, word: str = "lorem") -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    docs = []
    for f in range(files):
        rows = [f"<f{f} d{i}> " + f"{word} ipsum dolor " * words for i in range(per_file)]
        (folder / f"{f:02d}.jsonl").write_text("".join(json.dumps({"text": r}) + "\n" for r in rows))
        docs += rows
    return docs


@pytest.fixture
def opened(monkeypatch):
    """The files each read opens, by path."""
    log: list[str] = []
    real = sources_module.read_text

    def read_text(path):
        log.append(Path(path).name)
        return real(path)

    monkeypatch.setattr(sources_module, "read_text", read_text)
    return log


@pytest.mark.parametrize("files, per_part", [(8, 2), (2, 1), (1, 1)])
def test_each_part_opens_only_its_files_and_the_parts_cover_the_corpus_once(tmp_path, opened, files, per_part):
    docs = write_files(tmp_path / "c", files, per_file=10)
    source = [{"kind": "files", "paths": [str(tmp_path / "c")]}]
    parts = []
    for k in range(4):
        opened.clear()
        parts.append(list(part_documents(source, k, 4)))
        assert len(opened) == per_part and len(set(opened)) == per_part  # 8 files: 2 each; fewer: one shared file
    assert Counter(d for p in parts for d in p) == Counter(docs)
    assert all(parts)
    if files == 8:  # whole files by index: part k reads files k and k + 4
        assert {d.split()[0] for d in parts[1]} == {f"<f{f}" for f in (1, 5)}
    opened.clear()
    assert list(part_documents(source, 0, 1)) == docs and len(opened) == files  # one part: the corpus, in order


def test_single_document_sources_are_dealt_round_robin():
    texts = [{"kind": "text", "text": f"doc {i}"} for i in range(10)]
    assert list(part_documents(texts, 1, 4)) == ["doc 1", "doc 5", "doc 9"]


def test_hf_parts_use_the_datasets_node_split_and_lose_nothing_in_workers(tmp_path):
    pytest.importorskip("datasets")
    write_files(tmp_path / "c", 4, per_file=10)
    files = sorted(str(p) for p in (tmp_path / "c").glob("*.jsonl"))
    source = {"kind": "hf", "path": "json", "data_files": files, "streaming": True}
    parts = [list(part_documents([source], k, 4)) for k in range(4)]
    assert [{d.split()[0] for d in p} for p in parts] == [{f"<f{k}"} for k in range(4)]  # one shard (file) each
    # Inside DataLoader workers `datasets` would also split the shards among the workers; reading
    # through .iter() keeps our split the only one: two workers of one rank see every document.
    one_file = {**source, "data_files": files[:1]}
    stream = StreamingWindows([one_file], TOK, block_size=8, batch_size=1, epochs=1)
    rows = [row for batch in DataLoader(stream, batch_size=1, num_workers=2) for row in batch.tolist()]
    streams = [[t for r in rows[w::2] for t in r[:-1]] for w in (0, 1)]  # batch j is worker j % 2's
    seen = set(re.findall(r"<f0 d\d+>", "".join(TOK.decode(s) for s in streams)))
    assert seen == {f"<f0 d{i}>" for i in range(10)}


def test_mixture_parts_mix_each_readers_own_share(tmp_path):
    big, small = write_files(tmp_path / "a", 4, per_file=5), write_files(tmp_path / "b", 1, per_file=3, word="small")
    mix = [{"kind": "mixture", "seed": 0, "sources": [
        {"kind": "files", "paths": [str(tmp_path / "a")], "weight": 1.0},
        {"kind": "files", "paths": [str(tmp_path / "b")], "weight": 1.0}]}]
    parts = [list(part_documents(mix, k, 4)) for k in range(4)]
    assert set(itertools.chain(*parts)) == set(part_documents(mix, 0, 1)) == set(big + small)
    for k, part in enumerate(parts):
        assert set(part) & set(big) == set(big[5 * k : 5 * k + 5])  # its own file of the big source
        assert set(part) & set(small) == set(small[k : k + 1])  # every 4th document of the one small file
    # (reader 3's share of the small source is empty: it mixes the big one alone rather than failing)


def windows(folder: Path, rank: int, start: int, count: int, workers: int = 2) -> list[list[int]]:
    ds = StreamingWindows([{"kind": "files", "paths": [str(folder)]}], TOK, block_size=16, batch_size=2,
                          rank=rank, world_size=2, start_batches=start)
    loader = DataLoader(ds, batch_size=2, num_workers=workers)
    return [row for b in itertools.islice(loader, count) for row in b.tolist()]


def test_two_ranks_by_two_workers_read_a_quarter_each_and_resume_exactly(tmp_path):
    write_files(tmp_path / "c", 8, per_file=6)
    for rank in (0, 1):
        straight = windows(tmp_path / "c", rank, 0, 40)
        resumed = windows(tmp_path / "c", rank, 7, 33)
        assert resumed == straight[14:]
        tags = set(re.findall(r"<f(\d)", TOK.decode([t for r in straight for t in r])))
        assert tags == {str(f) for f in range(8) if f % 4 in (2 * rank, 2 * rank + 1)}  # this rank's slots' files


def test_stream_validation_is_the_same_documents_and_never_trains(tmp_path, caplog):
    docs = write_files(tmp_path / "c", 4, per_file=10)
    source = [{"kind": "files", "paths": [str(tmp_path / "c")]}]
    data = TextData(source, tokenizer={"kind": "tiktoken", "encoding": "gpt2"}, block_size=16, batch_size=2,
                    mode="stream", val_documents=10, num_workers=2)
    data.load()
    val = set(re.findall(r"<f\d d\d+>", TOK.decode(data.val_tokens.tolist())))
    assert val == {d.split()[0] + " " + d.split()[1] for d in docs[:10]}  # file 0: all validation
    train = data.train_dataloader().dataset
    seen = set()
    for slot in range(2):
        part = list(itertools.islice(train.slot_documents(slot, 2), 15))
        seen |= {" ".join(d.split()[:2]) for d in part}
    assert seen and not seen & val
    # With 4 readers, reader 0's own part is file 0, all validation: it falls back, with a warning.
    ds = StreamingWindows(source, TOK, 16, 2, skip_documents=10, held_out=data.held_out, world_size=4, epochs=1)
    with caplog.at_level("WARNING"):
        fallback = list(ds.slot_documents(0, 4))
    assert fallback and not {" ".join(d.split()[:2]) for d in fallback} & val and "falls back" not in caplog.text
    assert "holds no training document" in caplog.text
