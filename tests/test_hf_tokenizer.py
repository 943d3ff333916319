"""Exported tokenizer files: `transformers.AutoTokenizer` encodes and decodes exactly like microgpt."""

from __future__ import annotations

import json
import random

import pytest
import tiktoken
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import fixture_text
from microgpt.core.bpe import BPETokenizer, train_bpe
from microgpt.core.errors import ConfigError, DataError
from microgpt.core.tokenizer import ENDOFTEXT, CharTokenizer, TiktokenTokenizer, Tokenizer
from microgpt.io.hf_tokenizer import PROBE, check_hf_tokenizer, hf_tokenizer_files, write_hf_tokenizer

transformers = pytest.importorskip("transformers")

ODD = [
    "", " ", "\n", "\n\n\n", "\r\n\r\n", "   \t\t  \n  ", "trailing   ", "  leading", "a\u00a0b\u3000c",
    "naïve café e\u0301\u0301 a\u0308", "🙂", "👩‍👩‍👧‍👦 family 🇺🇳", "日本語のテキスト", "עברית ועוד", "١٢٣ ४५६",
    "don't WE'LL They'Re 12345678 3.14159 1,000,000", "<|endoftext|>", "a<|endoftext|>b", ENDOFTEXT * 3,
    "\x00\x01 control \x7f", "\U0010ffff max code point", "camelCaseHTTPServer", "x" * 3000, " " * 500,
]


def corpus() -> list[str]:
    """A varied corpus: Shakespeare cut into pieces of many lengths (cuts fall anywhere), and odd text."""
    text = fixture_text("tinyshakespeare.txt")
    rng = random.Random(0)
    pieces, start = [], 600_000
    while start < 700_000:
        n = rng.choice([1, 7, 50, 400, 3000])
        pieces.append(text[start:start + n])
        start += n
    return pieces + ODD + PROBE


def fuzz_texts(tok: Tokenizer, n: int, seed: int = 0) -> list[str]:
    """Random runs of characters, and strings glued from random pieces of the vocabulary (the contexts
    where two ways of building a token could disagree)."""
    rng = random.Random(seed)
    alphabet = "abcdeABCDE xyz0123456789 .,;:'\"!?-_\n\t\r éü日本🙂\u0301"
    texts = []
    for i in range(n):
        if i % 2:
            texts.append("".join(rng.choice(alphabet) for _ in range(rng.randint(1, 40))))
        else:
            ids = [rng.randrange(tok.eot) for _ in range(rng.randint(1, 8))]
            texts.append(tok.decode(ids))
    return texts


def exported(tok: Tokenizer, path, **kwargs):
    paths = write_hf_tokenizer(tok, path, **kwargs)
    assert [p.name for p in paths] == list(hf_tokenizer_files()) and all(p.is_file() for p in paths)
    return transformers.AutoTokenizer.from_pretrained(path)


def assert_same_encoding(tok: Tokenizer, hf, texts: list[str]) -> int:
    """Every text encodes to the same ids (both transformers entry points) and decodes back; the tokens compared."""
    ours = tok.encode_batch(texts)
    theirs = hf(texts, add_special_tokens=True)["input_ids"]
    for text, a, b in zip(texts, ours, theirs):
        assert a == b, f"{text[:80]!r}: {a[:20]} != {b[:20]}"
    for text, ids in zip(texts[:200], ours):
        assert hf.encode(text) == ids
        assert hf.decode(ids) == tok.decode(ids) == text
    return sum(map(len, ours))


@pytest.fixture(scope="module")
def gpt2(tmp_path_factory):
    tok = TiktokenTokenizer("gpt2")
    return tok, exported(tok, tmp_path_factory.mktemp("gpt2"), model_max_length=1024)


@pytest.fixture(scope="module")
def bpe_text() -> str:
    return fixture_text("tinyshakespeare.txt")[:60_000]


def test_gpt2_encodes_like_tiktoken(gpt2):
    tok, hf = gpt2
    n = assert_same_encoding(tok, hf, corpus() + fuzz_texts(tok, 4000))
    assert n > 30_000
    assert hf.eos_token_id == hf.bos_token_id == tok.eot == 50256 and hf.model_max_length == 1024
    assert len(hf) == tok.vocab_size


def test_the_special_token_spelling_is_text_and_its_id_decodes_to_it(gpt2):
    tok, hf = gpt2
    ids = hf("a<|endoftext|>b")["input_ids"]
    assert tok.eot not in ids and ids == tok.encode("a<|endoftext|>b") and len(ids) > 3
    assert hf.decode([tok.eot]) == tok.decode([tok.eot]) == ENDOFTEXT
    assert hf.decode([*ids, tok.eot], skip_special_tokens=True) == "a<|endoftext|>b"


def test_ids_that_split_a_character_decode_to_the_same_replacement(gpt2):
    tok, hf = gpt2
    rng = random.Random(1)
    for _ in range(300):
        ids = [rng.randrange(tok.vocab_size) for _ in range(rng.randint(1, 6))]
        ids += list(tok.encode("🙂日本")[:rng.randint(0, 4)])
        assert hf.decode(ids) == tok.decode(ids), ids


@pytest.mark.parametrize("pattern", ["gpt2", "gpt4", "o200k"])
def test_trained_bpe_encodes_like_microgpt(tmp_path, bpe_text, pattern):
    tok = train_bpe([bpe_text], vocab_size=700, pattern=pattern, special_tokens=[ENDOFTEXT, "<|im_start|>"],
                    show_progress=False)
    hf = exported(tok, tmp_path)
    assert_same_encoding(tok, hf, corpus() + fuzz_texts(tok, 3000))
    assert hf.eos_token_id == tok.eot and hf.convert_tokens_to_ids("<|im_start|>") == tok.special_tokens["<|im_start|>"]
    assert hf("<|im_start|>hi")["input_ids"] == tok.encode("<|im_start|>hi")


@given(text=st.text(max_size=60))
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_any_text_encodes_alike(gpt2, text):
    tok, hf = gpt2
    assert hf.encode(text) == tok.encode(text)


def test_a_pattern_that_skips_text_skips_it_in_both(tmp_path, bpe_text):
    # tiktoken encodes only the regex's matches: here the letters, never the spaces or punctuation.
    tok = BPETokenizer(train_bpe([bpe_text], 400, show_progress=False).merges, r"\p{L}+")
    hf = exported(tok, tmp_path)
    text = "Hello, world!  Again?"
    assert hf.encode(text) == tok.encode(text) and hf.decode(tok.encode(text)) == "HelloworldAgain"


def test_characters_encode_like_microgpt(tmp_path):
    extra = "".join(ODD + PROBE)
    tok = CharTokenizer.from_texts([fixture_text("tinyshakespeare.txt"), extra])
    hf = exported(tok, tmp_path)
    n = assert_same_encoding(tok, hf, corpus() + [tok.chars, tok.chars[::-1]])
    assert n > 100_000 and hf.eos_token_id == tok.eot
    assert hf.decode([tok.eot, 0]) == tok.decode([tok.eot, 0]) == ENDOFTEXT + tok.chars[0]
    with pytest.raises(DataError):
        tok.encode("a\u2603b")  # not in the vocabulary: microgpt refuses ...
    with pytest.raises(Exception, match="WordLevel"):
        hf.encode("a\u2603b")  # ... and so does the exported tokenizer (no unknown token to fall back on)


def test_characters_across_the_whole_unicode_range(tmp_path):
    chars = "".join(chr(c) for c in range(0, 0x110000, 251) if not 0xD800 <= c <= 0xDFFF)
    tok = CharTokenizer(chars + "\n\r\u2028\u0085")
    hf = exported(tok, tmp_path)
    assert hf(list(tok.chars))["input_ids"] == [[i] for i in range(len(tok.chars))]
    assert hf.encode(tok.chars) == tok.encode(tok.chars) and hf.decode(tok.encode(tok.chars)) == tok.chars


def test_the_config_files(tmp_path):
    tok = CharTokenizer("ab")
    write_hf_tokenizer(tok, tmp_path)
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    assert config["tokenizer_class"] == "PreTrainedTokenizerFast" and config["split_special_tokens"] is True
    assert "model_max_length" not in config
    special = json.loads((tmp_path / "special_tokens_map.json").read_text())
    assert special == {"bos_token": ENDOFTEXT, "eos_token": ENDOFTEXT}
    write_hf_tokenizer(CharTokenizer("xyz"), tmp_path)  # over an earlier export: replaced
    assert transformers.AutoTokenizer.from_pretrained(tmp_path).encode("zyx") == [2, 1, 0]


def test_check_then_write_builds_the_tokenizer_once(tmp_path, bpe_text, monkeypatch):
    from microgpt.io import hf_tokenizer

    builds = []
    build = hf_tokenizer.byte_level
    monkeypatch.setattr(hf_tokenizer, "byte_level", lambda *a: builds.append(a) or build(*a))
    tok = train_bpe([bpe_text], 400, show_progress=False)
    check_hf_tokenizer(tok)
    hf = exported(tok, tmp_path)  # what an export does: check first, then write
    assert len(builds) == 1 and hf.encode("hello there") == tok.encode("hello there")


# --- what cannot be expressed is refused before anything is written ---

def refused(tok, *words: str) -> str:
    with pytest.raises(ConfigError) as e:
        check_hf_tokenizer(tok)
    message = str(e.value)
    assert "\n" not in message and "cannot export" in message
    for word in words:
        assert word in message, message
    return message


def test_a_pattern_the_hf_regex_engine_rejects_is_refused(bpe_text):
    tok = BPETokenizer(train_bpe([bpe_text], 400, show_progress=False).merges, r"(?P<word>\w+)|\s+|.")
    refused(tok, "BPE tokenizer", "pattern custom", "does not compile")


def test_a_pattern_the_hf_regex_engine_reads_otherwise_is_refused(tmp_path, bpe_text):
    # `$` ends the text for tiktoken, any line for Oniguruma.
    tok = BPETokenizer(train_bpe([bpe_text], 400, show_progress=False).merges, r"[^\n]+$|.|\n")
    refused(tok, "BPE tokenizer", "differently")
    with pytest.raises(ConfigError):
        write_hf_tokenizer(tok, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_special_token_spelled_like_a_vocabulary_token_is_refused(bpe_text):
    base = train_bpe([bpe_text], 400, show_progress=False)
    n = base.vocab_size - 1
    tok = BPETokenizer(base.merges, base.pattern, {ENDOFTEXT: n, "e": n + 1})
    refused(tok, "'e'", "id")


def tiktoken_tokenizer(ranks: dict[bytes, int]) -> TiktokenTokenizer:
    """A TiktokenTokenizer over a made-up encoding (what another tiktoken encoding could look like)."""
    tok = TiktokenTokenizer.__new__(TiktokenTokenizer)
    tok.encoding_name = "tiny"
    tok.enc = tiktoken.Encoding(name="tiny", pat_str=r"\S+|\s+", mergeable_ranks=ranks,
                                special_tokens={ENDOFTEXT: len(ranks)})
    tok.vocab_size, tok.eot = len(ranks) + 1, len(ranks)
    return tok


def test_a_token_no_merge_reaches_is_still_taken_whole(tmp_path):
    # tiktoken takes a chunk that is a token as it is, even when no two tokens join into it.
    ranks = {bytes([b]): b for b in range(256)} | {b"abcd": 256, b"xy": 257, b"xyz": 258}
    tok = tiktoken_tokenizer(ranks)
    hf = exported(tok, tmp_path)
    for text in ["abcd", "abcde xyz abc", "xyzxyz abcd"]:
        assert hf.encode(text) == tok.encode(text)
    assert tok.encode("abcd") == [256]


def test_a_tiktoken_encoding_without_every_byte_is_refused():
    tok = tiktoken_tokenizer({b"a": 0, b"b": 1, b"ab": 2})
    refused(tok, "tiktoken encoding 'tiny'", "single bytes")


def test_a_lone_surrogate_character_is_refused():
    refused(CharTokenizer("ab\ud800"), "character tokenizer", "U+D800")


def test_an_unknown_tokenizer_kind_is_refused():
    class Other(Tokenizer):
        vocab_size, eot = 1, 0
        encode = decode = state = from_state = None

    refused(Other(), "Other")
