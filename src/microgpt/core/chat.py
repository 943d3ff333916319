"""Conversations as tokens: the special tokens a chat model adds to its tokenizer, and the one
template every post-training stage, `generate(messages=...)` and `microgpt.chat` share.

    <|endoftext|> <|system|> ... <|end|> <|user|> ... <|end|> <|assistant|> ... <|end|> ...

Each turn is its role token, the content encoded by the base tokenizer, and the end-of-turn token.
The special tokens take the ids after the base vocabulary, so a pretrained model keeps every id it
learned and its embedding grows by a few rows (`grow_vocabulary`); text that spells a special
token is encoded as ordinary text (a user cannot forge a turn)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch

from microgpt.core.errors import DataError
from microgpt.core.tokenizer import Tokenizer

ROLES = ("system", "user", "assistant")
END_OF_TURN = "<|end|>"
SPECIAL_TOKENS = tuple(f"<|{role}|>" for role in ROLES) + (END_OF_TURN,)
KIND = "chat"


class ChatTokenizer(Tokenizer):
    """A base tokenizer (gpt2, bpe, char, a tokenizer.json) plus the chat template's special tokens."""

    def __init__(self, base: Tokenizer, specials: Sequence[str] = SPECIAL_TOKENS) -> None:
        self.base = base
        self.specials = tuple(specials)
        self.special_ids = {name: base.vocab_size + i for i, name in enumerate(self.specials)}
        self.vocab_size = base.vocab_size + len(self.specials)
        self.eot = base.eot
        self.end_of_turn = self.special_ids[END_OF_TURN]

    def role_id(self, role: str) -> int:
        return self.special_ids[f"<|{role}|>"]

    def encode(self, text: str) -> list[int]:
        return self.base.encode(text)

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return self.base.encode_batch(texts)

    def decode(self, ids: Iterable[int]) -> str:
        names = {i: name for name, i in self.special_ids.items()}
        out, run = [], []
        for i in ids:
            i = int(i)
            if i in names:
                out += [self.base.decode(run), names[i]]
                run = []
            else:
                run.append(i)
        return "".join(out) + self.base.decode(run)

    def state(self) -> dict:
        return {"kind": KIND, "base": self.base.state(), "specials": list(self.specials)}

    @classmethod
    def from_state(cls, state: dict) -> ChatTokenizer:
        """`state` with its `base` already built (tokenizers.tokenizer_from_state builds nested kinds)."""
        return cls(state["base"], state["specials"])

    def __repr__(self) -> str:
        return f"ChatTokenizer({self.base!r} + {len(self.specials)} special tokens)"


def with_chat_tokens(tokenizer: Tokenizer) -> ChatTokenizer:
    """The tokenizer with the chat template's tokens (itself if it has them)."""
    return tokenizer if isinstance(tokenizer, ChatTokenizer) else ChatTokenizer(tokenizer)


def check_messages(messages, where: str, need_assistant: bool = True) -> list[dict]:
    """`messages` as a list of {"role", "content"} dicts, or a DataError naming `where`."""
    if not isinstance(messages, (list, tuple)) or not messages:
        raise DataError(f"{where}: `messages` must be a non-empty list of {{'role': ..., 'content': ...}} turns")
    turns = []
    for i, turn in enumerate(messages):
        role = turn.get("role") if isinstance(turn, dict) else None
        if role not in ROLES:
            raise DataError(f"{where}: turn {i} has role {role!r}; roles are {', '.join(ROLES)}")
        content = turn.get("content")
        if not isinstance(content, str):
            raise DataError(f"{where}: turn {i} ({role}) has no text `content`")
        turns.append({"role": role, "content": content})
    if need_assistant and not any(t["role"] == "assistant" for t in turns):
        raise DataError(f"{where}: the conversation has no assistant turn, so nothing to learn from; "
                        f"add one or drop the record")
    return turns


@dataclass
class Rendered:
    """A conversation's ids and, per id, whether training predicts it (assistant content and the
    end-of-turn that closes it: the model learns to answer and to stop)."""

    ids: list[int]
    trained: list[bool]

    def __len__(self) -> int:
        return len(self.ids)


def render(tokenizer: ChatTokenizer, messages: Sequence[dict], generation_prompt: bool = False) -> Rendered:
    """The template applied to checked `messages`; `generation_prompt`: end with the assistant's role
    token, where generation takes over."""
    ids, trained = [tokenizer.eot], [False]
    for turn in messages:
        content = tokenizer.encode(turn["content"])
        learn = turn["role"] == "assistant"
        ids += [tokenizer.role_id(turn["role"]), *content, tokenizer.end_of_turn]
        trained += [False] + [learn] * (len(content) + 1)
    if generation_prompt:
        ids.append(tokenizer.role_id("assistant"))
        trained.append(False)
    return Rendered(ids, trained)


def grow_vocabulary(embedding: torch.Tensor, used: int, rows: int) -> torch.Tensor:
    """`embedding` (or an untied head's weight) with `rows` rows: rows from `used` on (new tokens, or
    padding rows new tokens now take) start at the mean of the `used` learned rows, which keeps the
    new tokens' logits ordinary instead of random."""
    grown = embedding.new_empty(rows, embedding.size(1))
    keep = min(used, rows)
    grown[:keep] = embedding[:keep]
    grown[keep:] = embedding[:used].mean(dim=0)
    return grown
