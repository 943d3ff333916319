"""stage=sft's data: conversations rendered with the chat template, loss on the assistant's tokens
only, packed several to a window (attention kept inside each) or one per row."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from microgpt.core.chat import ChatTokenizer, Rendered, render
from microgpt.core.errors import ConfigError, DataError
from microgpt.core.tokenizer import Tokenizer
from microgpt.data.chat_records import conversation, read_records
from microgpt.data.rows import PostData, chat_tokenizer, pad_rows

OVERLONG = ("truncate", "drop")


@dataclass
class Window:
    """One training row: token ids, which of them are targets, and each token's conversation."""

    ids: list[int]
    trained: list[bool]
    documents: list[int]


def conversations(settings: dict, path_key: str = "path") -> list[tuple[str, list[dict]]]:
    return [(where, conversation(record, where, settings.get("system")))
            for where, record in read_records(settings, path_key)]


def fit_to_window(rendered: list[Rendered], width: int, overlong: str) -> tuple[list[Rendered], int]:
    """Conversations of at most `width` tokens, and how many were longer: those are truncated
    (keeping their start) or dropped. A truncated conversation left with no assistant token is dropped."""
    if overlong not in OVERLONG:
        raise ConfigError(f"data.overlong={overlong!r}; choose truncate (cut to the context) or drop")
    kept, long = [], 0
    for r in rendered:
        if len(r) > width:
            long += 1
            if overlong == "drop":
                continue
            r = Rendered(r.ids[:width], r.trained[:width])
            if not any(r.trained[1:]):
                continue
        kept.append(r)
    return kept, long


def packed(rendered: Sequence[Rendered], width: int) -> list[Window]:
    """Whole conversations, in order, filling windows of `width` tokens; the rest of a window is padding
    (no targets, its own document)."""
    windows, current = [], Window([], [], [])
    for r in rendered:
        if current.ids and len(current.ids) + len(r) > width:
            windows.append(current)
            current = Window([], [], [])
        doc = current.documents[-1] + 1 if current.documents else 0
        current.ids += r.ids
        current.trained += r.trained
        current.documents += [doc] * len(r)
    if current.ids:
        windows.append(current)
    return windows


def collate_windows(rows: list[Window], pad_id: int, pack: bool) -> dict[str, torch.Tensor]:
    width = max(len(r.ids) for r in rows)
    batch = {"ids": pad_rows([r.ids for r in rows], pad_id, width),
             "trained": pad_rows([r.trained for r in rows], 0, width).bool()}
    if pack:
        batch["documents"] = pad_rows([r.documents for r in rows], -1, width)
    return batch


def split_rows(items: list, settings: dict, seed: int) -> tuple[list, list]:
    """(train, validation): a separate `val_path`, else a seeded `val_fraction` of the items (at least one)."""
    fraction = float(settings.get("val_fraction") or 0.0)
    if not 0.0 < fraction < 1.0:
        raise ConfigError(f"data.val_fraction={fraction} must be between 0 and 1 (or give data.val_path)")
    if len(items) < 2:
        raise DataError(f"{len(items)} usable conversation(s): too few to hold some out for validation; add records "
                        f"or give data.val_path")
    order = torch.randperm(len(items), generator=torch.Generator().manual_seed(seed)).tolist()
    n_val = max(1, round(fraction * len(items)))
    return [items[i] for i in order[n_val:]], [items[i] for i in order[:n_val]]


def sft_data(settings: dict, tokenizer: dict | Tokenizer, seed: int, block_size: int) -> PostData:
    """data.kind=chat: the conversations of `path` (and `val_path`) as SFT rows."""
    train = conversations(settings)
    val = conversations(settings, "val_path") if settings.get("val_path") else None
    everything = train + (val or [])
    tok: ChatTokenizer = chat_tokenizer(tokenizer, lambda: [t["content"] for _, turns in everything for t in turns])
    if val is None:
        train, val = split_rows(train, settings, seed)
    width, overlong, pack = block_size + 1, settings.get("overlong", "truncate"), bool(settings.get("pack", True))
    splits, long = [], 0
    for items in (train, val):
        rendered, n = fit_to_window([render(tok, turns) for _, turns in items], width, overlong)
        splits.append(packed(rendered, width) if pack else [Window(r.ids, r.trained, [0] * len(r)) for r in rendered])
        long += n
    if not splits[0] or not splits[1]:
        raise DataError(f"no conversation fits the context of {block_size} tokens: raise model.block_size, or set "
                        f"data.overlong=truncate")
    notes = [f"{long} of {len(everything)} conversations are longer than the context ({width} tokens): "
             f"{'truncated to it' if overlong == 'truncate' else 'dropped'} (data.overlong=truncate | drop)"] if long else []
    return PostData(tok, splits[0], splits[1], functools.partial(collate_windows, pad_id=tok.eot, pack=pack), notes)
