"""Choosing the next token: temperature, top-k, top-p; left padding for batched prompts."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

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


def _number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def check_sampling(temperature: float, top_k: int | None, top_p: float | None) -> None:
    """Refuse settings that cannot sample (ConfigError, a ValueError), before any work is done."""
    if not _number(temperature) or not math.isfinite(temperature) or temperature < 0:
        raise ConfigError(f"temperature must be a finite number >= 0 (0 means greedy), got {temperature!r}")
    if top_k is not None and (not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 1):
        raise ConfigError(f"top_k must be an integer >= 1 or null (None: no cut), got {top_k!r}")
    if top_p is not None and (not _number(top_p) or not 0.0 < top_p <= 1.0):
        raise ConfigError(f"top_p must be in (0, 1] or null (None: no nucleus cut), got {top_p!r}")


@dataclass(frozen=True)
class SamplingOptions:
    """How to continue a prompt: what `generate`, `LanguageModel.stream_text / generate_text /
    generate_texts` take. Checked when made, so a bad value fails before any token is sampled."""

    max_new_tokens: int = 50
    temperature: float = 0.8  # 0: greedy
    top_k: int | None = 200  # None: no top-k cut
    top_p: float | None = None  # nucleus sampling, in (0, 1]
    seed: int | None = None  # None: torch's global generator
    stop_at_eot: bool = True

    def __post_init__(self) -> None:
        n = self.max_new_tokens
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ConfigError(f"max_new_tokens must be an integer >= 0, got {n!r}")
        check_sampling(self.temperature, self.top_k, self.top_p)
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int)):
            raise ConfigError(f"seed must be an integer or None, got {self.seed!r}")
        if not isinstance(self.stop_at_eot, bool):
            raise ConfigError(f"stop_at_eot must be true or false, got {self.stop_at_eot!r}")

    def replace(self, **changes) -> SamplingOptions:
        return dataclasses.replace(self, **changes)


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
