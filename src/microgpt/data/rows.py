"""Post-training data as rows: conversations, preference pairs or prompts, made once up front
(these datasets are small next to pretraining corpora) and batched by their stage's collate."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch.utils.data import DataLoader, Dataset

from microgpt.core.tokenizer import Tokenizer
from microgpt.data.packing import StepIndexedSampler
from microgpt.data.text_data import private_generator


class Rows(Dataset):
    def __init__(self, rows: Sequence) -> None:
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int):
        return self.rows[i]


@dataclass
class PostData:
    """What a post-training data builder returns: the tokenizer the rows were encoded with, the
    training and validation rows, and how a list of rows becomes a batch (a dict with `ids`, the
    token windows, among its entries)."""

    tokenizer: Tokenizer
    train: list
    val: list
    collate: Callable[[list], dict]
    notes: list[str] = field(default_factory=list)  # what the builder dropped or cut, for the log


def train_loader(data: PostData, batch_size: int, seed: int, start_micro_batch: int, rank: int, world: int,
                 num_workers: int = 0) -> DataLoader:
    """Shuffled anew each epoch, endless; micro-batch j goes to rank j % world and the position
    follows from the optimizer step (StepIndexedSampler), so a resumed run sees the same batches."""
    sampler = StepIndexedSampler(len(data.train), batch_size, seed=seed, start_micro_batch=start_micro_batch,
                                 rank=rank, world_size=world)
    return DataLoader(Rows(data.train), batch_sampler=sampler, collate_fn=data.collate, num_workers=num_workers,
                      generator=private_generator(seed))


def val_loader(data: PostData, batch_size: int, seed: int, rank: int, world: int) -> DataLoader:
    """Every validation row once, dealt round-robin to the ranks (the same rows at any world size)."""
    indices = list(range(rank, len(data.val), world))
    batches = [indices[i : i + batch_size] for i in range(0, len(indices), batch_size)]
    return DataLoader(Rows(data.val), batch_sampler=batches, collate_fn=data.collate,
                      generator=private_generator(seed))


def pad_rows(sequences: Sequence[Sequence[int]], value: int, width: int | None = None) -> torch.Tensor:
    """(len(sequences), width) long tensor, each sequence left-aligned and padded with `value`."""
    width = width or max(len(s) for s in sequences)
    out = torch.full((len(sequences), width), value, dtype=torch.long)
    for i, s in enumerate(sequences):
        out[i, : len(s)] = torch.as_tensor(list(s), dtype=torch.long)
    return out


def chat_tokenizer(tokenizer: dict | Tokenizer, texts: Callable[[], list[str]]) -> Tokenizer:
    """The run's tokenizer with the chat template's tokens: a ready one (a checkpoint's) as it is, or
    built from its config; `tokenizer=char` learns its characters from `texts()`."""
    from microgpt.core.chat import with_chat_tokens
    from microgpt.core.tokenizers import build_tokenizer

    if not isinstance(tokenizer, Tokenizer):
        tokenizer = build_tokenizer(tokenizer, texts() if tokenizer.get("kind") == "char" else None)
    return with_chat_tokens(tokenizer)
