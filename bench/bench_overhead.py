"""Framework overhead: training tokens/s of the real training path vs a minimal hand-written
PyTorch loop, on CPU, for `model=nano` and `model=micro`.

    python bench/bench_overhead.py [--reps 3] [--models nano micro]

Both sides train the same `microgpt.core.model.GPT` on the same tokens (the default corpus, character
tokenizer), same micro-batch, fused AdamW with the same groups, LR schedule and gradient clipping
at 1.0, fp32. The framework side is `microgpt.lightning.training.train` on the composed `train` config
(Lightning Trainer, every default callback, CSV logger) exactly as `python -m microgpt.train`
runs it. Steady state: the first `--skip` steps of each run (start-up, first calls) are left out;
the rate is the mean period from one batch end to the next over the remaining steps, so data
fetching, logging and callbacks count. Validation and checkpoints are placed after the last timed
step. The two run alternately, `--reps` times each; medians.
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time

import torch
from common import Row, compose_train, interleaved, median, print_rows, with_step_clock

# (micro-batch, timed steps) per model: a few seconds of steady state each on 2 CPU cores.
SHAPES = {"nano": (16, 20), "micro": (4, 6)}


def framework_run(model: str, batch: int, steps: int, skip: int):
    """Seconds per steady-state step of `microgpt.lightning.training.train`, and its `StepClock`."""
    from microgpt.lightning.training import train

    total = skip + steps
    with tempfile.TemporaryDirectory() as tmp:
        cfg = compose_train(f"model={model}", f"data.batch_size={batch}", f"max_steps={total}",
                            f"eval_every={total}", f"checkpoint_every={total}", "eval_batches=1",
                            f"schedule.warmup_steps={skip}",
                            "callbacks.text_samples=null", f"paths.output_dir={tmp}")
        clock = with_step_clock(cfg)
        train(cfg)
        return clock.last.steady_seconds_per_step(skip), clock.last


def hand_written_run(tokens: torch.Tensor, block: int, settings: dict, batch: int, steps: int, skip: int) -> float:
    """nanoGPT-style: random windows from a tensor, forward, backward, clip, fused AdamW step."""
    from microgpt.core.model import GPT, GPTConfig

    torch.manual_seed(1337)
    model = GPT(GPTConfig.from_dict(settings))
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": 0.1},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    optimizer = torch.optim.AdamW(groups, lr=1e-3, betas=(0.9, 0.99), eps=1e-8, fused=True)
    total, warmup = skip + steps, skip

    def lr_at(step: int) -> float:
        if step < warmup:
            return 1e-3 * (step + 1) / warmup
        return 1e-4 + 0.5 * (1e-3 - 1e-4) * (1 + math.cos(math.pi * min(1.0, (step - warmup) / total)))

    ends = []
    for step in range(total):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step)
        starts = torch.randint(len(tokens) - block - 1, (batch,))
        windows = torch.stack([tokens[i : i + block + 1] for i in starts.tolist()])
        _, loss = model(windows[:, :-1], windows[:, 1:])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        ends.append(time.perf_counter())
    ends = ends[skip:]
    return (ends[-1] - ends[0]) / (len(ends) - 1)


def main(argv: list[str] | None = None) -> list[Row]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--skip", type=int, default=3, help="start-up steps left out of each run")
    parser.add_argument("--models", nargs="+", default=list(SHAPES))
    args = parser.parse_args(argv)

    rows, detail = [], []
    for model in args.models:
        batch, steps = SHAPES[model]
        per_step: dict[str, list[float]] = {"microgpt.lightning.training.train": [], "hand-written loop": []}
        seen = {}

        def framework():
            seconds, clock = framework_run(model, batch, steps, args.skip)
            per_step["microgpt.lightning.training.train"].append(seconds)
            data = clock.datamodule  # the hand-written loop trains on exactly these tokens and settings
            seen.update(tokens=torch.from_numpy(data.train_tokens.astype("int64")), block=data.block_size,
                        settings=clock.model_settings)

        def hand_written():
            per_step["hand-written loop"].append(hand_written_run(
                seen["tokens"], seen["block"], seen["settings"], batch, steps, args.skip))

        interleaved({"framework": framework, "hand-written": hand_written}, args.reps, warmup=0)
        block = seen["block"]
        tokens_per_step = batch * block
        rates = {name: [tokens_per_step / s for s in values] for name, values in per_step.items()}
        ratios = [f / h for f, h in zip(rates["microgpt.lightning.training.train"], rates["hand-written loop"])]
        ratio = median(ratios)
        for name, values in rates.items():
            detail.append(Row("overhead", f"{model} ({batch} x {block}), {name}",
                              f"{median(values):,.0f} tok/s (runs: {', '.join(f'{v:,.0f}' for v in values)})"))
        rows.append(Row("overhead", f"{model} ({batch} x {block}): framework / hand-written tokens/s",
                        f"{ratio:.3f}x ({median(rates['microgpt.lightning.training.train']):,.0f} vs "
                        f"{median(rates['hand-written loop']):,.0f} tok/s; per-rep ratios "
                        f"{', '.join(f'{r:.2f}' for r in ratios)})", ">= 0.95x", ratio >= 0.95))
    print_rows(f"Framework overhead, CPU, fp32, {args.reps} interleaved reps, steady state after {args.skip} steps",
               detail + rows)
    return rows


if __name__ == "__main__":
    main()
