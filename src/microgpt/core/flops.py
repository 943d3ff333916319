"""Model FLOPs per token, the numerator of MFU; and a measured matmul peak for hardware with no datasheet.

MFU (model FLOPs utilisation, PaLM appendix B) = FLOPs the model needs per token x tokens/s,
divided by what the hardware could do at peak. Only the model's arithmetic counts: recomputation,
padding waste and communication do not, so MFU compares fairly across implementations. The
datasheet peaks of GPUs are Lightning Fabric's (`microgpt.lightning.callbacks.throughput`).
"""

from __future__ import annotations

import functools
import time

import torch

from microgpt.core.model import GPTConfig


def param_count(config: GPTConfig) -> int:
    """Parameters of `GPT(config)` that take part in matmuls: all but the learned position table.

    Counted from the config alone (the tied LM head shares the token embedding), so FLOPs can be
    estimated for models too large to build here.
    """
    C, b = config.n_embd, int(config.bias)
    per_layer = 12 * C * C + 2 * C + 11 * b * C  # qkv + proj + 4x MLP weights; 2 LayerNorms; biases
    final_norm = C + b * C
    return config.n_layer * per_layer + final_norm + config.padded_vocab_size * C


def flops_per_token(config: GPTConfig, seq_len: int | None = None) -> float:
    """Training FLOPs (forward + backward) per token: 6N plus attention's 12 * layers * width * T.

    6N: each weight does a multiply-add (2 FLOPs) forward and twice that backward. The attention
    scores and their weighted sum add 2 * 2 * T * C per layer and token forward, x3 with backward
    (not halved for causality, as nanoGPT and PaLM count it). T is the trained sequence length.
    """
    T = seq_len or config.block_size
    return 6.0 * param_count(config) + 12.0 * config.n_layer * config.n_embd * T


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
