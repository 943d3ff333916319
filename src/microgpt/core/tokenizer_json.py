"""Hugging Face tokenizers: the `tokenizer.json` a Hub model directory carries (Llama, Qwen, OLMo,
Mistral, ...), as a microgpt Tokenizer (kind "huggingface").

microgpt encodes plain text: no BOS / EOS or other template tokens are added (the file's
post-processor is not applied), and text that spells a special token ("<|endoftext|>") is encoded as
ordinary text, as the other kinds do. `transformers` encodes the same with
`add_special_tokens=False` and `split_special_tokens=True`. `eot`, the id that separates documents
and stops generation, is the model's end-of-text token.

The state carries the file's text unchanged, so a checkpoint holds its tokenizer and an export writes
back the very same tokenizer.json.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path

import tokenizers

from microgpt.core.bpe import bytes_to_unicode
from microgpt.core.errors import ConfigError, DataError
from microgpt.core.tokenizer import ENDOFTEXT, TiktokenTokenizer, Tokenizer, tiktoken_encoding

KIND = "huggingface"
TOKENIZER_JSON = "tokenizer.json"
# Files beside tokenizer.json that name the end-of-text token, in the order they are asked.
MODEL_CONFIG, TOKENIZER_CONFIG, SPECIAL_TOKENS_MAP = "config.json", "tokenizer_config.json", "special_tokens_map.json"
# The usual spellings of end-of-text, for a tokenizer.json that comes alone.
EOT_SPELLINGS = (ENDOFTEXT, "<|end_of_text|>", "</s>", "<eos>", "<|eos|>")
REPLACEMENT = "\ufffd"
GPT2_N_VOCAB = 50257
GPT2_PROBE = ["Hello, world! It's 3.14 o'clock; DON'T   spaces\n\n\ttabs", "naïve 日本語 🙂 <|endoftext|> 1234567"]


class HFTokenizer(Tokenizer):
    """A `tokenizers.Tokenizer` read from a tokenizer.json's text.

    `eot`: an id or a token's text. `vocab_size`: the model's vocabulary when it is larger than the
    tokenizer's (Hub models pad their embedding); the ids past the tokenizer's decode to U+FFFD.
    """

    def __init__(self, json_text: str, eot: int | str, vocab_size: int | None = None, source: str = TOKENIZER_JSON) -> None:
        self._read(json_text, source)
        self._settle(eot, vocab_size, source)

    def _read(self, json_text: str, source: str) -> None:
        try:
            self.hf = tokenizers.Tokenizer.from_str(json_text)
        except Exception as e:  # `tokenizers` reports every malformed file as a bare Exception
            reason = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
            raise DataError(f"{source} is not a tokenizer.json the `tokenizers` library reads ({reason}); "
                            f"re-save it with save_pretrained, or point tokenizer.path at another") from None
        self.json_text = json_text
        self.hf.no_truncation()  # a file's truncation / padding settings would cut or pad our documents
        self.hf.no_padding()
        self.hf.encode_special_tokens = True  # special-token spellings in text are text
        ids = set(self.hf.get_vocab(with_added_tokens=True).values())
        if not ids:
            raise DataError(f"{source} has an empty vocabulary; it is not a usable tokenizer")
        self.n_tokens = max(ids) + 1  # the tokenizer's own ids; vocab_size may pad past them
        self.holes = frozenset(range(self.n_tokens)) - ids if len(ids) != self.n_tokens else frozenset()

    def _settle(self, eot: int | str, vocab_size: int | None, source: str) -> None:
        self.eot = self._token_id(eot, source)
        if vocab_size is not None and (isinstance(vocab_size, bool) or not isinstance(vocab_size, int)):
            raise DataError(f"{source}: vocab_size must be an integer, got {vocab_size!r}")
        self.vocab_size = max(self.n_tokens, vocab_size or 0)

    def _token_id(self, eot: int | str, source: str) -> int:
        token_id = eot if isinstance(eot, int) and not isinstance(eot, bool) else self.hf.token_to_id(str(eot))
        if token_id is None or not 0 <= token_id < self.n_tokens or token_id in self.holes:
            raise ConfigError(f"tokenizer.eot={eot!r} is not a token of {source} ({self.n_tokens} ids); "
                              f"give the text or id of its end-of-text token")
        return token_id

    def encode(self, text: str) -> list[int]:
        return self.hf.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [e.ids for e in self.hf.encode_batch(list(texts), add_special_tokens=False)]

    def decode(self, ids: Iterable[int]) -> str:
        ids = [int(i) for i in ids]
        if all(self._known(i) for i in ids):
            return self.hf.decode(ids, skip_special_tokens=False)
        # `tokenizers` drops unknown ids silently (and refuses negative ones): each becomes U+FFFD.
        pieces, run = [], []
        for i in ids:
            if self._known(i):
                run.append(i)
                continue
            if run:
                pieces.append(self.hf.decode(run, skip_special_tokens=False))
                run = []
            pieces.append(REPLACEMENT)
        if run:
            pieces.append(self.hf.decode(run, skip_special_tokens=False))
        return "".join(pieces)

    def _known(self, i: int) -> bool:
        return 0 <= i < self.n_tokens and i not in self.holes

    def token_text(self, i: int) -> str | None:
        return self.hf.id_to_token(i)

    def state(self) -> dict:
        return {"kind": KIND, "tokenizer_json": self.json_text, "eot": self.eot, "vocab_size": self.vocab_size}

    @classmethod
    def from_state(cls, state: dict) -> HFTokenizer:
        if not isinstance(state, dict) or not isinstance(state.get("tokenizer_json"), str) or "eot" not in state:
            raise DataError("Hugging Face tokenizer state is corrupt (it needs tokenizer_json and eot); re-save the checkpoint")
        return cls(state["tokenizer_json"], state["eot"], state.get("vocab_size"), source="the saved Hugging Face tokenizer")

    def __repr__(self) -> str:
        return f"HFTokenizer(vocab_size={self.vocab_size}, eot={self.hf.id_to_token(self.eot)!r})"


def read_hf_tokenizer(path: Path, json_text: str, eot: int | str | None = None) -> Tokenizer:
    """The tokenizer of a tokenizer.json file; its end-of-text token (unless `eot` names it) and the
    model's vocabulary come from the Hugging Face files beside it. GPT-2's own vocabulary is read as
    tiktoken's GPT-2 encoding (the same ids, and `tokenizer=gpt2` runs match it)."""
    folder = path.parent
    model = read_json_object(folder / MODEL_CONFIG)
    vocab_size = model.get("vocab_size") if isinstance(model.get("vocab_size"), int) else None
    tokenizer = HFTokenizer.__new__(HFTokenizer)  # read once: the end-of-text token is looked up in it
    tokenizer._read(json_text, str(path))
    chosen = eot if eot is not None else end_of_text(tokenizer, folder, model)
    if chosen is None:
        raise DataError(f"cannot tell which token of {path} ends a text: no eos_token_id in {MODEL_CONFIG}, no eos_token in "
                        f"{TOKENIZER_CONFIG}, none of {', '.join(EOT_SPELLINGS)}; set tokenizer.eot=<its text or id>")
    tokenizer._settle(chosen, vocab_size if vocab_size and vocab_size > tokenizer.n_tokens else None, str(path))
    return gpt2_equivalent(tokenizer) or tokenizer


def end_of_text(tokenizer: HFTokenizer, folder: Path, model: dict) -> int | None:
    """config.json's eos_token_id (the first of a list), else the eos_token of tokenizer_config.json or
    special_tokens_map.json, else a usual spelling that is in the vocabulary."""
    ids = model.get("eos_token_id")
    for candidate in ids if isinstance(ids, list) else [ids]:
        if isinstance(candidate, int) and tokenizer._known(candidate):
            return candidate
    for name in (TOKENIZER_CONFIG, SPECIAL_TOKENS_MAP):
        token = read_json_object(folder / name).get("eos_token")
        token = token.get("content") if isinstance(token, dict) else token
        if isinstance(token, str) and tokenizer.hf.token_to_id(token) is not None:
            return tokenizer.hf.token_to_id(token)
    return next((tokenizer.hf.token_to_id(t) for t in EOT_SPELLINGS if tokenizer.hf.token_to_id(t) is not None), None)


def read_json_object(path: Path) -> dict:
    """A JSON object file beside tokenizer.json; {} when it is absent (a broken one is an error)."""
    if not path.is_file():
        return {}
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise DataError(f"{path} is unreadable or not JSON ({e}); fix or remove it") from e
    return payload if isinstance(payload, dict) else {}


def gpt2_equivalent(tokenizer: HFTokenizer) -> TiktokenTokenizer | None:
    """tiktoken's GPT-2 when `tokenizer` is GPT-2's byte-level BPE (the Hub's gpt2, or microgpt's export)."""
    if tokenizer.n_tokens != GPT2_N_VOCAB or tokenizer.vocab_size != GPT2_N_VOCAB or tokenizer.eot != GPT2_N_VOCAB - 1:
        return None
    enc = tiktoken_encoding("gpt2")
    ranks = getattr(enc, "_mergeable_ranks", None)
    if ranks is None:
        return None
    spelling = byte_level_spelling(ranks)
    expected = {spelling[piece]: i for piece, i in ranks.items()}
    expected[ENDOFTEXT] = GPT2_N_VOCAB - 1
    if tokenizer.hf.get_vocab(with_added_tokens=True) != expected:
        return None
    gpt2 = TiktokenTokenizer("gpt2")
    if gpt2.encode_batch(GPT2_PROBE) != tokenizer.encode_batch(GPT2_PROBE):
        return None
    return gpt2


def byte_level_spelling(pieces: Iterable[bytes]) -> dict[bytes, str]:
    """Each byte string as a byte-level BPE's tokenizer.json spells it (GPT-2's printable alphabet)."""
    table = bytes_to_unicode()  # ordinal -> character; latin-1 decodes byte b to chr(b)
    return {piece: piece.decode("latin-1").translate(table) for piece in pieces}
