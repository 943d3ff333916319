"""Supervised fine-tuning: next-token cross-entropy on the assistant's tokens only."""

from __future__ import annotations

import torch

from microgpt.core.logprobs import masked_targets
from microgpt.lightning.objectives.base import NextToken


class SFT(NextToken):
    """Batches of rendered conversations (data/chat_data.py): `ids`, `trained` (which ids are
    targets) and, when packed, `documents` (attention stays inside each conversation)."""

    def inputs(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor, dict]:
        ids = batch["ids"]
        documents = batch.get("documents")
        extra = {"documents": documents[:, :-1]} if documents is not None else {}
        return ids[:, :-1], masked_targets(ids, batch["trained"]), extra
