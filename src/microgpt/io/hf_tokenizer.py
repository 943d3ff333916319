"""microgpt's tokenizers as Hugging Face tokenizer files, so `AutoTokenizer.from_pretrained(<export>)`
encodes and decodes exactly as microgpt does.

- Byte-level BPE (tiktoken's GPT-2, our own `BPETokenizer`): a `tokenizers` BPE over GPT-2's
  byte -> character alphabet. tiktoken joins two adjacent pieces whenever their bytes form a token
  (lowest id first) and takes a whole chunk that is a token as it is; a `tokenizers` BPE applies
  listed merges. So the merge list holds *every* split of every token into two tokens, ordered by
  the token's id (what transformers' own tiktoken converter does), with `ignore_merges` on. The
  pre-tokenizer keeps only the regex's matches, as tiktoken's `find_iter` does (text the regex does
  not match is dropped by both).
- Characters (`CharTokenizer`): a WordLevel model over single characters. A character outside the
  vocabulary is an error in both (microgpt raises DataError, `tokenizers` a WordLevel error).
- A Hugging Face tokenizer (`HFTokenizer`, read from a tokenizer.json) is written back as it was read,
  byte for byte; tokenizer_config.json names its end-of-text token.
- microgpt encodes text that spells "<|endoftext|>" (or another special token) as ordinary text:
  tokenizer_config.json sets `split_special_tokens`, so transformers does the same. The special
  tokens keep their ids and decode to their text.

Every build is checked against microgpt on a probe text (and the whole id -> token map) before
anything is written; what cannot be expressed exactly is a ConfigError naming the tokenizer.
"""

from __future__ import annotations

import json
import weakref
from pathlib import Path

from microgpt.core.bpe import N_BYTES, PATTERNS, BPETokenizer
from microgpt.core.errors import ConfigError
from microgpt.core.tokenizer import ENDOFTEXT, CharTokenizer, TiktokenTokenizer, Tokenizer
from microgpt.core.tokenizer_json import (  # special_tokens_map.json: read by transformers 4.x; 5.x reads tokenizer_config.json
    SPECIAL_TOKENS_MAP,
    TOKENIZER_CONFIG,
    TOKENIZER_JSON,
    HFTokenizer,
    byte_level_spelling,
)

# Text the check encodes with both tokenizers: scripts, marks, emoji sequences, digits, contractions in
# both cases, whitespace runs and line ends of every kind, control bytes, special-token spellings.
PROBE = [
    "Hello, world! It's 3.14159 o'clock; DON'T we'll they've I'M 1234567890 12,345.67 -42",
    "  leading spaces\tand\ttabs\t\t  \n\n\nthree newlines\r\nwindows\rold mac  \n  \n trailing   ",
    "naïve café résumé e\u0301\u0301 a\u0308 Ångström ñ İstanbul straße ﬁ",
    "日本語のテキスト 中文文本 한국어 텍스트 עברית ועוד العربية १२३ ٣٤٥ ไทย Ελληνικά русский",
    "🙂 👍🏽 👩‍👩‍👧‍👦 🇺🇳 ❤️ ✨🔥 \U0010ffff \U0001f600\U0001f600 \u200b\u200d\u2028\u2029\u00a0\u3000",
    "camelCaseWords HTTPServer getX fooBar2Baz snake_case kebab-case path/to/file.txt a+b=c",
    "<|endoftext|> text<|endoftext|>more <|endoftext|><|endoftext|> <| endoftext |> <|im_start|>",
    "\x00\x01\x1f\x7f control \u0085 next-line \x0b\x0c vertical",
    "def f(x):\n    return x ** 2  # comment\n\n\tif x:\n\t\tpass\n",
    "", " ", "\n", "  ", "a", "'s", "'S", "  \n", "\n \n", "x\n  y", "ab  \ncd", "1 22 333 4444 55555",
]

PATTERN_FIX = "train the BPE with tokenizer.pattern=gpt2, gpt4 or o200k (read alike by both regex engines)"

# A build is reused while its tokenizer lives: check_hf_tokenizer then write_hf_tokenizer builds once
# (GPT-2's 108k merges take ~1 s).
_BUILT: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def hf_tokenizer_files() -> tuple[str, ...]:
    """The names `write_hf_tokenizer` may write, so an export can remove stale ones."""
    return (TOKENIZER_JSON, TOKENIZER_CONFIG, SPECIAL_TOKENS_MAP)


def check_hf_tokenizer(tokenizer: Tokenizer) -> None:
    """ConfigError (one line naming the tokenizer and why) when the HF format cannot express it exactly."""
    hf_tokenizer(tokenizer)


def write_hf_tokenizer(tokenizer: Tokenizer, out: Path, model_max_length: int | None = None) -> list[Path]:
    """Write tokenizer.json, tokenizer_config.json and special_tokens_map.json into `out`; the paths."""
    hf = hf_tokenizer(tokenizer)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / name for name in hf_tokenizer_files()]
    if isinstance(tokenizer, HFTokenizer):
        # As read: its post-processor (a BOS it adds, say) stays for transformers' own encode.
        paths[0].write_text(tokenizer.json_text, encoding="utf-8")
        special, flags = {"eos_token": tokenizer.hf.id_to_token(tokenizer.eot)}, {}
    else:
        hf.save(str(paths[0]))
        special, flags = {"bos_token": ENDOFTEXT, "eos_token": ENDOFTEXT}, {"add_bos_token": False, "add_eos_token": False}
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        **special,
        "split_special_tokens": True,  # "<|endoftext|>" in text is text, as in microgpt's encode
        "clean_up_tokenization_spaces": False,  # decode gives back the text exactly
        **flags,
    }
    if model_max_length is not None:
        config["model_max_length"] = model_max_length
    for path, payload in zip(paths[1:], (config, special)):
        path.write_text(json.dumps(payload, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return paths


def hf_tokenizer(tokenizer: Tokenizer):
    """The checked `tokenizers.Tokenizer` for a microgpt tokenizer (ConfigError when not exact)."""
    try:
        return _BUILT[tokenizer]
    except (KeyError, TypeError):
        pass
    if isinstance(tokenizer, HFTokenizer):
        return tokenizer.hf  # exact by construction: the file it was read from
    name = describe(tokenizer)
    probe, fix = PROBE, PATTERN_FIX
    if isinstance(tokenizer, CharTokenizer):
        hf, expected = char_level(tokenizer, name)
        probe, fix = char_probe(tokenizer), "export with tokenizer=gpt2 or bpe"
    elif isinstance(tokenizer, BPETokenizer):
        ranks = {piece: i for i, piece in enumerate(tokenizer.token_bytes)}
        hf, expected = byte_level(ranks, tokenizer.pattern, tokenizer.special_tokens, name)
    elif isinstance(tokenizer, TiktokenTokenizer):
        enc = tokenizer.enc
        ranks, pattern = getattr(enc, "_mergeable_ranks", None), getattr(enc, "_pat_str", None)
        if ranks is None or pattern is None:
            raise ConfigError(f"cannot export {name} as a Hugging Face tokenizer: this tiktoken version hides its ranks; install tiktoken 0.7 to 0.14")
        hf, expected = byte_level(ranks, pattern, enc._special_tokens, name)
    else:
        raise ConfigError(f"cannot export {name} as a Hugging Face tokenizer: no Hugging Face form is known for "
                          f"{type(tokenizer).__name__}; export with tokenizer=gpt2, bpe, char or hf")
    check_same(tokenizer, hf, expected, probe, name, fix)
    try:
        _BUILT[tokenizer] = hf
    except TypeError:
        pass
    return hf


def describe(tokenizer: Tokenizer) -> str:
    if isinstance(tokenizer, CharTokenizer):
        return f"the character tokenizer ({len(tokenizer.chars)} characters)"
    if isinstance(tokenizer, BPETokenizer):
        preset = next((k for k, v in PATTERNS.items() if v == tokenizer.pattern), "custom")
        return f"the BPE tokenizer (vocab {tokenizer.vocab_size}, pattern {preset})"
    if isinstance(tokenizer, TiktokenTokenizer):
        return f"the tiktoken encoding {tokenizer.encoding_name!r}"
    return f"the tokenizer {tokenizer!r}"


def byte_level(ranks: dict[bytes, int], pattern: str, special: dict[str, int], name: str):
    """A `tokenizers` byte-level BPE equal to tiktoken's encoding with these ranks, pattern and specials;
    returns it with the token -> id map it must have."""
    from tokenizers import Regex, decoders, models, pre_tokenizers
    from tokenizers import Tokenizer as HFTokenizer

    missing = [b for b in range(N_BYTES) if bytes([b]) not in ranks]
    if missing:
        raise ConfigError(f"cannot export {name} as a Hugging Face tokenizer: it has no token for the "
                          f"{len(missing)} single bytes such as {bytes([missing[0]])!r}, which byte-level BPE needs")
    spelling = byte_level_spelling(ranks)
    vocab = {spelling[piece]: i for piece, i in ranks.items()}
    hf = HFTokenizer(models.BPE(vocab=vocab, merges=every_split(ranks, spelling), ignore_merges=True))
    try:
        # invert + removed: the pieces are the regex's matches and the text between them is dropped,
        # like tiktoken's find_iter (the trainer's "isolated" would keep it).
        split = pre_tokenizers.Split(Regex(pattern), behavior="removed", invert=True)
    except Exception as e:  # `tokenizers` reports a regex its engine (Oniguruma) rejects as a bare Exception
        raise ConfigError(f"cannot export {name} as a Hugging Face tokenizer: its pattern does not compile in "
                          f"`tokenizers`' regex engine ({e}); {PATTERN_FIX}") from e
    hf.pre_tokenizer = pre_tokenizers.Sequence([split, pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    hf.decoder = decoders.ByteLevel()
    add_special_tokens(hf, special)
    return hf, {**vocab, **special}


def every_split(ranks: dict[bytes, int], spelling: dict[bytes, str]) -> list[tuple[str, str]]:
    """Each way to cut each token into two tokens, by the token's id, then the parts' ids."""
    merges = []
    for piece, _ in sorted(ranks.items(), key=lambda item: item[1]):
        cuts = [(ranks[piece[:k]], ranks[piece[k:]], k) for k in range(1, len(piece))
                if piece[:k] in ranks and piece[k:] in ranks]
        merges.extend((spelling[piece[:k]], spelling[piece[k:]]) for _, _, k in sorted(cuts))
    return merges


def char_level(tokenizer: CharTokenizer, name: str):
    """A WordLevel model over single characters (every character its own piece, no unknown token)."""
    from tokenizers import Regex, decoders, models, pre_tokenizers
    from tokenizers import Tokenizer as HFTokenizer

    bad = [c for c in tokenizer.chars if 0xD800 <= ord(c) <= 0xDFFF]
    if bad:
        raise ConfigError(f"cannot export {name} as a Hugging Face tokenizer: it holds the lone surrogate "
                          f"U+{ord(bad[0]):04X}, which tokenizer.json (UTF-8) cannot store; retrain it on valid text")
    vocab = {c: i for i, c in enumerate(tokenizer.chars)}
    # No unk_token in the vocabulary: an unknown character fails to encode, as microgpt's DataError does.
    hf = HFTokenizer(models.WordLevel(vocab=vocab))
    # (?m) is Oniguruma's dot-all: every character, newlines included, is one piece.
    hf.pre_tokenizer = pre_tokenizers.Split(Regex(r"(?m:.)"), behavior="isolated")
    hf.decoder = decoders.Fuse()
    add_special_tokens(hf, {ENDOFTEXT: tokenizer.eot})
    return hf, {**vocab, ENDOFTEXT: tokenizer.eot}


def add_special_tokens(hf, special: dict[str, int]) -> None:
    from tokenizers import AddedToken

    ordered = sorted(special, key=special.get)
    hf.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in ordered])
    hf.encode_special_tokens = True


def char_probe(tokenizer: CharTokenizer) -> list[str]:
    """Text in the vocabulary: each character alone, all of them in a row, and the special-token spelling."""
    chars, vocab = tokenizer.chars, set(tokenizer.chars)
    return [*chars, chars, chars[::-1] * 2, ""] + [p for p in PROBE if set(p) <= vocab]


def check_same(tokenizer: Tokenizer, hf, expected: dict[str, int], probe: list[str], name: str, fix: str) -> None:
    """The build has exactly the expected vocabulary and encodes and decodes the probe like microgpt."""
    got = hf.get_vocab(with_added_tokens=True)
    if got != expected:
        wrong = next((t for t in expected if got.get(t) != expected[t]), None)
        where = f"token {wrong!r} would have id {got.get(wrong)} instead of {expected[wrong]}" if wrong is not None \
            else f"{len(got) - len(expected)} extra tokens"
        raise ConfigError(f"cannot export {name} as a Hugging Face tokenizer: {where} (special-token ids must "
                          "follow the vocabulary in order)")
    ours = tokenizer.encode_batch(probe)
    theirs = [e.ids for e in hf.encode_batch(probe, add_special_tokens=False)]
    decoded = hf.decode_batch(ours, skip_special_tokens=False)
    for text, a, b, back in zip(probe, ours, theirs, decoded):
        if a != b or back != tokenizer.decode(a):
            what = "encodes" if a != b else "decodes"
            raise ConfigError(f"cannot export {name} as a Hugging Face tokenizer: `tokenizers` {what} {text[:40]!r} "
                              f"differently; {fix}")
    ids = list(expected.values())
    if hf.decode(ids, skip_special_tokens=False) != tokenizer.decode(ids):
        raise ConfigError(f"cannot export {name} as a Hugging Face tokenizer: `tokenizers` decodes its vocabulary differently")
