"""Custom byte-level BPE: training, the tiktoken encoder against a plain-Python BPE, files, end to end."""

from __future__ import annotations

import json
import logging

import pytest
import regex
from hypothesis import example, given, settings
from hypothesis import strategies as st

from conftest import TINY, assert_clean_error, fixture_text, run_cli
from microgpt.core.bpe import PATTERNS, BPETokenizer, train_bpe
from microgpt.core.errors import ConfigError, DataError
from microgpt.core.tokenizer import ENDOFTEXT
from microgpt.core.tokenizers import build_tokenizer, load_tokenizer, tokenizer_from_state
from microgpt.io.checkpoints import read_checkpoint

TRICKY = [
    "", " ", "\n\n", "hello world", "naïve café", "e\u0301\u0301 a\u0308", "🙂", "👩‍👩‍👧‍👦 family",
    "日本語のテキスト", "עברית ועוד", "don't WE'LL 12345678 3.14", "  leading and trailing  ",
    "tabs\tand\r\nwindows lines", "<|endoftext|>", "\x00\x01 control", "\U0010ffff max code point",
]


def reference_encode(tok: BPETokenizer, text: str) -> list[int]:
    """Textbook BPE: split by the regex, then inside each chunk keep merging the adjacent pair
    with the earliest merge until no pair has one (independent of tiktoken)."""
    rank = {pair: 256 + i for i, pair in enumerate(tok.merges)}
    ids_out: list[int] = []
    for chunk in regex.findall(tok.pattern, text):
        ids = list(chunk.encode("utf-8"))
        while len(ids) > 1:
            pair = min(zip(ids, ids[1:]), key=lambda p: rank.get(p, float("inf")))
            if pair not in rank:
                break
            merged, i = [], 0
            while i < len(ids):
                if i + 1 < len(ids) and (ids[i], ids[i + 1]) == pair:
                    merged.append(rank[pair])
                    i += 2
                else:
                    merged.append(ids[i])
                    i += 1
            ids = merged
        ids_out.extend(ids)
    return ids_out


@pytest.fixture(scope="module")
def corpus() -> str:
    return fixture_text("tinyshakespeare.txt")[:200_000]


@pytest.fixture(scope="module")
def tok(corpus) -> BPETokenizer:
    return train_bpe([corpus], vocab_size=1200, show_progress=False)


def held_out_text() -> str:
    """Text the tokenizer was not trained on: the tail of Tiny Shakespeare, the Python docs, and odd Unicode."""
    from microgpt.data.sources import pydoc_documents

    text = fixture_text("tinyshakespeare.txt")[-20_000:]
    docs = "".join(pydoc_documents())[:30_000]
    return text + docs + "\n".join(TRICKY)


def test_trained_vocabulary_has_exactly_the_requested_size(tok):
    assert tok.vocab_size == 1200 and len(tok.merges) == 1200 - 256 - 1
    assert tok.eot == 1199 and tok.decode([tok.eot]) == ENDOFTEXT
    # Merges learned from Shakespeare: common English pieces are single tokens.
    assert len(tok.encode(" the")) == 1 and len(tok.encode(" KING")) < len(b" KING")


@pytest.mark.parametrize("pattern", ["gpt4", "o200k", "gpt2"])
def test_fast_encoder_equals_reference_bpe(corpus, pattern):
    tok = train_bpe([corpus[:80_000]], vocab_size=700, pattern=pattern, show_progress=False)
    text = held_out_text()
    ids = tok.encode(text)
    assert ids == reference_encode(tok, text)
    assert tok.decode(ids) == text
    assert len(ids) < 0.6 * len(text.encode())  # the merges really compress


@settings(max_examples=150, deadline=None)
@given(st.text())
@example("")
@example("🙂👍🏽 e\u0301 Z\u0351\u0308\u0300")
@example("\U0001f469\u200d\U0001f52c <|endoftext|> 日本")
def test_round_trip_and_reference_on_arbitrary_unicode(tok, text):
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert ids == reference_encode(tok, text)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.sampled_from(["the", " king", "🙂", "\u0301", " ", "\n", "ROMEO:", "é", "'ll", "42"]), max_size=40))
def test_round_trip_on_word_salad(tok, words):
    text = "".join(words)
    assert tok.decode(tok.encode(text)) == text


def test_decoding_a_split_character_gives_replacement_characters(tok):
    ids = tok.encode("a🙂b")
    emoji = tok.encode("🙂")
    assert len(emoji) > 1  # not a single token in a Shakespeare vocabulary: its 4 bytes are split
    assert tok.decode(emoji[:1]) == "\ufffd"
    assert tok.decode(ids[:-1]) == "a🙂"
    assert tok.decode([tok.vocab_size + 5, *tok.encode("hi")]) == "\ufffdhi"  # unknown id: U+FFFD, no error
    assert tok.decode([-1]) == "\ufffd"


def test_special_token_text_is_ordinary_text(tok):
    ids = tok.encode(f"a{ENDOFTEXT}b")
    assert tok.eot not in ids and tok.decode(ids) == f"a{ENDOFTEXT}b"


def test_save_load_gives_the_same_tokenizer(tok, tmp_path):
    path = tmp_path / "bpe.json"
    tok.save(path)
    payload = json.loads(path.read_text())
    assert payload["format"] == "microgpt-tokenizer" and payload["version"] == 1 and payload["bpe_version"] == 1
    again = load_tokenizer(path)
    text = held_out_text()
    assert isinstance(again, BPETokenizer) and again.encode(text) == tok.encode(text)
    assert again.state() == tok.state()
    # The state alone (what checkpoints carry) rebuilds it too, after a JSON round trip.
    assert tokenizer_from_state(json.loads(json.dumps(tok.state()))).encode(text) == tok.encode(text)
    assert build_tokenizer({"kind": "bpe", "path": str(path)}).vocab_size == tok.vocab_size


def test_extra_special_tokens_follow_the_merges(corpus):
    tok = train_bpe([corpus[:20_000]], vocab_size=400, special_tokens=["<|pad|>"], show_progress=False)
    assert tok.vocab_size == 400
    assert tok.special_tokens == {ENDOFTEXT: 398, "<|pad|>": 399} and tok.eot == 398


def corruptions(state: dict) -> list[tuple[str, dict]]:
    merges = state["merges"]
    n = len(merges)
    return [
        ("future id", {**state, "merges": [[0, 300], *merges[1:]]}),
        ("duplicate merge", {**state, "merges": [*merges, merges[0]]}),
        ("merges not a list", {**state, "merges": "abc"}),
        ("bad pair", {**state, "merges": [[1, 2, 3]]}),
        ("no eot", {**state, "special_tokens": {"<|pad|>": 256 + n}}),
        ("eot id gap", {**state, "special_tokens": {ENDOFTEXT: 256 + n + 7}}),
        ("bad pattern", {**state, "pattern": "(unclosed"}),
        ("no merges", {k: v for k, v in state.items() if k != "merges"}),
    ]


@pytest.mark.parametrize("case", range(8))
def test_corrupt_tokenizer_files_are_clear_errors(tok, tmp_path, case):
    name, bad_state = corruptions(tok.state())[case]
    path = tmp_path / "bpe.json"
    path.write_text(json.dumps({"format": "microgpt-tokenizer", "version": 1, **bad_state}))
    with pytest.raises(DataError, match="corrupt"):
        load_tokenizer(path)


def test_truncated_file_and_unknown_version_are_clear_errors(tok, tmp_path):
    path = tmp_path / "bpe.json"
    tok.save(path)
    full = path.read_text()
    for cut in (len(full) // 2, len(full) - 3, 40):
        path.write_text(full[:cut])
        with pytest.raises(DataError, match="corrupt or truncated"):
            load_tokenizer(path)
    path.write_text(full.replace('"bpe_version": 1', '"bpe_version": 99'))
    with pytest.raises(DataError, match="bpe_version 99"):
        load_tokenizer(path)


def test_bad_training_settings_are_config_errors(corpus):
    with pytest.raises(ConfigError, match="vocab_size"):
        train_bpe([corpus], vocab_size=200)
    with pytest.raises(ConfigError, match="not a valid regex"):
        train_bpe([corpus], vocab_size=300, pattern="[a-")
    with pytest.raises(DataError, match="empty"):
        train_bpe(["", ""], vocab_size=300, show_progress=False)
    with pytest.raises(ConfigError, match="tokenizer.path"):
        build_tokenizer({"kind": "bpe", "path": None})


def test_custom_pattern_that_the_trainer_reads_differently_is_warned_about(corpus, caplog):
    # Oniguruma (inside `tokenizers`) reads `{1,3}+` as "repeat", tiktoken as a possessive {1,3}.
    with caplog.at_level(logging.WARNING, logger="microgpt.core.bpe"):
        tok = train_bpe([corpus[:5000] + " 12345678"], vocab_size=300, pattern=r"\p{N}{1,3}+|\s+|\p{L}+|.", show_progress=False)
    assert "splits text differently" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="microgpt.core.bpe"):
        tok = train_bpe([corpus[:5000] + " 12345678"], vocab_size=300, pattern=r"\p{N}{1,3}|\s+|\p{L}+|.", show_progress=False)
    assert "splits text differently" not in caplog.text
    assert tok.encode("12345678") == reference_encode(tok, "12345678")


def test_an_error_while_reading_documents_keeps_its_message(corpus):
    def documents():
        yield corpus[:1000]
        raise DataError("data file missing.txt does not exist")

    with pytest.raises(DataError, match="missing.txt"):
        train_bpe(documents(), vocab_size=300, show_progress=False)


@pytest.mark.parametrize("name", sorted(PATTERNS))
def test_trainer_and_encoder_split_text_the_same_way(name):
    """The trainer (Oniguruma, inside `tokenizers`) and the encoder (tiktoken / `regex`) must see the same chunks."""
    from tokenizers import Regex, pre_tokenizers

    text = held_out_text()
    splitter = pre_tokenizers.Split(Regex(PATTERNS[name]), behavior="isolated")
    assert [p for p, _ in splitter.pre_tokenize_str(text)] == regex.findall(PATTERNS[name], text)


def test_custom_tokenizer_trains_a_model_that_generates(small_corpus, tmp_path):
    """train_tokenizer -> train -> generate, through the real entry points; the tokenizer travels in the checkpoint."""

    tok_path = tmp_path / "tok" / "bpe.json"
    result = run_cli("train_tokenizer", "data=files", f"data.paths=[{small_corpus}]", "tokenizer.vocab_size=400",
                     f"tokenizer.out={tok_path}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "400-token BPE" in result.stderr
    tok = load_tokenizer(tok_path)
    assert tok.vocab_size == 400
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus.txt", "tok"]  # no log or run folder left behind

    run_dir = tmp_path / "run"
    result = run_cli("train", *TINY, "data=files", f"data.paths=[{small_corpus}]", "tokenizer=bpe",
                     f"tokenizer.path={tok_path}", f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    ckpt = read_checkpoint(run_dir / "checkpoints" / "last.ckpt")
    assert ckpt["hyper_parameters"]["tokenizer"] == tok.state()
    assert ckpt["hyper_parameters"]["model"]["vocab_size"] == 400

    tok_path.unlink()  # generation must not need the file: the checkpoint has the tokenizer
    result = run_cli("generate", f"ckpt={run_dir / 'checkpoints' / 'last.ckpt'}", "prompt=ROMEO:",
                     "max_new_tokens=20", "stop_at_eot=false", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout.strip()
    assert out.startswith("ROMEO:") and len(out) > len("ROMEO:") + 10


def test_training_with_a_corrupt_tokenizer_file_is_one_clear_line(small_corpus, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"format": "microgpt-tokenizer", "version": 1, "kind": "bpe", "bpe_version": 1,
                               "pattern": PATTERNS["gpt4"], "merges": [[0, 999]], "special_tokens": {ENDOFTEXT: 257}}))
    result = run_cli("train", "data=files", f"data.paths=[{small_corpus}]", "tokenizer=bpe",
                     f"tokenizer.path={bad}", "max_steps=1", cwd=tmp_path, timeout=120)
    assert_clean_error(result, "corrupt", "merge 0")
