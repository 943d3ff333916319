"""Attention within documents: several conversations packed into one training window stay apart."""

from __future__ import annotations

import torch


def document_masking(documents: torch.Tensor) -> dict[str, torch.Tensor]:
    """Positions (B, T) and the attention mask (B, 1, T, T) for a window whose token t belongs to
    document `documents[b, t]` (consecutive tokens of one document share its number).

    Each token sees the earlier tokens of its own document only, and its position counts from that
    document's first token: a packed conversation gets the logits it would get alone."""
    T = documents.size(1)
    index = torch.arange(T, device=documents.device)
    causal = index[None, :] <= index[:, None]
    mask = (documents[:, :, None] == documents[:, None, :]) & causal
    starts = torch.ones_like(documents, dtype=torch.bool)
    starts[:, 1:] = documents[:, 1:] != documents[:, :-1]
    first = torch.where(starts, index, torch.zeros_like(index)).cummax(dim=1).values
    return {"positions": index - first, "attn_mask": mask[:, None]}
