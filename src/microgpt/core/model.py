"""A decoder-only GPT in pure PyTorch: rotary or learned positions, SDPA attention, a KV cache.

Nothing here imports Lightning or Hydra, so the model can be built, tested and used on its own.
Parameter names follow GPT-2's (`transformer.h.0.attn.c_attn`, ...) so OpenAI weights map 1:1.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn as nn
import torch.nn.functional as F

from microgpt.core.errors import ConfigError, require_positive_int
from microgpt.core.sampling import check_sampling, left_padding, sample_next

POSITION_SCHEMES = ("rope", "learned")


@dataclass
class GPTConfig:
    vocab_size: int = 50257
    block_size: int = 1024  # the context window, in tokens
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    dropout: float = 0.0
    bias: bool = True
    pos_emb: str = "rope"  # "rope" or "learned" (GPT-2's own weights need "learned")
    rope_base: float = 10000.0
    vocab_multiple: int = 64  # the embedding is padded to a multiple of this: faster matmuls

    def __post_init__(self) -> None:
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd", "vocab_multiple"):
            require_positive_int(f"model.{name}", getattr(self, name))
        if self.n_embd % self.n_head:
            raise ConfigError(
                f"model.n_embd ({self.n_embd}) must be divisible by model.n_head ({self.n_head})"
            )
        if self.pos_emb not in POSITION_SCHEMES:
            raise ConfigError(f"model.pos_emb must be one of {POSITION_SCHEMES}, got {self.pos_emb!r}")
        if self.pos_emb == "rope" and self.head_dim % 2:
            raise ConfigError(f"RoPE needs an even head size, got n_embd/n_head = {self.head_dim}")
        if not isinstance(self.dropout, (int, float)) or not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"model.dropout must be in [0, 1), got {self.dropout}")
        if not isinstance(self.rope_base, (int, float)) or self.rope_base <= 0:
            raise ConfigError(f"model.rope_base must be positive, got {self.rope_base}")

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def padded_vocab_size(self) -> int:
        m = self.vocab_multiple
        return (self.vocab_size + m - 1) // m * m

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> GPTConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ConfigError(f"unknown model settings {sorted(unknown)}; known: {sorted(known)}")
        return cls(**d)


class RotaryEmbedding(nn.Module):
    """Rotary position embedding (Su et al. 2021), rotate-half layout, computed in fp32."""

    def __init__(self, head_dim: int, max_len: int, base: float) -> None:
        super().__init__()
        inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
        angles = torch.outer(torch.arange(max_len, dtype=torch.float32), inv_freq)
        angles = torch.cat([angles, angles], dim=-1)
        # Not persistent: derived from the config, so checkpoints stay free of them.
        self.register_buffer("cos", angles.cos(), persistent=False)
        self.register_buffer("sin", angles.sin(), persistent=False)

    def forward(self, x: torch.Tensor, offset: int, positions: torch.Tensor | None = None) -> torch.Tensor:
        """Rotate x of shape (B, H, T, D) as if its first position were `offset`, or by per-row
        `positions` of shape (B, T) (left-padded batches)."""
        T = x.size(-2)
        if positions is None:
            cos = self.cos[offset : offset + T]
            sin = self.sin[offset : offset + T]
        else:
            cos, sin = self.cos[positions][:, None], self.sin[positions][:, None]
        xf = x.float()
        x1, x2 = xf.chunk(2, dim=-1)
        rotated = torch.cat([-x2, x1], dim=-1)
        return (xf * cos + rotated * sin).to(x.dtype)


class KVCache:
    """Keys and values of one layer for incremental decoding, preallocated to the context window."""

    def __init__(self, batch: int, n_head: int, max_len: int, head_dim: int, device, dtype) -> None:
        shape = (batch, n_head, max_len, head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)

    def update(self, k: torch.Tensor, v: torch.Tensor, offset: int) -> tuple[torch.Tensor, torch.Tensor]:
        end = offset + k.size(2)
        self.k[:, :, offset:end] = k
        self.v[:, :, offset:end] = v
        return self.k[:, :, :end], self.v[:, :, :end]


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig, rope: RotaryEmbedding | None) -> None:
        super().__init__()
        self.n_head = config.n_head
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.c_proj.residual_scaled_init = True
        self.dropout = config.dropout
        self.resid_dropout = nn.Dropout(config.dropout)
        # A shared module, kept out of the submodule tree so it is not registered once per layer.
        self._rope = [rope] if rope is not None else []

    def forward(
        self,
        x: torch.Tensor,
        cache: KVCache | None = None,
        offset: int = 0,
        positions: torch.Tensor | None = None,
        attn_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        if self._rope:
            q, k = self._rope[0](q, offset, positions), self._rope[0](k, offset, positions)
        if cache is not None:
            k, v = cache.update(k, v, offset)
        mask, is_causal = None, T > 1
        if attn_mask is not None:  # left-padded batch: GPT.forward built the whole mask
            mask, is_causal = attn_mask, False
        elif T > 1 and k.size(2) != T:  # a chunk appended to a non-empty cache
            mask = torch.ones(T, k.size(2), dtype=torch.bool, device=x.device).tril(k.size(2) - T)
            is_causal = False
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=is_causal,
            dropout_p=self.dropout if self.training else 0.0,
        )
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.c_proj.residual_scaled_init = True
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # tanh approximation: what GPT-2 was trained with, so its weights reproduce exactly.
        return self.dropout(self.c_proj(F.gelu(self.c_fc(x), approximate="tanh")))


class Block(nn.Module):
    def __init__(self, config: GPTConfig, rope: RotaryEmbedding | None) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config, rope)
        self.ln_2 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None, offset: int = 0, **padding) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), cache, offset, **padding)
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.config = config
        self.rope = (
            RotaryEmbedding(config.head_dim, config.block_size, config.rope_base)
            if config.pos_emb == "rope" else None
        )
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.padded_vocab_size, config.n_embd),
            drop=nn.Dropout(config.dropout),
            h=nn.ModuleList(Block(config, self.rope) for _ in range(config.n_layer)),
            ln_f=nn.LayerNorm(config.n_embd, bias=config.bias),
        ))
        if config.pos_emb == "learned":
            self.transformer["wpe"] = nn.Embedding(config.block_size, config.n_embd)
        self.lm_head = nn.Linear(config.n_embd, config.padded_vocab_size, bias=False)
        self.lm_head.weight = self.transformer.wte.weight  # weight tying
        self.apply(self._init_weights)

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            std = 0.02
            if getattr(module, "residual_scaled_init", False):
                # GPT-2: residual projections scaled so the residual stream's variance stays flat.
                std /= math.sqrt(2 * self.config.n_layer)
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def count_params(self, non_embedding: bool = False) -> int:
        """Parameters, counted once each (the tied LM head is the embedding)."""
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n -= self.transformer.wte.weight.numel()
            if "wpe" in self.transformer:
                n -= self.transformer.wpe.weight.numel()
        return n

    def forward(
        self,
        idx: torch.Tensor,
        targets: torch.Tensor | None = None,
        caches: list[KVCache] | None = None,
        offset: int = 0,
        pad: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits over the padded vocabulary for (B, T) ids; loss too when targets are given.

        `caches` (one KVCache per layer) and `offset` (position of idx[:, 0]) serve incremental
        decoding; training passes neither. `pad` (B,) says how many leading tokens of each row's
        sequence are left padding (prompts of different lengths in one batch).
        """
        T = idx.size(1)
        if offset + T > self.config.block_size:
            raise ValueError(
                f"sequence of {offset + T} tokens exceeds the context window ({self.config.block_size})"
            )
        padding = left_padding(pad, offset, T) if pad is not None else {}
        x = self.transformer.wte(idx)
        if "wpe" in self.transformer:
            x = x + self.transformer.wpe(padding.get("positions", torch.arange(offset, offset + T, device=idx.device)))
        x = self.transformer.drop(x)
        for i, block in enumerate(self.transformer.h):
            x = block(x, caches[i] if caches is not None else None, offset, **padding)
        logits = self.lm_head(self.transformer.ln_f(x))
        loss = None
        if targets is not None:
            # Over the real vocabulary: the padding rows are no tokens, so they take no probability.
            real = logits[..., : self.config.vocab_size]
            loss = F.cross_entropy(real.reshape(-1, real.size(-1)).float(), targets.reshape(-1), ignore_index=-1)
        return logits, loss

    def new_caches(self, batch: int) -> list[KVCache]:
        p = self.transformer.wte.weight
        c = self.config
        return [KVCache(batch, c.n_head, c.block_size, c.head_dim, p.device, p.dtype) for _ in range(c.n_layer)]

    @torch.no_grad()
    def generate_stream(
        self,
        idx: torch.Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        eot: int | None = None,
        generator: torch.Generator | None = None,
        use_cache: bool = True,
        pad: torch.Tensor | None = None,
    ) -> Iterator[torch.Tensor]:
        """Yield the next token ids, shape (B,), one step at a time.

        One KV cache (per layer, preallocated to the context window) serves the whole generation.
        Each row sees a window of its latest tokens that grows until it fills the context; when it
        would overflow, it restarts from the row's latest `block_size // 2` tokens and grows again
        (the kept tokens are prefilled again once, into the same cache: their keys and values
        depended on the tokens left behind, and carry their old positions). So within the window
        every token sees the whole sequence; past it, each sees between half a window and a whole
        one. Uncached decoding recomputes the same windows and gives the same tokens. Stops early
        once every row has produced `eot` (rows that finished keep emitting `eot`). Prompts of
        different lengths are left-padded to one width with `pad` (B,) counting each row's padding
        tokens: every row then decodes as it would alone, its window restarts included.
        """
        check_sampling(temperature, top_k, top_p)
        block = self.config.block_size
        keep = max(1, block // 2)  # the tokens a full window restarts from
        tokens = idx
        # Where each row's window starts, as an index into its row of `tokens` (padding included).
        starts = [p + max(0, idx.size(1) - p - block) for p in (pad.tolist() if pad is not None else [0] * idx.size(0))]
        caches = self.new_caches(idx.size(0)) if use_cache else None
        cached_len = 0  # how many leading tokens of the window the caches hold
        done = torch.zeros(idx.size(0), dtype=torch.bool, device=idx.device)
        for _ in range(max_new_tokens):
            length = tokens.size(1)
            restarted = [length - keep if length - start > block else start for start in starts]
            if restarted != starts:
                starts, cached_len = restarted, 0
            first = min(starts)
            window = tokens[:, first:]
            window_pad = None  # the tokens before a row's own window start are padding to it
            if any(start > first for start in starts):
                window_pad = torch.tensor([start - first for start in starts], device=idx.device)
            if caches is not None:
                logits, _ = self(window[:, cached_len:], caches=caches, offset=cached_len, pad=window_pad)
                cached_len = window.size(1)
            else:
                logits, _ = self(window, pad=window_pad)
            logits = logits[:, -1, : self.vocab_limit]
            next_token = sample_next(logits, temperature, top_k, top_p, generator)
            if eot is not None:
                next_token = torch.where(done, torch.full_like(next_token, eot), next_token)
                done |= next_token == eot
            tokens = torch.cat([tokens, next_token[:, None]], dim=1)
            yield next_token
            if eot is not None and bool(done.all()):
                return

    @property
    def vocab_limit(self) -> int:
        """Ids past the real vocabulary are padding: never sample them."""
        return self.config.vocab_size

    def generate(self, idx: torch.Tensor, max_new_tokens: int, **kwargs) -> torch.Tensor:
        """The prompt followed by up to `max_new_tokens` sampled tokens, shape (B, T + n)."""
        new = list(self.generate_stream(idx, max_new_tokens, **kwargs))
        if not new:
            return idx
        return torch.cat([idx, torch.stack(new, dim=1)], dim=1)
