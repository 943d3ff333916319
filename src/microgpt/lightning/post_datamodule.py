"""The LightningDataModule of the post-training stages: a `data=` config with a `kind` (chat,
preferences, prompts) names the builder of its rows (microgpt.data)."""

from __future__ import annotations

import logging

import hydra
import lightning as L
from torch.utils.data import DataLoader

from microgpt.core.errors import ConfigError
from microgpt.core.tokenizer import Tokenizer
from microgpt.data.rows import PostData, train_loader, val_loader
from microgpt.lightning.datamodule import placement

log = logging.getLogger(__name__)

BUILDERS = {
    "chat": "microgpt.data.chat_data.sft_data",            # stage=sft: conversations
    "preferences": "microgpt.data.preferences.preference_data",  # stage=dpo: chosen / rejected pairs
    "prompts": "microgpt.data.prompts.prompt_data",        # stage=grpo: prompts with checkable answers
}


class PostDataModule(L.LightningDataModule):
    def __init__(self, settings: dict, tokenizer: dict | Tokenizer, seed: int, block_size: int) -> None:
        super().__init__()
        kind = settings.get("kind")
        if kind not in BUILDERS:
            raise ConfigError(f"data.kind={kind!r} is no post-training data; choose from {sorted(BUILDERS)}")
        self.build = hydra.utils.get_method(BUILDERS[kind])
        self.settings, self.tokenizer_cfg, self.seed, self.block_size = settings, tokenizer, seed, block_size
        self.batch_size = int(settings["batch_size"])
        self.data: PostData | None = None

    def load(self) -> Tokenizer:
        if self.data is None:
            self.data = self.build(self.settings, self.tokenizer_cfg, self.seed, self.block_size)
            for note in self.data.notes:
                log.warning(note)
            log.info("%s data: %d training rows, %d validation rows", self.settings["kind"],
                     len(self.data.train), len(self.data.val))
        return self.data.tokenizer

    def setup(self, stage: str | None = None) -> None:
        self.load()

    def train_dataloader(self) -> DataLoader:
        rank, world, done = placement(self.trainer)
        return train_loader(self.data, self.batch_size, self.seed, done, rank, world,
                            int(self.settings.get("num_workers") or 0))

    def val_dataloader(self) -> DataLoader:
        rank, world, _ = placement(self.trainer)
        return val_loader(self.data, self.batch_size, self.seed, rank, world)

    def state_dict(self) -> dict:
        return {"kind": self.settings["kind"], "train_rows": len(self.data.train) if self.data else -1, "seed": self.seed}

    def load_state_dict(self, state: dict) -> None:
        now = len(self.data.train) if self.data else -1
        if state.get("train_rows") not in (None, now):
            log.warning("resuming on different data (%s training rows now, %s in the checkpoint): "
                        "the batch order will differ from the original run", now, state.get("train_rows"))
