"""Model FLOPs per token and the hardware's peak FLOP/s: the two halves of MFU.

MFU (model FLOPs utilisation, PaLM appendix B) = FLOPs the model needs per token x tokens/s,
divided by what the hardware could do at peak. Only the model's arithmetic counts: recomputation,
padding waste and communication do not, so MFU compares fairly across implementations.
"""

from __future__ import annotations

import functools
import time

import torch

from microgpt.core.model import GPTConfig

# Dense (no 2:4 sparsity) peak FLOP/s per GPU from NVIDIA's datasheets, by matmul precision.
# "tf32" is what fp32 training gets with torch.set_float32_matmul_precision("high"/"medium").
PEAK_FLOPS: dict[str, dict[str, float]] = {
    "H100 PCIe": {"bf16": 756e12, "tf32": 378e12, "fp32": 51.2e12},
    "H100 NVL": {"bf16": 835e12, "tf32": 417.5e12, "fp32": 60e12},
    "H100": {"bf16": 989.4e12, "tf32": 494.7e12, "fp32": 66.9e12},  # SXM5
    "H200": {"bf16": 989.4e12, "tf32": 494.7e12, "fp32": 66.9e12},  # SXM; same chip as H100 SXM, more memory
    "A100": {"bf16": 312e12, "tf32": 156e12, "fp32": 19.5e12},
}


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


def precision_family(precision: str | None) -> str:
    """The PEAK_FLOPS column a Lightning `precision` setting runs its matmuls in."""
    p = str(precision or "32")
    if "16" in p:
        return "bf16"  # fp16 and bf16 tensor cores have the same peak
    return "fp32" if torch.get_float32_matmul_precision() == "highest" else "tf32"


def gpu_peak_flops(device_name: str, precision: str | None) -> float | None:
    """Peak FLOP/s from the table for a CUDA device name (e.g. 'NVIDIA H100 80GB HBM3'); None if unknown."""
    for key, peaks in PEAK_FLOPS.items():  # the more specific names come first
        if all(word.lower() in device_name.lower() for word in key.split()):
            return peaks[precision_family(precision)]
    return None


@functools.lru_cache(maxsize=None)
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


def resolve_peak_flops(setting, device: torch.device, precision: str | None) -> tuple[float | None, str]:
    """The per-device peak FLOP/s MFU divides by, and where it came from.

    `setting`: a number (FLOP/s, e.g. 989e12), `auto` (the datasheet table for known GPUs, else no
    MFU), `measure` (time a matmul here), or null (no MFU). `auto` does not measure a CPU: on a busy
    machine a short measurement came out 10x low (MFU above 1), so that is left to the user.
    """
    if setting is None:
        return None, "off"
    if isinstance(setting, str) and setting not in ("auto", "measure"):
        try:
            setting = float(setting)
        except ValueError:
            from microgpt.core.errors import ConfigError

            raise ConfigError(
                f"callbacks.throughput.peak_flops must be a number of FLOP/s (e.g. 989e12), auto, measure "
                f"or null, got {setting!r}"
            ) from None
    if not isinstance(setting, str):
        return float(setting), "given"
    if setting == "auto":
        name = torch.cuda.get_device_name(device) if device.type == "cuda" else device.type
        peak = gpu_peak_flops(name, precision) if device.type == "cuda" else None
        if peak is None:
            return None, f"no datasheet peak for {name}"
        return peak, f"{name}, {precision_family(precision)} datasheet"
    dtype = torch.bfloat16 if precision_family(precision) == "bf16" else torch.float32
    return measure_matmul_flops(device.type, dtype), f"measured {dtype} matmul on {device.type}"
