"""The parts a transformer block is built from: norms, MLPs and rotary positions (with scaling)."""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from microgpt.core.config import GPTConfig


class RMSNorm(nn.Module):
    """Root-mean-square norm with a gain and no bias; computed in fp32, as Llama / Qwen3 / OLMo 2 do."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        normed = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * normed.to(x.dtype)


# Weights at least this large (768 x 768 and up) are read faster by oneDNN on several cores;
# below it the call's own overhead (~50 us) outweighs the gain. Measured in bench/bench_generate.py.
_SPREAD_MIN_WEIGHT = 1 << 19
_SPREAD_MAX_ROWS = 16


def _onednn_linear():
    op = getattr(torch.ops.mkldnn, "_linear_pointwise", None)
    return op if op is not None and torch.backends.mkldnn.is_available() else None


class Linear(nn.Linear):
    """nn.Linear whose one-token products on CPU without autograd (decoding) read the weights faster.

    Eagerly, few-row products run on oneDNN, which spreads one matrix-vector product over all cores:
    `F.linear` goes to MKL, whose matrix-vector product uses one core (decoding a 124M model in float32
    read its weights at 8 GB/s on 2 cores that stream 17). In a compiled graph (`compile_decode_step`)
    a single row becomes a multiply-and-sum that inductor fuses into one vectorized reduction over the
    weights, which read them 1.3x faster than oneDNN (bench/bench_matvec.py). Training, evaluation
    and long prompts keep F.linear."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Autograd first: a training forward stops at one call.
        if not torch.is_grad_enabled() and self._decoding(x):
            if torch.compiler.is_compiling():
                if x.numel() == self.in_features:  # one token: with more, the fused loop would read the weights once per token
                    y = (x.unsqueeze(-2) * self.weight).sum(-1)
                    return y if self.bias is None else y + self.bias
            elif self._spread(x):  # eager only: inductor cannot lower this call
                return _ONEDNN_LINEAR(x.contiguous(), self.weight, self.bias, "none", [], "")
        return F.linear(x, self.weight, self.bias)

    def _decoding(self, x: torch.Tensor) -> bool:
        return (x.device.type == "cpu" and x.dtype == self.weight.dtype and type(self.weight) is nn.Parameter
                and not torch.is_autocast_enabled("cpu"))

    def _spread(self, x: torch.Tensor) -> bool:
        w = self.weight
        return (_ONEDNN_LINEAR is not None and x.dtype == torch.float32 and w.numel() >= _SPREAD_MIN_WEIGHT
                and x.numel() <= _SPREAD_MAX_ROWS * w.size(1) and torch.get_num_threads() > 1)


_ONEDNN_LINEAR = _onednn_linear()


def make_norm(config: GPTConfig, dim: int | None = None) -> nn.Module:
    dim = dim or config.n_embd
    if config.norm == "rmsnorm":
        return RMSNorm(dim, config.norm_eps)
    return nn.LayerNorm(dim, eps=config.norm_eps, bias=config.bias)


def activation(name: str, x: torch.Tensor) -> torch.Tensor:
    """The MLP's nonlinearity on c_fc's output; SwiGLU's halves are [gate | up]."""
    if name == "swiglu":
        gate, up = x.chunk(2, dim=-1)
        return F.silu(gate) * up
    if name == "relu2":
        return F.relu(x).square()
    # gelu_tanh: what GPT-2 was trained with, so its weights reproduce exactly.
    return F.gelu(x, approximate="tanh" if name == "gelu_tanh" else "none")


def fc_width(config: GPTConfig, hidden: int) -> int:
    """c_fc's output width: gated MLPs compute the gate and the value in one matmul."""
    return 2 * hidden if config.mlp == "swiglu" else hidden


class MLP(nn.Module):
    def __init__(self, config: GPTConfig, hidden: int | None = None) -> None:
        super().__init__()
        hidden = hidden or config.hidden_size
        self.kind = config.mlp
        self.c_fc = Linear(config.n_embd, fc_width(config, hidden), bias=config.bias)
        self.c_proj = Linear(hidden, config.n_embd, bias=config.bias)
        self.c_proj.residual_scaled_init = True
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(activation(self.kind, self.c_fc(x))))


def rope_frequencies(dim: int, base: float, config: GPTConfig | None = None) -> tuple[torch.Tensor, float]:
    """RoPE's inverse frequencies for `dim` rotated features, and the factor cos/sin are scaled by.

    The scalings are the ones the exported families use, computed as `transformers` does so the
    weights of those families reproduce: linear (positions divided by the factor), Llama 3's
    wavelength-banded interpolation, and YaRN's ramp between interpolation and extrapolation.
    """
    inv_freq = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))
    scaling = config.rope_scaling if config is not None else None
    if scaling is None:
        return inv_freq, 1.0
    factor = float(config.rope_factor)
    if scaling == "linear":
        return inv_freq / factor, 1.0
    original = config.rope_original_block_size
    if scaling == "llama3":
        return llama3_frequencies(inv_freq, factor, original, config.rope_low_freq_factor, config.rope_high_freq_factor), 1.0
    return yarn_frequencies(dim, base, factor, original, config.rope_beta_fast, config.rope_beta_slow)


def llama3_frequencies(inv_freq: torch.Tensor, factor: float, original: int, low: float, high: float) -> torch.Tensor:
    wavelen = 2 * math.pi / inv_freq
    low_wavelen, high_wavelen = original / low, original / high
    scaled = torch.where(wavelen > low_wavelen, inv_freq / factor, inv_freq)
    smooth = (original / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
    return torch.where(medium, smoothed, scaled)


def yarn_frequencies(dim: int, base: float, factor: float, original: int,
                     beta_fast: float, beta_slow: float) -> tuple[torch.Tensor, float]:
    def correction_dim(rotations: float) -> float:
        return dim * math.log(original / (rotations * 2 * math.pi)) / (2 * math.log(base))

    low = max(math.floor(correction_dim(beta_fast)), 0)
    high = min(math.ceil(correction_dim(beta_slow)), dim - 1)
    if low == high:
        high += 0.001  # a zero-width ramp
    ramp = ((torch.arange(dim // 2, dtype=torch.float32) - low) / (high - low)).clamp(0, 1)
    pos_freqs = base ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim)
    extrapolate = 1 - ramp
    inv_freq = (1.0 / (factor * pos_freqs)) * (1 - extrapolate) + (1.0 / pos_freqs) * extrapolate
    attention_factor = 0.1 * math.log(factor) + 1.0 if factor > 1 else 1.0
    return inv_freq, attention_factor


class RotaryEmbedding(nn.Module):
    """Rotary position embedding (Su et al. 2021), rotate-half layout, computed in fp32."""

    def __init__(self, head_dim: int, max_len: int, base: float, config: GPTConfig | None = None) -> None:
        super().__init__()
        inv_freq, scale = rope_frequencies(head_dim, base, config)
        angles = torch.outer(torch.arange(max_len, dtype=torch.float32), inv_freq)
        angles = torch.cat([angles, angles], dim=-1)
        # Not persistent: derived from the config, so checkpoints stay free of them.
        self.register_buffer("cos", angles.cos() * scale, persistent=False)
        self.register_buffer("sin", angles.sin() * scale, persistent=False)

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
