"""Training and validation windows from the configured sources, tokenized and packed; the
LightningDataModule (microgpt.lightning.datamodule) adds only where the trainer says it is."""

from __future__ import annotations

import inspect
import logging

import numpy as np
import torch
from omegaconf import OmegaConf
from torch.utils.data import DataLoader

from microgpt.core.errors import ConfigError, DataError, require_positive_int
from microgpt.core.tokenizer import Tokenizer
from microgpt.core.tokenizers import build_tokenizer
from microgpt.data.packing import PackedWindows, StepIndexedSampler, tokenize_documents
from microgpt.data.shards import TokenShards
from microgpt.data.splits import corpus, doc_key, head_of, require_fraction, split_tokens
from microgpt.data.streaming import StreamingWindows

log = logging.getLogger(__name__)


MODES = ("memory", "stream", "shards")


class TextData:
    """Training and validation windows, in one of three modes:

    - `memory` (default): every source is read and tokenized up front; validation is the last
      `val_fraction` of the tokens (or `val_sources`), and no copy of a validation document
      trains. Random windows, reshuffled each epoch.
    - `stream`: documents are read, tokenized and packed on the fly in DataLoader workers, each
      rank and worker reading a disjoint part; validation is the first `val_documents` documents
      (or `val_sources`), whose later copies training skips. For corpora too large to tokenize up
      front; a corpus too small to give every reader a document is read whole, split as in memory.
    - `shards`: token shards written by `python -m microgpt.prepare`, memory-mapped; random windows.

    In every mode the data position follows from the optimizer step, so a resumed run sees
    exactly the batches an uninterrupted run would have.
    """

    def __init__(
        self,
        sources: list[dict] | None,
        tokenizer: dict | Tokenizer | None,
        block_size: int,
        batch_size: int,
        val_fraction: float = 0.1,
        val_sources: list[dict] | None = None,
        num_workers: int = 0,
        seed: int = 0,
        mode: str = "memory",
        val_documents: int = 100,
        shards_dir: str | None = None,
        val_windows: int | None = None,
    ) -> None:
        require_positive_int("data.block_size", block_size)
        require_positive_int("data.batch_size", batch_size)
        if mode not in MODES:
            raise ConfigError(f"data.mode must be one of {MODES}, got {mode!r}")
        if mode == "memory" and not val_sources:
            require_fraction(val_fraction)
        if mode == "shards" and not shards_dir:
            raise ConfigError("data.mode=shards needs data.shards_dir (a directory written by python -m microgpt.prepare)")
        self.sources = list(sources or [])
        self.val_sources = list(val_sources or [])
        if not self.sources and mode != "shards":
            raise ConfigError("data.sources is empty: give at least one source (text, files, url, hf, mixture)")
        # A config to build from, or a ready tokenizer (evaluating a checkpoint reuses its own).
        self.tokenizer_cfg = tokenizer if isinstance(tokenizer, Tokenizer) else dict(tokenizer or {})
        self.block_size = block_size
        self.batch_size = batch_size
        self.val_fraction = val_fraction
        self.num_workers = num_workers
        self.seed = seed
        self.mode = mode
        self.val_documents = val_documents
        self.shards_dir = shards_dir
        self.val_windows = val_windows  # None: every validation window
        self.tokenizer: Tokenizer | None = None
        self.train_tokens: np.ndarray | list[np.ndarray] | None = None  # None when streaming
        self.val_tokens: np.ndarray | list[np.ndarray] | None = None
        self.held_out: frozenset[bytes] = frozenset()  # keys of the validation documents (stream mode)
        self.readers = 1  # stream mode: the ranks x workers the held-out documents were counted for

    def load(self) -> Tokenizer:
        """Read (and, except when streaming, tokenize) the data; returns the tokenizer, whose
        vocabulary the model needs. Idempotent."""
        if self.tokenizer is not None:
            return self.tokenizer
        if self.mode == "shards":
            self._load_shards()
        elif self.mode == "stream":
            self._load_stream()
        else:
            self._load_memory()
        self._check_sizes()
        return self.tokenizer

    def _build_tokenizer(self, texts: list[str] | None) -> Tokenizer:
        if isinstance(self.tokenizer_cfg, Tokenizer):
            return self.tokenizer_cfg
        return build_tokenizer(self.tokenizer_cfg, training_texts=texts)

    def _load_memory(self) -> None:
        self._split_in_memory(list(corpus(self.sources)))

    def _split_in_memory(self, train_docs: list[str]) -> None:
        """Everything tokenized up front; validation is `val_sources`, else the last `val_fraction`
        of the tokens (see `split_tokens`: no validation document is ever trained on)."""
        val_docs = list(corpus(self.val_sources))
        if not any(d.strip() for d in train_docs):
            raise DataError("the training corpus is empty: the configured data.sources contain no text")
        self.tokenizer = self._build_tokenizer(train_docs + val_docs)
        if val_docs:  # the user's choice: used as given
            self.train_tokens = tokenize_documents(train_docs, self.tokenizer)
            self.val_tokens = tokenize_documents(val_docs, self.tokenizer)
        else:
            self.train_tokens, self.val_tokens = split_tokens(train_docs, self.tokenizer, self.val_fraction)

    def _load_stream(self) -> None:
        if not isinstance(self.tokenizer_cfg, Tokenizer) and self.tokenizer_cfg.get("kind") == "char" \
                and not self.tokenizer_cfg.get("path"):
            raise ConfigError("a character tokenizer learns its vocabulary from the whole corpus, which streaming "
                              "never holds: use data.mode=memory, or tokenizer=gpt2 / a saved tokenizer.path")
        self._hold_out_stream(self._readers())

    def _readers(self) -> int:
        return self._rank_and_world()[1] * max(1, self.num_workers)

    def _hold_out_stream(self, readers: int) -> None:
        """Every reader (rank x DataLoader worker) needs a training document of its own. A corpus
        with fewer than that beyond the validation documents is small: it is read whole and split
        by tokens, as in memory mode, rather than leaving a reader with nothing."""
        self.readers = readers
        held = 0 if self.val_sources else self.val_documents
        head, _, whole = head_of(self.sources, held + readers)
        if whole:
            log.info("stream: the corpus has only %d documents (data.val_documents=%d, %d readers): read whole, "
                     "validation is %s", len(head), held, readers,
                     "data.val_sources" if self.val_sources else f"the last {self.val_fraction:.0%} of its tokens")
            self._split_in_memory(head)
            return
        self.tokenizer = self._build_tokenizer(None)
        if self.val_sources:
            self.val_tokens = tokenize_documents(corpus(self.val_sources), self.tokenizer)
        else:
            self.held_out = frozenset(doc_key(d) for d in head[:held])
            self.val_tokens = tokenize_documents(head[:held], self.tokenizer)

    def check_readers(self) -> None:
        """Once the trainer says how many ranks there are (data is loaded before it starts): a stream
        that now has more readers than documents is read whole instead."""
        if self.mode == "stream" and self.train_tokens is None and self._readers() > self.readers:
            self._hold_out_stream(self._readers())
            self._check_sizes()

    def _load_shards(self) -> None:
        shards = TokenShards(self.shards_dir)
        self.tokenizer = shards.tokenizer
        wanted = self._configured_tokenizer()
        if wanted is None:
            log.info("shards: using their own tokenizer (the %s), the one they were prepared with", describe(shards.tokenizer))
        elif wanted.state() != shards.tokenizer.state():
            raise ConfigError(f"the shards in {self.shards_dir} were tokenized with the {describe(shards.tokenizer)}, not with "
                              f"the configured {describe(wanted)}; prepare them again with this tokenizer "
                              f"(python -m microgpt.prepare out=...), or configure the shards' tokenizer")
        self.train_tokens, self.val_tokens = shards.arrays("train"), shards.arrays("val")

    def _configured_tokenizer(self) -> Tokenizer | None:
        """The tokenizer the config pins down (a ready one, a file, a named encoding); None for
        one learned from the corpus (tokenizer=char without a path), which shards bring their own of."""
        wanted = self.tokenizer_cfg
        if isinstance(wanted, Tokenizer):
            return wanted
        if wanted.get("path") or (wanted.get("kind") and wanted.get("kind") != "char"):
            return build_tokenizer(wanted)
        return None

    def _check_sizes(self) -> None:
        need = self.block_size + 1
        parts = [("validation", self.val_tokens)]
        if self.train_tokens is not None:
            parts.insert(0, ("training", self.train_tokens))
        for name, part in parts:
            if PackedWindows(part, self.block_size).n == 0:
                size = len(part) if isinstance(part, np.ndarray) else sum(len(a) for a in part)
                raise DataError(
                    f"the {name} split has {size} tokens, fewer than one block of "
                    f"data.block_size + 1 = {need}; add text or lower data.block_size"
                )
        log.info("data (%s): %s train tokens, %d val tokens, vocabulary %d", self.mode,
                 "streamed" if self.train_tokens is None else f"{count_tokens(self.train_tokens):,}",
                 count_tokens(self.val_tokens), self.tokenizer.vocab_size)

    def _rank_and_world(self) -> tuple[int, int]:
        return 0, 1  # one process; the LightningDataModule asks the trainer

    def _micro_batches_done(self) -> int:
        return 0

    def train_dataloader(self) -> DataLoader:
        rank, world = self._rank_and_world()
        common = dict(num_workers=self.num_workers, pin_memory=torch.cuda.is_available(),
                      persistent_workers=self.num_workers > 0, generator=private_generator(self.seed))
        if self.train_tokens is None:
            dataset = StreamingWindows(
                self.sources, self.tokenizer, self.block_size, self.batch_size,
                skip_documents=0 if self.val_sources else self.val_documents, held_out=self.held_out,
                rank=rank, world_size=world, start_batches=self._micro_batches_done(),
            )
            return DataLoader(dataset, batch_size=self.batch_size, **common)
        dataset = PackedWindows(self.train_tokens, self.block_size)
        sampler = StepIndexedSampler(
            len(dataset), self.batch_size, seed=self.seed,
            start_micro_batch=self._micro_batches_done(), rank=rank, world_size=world,
        )
        return DataLoader(dataset, batch_sampler=sampler, **common)

    def val_dataloader(self) -> DataLoader:
        """The first `val_windows` validation windows, dealt round-robin to the ranks: the same
        windows, so the same validation loss, at any world size."""
        dataset = PackedWindows(self.val_tokens, self.block_size)
        rank, world = self._rank_and_world()
        total = len(dataset) if self.val_windows is None else min(len(dataset), self.val_windows)
        indices = list(range(rank, total, world))
        batches = [indices[i : i + self.batch_size] for i in range(0, len(indices), self.batch_size)]
        return DataLoader(dataset, batch_sampler=batches, num_workers=0, generator=private_generator(self.seed))

def describe(tokenizer: Tokenizer) -> str:
    state = tokenizer.state()
    detail = state.get("encoding") or f"{tokenizer.vocab_size} ids"
    return f"{state.get('kind')} tokenizer ({detail})"


def count_tokens(tokens) -> int:
    return len(tokens) if isinstance(tokens, np.ndarray) else sum(len(a) for a in tokens)


def private_generator(seed: int) -> torch.Generator:
    """DataLoaders draw a seed from the global RNG each time they start iterating unless given their
    own generator; that draw would shift dropout's random stream between a run and its resume."""
    return torch.Generator().manual_seed(seed)


# The TextData arguments a `data=` config sets (the command gives the tokenizer, seed and
# val_windows), and those of them it must set.
_SIGNATURE = inspect.signature(TextData).parameters
DATA_SETTINGS = tuple(name for name in _SIGNATURE if name not in ("tokenizer", "seed", "val_windows"))
REQUIRED_SETTINGS = tuple(name for name in DATA_SETTINGS if _SIGNATURE[name].default is inspect.Parameter.empty)


def build_text_data(data, tokenizer: dict | Tokenizer, seed: int, block_size: int | None = None,
                    val_windows: int | None = None, cls: type[TextData] = TextData) -> TextData:
    """The windows a `data=` config describes; `tokenizer` is a config to build from or a ready
    tokenizer (evaluating or fine-tuning a checkpoint uses its own). `block_size`, when given,
    replaces the config's (evaluation takes it from the checkpoint). `val_windows` bounds validation
    to that many windows in all, whatever the number of ranks. `cls`: TextData or its LightningDataModule."""
    plain = data if isinstance(data, dict) else OmegaConf.to_container(data, resolve=True)
    # Only the settings the config has: conf/data/_base.yaml gives a composed config each of them,
    # and TextData's signature holds the defaults of the Python API, so none is repeated here.
    # The config's other keys (data.paths, data.url, ...) feed its `sources`.
    settings = {key: plain[key] for key in DATA_SETTINGS if key in plain}
    if block_size is not None:
        settings["block_size"] = block_size
    missing = [key for key in REQUIRED_SETTINGS if key not in settings]
    if missing:
        raise ConfigError(f"the data config sets no {', '.join('data.' + k for k in missing)}; "
                          f"a conf/data file lists _base first in its defaults")
    return cls(**settings, tokenizer=tokenizer, seed=seed, val_windows=val_windows)
