"""Model FLOPs utilisation on CPU: a training step of `micro` and of a `gpt2_124m`-shaped GPT, in fp32
and with bf16 autocast, against this machine's measured matmul peak in the same precision.

    python bench/bench_mfu.py [--reps 3] [--gpt2-seq 1024]

FLOPs per token and the peak come from `microgpt.flops` (the same numbers the Throughput callback
logs as train/mfu): `flops_per_token(config, T)` x tokens / step seconds / `measure_matmul_flops`.
A step is forward, backward and a fused AdamW update; fp32 and bf16 steps alternate; medians.
"""

from __future__ import annotations

import argparse
import contextlib

import torch

from common import Row, interleaved, median, print_rows

# (label, model settings, micro-batch, sequence length)
CASES = [
    ("micro (8k vocab)", dict(n_layer=4, n_head=12, n_embd=384, block_size=512, vocab_size=8192), 4, 512),
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
    from microgpt.flops import flops_per_token, measure_matmul_flops
    from microgpt.model import GPT, GPTConfig

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--gpt2-seq", type=int, default=1024, help="sequence length of the gpt2_124m step")
    args = parser.parse_args(argv)

    peaks = {"fp32": measure_matmul_flops("cpu", torch.float32, size=1024, seconds=1.0),
             "bf16": measure_matmul_flops("cpu", torch.bfloat16, size=1024, seconds=1.0)}
    rows = [Row("mfu", f"measured matmul peak (1024^2, best of 1 s), {name}", f"{peak / 1e9:.0f} GFLOP/s")
            for name, peak in peaks.items()]
    for label, settings, batch_size, seq in CASES:
        if label.startswith("gpt2"):
            seq = args.gpt2_seq
        torch.manual_seed(0)
        config = GPTConfig(**settings)
        model = GPT(config)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
        batch = torch.randint(0, config.vocab_size, (batch_size, seq + 1))
        times = interleaved({p: (lambda bf16=(p == "bf16"): training_step(model, optimizer, batch, bf16))
                             for p in peaks}, args.reps)
        flops = flops_per_token(config, seq) * batch_size * seq
        for precision, values in times.items():
            seconds = median(values)
            mfu = flops / seconds / peaks[precision]
            rows.append(Row("mfu", f"{label}, {batch_size} x {seq}, {precision}{' autocast' if precision == 'bf16' else ''}",
                            f"MFU {mfu:.1%} ({flops / seconds / 1e9:.0f} GFLOP/s, {seconds:.2f} s/step, "
                            f"{batch_size * seq / seconds:,.0f} tok/s)"))
        speedup = median(times["fp32"]) / median(times["bf16"])
        rows.append(Row("mfu", f"{label}: bf16 autocast step speed-up over fp32", f"{speedup:.2f}x"))
        del model, optimizer
    print_rows(f"MFU on CPU ({torch.get_num_threads()} threads, {args.reps} interleaved reps, medians)", rows)
    return rows


if __name__ == "__main__":
    main()
