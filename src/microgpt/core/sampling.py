"""Choosing the next token: temperature, top-k, top-p; left padding for batched prompts."""

from __future__ import annotations

import torch

from microgpt.core.errors import ConfigError


def left_padding(pad: torch.Tensor, offset: int, T: int) -> dict[str, torch.Tensor]:
    """Per-row positions (B, T) and the attention mask (B, 1, T, offset + T) for a chunk of T
    tokens at `offset` when row b's first pad[b] tokens are padding.

    Real tokens never see padding and count positions from their row's first real token, so a
    row's logits are the ones it gets alone. A padding token attends to itself only: its output
    is unused, but must stay finite (a fully masked row would be NaN, and NaN * 0 is NaN).
    """
    queries = torch.arange(offset, offset + T, device=pad.device)
    keys = torch.arange(offset + T, device=pad.device)
    positions = (queries[None, :] - pad[:, None]).clamp(min=0)
    causal = keys[None, :] <= queries[:, None]  # (T, S)
    real_key = keys[None, :] >= pad[:, None]  # (B, S)
    itself = keys[None, :] == queries[:, None]  # (T, S)
    mask = causal[None] & (real_key[:, None, :] | itself[None])
    return {"positions": positions, "attn_mask": mask[:, None]}


def check_sampling(temperature: float, top_k: int | None, top_p: float | None) -> None:
    def number(x) -> bool:
        return isinstance(x, (int, float)) and not isinstance(x, bool)

    if not number(temperature) or temperature < 0:
        raise ConfigError(f"temperature must be a number >= 0 (0 means greedy), got {temperature!r}")
    if top_k is not None and (not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 1):
        raise ConfigError(f"top_k must be >= 1 or null, got {top_k!r}")
    if top_p is not None and (not number(top_p) or not 0.0 < top_p <= 1.0):
        raise ConfigError(f"top_p must be in (0, 1] or null, got {top_p}")


def sample_next(
    logits: torch.Tensor,
    temperature: float,
    top_k: int | None,
    top_p: float | None,
    generator: torch.Generator | None,
) -> torch.Tensor:
    """One token per row from (B, V) logits: greedy at temperature 0, else top-k / nucleus sampling."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.size(-1):
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        # Drop a token when the tokens ranked above it already reach top_p (the top one always stays).
        drop_sorted = (cumulative - sorted_logits.softmax(dim=-1)) >= top_p
        drop = drop_sorted.scatter(1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    probs = logits.softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(1)
