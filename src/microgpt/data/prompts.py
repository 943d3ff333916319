"""stage=grpo's data: prompts with a checkable answer. Either generated arithmetic problems
(`source: arithmetic`) or records of a local file or Hugging Face dataset with a prompt (a string
or a list of chat turns) and a reference answer (`source: records`, e.g. GSM8K's question /
answer). Each row is the prompt rendered up to the assistant's turn, where sampling takes over."""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from microgpt.core.chat import ChatTokenizer, render
from microgpt.core.errors import ConfigError, DataError
from microgpt.core.tokenizer import Tokenizer
from microgpt.data.arithmetic import problems
from microgpt.data.chat_records import read_records, turns_of
from microgpt.data.rows import PostData, chat_tokenizer, pad_rows

SOURCES = ("arithmetic", "records")


@dataclass(frozen=True)
class Prompt:
    """A chat to answer, and what a right answer is (the reward function decides what matches)."""

    where: str  # "problem '23+58='" or "<path> record 12", for messages
    turns: tuple  # the chat turns before the assistant's reply
    answer: str


@dataclass(frozen=True)
class PromptRow:
    ids: tuple[int, ...]  # rendered with the generation prompt: ends with the assistant's role token
    answer: str
    where: str


def arithmetic_prompts(settings: dict) -> tuple[list[Prompt], list[Prompt]]:
    """Training problems drawn with `seed`; validation problems from the fixed held-out set."""
    digits, operators = settings.get("digits", 2), list(settings.get("operators") or ["+"])
    train = problems(int(settings["n_train"]), digits, operators, seed=int(settings.get("seed", 0)))
    val = problems(int(settings["n_val"]), digits, operators, seed=int(settings.get("val_seed", 0)), held_out=True)
    as_prompts = lambda found: [Prompt(f"problem {p.question!r}", tuple(p.messages()), p.answer) for p in found]  # noqa: E731
    return as_prompts(train), as_prompts(val)


def record_prompt(where: str, record, prompt_field: str, answer_field: str) -> Prompt:
    if not isinstance(record, dict) or record.get(prompt_field) is None or record.get(answer_field) is None:
        fields = sorted(record) if isinstance(record, dict) else type(record).__name__
        raise DataError(f"{where} has fields {fields}, not the prompt field {prompt_field!r} and the answer field "
                        f"{answer_field!r}; set data.prompt_field / data.answer_field to its columns")
    answer = record[answer_field]
    if not isinstance(answer, (str, int, float)) or isinstance(answer, bool):
        raise DataError(f"{where}: the answer field {answer_field!r} holds {type(answer).__name__}, not text or a number")
    return Prompt(where, tuple(turns_of(record[prompt_field], "user", where)), str(answer))


def record_prompts(settings: dict) -> tuple[list[Prompt], list[Prompt]]:
    """`path`'s records; validation from `val_path` (its `val_split`), else the last `n_val` of `path`'s."""
    fields = settings.get("prompt_field", "prompt"), settings.get("answer_field", "answer")

    def read(key: str, split: str | None) -> list[Prompt]:
        return [record_prompt(where, r, *fields) for where, r in read_records({**settings, "split": split}, key)]

    train = read("path", settings.get("split"))
    n_val = int(settings.get("n_val") or 0)
    if settings.get("val_path"):
        val = read("val_path", settings.get("val_split") or settings.get("split"))[: n_val or None]
    elif 0 < n_val < len(train):
        train, val = train[:-n_val], train[-n_val:]
    else:
        raise ConfigError(f"data.n_val={n_val} with {len(train)} records: hold out between 1 and {len(train) - 1} "
                          f"of them, or give data.val_path")
    limit = settings.get("n_train")
    return train[: int(limit)] if limit else train, val


def encoded(tok: ChatTokenizer, found: list[Prompt], limit: float) -> tuple[list[PromptRow], int]:
    """Rows of the prompts of at most `limit` tokens, and how many were longer (dropped)."""
    rows = []
    for p in found:
        try:
            ids = render(tok, p.turns, generation_prompt=True).ids
        except DataError as e:  # e.g. a character the checkpoint's character tokenizer never saw
            raise DataError(f"{p.where}: {e}") from None
        if len(ids) <= limit:
            rows.append(PromptRow(tuple(ids), p.answer, p.where))
    return rows, len(found) - len(rows)


def collate_prompts(rows: list[PromptRow], pad_id: int) -> dict:
    """Prompts left-padded to one width (generation continues every row at the same column):
    `ids` (B, P), `pad` (B,) the padding of each row, `answers` and `where` per row."""
    flipped = pad_rows([r.ids[::-1] for r in rows], pad_id)  # right-padded reversals, flipped: left padding
    width = flipped.size(1)
    return {"ids": flipped.flip(1), "pad": torch.tensor([width - len(r.ids) for r in rows], dtype=torch.long),
            "answers": [r.answer for r in rows], "where": [r.where for r in rows]}


def prompt_data(settings: dict, tokenizer: dict | Tokenizer, seed: int, block_size: int) -> PostData:
    """data.kind=prompts. Prompts longer than `max_prompt_tokens` (default: half the context, the
    rest is room for the completion) are dropped with a note."""
    source = settings.get("source", "arithmetic")
    if source not in SOURCES:
        raise ConfigError(f"data.source={source!r}: choose arithmetic (generated problems) or records (data.path)")
    train, val = arithmetic_prompts(settings) if source == "arithmetic" else record_prompts(settings)

    def texts() -> list[str]:
        return [t["content"] for p in train + val for t in p.turns] + [p.answer for p in train + val]

    tok = chat_tokenizer(tokenizer, texts)
    limit = int(settings.get("max_prompt_tokens") or block_size // 2)
    (train_rows, long_train), (val_rows, long_val) = encoded(tok, train, limit), encoded(tok, val, limit)
    notes = [f"dropped {long_train + long_val} prompts longer than data.max_prompt_tokens={limit} tokens"] \
        if long_train + long_val else []
    if not train_rows or not val_rows:
        raise DataError(f"no {'training' if not train_rows else 'validation'} prompt fits in {limit} tokens; raise "
                        f"data.max_prompt_tokens or model.block_size")
    return PostData(tok, train_rows, val_rows, functools.partial(collate_prompts, pad_id=tok.eot), notes)
