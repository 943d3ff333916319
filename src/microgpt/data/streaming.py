"""Windows packed on the fly from a document stream, for corpora too large to tokenize up front."""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from microgpt.core.tokenizer import Tokenizer
from microgpt.data.packing import tokenized_chunks
from microgpt.data.sources import part_documents
from microgpt.data.splits import corpus, doc_key, without

log = logging.getLogger(__name__)


def documents_after(sources: list[dict], skip: int, held_out: frozenset[bytes] = frozenset()) -> Iterator[str]:
    """The training stream: every source in order, after the first `skip` documents (validation),
    without any later copy of those (a mixture repeats its sources)."""
    return without(itertools.islice(corpus(sources), skip, None), held_out)


def head_keys(sources: list[dict], skip: int) -> frozenset[bytes]:
    """The keys of the first `skip` documents (validation)."""
    return frozenset(doc_key(d) for d in itertools.islice(corpus(sources), skip))


def pack(chunks: Iterator[np.ndarray], block_size: int) -> Iterator[np.ndarray]:
    """Cut a token stream into `block_size + 1` windows, each starting where the last one's inputs ended."""
    buffer = np.zeros(0, dtype=np.int64)
    for chunk in chunks:
        buffer = np.concatenate([buffer, chunk.astype(np.int64)])
        while len(buffer) > block_size:
            yield buffer[: block_size + 1]
            buffer = buffer[block_size:]


class StreamingWindows(IterableDataset):
    """Each (rank, worker) slot k of n reads only its own part of the sources (`part_documents`:
    files k, k + n, ... when there are at least n files, else a share of the files it is given;
    a Hugging Face dataset's own shards), tokenizes it inside its DataLoader worker and packs it,
    so slots read disjoint parts that together cover the stream once per epoch. Validation
    documents (the first `skip_documents`, or `held_out`'s keys) and their copies never train. The
    stream repeats (`epochs=None`), so ranks never run dry at different times; training is bounded
    by max_steps.

    A slot whose part holds no training document (its files are all validation) falls back to
    every n-th document of the whole stream, with a warning: it then repeats documents of other
    slots rather than leaving its rank without data.

    Resuming: a DataLoader takes its j-th batch from worker j % num_workers. After `start_batches`
    batches, the resumed loader's worker w must therefore produce what the original run's worker
    (start_batches + w) % num_workers would have produced next: it takes that worker's documents
    and skips the batches that worker already made.
    """

    def __init__(
        self,
        sources: list[dict],
        tokenizer: Tokenizer,
        block_size: int,
        batch_size: int,
        skip_documents: int = 0,
        rank: int = 0,
        world_size: int = 1,
        start_batches: int = 0,
        epochs: int | None = None,
        held_out: frozenset[bytes] = frozenset(),
    ) -> None:
        self.sources = sources
        self.tokenizer = tokenizer
        self.block_size = block_size
        self.batch_size = batch_size
        self.skip_documents = skip_documents
        self.rank = rank
        self.world_size = world_size
        self.start_batches = start_batches
        self.epochs = epochs
        self.held_out = held_out

    def slot(self) -> tuple[int, int, int]:
        """(this slot, number of slots, this worker's batches already consumed)."""
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        original_worker, done = (self.start_batches + worker) % workers, (self.start_batches + worker) // workers
        return self.rank * workers + original_worker, self.world_size * workers, done

    def slot_documents(self, slot: int, slots: int) -> Iterator[str]:
        held = self.held_out or (head_keys(self.sources, self.skip_documents) if self.skip_documents else frozenset())

        def own() -> Iterator[str]:
            return without(part_documents(self.sources, slot, slots), held)

        def shared() -> Iterator[str]:  # every slots-th document of the whole stream
            return itertools.islice(documents_after(self.sources, self.skip_documents, held), slot, None, slots)

        read = own
        for _ in itertools.count() if self.epochs is None else range(self.epochs):
            produced = False
            for doc in read():
                produced = True
                yield doc
            if not produced and read is own:
                log.warning("stream reader %d of %d: its part of the sources holds no training document (all "
                            "validation); it reads every %d-th document of the whole stream instead", slot, slots, slots)
                read = shared
                for doc in read():
                    produced = True
                    yield doc
            if not produced:
                return  # fewer documents than slots: this slot has none, rather than spin forever

    def __iter__(self) -> Iterator[torch.Tensor]:
        slot, slots, batches_done = self.slot()
        windows = pack(tokenized_chunks(self.slot_documents(slot, slots), self.tokenizer, batch=64), self.block_size)
        for window in itertools.islice(windows, batches_done * self.batch_size, None):
            yield torch.from_numpy(window)
