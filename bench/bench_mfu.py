"""Model FLOPs utilisation on CPU: a training step of `micro` and of a `gpt2_124m`-shaped GPT, in fp32
and with bf16 autocast, against this machine's measured matmul peak in the same precision.

    python bench/bench_mfu.py [--reps 3] [--gpt2-seq 1024]

FLOPs per token and the peak come from `microgpt.core.flops`: `flops_per_token(config, T)` (the count
the throughput callback's train/mfu uses) x tokens / step seconds / `measure_matmul_flops` (its peak
under `callbacks.throughput.peak_flops=measure`; a CPU has no datasheet peak in Fabric's table).
A step is forward, backward and a fused AdamW update; fp32 and bf16 steps alternate. On a shared
machine the peak moves with the load, so it is measured again right before every timed step and
each step is divided by its own peak; medians of those ratios.
"""

from __future__ import annotations

import argparse
import contextlib
import time

import torch
from common import Row, interleaved, median, print_rows

# (label, model settings, micro-batch, sequence length)
CASES = [
    ("micro (8k vocab)", dict(n_layer=4, n_head=12, n_embd=384, block_size=512, vocab_size=8192), 2, 512),
    ("gpt2_124m shape", dict(n_layer=12, n_head=12, n_embd=768, block_size=1024, vocab_size=50257), 1, 1024),
]


def training_step(model, optimizer, batch: torch.Tensor, bf16: bool) -> None:
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    with autocast:
        _, loss = model(batch[:, :-1], batch[:, 1:])
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def main(argv: list[str] | None = None) -> list[Row]:
    from microgpt.core.flops import flops_per_token, measure_matmul_flops
    from microgpt.core.model import GPT, GPTConfig

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--gpt2-seq", type=int, default=1024, help="sequence length of the gpt2_124m step")
    args = parser.parse_args(argv)

    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16}

    def peak(precision: str) -> float:  # unwrapped: a fresh measurement each call, not the cached one
        return measure_matmul_flops.__wrapped__("cpu", dtypes[precision], size=1024, seconds=0.5)

    rows, peaks_seen = [], {p: [] for p in dtypes}
    for label, settings, batch_size, seq in CASES:
        if label.startswith("gpt2"):
            seq = args.gpt2_seq
        torch.manual_seed(0)
        config = GPTConfig(**settings)
        model = GPT(config)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
        batch = torch.randint(0, config.vocab_size, (batch_size, seq + 1))
        flops = flops_per_token(config, seq) * batch_size * seq
        mfus: dict[str, list[float]] = {p: [] for p in dtypes}
        times: dict[str, list[float]] = {p: [] for p in dtypes}

        def timed_step(precision: str) -> None:
            peak_now = peak(precision)
            peaks_seen[precision].append(peak_now)
            start = time.perf_counter()
            training_step(model, optimizer, batch, precision == "bf16")
            times[precision].append(time.perf_counter() - start)
            mfus[precision].append(flops / times[precision][-1] / peak_now)

        for precision in dtypes:  # warm-up: allocations, optimizer state, kernel selection
            training_step(model, optimizer, batch, precision == "bf16")
        interleaved({p: (lambda p=p: timed_step(p)) for p in dtypes}, args.reps, warmup=0)
        for precision, values in times.items():
            seconds = median(values)
            rows.append(Row("mfu", f"{label}, {batch_size} x {seq}, {precision}{' autocast' if precision == 'bf16' else ''}",
                            f"MFU {median(mfus[precision]):.1%} ({seconds:.2f} s/step, "
                            f"{batch_size * seq / seconds:,.0f} tok/s)"))
        speedup = median(times["fp32"]) / median(times["bf16"])
        rows.append(Row("mfu", f"{label}: bf16 autocast step speed-up over fp32", f"{speedup:.2f}x"))
    rows += [Row("mfu", f"matmul peak measured during the run (1024^2), {p}",
                 f"median {median(v) / 1e9:.0f}, best {max(v) / 1e9:.0f} GFLOP/s") for p, v in peaks_seen.items()]
    print_rows(f"MFU on CPU ({torch.get_num_threads()} threads, {args.reps} interleaved reps, medians)", rows)
    return rows


if __name__ == "__main__":
    main()
