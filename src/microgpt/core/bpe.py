"""Byte-level BPE tokenizers trained on your own corpus and encoded by tiktoken.

Training runs Hugging Face `tokenizers` (Rust) and converts its merges to byte-level ranks;
encoding runs `tiktoken.Encoding` built from those ranks, so neither step is a Python loop.

Token ids: 0-255 are the bytes 0-255; merge i makes id 256 + i (the bytes of its two parts joined);
the special tokens follow the merges. Text is first split into chunks by the pre-tokenization
regex; BPE runs inside each chunk, always applying the lowest-id merge available (tiktoken's rule:
two adjacent pieces are joined when their bytes form a token, lowest id first, leftmost on ties).

File format (JSON, UTF-8; `Tokenizer.save` writes it, `microgpt.core.tokenizers.load_tokenizer` reads it,
and the same dict minus the first two keys travels in every checkpoint's hyper-parameters)::

    {
      "format": "microgpt-tokenizer",           # every microgpt tokenizer file
      "version": 1,                             # layout of the file envelope
      "kind": "bpe",
      "bpe_version": 1,                         # layout of the fields below; other values are refused
      "pattern": "<regex>",                     # pre-tokenization, tiktoken / `regex` syntax
      "merges": [[a, b], ...],                  # merge i: id 256 + i = bytes(a) + bytes(b), a, b < 256 + i
      "special_tokens": {"<|endoftext|>": 8191} # ids 256 + len(merges), ... in order; must hold <|endoftext|>
    }

Decoding ids that split a multi-byte UTF-8 character (or unknown ids) gives U+FFFD for the broken
part, never an error. Encoding treats text that spells a special token as ordinary text.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Iterable, Iterator, Sequence

import tiktoken

from microgpt.core.errors import ConfigError, DataError
from microgpt.core.tokenizer import ENDOFTEXT, Tokenizer

log = logging.getLogger(__name__)

BPE_VERSION = 1
N_BYTES = 256
REPLACEMENT = "\ufffd".encode()

# Pre-tokenization regexes that tiktoken (fancy-regex), Python's `regex` and the Oniguruma engine
# inside `tokenizers` all read the same way (no possessive quantifiers), so training and encoding
# see identical chunks.
PATTERNS = {
    # GPT-2 / r50k.
    "gpt2": r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""",
    # GPT-4 / cl100k: case-insensitive contractions, digits in groups of at most 3.
    "gpt4": r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+""",
    # GPT-4o / o200k: also splits CamelCase words and keeps contractions on their word.
    "o200k": "|".join([
        r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
        r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
        r"""\p{N}{1,3}""",
        r""" ?[^\s\p{L}\p{N}]+[\r\n/]*""",
        r"""\s*[\r\n]+""",
        r"""\s+(?!\S)""",
        r"""\s+""",
    ]),
}


def resolve_pattern(pattern: str) -> str:
    """A preset name (gpt2, gpt4, o200k) or a regex, checked to compile."""
    if not isinstance(pattern, str) or not pattern:
        raise ConfigError(f"tokenizer.pattern must be one of {sorted(PATTERNS)} or a regex, got {pattern!r}")
    if pattern not in PATTERNS and re.fullmatch(r"[A-Za-z][\w.-]*", pattern):
        # A bare word is a preset's name mistyped (gpt5, cl100k), not a pre-tokenizer: as a regex it
        # would match only itself, and the BPE would learn no merges from the rest of the text.
        raise ConfigError(f"unknown tokenizer.pattern {pattern!r}; known: {', '.join(sorted(PATTERNS))}, "
                          "or a pre-tokenization regex (tiktoken / `regex` syntax)")
    regex_text = PATTERNS.get(pattern, pattern)
    import regex  # tiktoken's own dependency; same syntax as tiktoken's engine

    try:
        regex.compile(regex_text)
    except regex.error as e:
        raise ConfigError(f"tokenizer.pattern {pattern!r} is not a valid regex ({e}); use one of {sorted(PATTERNS)}") from e
    return regex_text


class BPETokenizer(Tokenizer):
    """A trained byte-level BPE: merges + pre-tokenization regex + special tokens, encoded by tiktoken."""

    def __init__(self, merges: Sequence[Sequence[int]], pattern: str, special_tokens: dict[str, int] | None = None) -> None:
        self.pattern = pattern
        self.merges = [tuple(pair) for pair in _checked_merges(merges)]
        self.token_bytes = _token_bytes(self.merges)
        first_special = len(self.token_bytes)
        if special_tokens is None:
            special_tokens = {ENDOFTEXT: first_special}
        self.special_tokens = _checked_special_tokens(special_tokens, first_special)
        self.eot = self.special_tokens[ENDOFTEXT]
        self.vocab_size = first_special + len(self.special_tokens)
        try:
            self.enc = tiktoken.Encoding(
                name=f"microgpt-bpe-{self.vocab_size}", pat_str=pattern,
                mergeable_ranks={b: i for i, b in enumerate(self.token_bytes)},
                special_tokens=self.special_tokens, explicit_n_vocab=self.vocab_size,
            )
        except Exception as e:  # tiktoken reports a bad regex as a bare ValueError from Rust
            raise DataError(f"BPE tokenizer is corrupt: its pattern does not compile ({e}); re-train it") from e

    def encode(self, text: str) -> list[int]:
        return self.enc.encode_ordinary(text)

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return self.enc.encode_ordinary_batch(list(texts))

    def decode(self, ids: Iterable[int]) -> str:
        ids = [int(i) for i in ids]
        if all(0 <= i < self.vocab_size for i in ids):
            return self.enc.decode(ids, errors="replace")
        # Unknown ids (e.g. a model whose vocabulary is padded past the tokenizer's) become U+FFFD.
        pieces = [self.enc.decode_single_token_bytes(i) if 0 <= i < self.vocab_size else REPLACEMENT for i in ids]
        return b"".join(pieces).decode("utf-8", errors="replace")

    def token_text(self, i: int) -> str:
        """A readable form of one token (for inspecting a vocabulary)."""
        return self.enc.decode_single_token_bytes(i).decode("utf-8", errors="replace")

    def state(self) -> dict:
        return {
            "kind": "bpe", "bpe_version": BPE_VERSION, "pattern": self.pattern,
            "merges": [list(pair) for pair in self.merges], "special_tokens": dict(self.special_tokens),
        }

    @classmethod
    def from_state(cls, state: dict) -> BPETokenizer:
        if not isinstance(state, dict):
            raise DataError("BPE tokenizer is corrupt: its state is not a JSON object; re-train it")
        version = state.get("bpe_version")
        if version != BPE_VERSION:
            raise DataError(f"BPE tokenizer has bpe_version {version!r}, this microgpt reads {BPE_VERSION}; "
                            "re-train it with python -m microgpt.train_tokenizer or upgrade microgpt")
        missing = [k for k in ("pattern", "merges", "special_tokens") if k not in state]
        if missing or not isinstance(state["pattern"], str):
            raise DataError(f"BPE tokenizer is corrupt or truncated (missing {missing or ['pattern']}); re-train it")
        return cls(state["merges"], state["pattern"], state["special_tokens"])

    def __repr__(self) -> str:
        return f"BPETokenizer(vocab_size={self.vocab_size}, merges={len(self.merges)})"




def _checked_merges(merges) -> list:
    if not isinstance(merges, list):
        raise DataError("BPE tokenizer is corrupt: `merges` is not a list of [id, id] pairs; re-train it")
    for n, pair in enumerate(merges):
        ok = (isinstance(pair, (list, tuple)) and len(pair) == 2
              and all(isinstance(i, int) and not isinstance(i, bool) and 0 <= i < N_BYTES + n for i in pair))
        if not ok:
            raise DataError(f"BPE tokenizer is corrupt: merge {n} is {pair!r}, expected two ids below "
                            f"{N_BYTES + n}; re-train it")
    return merges


def _token_bytes(merges: list[tuple[int, int]]) -> list[bytes]:
    token_bytes = [bytes([b]) for b in range(N_BYTES)]
    seen = set(token_bytes)
    for n, (a, b) in enumerate(merges):
        piece = token_bytes[a] + token_bytes[b]
        if piece in seen:  # two ids for one byte string: tiktoken's ranks could not express it
            raise DataError(f"BPE tokenizer is corrupt: merge {n} repeats the token {piece!r}; re-train it")
        seen.add(piece)
        token_bytes.append(piece)
    return token_bytes


def _checked_special_tokens(special_tokens, first_id: int) -> dict[str, int]:
    expected = list(range(first_id, first_id + len(special_tokens))) if isinstance(special_tokens, dict) else None
    if (expected is None or ENDOFTEXT not in special_tokens
            or sorted(v for v in special_tokens.values() if isinstance(v, int)) != expected):
        raise DataError(f"BPE tokenizer is corrupt: special_tokens must map {ENDOFTEXT!r} (and any others) to the ids "
                        f"{first_id}, {first_id + 1}, ... after the merges, got {special_tokens!r:.200}; re-train it")
    return dict(special_tokens)


# --- training -------------------------------------------------------------------------------

def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character map, the alphabet `tokenizers`' ByteLevel works in."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = {}, 0
    for b in range(N_BYTES):
        if b in printable:
            chars[b] = chr(b)
        else:
            chars[b] = chr(N_BYTES + extra)
            extra += 1
    return chars


def train_bpe(
    documents: Iterable[str],
    vocab_size: int,
    pattern: str = "gpt4",
    special_tokens: Sequence[str] = (ENDOFTEXT,),
    min_frequency: int = 0,
    show_progress: bool = True,
) -> BPETokenizer:
    """Learn `vocab_size - 256 - len(special_tokens)` merges from the documents.

    `pattern` is a preset name (gpt2, gpt4, o200k) or a regex. Progress bars show on a terminal. The vocabulary can come out smaller
    when the corpus runs out of pairs to merge (a warning says so).
    """
    from tokenizers import Regex, models, pre_tokenizers, trainers
    from tokenizers import Tokenizer as HFTokenizer

    special_tokens = list(dict.fromkeys([ENDOFTEXT, *special_tokens]))
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < N_BYTES + len(special_tokens):
        raise ConfigError(f"tokenizer.vocab_size must be an integer of at least {N_BYTES + len(special_tokens)} "
                          f"(256 bytes + {len(special_tokens)} special tokens), got {vocab_size!r}")
    if isinstance(min_frequency, bool) or not isinstance(min_frequency, int) or min_frequency < 0:
        raise ConfigError(f"tokenizer.min_frequency must be a non-negative integer, got {min_frequency!r}")
    regex_text = resolve_pattern(pattern)

    hf = HFTokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(regex_text), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - len(special_tokens), min_frequency=min_frequency,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=show_progress and sys.stderr.isatty(),  # off a terminal the bars print only blank lines
    )
    # The presets are known to split alike in both engines (tests/test_bpe.py); a custom regex is checked.
    corpus = _CheckedDocuments(documents, regex_text, check_split=regex_text not in PATTERNS.values())
    hf.train_from_iterator(corpus, trainer=trainer)
    corpus.raise_failure()
    if corpus.n_chars == 0:
        raise DataError("the tokenizer corpus is empty: the configured data.sources contain no text")

    merges = merges_from_hf(hf)
    tokenizer = BPETokenizer(merges, regex_text, {s: N_BYTES + len(merges) + i for i, s in enumerate(special_tokens)})
    if tokenizer.vocab_size < vocab_size:
        log.warning("the corpus only supports %d merges: vocabulary %d instead of %d", len(merges), tokenizer.vocab_size, vocab_size)
    return tokenizer


def merges_from_hf(hf) -> list[tuple[int, int]]:
    """A trained `tokenizers` BPE's merges as pairs of our byte-level ids (see the module docstring)."""
    import json

    model = json.loads(hf.to_str())["model"]
    byte_of = {c: b for b, c in bytes_to_unicode().items()}
    id_of = {bytes([b]): b for b in range(N_BYTES)}
    merges: list[tuple[int, int]] = []
    for merge in model["merges"]:
        left, right = merge.split(" ") if isinstance(merge, str) else merge
        a, b = bytes(byte_of[c] for c in left), bytes(byte_of[c] for c in right)
        piece = a + b
        if piece in id_of:  # `tokenizers` can record a second merge for a token it already has
            continue
        id_of[piece] = N_BYTES + len(merges)
        merges.append((id_of[a], id_of[b]))
    return merges


class _CheckedDocuments:
    """Feeds documents to the Rust trainer, keeping a Python error (a missing file, ...) to re-raise after,
    and (check_split) checking on the first ~100 kB that `tokenizers` splits text like tiktoken will."""

    SAMPLE_CHARS = 100_000

    def __init__(self, documents: Iterable[str], regex_text: str, check_split: bool) -> None:
        self.documents, self.regex_text, self.check_split = documents, regex_text, check_split
        self.n_chars = 0
        self.failure: BaseException | None = None

    def __iter__(self) -> Iterator[str]:
        sample: list[str] = []
        try:
            for doc in self.documents:
                if self.check_split and self.n_chars < self.SAMPLE_CHARS:
                    sample.append(doc[: self.SAMPLE_CHARS])
                self.n_chars += len(doc)
                yield doc
        except Exception as e:  # an exception inside the Rust loop would lose its type and message
            self.failure = e
        if sample:
            _warn_if_split_differs(sample, self.regex_text)

    def raise_failure(self) -> None:
        if self.failure is not None:
            raise self.failure


def _warn_if_split_differs(sample: list[str], regex_text: str) -> None:
    import regex
    from tokenizers import Regex, pre_tokenizers

    splitter = pre_tokenizers.Split(Regex(regex_text), behavior="isolated")
    compiled = regex.compile(regex_text)
    for doc in sample:
        if [p for p, _ in splitter.pre_tokenize_str(doc)] != [m.group() for m in compiled.finditer(doc)]:
            log.warning("the trainer splits text differently from the encoder with this pattern; "
                        "merges may be learned for chunks the encoder never sees (prefer a preset pattern)")
            return
