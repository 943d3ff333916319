"""The LightningDataModule: TextData, placed by the trainer (rank, world size, steps done) and
resumable (its state tells a resumed run when the data changed)."""

from __future__ import annotations

import logging

import lightning as L

from microgpt.data.text_data import TextData, count_tokens

log = logging.getLogger(__name__)


class TextDataModule(TextData, L.LightningDataModule):
    """TextData inside a Trainer: every rank reads its own share, and after a resume the data
    position follows from the optimizer step, so the run sees exactly the batches it would have."""

    def __init__(self, **kwargs) -> None:
        L.LightningDataModule.__init__(self)
        TextData.__init__(self, **kwargs)

    def setup(self, stage: str | None = None) -> None:
        self.load()
        self.check_readers()  # now that the trainer knows the world size

    def _rank_and_world(self) -> tuple[int, int]:
        return placement(self.trainer)[:2]

    def _micro_batches_done(self) -> int:
        return placement(self.trainer)[2]

    def state_dict(self) -> dict:
        # The position itself is derived from the step; these let a resume detect changed data.
        return {"mode": self.mode, "train_tokens": count_tokens(self.train_tokens) if self.train_tokens is not None else -1,
                "seed": self.seed, "block_size": self.block_size}

    def load_state_dict(self, state: dict) -> None:
        now = count_tokens(self.train_tokens) if self.train_tokens is not None else -1
        if state.get("train_tokens") not in (None, now):
            log.warning("resuming on different data (%s train tokens now, %s in the checkpoint): "
                        "the batch order will differ from the original run", now, state.get("train_tokens"))


def placement(trainer: L.Trainer | None) -> tuple[int, int, int]:
    """(rank, world size, micro-batches every rank has done): where a resumable data stream starts."""
    if trainer is None:
        return 0, 1, 0
    return trainer.global_rank, trainer.world_size, trainer.global_step * trainer.accumulate_grad_batches
