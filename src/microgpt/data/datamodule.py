"""The LightningDataModule: documents from the configured sources, tokenized and packed."""

from __future__ import annotations

import itertools
import logging

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader

from microgpt.data.packing import PackedWindows, StepIndexedSampler, tokenize_documents
from microgpt.data.sources import documents_from
from microgpt.errors import ConfigError, DataError, require_positive_int
from microgpt.tokenizer import Tokenizer, build_tokenizer

log = logging.getLogger(__name__)


class TextDataModule(L.LightningDataModule):
    """Train and validation windows from `sources`; validation is the last `val_fraction` of tokens
    (or `val_sources` when given), so the split is the same in every run."""

    def __init__(
        self,
        sources: list[dict],
        tokenizer: dict,
        block_size: int,
        batch_size: int,
        val_fraction: float = 0.1,
        val_sources: list[dict] | None = None,
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        require_positive_int("data.block_size", block_size)
        require_positive_int("data.batch_size", batch_size)
        if not val_sources and not (isinstance(val_fraction, float) and 0.0 < val_fraction < 1.0):
            raise ConfigError(f"data.val_fraction must be in (0, 1), got {val_fraction}")
        self.sources = list(sources or [])
        self.val_sources = list(val_sources or [])
        if not self.sources:
            raise ConfigError("data.sources is empty: give at least one source (text, files, ...)")
        self.tokenizer_cfg = dict(tokenizer)
        self.block_size = block_size
        self.batch_size = batch_size
        self.val_fraction = val_fraction
        self.num_workers = num_workers
        self.seed = seed
        self.tokenizer: Tokenizer | None = None
        self.train_tokens: np.ndarray | None = None
        self.val_tokens: np.ndarray | None = None

    def load(self) -> Tokenizer:
        """Read and tokenize everything (idempotent); returns the tokenizer, whose vocabulary the model needs."""
        if self.tokenizer is not None:
            return self.tokenizer
        train_docs = list(itertools.chain.from_iterable(documents_from(s) for s in self.sources))
        val_docs = list(itertools.chain.from_iterable(documents_from(s) for s in self.val_sources))
        if not any(d.strip() for d in train_docs):
            raise DataError("the training corpus is empty: the configured data.sources contain no text")
        self.tokenizer = build_tokenizer(self.tokenizer_cfg, training_texts=train_docs + val_docs)
        tokens = tokenize_documents(train_docs, self.tokenizer)
        if val_docs:
            self.train_tokens, self.val_tokens = tokens, tokenize_documents(val_docs, self.tokenizer)
        else:
            n_val = int(len(tokens) * self.val_fraction)
            self.train_tokens, self.val_tokens = tokens[: len(tokens) - n_val], tokens[len(tokens) - n_val :]
        need = self.block_size + 1
        for name, part in (("training", self.train_tokens), ("validation", self.val_tokens)):
            if len(part) < need:
                raise DataError(
                    f"the {name} split has {len(part)} tokens, fewer than one block of "
                    f"data.block_size + 1 = {need}; add text or lower data.block_size"
                )
        log.info("data: %d train tokens, %d val tokens, vocabulary %d",
                 len(self.train_tokens), len(self.val_tokens), self.tokenizer.vocab_size)
        return self.tokenizer

    def setup(self, stage: str | None = None) -> None:
        self.load()

    def _rank_and_world(self) -> tuple[int, int]:
        trainer = self.trainer
        return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)

    def train_dataloader(self) -> DataLoader:
        dataset = PackedWindows(self.train_tokens, self.block_size)
        rank, world = self._rank_and_world()
        steps_done = self.trainer.global_step if self.trainer is not None else 0
        accumulate = self.trainer.accumulate_grad_batches if self.trainer is not None else 1
        sampler = StepIndexedSampler(
            len(dataset), self.batch_size, seed=self.seed,
            start_micro_batch=steps_done * accumulate, rank=rank, world_size=world,
        )
        return DataLoader(dataset, batch_sampler=sampler, num_workers=self.num_workers,
                          pin_memory=torch.cuda.is_available(), persistent_workers=self.num_workers > 0,
                          generator=private_generator(self.seed))

    def val_dataloader(self) -> DataLoader:
        dataset = PackedWindows(self.val_tokens, self.block_size)
        rank, world = self._rank_and_world()
        indices = list(range(rank, len(dataset), world))
        batches = [indices[i : i + self.batch_size] for i in range(0, len(indices), self.batch_size)]
        return DataLoader(dataset, batch_sampler=batches, num_workers=0, generator=private_generator(self.seed))

    def state_dict(self) -> dict:
        # The position itself is derived from the step; these let a resume detect changed data.
        return {"train_tokens": int(len(self.train_tokens)) if self.train_tokens is not None else 0,
                "seed": self.seed, "block_size": self.block_size}

    def load_state_dict(self, state: dict) -> None:
        if self.train_tokens is not None and state.get("train_tokens") not in (None, len(self.train_tokens)):
            log.warning("resuming on different data (%s train tokens now, %s in the checkpoint): "
                        "the batch order will differ from the original run",
                        len(self.train_tokens), state.get("train_tokens"))


def private_generator(seed: int) -> torch.Generator:
    """DataLoaders draw a seed from the global RNG each time they start iterating unless given their
    own generator; that draw would shift dropout's random stream between a run and its resume."""
    return torch.Generator().manual_seed(seed)
