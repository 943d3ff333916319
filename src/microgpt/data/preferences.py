"""stage=dpo's data: preference pairs, a prompt with a chosen and a rejected reply, as the
formats people have them (`prompt` / `chosen` / `rejected` strings, or chat-formatted: the prompt
a list of turns, or chosen / rejected whole conversations that share the prompt's turns)."""

from __future__ import annotations

import functools

import torch

from microgpt.core.chat import ChatTokenizer, Rendered, check_messages, render
from microgpt.core.errors import DataError
from microgpt.core.tokenizer import Tokenizer
from microgpt.data.chat_data import fit_to_window, split_rows
from microgpt.data.chat_records import read_records, turns_of
from microgpt.data.rows import PostData, chat_tokenizer, pad_rows


def pair_of(record: dict, where: str) -> tuple[list[dict], list[dict], list[dict]]:
    """(prompt turns, chosen reply turns, rejected reply turns) of one record."""
    if not isinstance(record, dict) or record.get("chosen") is None or record.get("rejected") is None:
        fields = sorted(record) if isinstance(record, dict) else type(record).__name__
        raise DataError(f"{where} has fields {fields}; a preference pair needs `chosen` and `rejected` (and `prompt` "
                        f"unless they are whole conversations)")
    chosen, rejected = record["chosen"], record["rejected"]
    if record.get("prompt") is None:  # whole conversations: the prompt is the turns before the last
        chosen = check_messages(chosen, f"{where} (chosen)") if not isinstance(chosen, str) else chosen
        rejected = check_messages(rejected, f"{where} (rejected)") if not isinstance(rejected, str) else rejected
        if isinstance(chosen, str) or isinstance(rejected, str) or chosen[:-1] != rejected[:-1]:
            raise DataError(f"{where}: with no `prompt`, chosen and rejected must be conversations that differ only in "
                            f"their last (assistant) turn")
        return chosen[:-1], chosen[-1:], rejected[-1:]
    prompt = turns_of(record["prompt"], "user", where)
    replies = [turns_of(r, "assistant", where) for r in (chosen, rejected)]
    for name, reply in zip(("chosen", "rejected"), replies):
        if not any(t["role"] == "assistant" for t in reply):
            raise DataError(f"{where}: its {name} reply has no assistant turn")
    return prompt, *replies


def scored(tokenizer: ChatTokenizer, prompt: list[dict], reply: list[dict]) -> Rendered:
    """The conversation with only the reply's tokens marked: DPO compares the replies' log-probabilities."""
    full = render(tokenizer, prompt + reply)
    start = len(render(tokenizer, prompt))
    return Rendered(full.ids, [False] * start + full.trained[start:])


def collate_pairs(rows: list[tuple[Rendered, Rendered]], pad_id: int) -> dict[str, torch.Tensor]:
    """One batch of 2B rows: the B chosen conversations, then the B rejected ones."""
    both = [r for r, _ in rows] + [r for _, r in rows]
    width = max(len(r) for r in both)
    return {"ids": pad_rows([r.ids for r in both], pad_id, width),
            "trained": pad_rows([r.trained for r in both], 0, width).bool()}


def preference_data(settings: dict, tokenizer: dict | Tokenizer, seed: int, block_size: int) -> PostData:
    """data.kind=preferences: the pairs of `path` (and `val_path`)."""
    def pairs(key: str) -> list:
        return [pair_of(record, where) for where, record in read_records(settings, key)]

    train = pairs("path")
    val = pairs("val_path") if settings.get("val_path") else None
    everything = train + (val or [])
    tok: ChatTokenizer = chat_tokenizer(tokenizer, lambda: [t["content"] for pair in everything for turns in pair
                                                            for t in turns])
    if val is None:
        train, val = split_rows(train, settings, seed)
    width, overlong, splits, long = block_size + 1, settings.get("overlong", "truncate"), [], 0
    for items in (train, val):
        rows = []
        for prompt, chosen, rejected in items:
            fitted, n = fit_to_window([scored(tok, prompt, chosen), scored(tok, prompt, rejected)], width, overlong)
            long += n > 0
            if len(fitted) == 2:  # both replies keep a token to score
                rows.append(tuple(fitted))
        splits.append(rows)
    if not splits[0] or not splits[1]:
        raise DataError(f"no preference pair fits the context of {block_size} tokens: raise model.block_size")
    notes = [f"{long} of {len(everything)} preference pairs are longer than the context ({width} tokens): "
             f"{'truncated to it' if overlong == 'truncate' else 'dropped'} (data.overlong=truncate | drop)"] if long else []
    return PostData(tok, splits[0], splits[1], functools.partial(collate_pairs, pad_id=tok.eot), notes)
