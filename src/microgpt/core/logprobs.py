"""Per-token log-probabilities: what SFT's masked loss, DPO's sequence scores and GRPO's policy
ratios are made of."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def token_logprobs(logits: torch.Tensor, targets: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """log p(targets[b, t]) under logits[b, t] over the real vocabulary, (B, T) in float32; 0 where
    the target is -1 (no target: padding, or a token nobody trains on)."""
    real = logits[..., :vocab_size].float()
    picked = targets.clamp(min=0)
    logp = torch.gather(F.log_softmax(real, dim=-1), -1, picked[..., None])[..., 0]
    return torch.where(targets >= 0, logp, torch.zeros_like(logp))


def masked_targets(ids: torch.Tensor, trained: torch.Tensor) -> torch.Tensor:
    """The next-token targets of windows `ids` (B, T + 1): ids[:, 1:] where `trained[:, 1:]`, else -1."""
    return torch.where(trained[:, 1:], ids[:, 1:], torch.full_like(ids[:, 1:], -1))
