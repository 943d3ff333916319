"""Memory: peak RSS of a `gpt2_124m` training step at micro-batch 1 x 1024 on CPU, next to the
estimate `microgpt.lightning.plan.make_plan` gives for the same run, and the plan it prints for 8 x H200.

    python bench/bench_memory.py [--steps 2]

The step runs in a fresh process (forward, backward, fused AdamW update, fp32) so the peak is the
step's alone; the process's RSS after imports is reported too. The GPU plan comes from the real
entry point: `python -m microgpt.train model=gpt2_124m trainer=8xh200 tokenizer=gpt2 dry_run=true`.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

from common import REPO, Row, compose_train, print_rows

STEP = r"""
import json, sys, torch
from microgpt.core.model import GPT, GPTConfig
# VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the parent across fork and exec.
rss = lambda: next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM")) / 1024
before = rss()
config = GPTConfig.from_dict(json.loads(sys.argv[1]))
model = GPT(config)
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
batch = torch.randint(0, config.vocab_size, (1, config.block_size + 1))
for _ in range(int(sys.argv[2])):
    _, loss = model(batch[:, :-1], batch[:, 1:])
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
print(json.dumps({"before": before, "peak": rss(), "params": model.count_params()}))
"""


def main(argv: list[str] | None = None) -> list[Row]:
    from microgpt.core.model import GPTConfig
    from microgpt.core.tokenizer import TiktokenTokenizer
    from microgpt.lightning.builders import model_settings
    from microgpt.lightning.plan import make_plan

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2)
    args = parser.parse_args(argv)

    cfg = compose_train("model=gpt2_124m", "tokenizer=gpt2", "trainer=cpu", "data.batch_size=1")
    settings = model_settings(cfg, TiktokenTokenizer("gpt2"))
    plan = make_plan(cfg, GPTConfig.from_dict(settings))
    done = subprocess.run([sys.executable, "-c", STEP, json.dumps(settings), str(args.steps)],
                          capture_output=True, text=True, check=True, cwd=REPO)
    measured = json.loads(done.stdout.strip().splitlines()[-1])
    step_gib = (measured["peak"] - measured["before"]) / 1024
    rows = [
        Row("memory", f"gpt2_124m ({measured['params'] / 1e6:.0f}M params), 1 x 1024, CPU fp32: peak RSS",
            f"{measured['peak'] / 1024:.2f} GiB ({measured['before'] / 1024:.2f} GiB after imports, "
            f"so {step_gib:.2f} GiB for the step)"),
        Row("memory", "same run, make_plan estimate (weights + grads + Adam + activations)",
            f"{plan.memory_gib:.2f} GiB (state {plan.state_gib:.2f} + activations {plan.activation_gib:.2f}); "
            f"measured / estimate {step_gib / plan.memory_gib:.2f}"),
    ]
    dry = subprocess.run([sys.executable, "-m", "microgpt.train", "model=gpt2_124m", "trainer=8xh200", "tokenizer=gpt2",
                          "dry_run=true"], capture_output=True, text=True, cwd=REPO)
    table = dict(line.split(None, 1) for line in dry.stdout.splitlines() if line.strip() and len(line.split(None, 1)) == 2)
    if dry.returncode == 0 and "memory_gib" in table:
        rows.append(Row("memory", f"8xh200 plan (dry_run): micro-batch {table.get('micro_batch', '?')} x "
                                  f"{table.get('block_size', '?')}, {table.get('world_size', '?')} GPUs",
                        f"{table['memory_gib']} GiB per GPU (state {table.get('state_gib', '?')} + activations "
                        f"{table.get('activation_gib', '?')})"))
    else:
        rows.append(Row("memory", "8xh200 plan (dry_run)", f"failed: {(dry.stderr or dry.stdout).strip()[-200:]}"))
    print_rows("Memory", rows)
    if dry.returncode == 0:
        print("python -m microgpt.train model=gpt2_124m trainer=8xh200 tokenizer=gpt2 dry_run=true\n" + dry.stdout)
    return rows


if __name__ == "__main__":
    main()
