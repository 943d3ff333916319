"""Causal self-attention: multi-head, grouped-query / multi-query, and multi-head latent attention.

Each attention keeps what its variant needs in the KV cache: keys and values of `n_kv_head` heads
(GQA / MQA share them between query heads), or, for latent attention (DeepSeek-V2/V3), the
compressed latent and the one shared rotary key, from which keys and values are recomputed.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from microgpt.core.config import GPTConfig
from microgpt.core.layers import Linear, RMSNorm, RotaryEmbedding

LATENT_NORM_EPS = 1e-6  # DeepSeek's latent norms use their default eps, whatever the model's is


class KVCache:
    """Keys and values of one layer for incremental decoding, preallocated once per generation (to
    what it can reach, GPT.new_caches) and written in place: never grown or reallocated.

    `offset` an int: a chunk (a prompt's prefill) written from that column; its filled prefix is
    returned. `offset` a 1-element tensor: one decode step's column; the whole buffer is returned
    and the caller masks the columns past it, so every step has the same shapes (torch.compile)."""

    def __init__(self, batch: int, n_head: int, max_len: int, head_dim: int, device, dtype) -> None:
        shape = (batch, n_head, max_len, head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)

    @property
    def capacity(self) -> int:
        return self.k.size(2)

    def update(self, k: torch.Tensor, v: torch.Tensor, offset: int | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if isinstance(offset, torch.Tensor):
            self.k.index_copy_(2, offset, k)
            self.v.index_copy_(2, offset, v)
            return self.k, self.v
        end = offset + k.size(2)
        self.k[:, :, offset:end] = k
        self.v[:, :, offset:end] = v
        return self.k[:, :, :end], self.v[:, :, :end]


class LatentCache:
    """Latent attention's cache: per token the normalised KV latent and the rotated shared key;
    preallocated and written in place as KVCache is (the same two kinds of `offset`)."""

    def __init__(self, batch: int, max_len: int, latent: int, rope: int, device, dtype) -> None:
        self.latent = torch.zeros(batch, max_len, latent, device=device, dtype=dtype)
        self.k_rope = torch.zeros(batch, 1, max_len, rope, device=device, dtype=dtype)

    @property
    def capacity(self) -> int:
        return self.latent.size(1)

    def update(self, latent: torch.Tensor, k_rope: torch.Tensor,
               offset: int | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if isinstance(offset, torch.Tensor):
            self.latent.index_copy_(1, offset, latent)
            self.k_rope.index_copy_(2, offset, k_rope)
            return self.latent, self.k_rope
        end = offset + latent.size(1)
        self.latent[:, offset:end] = latent
        self.k_rope[:, :, offset:end] = k_rope
        return self.latent[:, :end], self.k_rope[:, :, :end]


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn_mask: torch.Tensor | None,
           dropout: float) -> torch.Tensor:
    """Causal SDPA of T queries over the S >= T latest keys (a chunk appended to a cache sees the
    whole cache); `attn_mask` (left-padded batches) replaces the causal mask when given."""
    T, S = q.size(2), k.size(2)
    mask, is_causal = None, T > 1
    if attn_mask is not None:
        mask, is_causal = attn_mask, False
    elif T > 1 and S != T:
        mask = torch.ones(T, S, dtype=torch.bool, device=q.device).tril(S - T)
        is_causal = False
    return F.scaled_dot_product_attention(
        q, k, v, attn_mask=mask, is_causal=is_causal, dropout_p=dropout,
        enable_gqa=k.size(1) != q.size(1),
    )


class CausalSelfAttention(nn.Module):
    """Multi-head attention with `n_kv_head` key/value heads (fewer: GQA; one: MQA) and optional
    QK-norm: per head (Qwen3) or over each projection (OLMo 2), before RoPE."""

    def __init__(self, config: GPTConfig, rope: RotaryEmbedding | None) -> None:
        super().__init__()
        self.n_head, self.n_kv_head, self.head_dim = config.n_head, config.kv_heads, config.head_size
        q_width, kv_width = self.n_head * self.head_dim, self.n_kv_head * self.head_dim
        self.split = (q_width, kv_width, kv_width)
        self.c_attn = Linear(config.n_embd, q_width + 2 * kv_width, bias=config.bias)
        self.c_proj = Linear(q_width, config.n_embd, bias=config.bias)
        self.c_proj.residual_scaled_init = True
        self.qk_norm = config.qk_norm
        if self.qk_norm != "none":
            per_head = self.qk_norm == "head"
            self.q_norm = RMSNorm(self.head_dim if per_head else q_width, config.norm_eps)
            self.k_norm = RMSNorm(self.head_dim if per_head else kv_width, config.norm_eps)
        self.dropout = config.dropout
        self.resid_dropout = nn.Dropout(config.dropout)
        # A shared module, kept out of the submodule tree so it is not registered once per layer.
        self._rope = [rope] if rope is not None else []

    def new_cache(self, batch: int, max_len: int, device, dtype) -> KVCache:
        return KVCache(batch, self.n_kv_head, max_len, self.head_dim, device, dtype)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None, offset: int | torch.Tensor = 0,
                positions: torch.Tensor | None = None, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        B, T, _ = x.shape
        q, k, v = self.c_attn(x).split(self.split, dim=2)
        if self.qk_norm == "full":
            q, k = self.q_norm(q), self.k_norm(k)
        q = q.view(B, T, self.n_head, self.head_dim).transpose(1, 2)
        k = k.view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)
        v = v.view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)
        if self.qk_norm == "head":
            q, k = self.q_norm(q), self.k_norm(k)
        if self._rope:
            q, k = self._rope[0](q, offset, positions), self._rope[0](k, offset, positions)
        if cache is not None:
            k, v = cache.update(k, v, offset)
        y = attend(q, k, v, attn_mask, self.dropout if self.training else 0.0)
        y = y.transpose(1, 2).contiguous().view(B, T, self.n_head * self.head_dim)
        return self.resid_dropout(self.c_proj(y))


class LatentAttention(nn.Module):
    """Multi-head latent attention (DeepSeek-V2, V3): keys and values come up from a low-rank latent
    that the cache stores instead of them; positions ride on a separate rotary part of each query
    and on one rotary key shared by all heads, so the latent itself stays position-free."""

    def __init__(self, config: GPTConfig, rope: RotaryEmbedding | None) -> None:
        super().__init__()
        self.n_head = config.n_head
        self.nope, self.rope_dim, self.v_dim = config.qk_nope_head_dim, config.qk_rope_head_dim, config.v_head_dim
        self.latent = config.kv_lora_rank
        q_width = self.n_head * (self.nope + self.rope_dim)
        if config.q_lora_rank is None:
            self.q_proj = Linear(config.n_embd, q_width, bias=False)  # unbiased in DeepSeek's too
        else:
            self.q_a_proj = Linear(config.n_embd, config.q_lora_rank, bias=config.bias)
            self.q_a_norm = RMSNorm(config.q_lora_rank, LATENT_NORM_EPS)
            self.q_b_proj = Linear(config.q_lora_rank, q_width, bias=False)
        self.kv_a_proj = Linear(config.n_embd, self.latent + self.rope_dim, bias=config.bias)
        self.kv_a_norm = RMSNorm(self.latent, LATENT_NORM_EPS)
        self.kv_b_proj = Linear(self.latent, self.n_head * (self.nope + self.v_dim), bias=False)
        self.c_proj = Linear(self.n_head * self.v_dim, config.n_embd, bias=config.bias)
        self.c_proj.residual_scaled_init = True
        self.dropout = config.dropout
        self.resid_dropout = nn.Dropout(config.dropout)
        self._rope = [rope] if rope is not None else []

    def new_cache(self, batch: int, max_len: int, device, dtype) -> LatentCache:
        return LatentCache(batch, max_len, self.latent, self.rope_dim, device, dtype)

    def queries(self, x: torch.Tensor) -> torch.Tensor:
        if hasattr(self, "q_proj"):
            return self.q_proj(x)
        return self.q_b_proj(self.q_a_norm(self.q_a_proj(x)))

    def forward(self, x: torch.Tensor, cache: LatentCache | None = None, offset: int | torch.Tensor = 0,
                positions: torch.Tensor | None = None, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        B, T, _ = x.shape
        H = self.n_head
        q = self.queries(x).view(B, T, H, self.nope + self.rope_dim).transpose(1, 2)
        q_nope, q_rope = q.split((self.nope, self.rope_dim), dim=-1)
        latent, k_rope = self.kv_a_proj(x).split((self.latent, self.rope_dim), dim=-1)
        latent, k_rope = self.kv_a_norm(latent), k_rope.view(B, 1, T, self.rope_dim)
        if self._rope:
            q_rope, k_rope = self._rope[0](q_rope, offset, positions), self._rope[0](k_rope, offset, positions)
        if cache is not None:
            latent, k_rope = cache.update(latent, k_rope, offset)
        S = latent.size(1)
        kv = self.kv_b_proj(latent).view(B, S, H, self.nope + self.v_dim).transpose(1, 2)
        k_nope, v = kv.split((self.nope, self.v_dim), dim=-1)
        q = torch.cat([q_nope, q_rope], dim=-1)
        k = torch.cat([k_nope, k_rope.expand(B, H, S, self.rope_dim)], dim=-1)
        y = attend(q, k, v, attn_mask, self.dropout if self.training else 0.0)
        y = y.transpose(1, 2).contiguous().view(B, T, H * self.v_dim)
        return self.resid_dropout(self.c_proj(y))


def make_attention(config: GPTConfig, rope: RotaryEmbedding | None) -> nn.Module:
    return LatentAttention(config, rope) if config.attention == "mla" else CausalSelfAttention(config, rope)
