"""Parameters, FLOPs and KV-cache bytes of every architecture, from its config alone; and a
measured matmul peak for hardware with no datasheet.

MFU (model FLOPs utilisation, PaLM appendix B) = FLOPs the model needs per token x tokens/s,
divided by what the hardware could do at peak. Only the model's arithmetic counts: recomputation,
padding waste and communication do not, so MFU compares fairly across implementations. The
datasheet peaks of GPUs are Lightning Fabric's (`microgpt.lightning.callbacks.throughput`).

Counted from the config, not from a built model, so the figures exist for shapes too large to
build here (Mixtral's 46.7B); tests/test_presets.py checks them against `GPT(config)` on the meta
device and against `transformers`' own models.
"""

from __future__ import annotations

import functools
import time

import torch

from microgpt.core.config import GPTConfig
from microgpt.core.layers import fc_width


def _linear(n_in: int, n_out: int, bias: bool) -> int:
    return n_in * n_out + (n_out if bias else 0)


def _norm(config: GPTConfig, dim: int) -> int:
    """RMSNorm: a gain; LayerNorm: a gain and, with biases on, a bias."""
    return dim * (2 if config.norm == "layernorm" and config.bias else 1)


def attention_params(config: GPTConfig) -> int:
    """One layer's attention: its projections and any QK-norm or latent norm gains."""
    C, b, H = config.n_embd, config.bias, config.n_head
    if config.attention == "mla":
        qk, latent, rope = config.qk_nope_head_dim + config.qk_rope_head_dim, config.kv_lora_rank, config.qk_rope_head_dim
        rank = config.q_lora_rank
        # DeepSeek's full-rank q_proj has no bias whatever attention_bias says
        q = C * H * qk if rank is None else _linear(C, rank, b) + rank + rank * H * qk
        kv = _linear(C, latent + rope, b) + latent + latent * H * (config.qk_nope_head_dim + config.v_head_dim)
        return q + kv + _linear(H * config.v_head_dim, C, b)
    q_width, kv_width = H * config.head_size, config.kv_heads * config.head_size
    qk_norm = {"none": 0, "head": 2 * config.head_size, "full": q_width + kv_width}[config.qk_norm]
    return _linear(C, q_width + 2 * kv_width, b) + _linear(q_width, C, b) + qk_norm


def _dense_mlp(config: GPTConfig, hidden: int) -> int:
    return _linear(config.n_embd, fc_width(config, hidden), config.bias) + _linear(hidden, config.n_embd, config.bias)


def _expert(config: GPTConfig) -> int:
    """One routed expert: the dense MLP's matrices at the expert's hidden size, never biases."""
    hidden = config.expert_hidden_size
    return (fc_width(config, hidden) + hidden) * config.n_embd


def mlp_params(config: GPTConfig, index: int, active: bool = False) -> int:
    """Layer `index`'s MLP: dense, or the router, the experts (`active`: the top-k a token uses)
    and any shared experts of an MoE layer."""
    if not config.is_moe_layer(index):
        return _dense_mlp(config, config.hidden_size)
    experts = config.n_experts_per_tok if active else config.n_experts
    shared = _dense_mlp(config, config.n_shared_experts * config.expert_hidden_size) if config.n_shared_experts else 0
    return config.n_experts * config.n_embd + experts * _expert(config) + shared


def _count(config: GPTConfig, active: bool) -> int:
    layers = sum(attention_params(config) + mlp_params(config, i, active) + 2 * _norm(config, config.n_embd)
                 for i in range(config.n_layer))
    embeddings = config.padded_vocab_size * config.n_embd * (1 if config.tie_embeddings else 2)
    return layers + _norm(config, config.n_embd) + embeddings


def param_count(config: GPTConfig) -> int:
    """Parameters of `GPT(config)` but a learned position table (a lookup, no matmul): all of them
    with RoPE or no positions. An MoE model's total, every expert included; a tied LM head is the
    token embedding, counted once."""
    return _count(config, active=False)


def active_param_count(config: GPTConfig) -> int:
    """The parameters one token passes through: `param_count` with each MoE layer's experts cut to
    the `n_experts_per_tok` it is routed to (the router and shared experts always run)."""
    return _count(config, active=True)


def non_embedding_param_count(config: GPTConfig) -> int:
    """`param_count` less the token embedding (as `GPT.count_params(non_embedding=True)`); an
    untied LM head stays in."""
    return param_count(config) - config.padded_vocab_size * config.n_embd


def flops_per_token(config: GPTConfig, seq_len: int | None = None) -> float:
    """Training FLOPs (forward + backward) per token: 6N plus attention's scores and weighted sum.

    N is the active parameter count less an untied token embedding (a lookup; a tied one is
    counted once, as the LM head's matmul): each weight does a multiply-add (2 FLOPs) forward and
    twice that backward. Norm gains and biases are in N too (a rounding error of a per-element
    op, kept so the count of the default GPT is the one it always was). Attention adds, per layer
    and token, 2 * T * (q/k width) for the scores and 2 * T * (v width) for their weighted sum
    forward, x3 with backward (not halved for causality, as nanoGPT and PaLM count it): for the
    default model 12 * layers * width * T. T is the trained sequence length.
    """
    T = seq_len or config.block_size
    n = active_param_count(config) - (0 if config.tie_embeddings else config.padded_vocab_size * config.n_embd)
    if config.attention == "mla":
        widths = config.n_head * (config.qk_nope_head_dim + config.qk_rope_head_dim + config.v_head_dim)
    else:
        widths = 2 * config.n_head * config.head_size
    return 6.0 * n + 6.0 * config.n_layer * widths * T


def kv_cache_bytes_per_token(config: GPTConfig, dtype: torch.dtype = torch.float32) -> int:
    """What a KV cache holds per token of context, all layers: keys and values of `n_kv_head`
    heads (GQA/MQA), or latent attention's normalised latent plus its one shared rotary key."""
    if config.attention == "mla":
        per_layer = config.kv_lora_rank + config.qk_rope_head_dim
    else:
        per_layer = 2 * config.kv_heads * config.head_size
    return config.n_layer * per_layer * dtype.itemsize


@functools.cache
def measure_matmul_flops(device: str = "cpu", dtype: torch.dtype = torch.float32, size: int = 512,
                         seconds: float = 0.2) -> float:
    """FLOP/s of square matmuls on this device: a practical peak where no datasheet applies (CPUs).

    Measured once per process; the best of several timed rounds, so a busy moment counts less.
    """
    # A private generator: drawing from the global RNG here would shift dropout's random stream
    # and break exact resume (the measurement runs again in the resumed process).
    generator = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(size, size, device=device, dtype=dtype, generator=generator)
    b = torch.randn(size, size, device=device, dtype=dtype, generator=generator)
    a @ b  # warm up kernels and caches
    best = 0.0
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline or best == 0.0:
        start = time.perf_counter()
        for _ in range(4):
            a @ b
        if device != "cpu":
            torch.cuda.synchronize()
        best = max(best, 4 * 2 * size**3 / (time.perf_counter() - start))
    return best
