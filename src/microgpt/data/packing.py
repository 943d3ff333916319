"""Tokens -> fixed `block_size + 1` windows, and a sampler whose position is a function of the step."""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from microgpt.core.tokenizer import Tokenizer
from microgpt.data.shards import token_dtype

__all__ = ["PackedWindows", "StepIndexedSampler", "token_dtype", "tokenize_documents", "tokenized_chunks"]


def tokenized_chunks(documents: Iterable[str], tokenizer: Tokenizer, batch: int = 256) -> Iterator[np.ndarray]:
    """Each document's ids preceded by the tokenizer's EOT id, encoded `batch` documents at a time."""
    dtype = token_dtype(tokenizer)
    pending: list[str] = []
    for doc in itertools.chain(documents, [None]):
        if doc is not None:
            pending.append(doc)
        if pending and (doc is None or len(pending) >= batch):
            for ids in tokenizer.encode_batch(pending):
                chunk = np.empty(len(ids) + 1, dtype=dtype)
                chunk[0] = tokenizer.eot
                chunk[1:] = ids
                yield chunk
            pending.clear()


def tokenize_documents(documents: Iterable[str], tokenizer: Tokenizer, batch: int = 256) -> np.ndarray:
    """All documents as one id stream (see `tokenized_chunks`)."""
    chunks = list(tokenized_chunks(documents, tokenizer, batch))
    return np.concatenate(chunks) if chunks else np.zeros(0, dtype=token_dtype(tokenizer))


class PackedWindows(Dataset):
    """Non-overlapping windows of `block_size + 1` tokens (inputs and shifted targets in one row)
    over one or more token arrays (in memory or memory-mapped shards); windows never cross arrays."""

    def __init__(self, tokens: np.ndarray | Sequence[np.ndarray], block_size: int) -> None:
        self.arrays = [tokens] if isinstance(tokens, np.ndarray) else list(tokens)
        self.block_size = block_size
        counts = [max(0, (len(a) - 1) // block_size) for a in self.arrays]
        self.offsets = np.cumsum([0, *counts])
        self.n = int(self.offsets[-1])

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> torch.Tensor:
        if not 0 <= i < self.n:
            raise IndexError(i)
        array = int(np.searchsorted(self.offsets, i, side="right")) - 1
        start = (i - int(self.offsets[array])) * self.block_size
        window = self.arrays[array][start : start + self.block_size + 1]
        # Stored narrow (uint16) to save memory; embeddings index with int64.
        return torch.from_numpy(window.astype(np.int64))


class StepIndexedSampler(Sampler[list[int]]):
    """An endless stream of micro-batches of window indices, shuffled anew each epoch.

    The global stream is the concatenation of per-epoch permutations (seeded by `seed + epoch`),
    cut into micro-batches; micro-batch j goes to rank j % world_size. Starting at
    `start_micro_batch` (= optimizer steps done x gradient accumulation) reproduces exactly the
    batches a run that was never interrupted would see next, so resuming needs only the step.
    """

    def __init__(
        self,
        num_windows: int,
        batch_size: int,
        seed: int,
        start_micro_batch: int = 0,
        rank: int = 0,
        world_size: int = 1,
        shuffle: bool = True,
    ) -> None:
        self.num_windows = num_windows
        self.batch_size = batch_size
        self.seed = seed
        self.start = start_micro_batch
        self.rank = rank
        self.world_size = world_size
        self.shuffle = shuffle
        self._epoch = -1
        self._order: torch.Tensor | None = None

    def _order_of(self, epoch: int) -> torch.Tensor:
        if epoch != self._epoch:
            if self.shuffle:
                g = torch.Generator().manual_seed(self.seed + epoch)
                self._order = torch.randperm(self.num_windows, generator=g)
            else:
                self._order = torch.arange(self.num_windows)
            self._epoch = epoch
        return self._order  # type: ignore[return-value]

    def micro_batch(self, j: int) -> list[int]:
        """Window indices of global micro-batch j."""
        first = j * self.batch_size
        out = []
        for pos in range(first, first + self.batch_size):
            epoch, within = divmod(pos, self.num_windows)
            out.append(int(self._order_of(epoch)[within]))
        return out

    def __iter__(self) -> Iterator[list[int]]:
        local = self.start
        while True:
            yield self.micro_batch(local * self.world_size + self.rank)
            local += 1
