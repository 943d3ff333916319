"""A decoder-only GPT in pure PyTorch: the block of GPT-2 and of the modern families, SDPA, a KV cache.

Nothing here imports Lightning or Hydra, so the model can be built, tested and used on its own.
Parameter names follow GPT-2's (`transformer.h.0.attn.c_attn`, ...) so OpenAI weights map 1:1; the
variants (GQA, latent attention, RMSNorm, post-norm, QK-norm, SwiGLU, MoE; see core/config.py) add
their own parts under the same tree, so the default model's checkpoints are unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F

from microgpt.core.attention import KVCache, LatentCache, make_attention
from microgpt.core.config import POSITION_SCHEMES, GPTConfig
from microgpt.core.flops import kv_cache_bytes_per_token
from microgpt.core.layers import MLP, Linear, RotaryEmbedding, make_norm
from microgpt.core.masks import document_masking
from microgpt.core.sampling import check_sampling, left_padding, sample_next

__all__ = ["GPT", "GPTConfig", "Block", "KVCache", "LatentCache", "RotaryEmbedding", "POSITION_SCHEMES"]


def make_mlp(config: GPTConfig, index: int) -> nn.Module:
    if config.is_moe_layer(index):
        from microgpt.core.moe import MoE  # only MoE models need it

        return MoE(config)
    return MLP(config)


class Block(nn.Module):
    """One transformer layer. Pre-norm (GPT-2, Llama, Qwen3) normalises each sublayer's input;
    post-norm as OLMo 2 does it normalises each sublayer's output before the residual add, so the
    residual stream itself is never normalised."""

    def __init__(self, config: GPTConfig, rope: RotaryEmbedding | None, index: int = 0) -> None:
        super().__init__()
        self.post_norm = config.norm_placement == "post"
        self.ln_1 = make_norm(config)
        self.attn = make_attention(config, rope)
        self.ln_2 = make_norm(config)
        self.mlp = make_mlp(config, index)

    def forward(self, x: torch.Tensor, cache=None, offset: int = 0, **padding) -> torch.Tensor:
        if self.post_norm:
            x = x + self.ln_1(self.attn(x, cache, offset, **padding))
            return x + self.ln_2(self.mlp(x))
        x = x + self.attn(self.ln_1(x), cache, offset, **padding)
        return x + self.mlp(self.ln_2(x))


def window_padding(starts: list[int], device) -> tuple[int, torch.Tensor | None, torch.Tensor]:
    """(the window's first column, each row's padding in it or None when no row has any, the same counts as a tensor
    for `decode_step`): the tokens before a row's own window start are padding to it."""
    first = min(starts)
    counts = torch.tensor([start - first for start in starts], device=device)
    return first, (counts if any(start > first for start in starts) else None), counts


def decode_compile_options(options: dict) -> dict:
    """torch.compile's arguments for the decode step: inductor's deterministic mode unless `mode` or
    `options` say otherwise. Since torch 2.13 inductor inlines a broadcast operand into the reduction
    that reads it (pytorch#184182), so a one-token product (`Linear`) recomputed the norm or
    activation before it once per weight row; deterministic mode keeps the operand in a buffer of
    its own, as before: decoding a 124M model in bfloat16 on 2 cores went from ~56 to ~90 tokens/s."""
    if "mode" in options:  # torch.compile takes a mode or options, not both
        return options
    return {**options, "options": {"deterministic": True, **options.get("options", {})}}


class GPT(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.config = config
        self.rope = (
            RotaryEmbedding(config.rope_dim, config.block_size, config.rope_base, config)
            if config.pos_emb == "rope" else None
        )
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.padded_vocab_size, config.n_embd),
            drop=nn.Dropout(config.dropout),
            h=nn.ModuleList(Block(config, self.rope, i) for i in range(config.n_layer)),
            ln_f=make_norm(config),
        ))
        if config.pos_emb == "learned":
            self.transformer["wpe"] = nn.Embedding(config.block_size, config.n_embd)
        self.lm_head = Linear(config.n_embd, config.padded_vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.transformer.wte.weight
        self.apply(self._init_weights)
        self._compiled_decode_step = None  # compile_decode_step() sets it

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
        last_only: bool = False,
        documents: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits over the padded vocabulary for (B, T) ids; loss too when targets are given.

        `caches` (one KVCache per layer) and `offset` (position of idx[:, 0]) serve incremental
        decoding; training passes neither. `pad` (B,) says how many leading tokens of each row's
        sequence are left padding (prompts of different lengths in one batch). `last_only`: the
        logits of the last position only, (B, 1, V): all that generation reads. `documents` (B, T):
        each token's document in a packed window; attention stays inside each (core/masks.py).
        """
        T = idx.size(1)
        if offset + T > self.config.block_size:
            raise ValueError(
                f"sequence of {offset + T} tokens exceeds the context window ({self.config.block_size})"
            )
        padding = left_padding(pad, offset, T) if pad is not None else {}
        if documents is not None:
            padding = document_masking(documents)
        x = self.transformer.wte(idx)
        if "wpe" in self.transformer:
            x = x + self.transformer.wpe(padding.get("positions", torch.arange(offset, offset + T, device=idx.device)))
        x = self.transformer.drop(x)
        for i, block in enumerate(self.transformer.h):
            x = block(x, caches[i] if caches is not None else None, offset, **padding)
        if last_only:
            x = x[:, -1:]
        logits = self.lm_head(self.transformer.ln_f(x))
        loss = None
        if targets is not None:
            # Over the real vocabulary: the padding rows are no tokens, so they take no probability.
            real = logits[..., : self.config.vocab_size]
            loss = F.cross_entropy(real.reshape(-1, real.size(-1)).float(), targets.reshape(-1), ignore_index=-1)
        return logits, loss

    def new_caches(self, batch: int, max_len: int | None = None) -> list:
        """One cache per layer (KVCache, or LatentCache for latent attention), preallocated to
        `max_len` tokens (default: the context window)."""
        p = self.transformer.wte.weight
        length = min(max_len or self.config.block_size, self.config.block_size)
        return [block.attn.new_cache(batch, length, p.device, p.dtype) for block in self.transformer.h]

    def kv_cache_bytes_per_token(self, dtype: torch.dtype | None = None) -> int:
        """What the cache holds per token of context, all layers together."""
        return kv_cache_bytes_per_token(self.config, dtype or self.transformer.wte.weight.dtype)

    def moe_loss(self) -> torch.Tensor:
        """The weighted load-balancing and router z-losses of the last forward (zero when dense)."""
        if not self.config.n_experts:
            return self.transformer.wte.weight.new_zeros(())
        from microgpt.core.moe import moe_loss

        return moe_loss(self)

    def decode_step(self, token: torch.Tensor, caches: list, index: torch.Tensor,
                    pad: torch.Tensor) -> torch.Tensor:
        """One new token per row through the model: the logits (B, V) of the token after it.

        Every step has the same shapes, so `torch.compile` compiles it once per generation:
        `token` (B, 1) is written into the preallocated caches at column `index` (a 1-element
        tensor; the columns before it are cached), and attention runs over the whole cache masked
        to each row's own columns, `pad[b]` (B,) up to `index` (the columns before pad[b] belong
        to other rows' longer windows or prompts)."""
        positions = index - pad[:, None]  # (B, 1), counted from each row's first token
        columns = torch.arange(caches[0].capacity, device=token.device)
        mask = ((columns <= index) & (columns >= pad[:, None]))[:, None, None]  # (B, 1, 1, S)
        x = self.transformer.wte(token)
        if "wpe" in self.transformer:
            x = x + self.transformer.wpe(positions)
        x = self.transformer.drop(x)
        for block, cache in zip(self.transformer.h, caches):
            x = block(x, cache, index, positions=positions, attn_mask=mask)
        return self.lm_head(self.transformer.ln_f(x[:, -1]))

    def compile_decode_step(self, **options) -> GPT:
        """Generate through a `torch.compile`d `decode_step` from now on (`options` go to
        torch.compile, in inductor's deterministic mode unless they say otherwise:
        `decode_compile_options`); prompts are still prefilled eagerly. Compiled on first use, again for a
        new batch size or cache length (then with dynamic shapes)."""
        # The unbound function, called with the model: a deep copy of this model shares it, and
        # dynamo's guards on the module recompile it for the copy rather than run the original.
        self._compiled_decode_step = torch.compile(type(self).decode_step, **decode_compile_options(options))
        return self

    @torch.no_grad()
    def generate_stream(self, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0, top_k: int | None = None,
                        top_p: float | None = None, eot: int | None = None, generator: torch.Generator | None = None,
                        use_cache: bool = True, pad: torch.Tensor | None = None) -> Iterator[torch.Tensor]:
        """Yield the next token ids, shape (B,), one step at a time.

        One KV cache (per layer, sized to the longest window this generation reaches) serves the whole generation:
        the prompt is prefilled in one forward, then each new token takes one `decode_step` (compiled after
        `compile_decode_step()`); both compute the last position's logits only, and the token buffer and the caches
        are allocated once, up front. Each row sees a window of its latest tokens that grows until it fills the
        context; when it would overflow, it restarts from the row's latest `block_size // 2` tokens and grows again
        (the kept tokens are prefilled again once, into the same cache: their keys and values depended on the tokens
        left behind, and carry their old positions). So within the window every token sees the whole sequence; past
        it, each sees between half a window and a whole one. Uncached decoding recomputes the same windows and gives
        the same tokens. Stops early once every row has produced `eot` (rows that finished keep emitting `eot`).
        Prompts of different lengths are left-padded to one width with `pad` (B,) counting each row's padding
        tokens: every row then decodes as it would alone, its window restarts included.
        """
        check_sampling(temperature, top_k, top_p)
        batch, prompt_len = idx.shape
        block = self.config.block_size
        keep = max(1, block // 2)  # the tokens a full window restarts from
        # Where each row's window starts, as an index into its row of `tokens` (padding included).
        starts = [p + max(0, prompt_len - p - block) for p in (pad.tolist() if pad is not None else [0] * batch)]
        tokens = idx.new_empty(batch, prompt_len + max_new_tokens)  # the sequence, written in place
        tokens[:, :prompt_len] = idx
        # Sized to what this generation can hold, not the whole context: a long-context model
        # (Llama 3's 131072 tokens) would otherwise allocate gigabytes for a short reply.
        caches = self.new_caches(batch, prompt_len - min(starts) + max_new_tokens) if use_cache else None
        step = self._compiled_decode_step or type(self).decode_step
        index = torch.zeros(1, dtype=torch.long, device=idx.device)  # the cache column of the next token
        cached_len = 0  # how many leading tokens of the window the caches hold
        done = torch.zeros(batch, dtype=torch.bool, device=idx.device)
        for length in range(prompt_len, prompt_len + max_new_tokens):
            restarted = [length - keep if length - start > block else start for start in starts]
            if restarted != starts:
                starts, cached_len = restarted, 0
            if cached_len == 0:  # a (re)started window: where each row's own tokens begin in it
                first, window_pad, step_pad = window_padding(starts, idx.device)
            window = tokens[:, first:length]
            if caches is None:
                logits = self(window, pad=window_pad, last_only=True)[0][:, -1]
            elif cached_len:
                index.fill_(cached_len)
                logits = step(self, window[:, -1:], caches, index, step_pad)
                cached_len += 1
            else:
                logits = self(window, caches=caches, pad=window_pad, last_only=True)[0][:, -1]
                cached_len = window.size(1)
            next_token = sample_next(logits[:, : self.vocab_limit], temperature, top_k, top_p, generator)
            if eot is not None:
                next_token = torch.where(done, torch.full_like(next_token, eot), next_token)
                done |= next_token == eot
            tokens[:, length] = next_token
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
