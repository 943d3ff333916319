"""The whole CPU post-training path on the shipped arithmetic task, with before / after figures:
pretrain on sums as text -> stage=sft -> stage=dpo and stage=grpo (each from the SFT model).

    python bench/bench_posttrain.py                 # 2-digit addition, one thread
    python bench/bench_posttrain.py --digits 1 --quick

Every stage runs as `python -m microgpt.train ...` (a subprocess, as a user runs it); the figures
come from the checkpoints: greedy pass@1 on the fixed held-out problems (never in any training
data), and for DPO the mean chosen-minus-rejected log-probability of held-out pairs.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import Row, load_average, print_rows

THREADS = {"OMP_NUM_THREADS": "1"}
MODEL = ["model.n_layer=4", "model.n_head=4", "model.n_embd=128", "model.block_size=64", "callbacks.progress_bar=null",
         "callbacks.text_samples=null", "trainer.enable_model_summary=false"]


def train(run_dir: Path, *overrides: str) -> float:
    """Seconds of one `python -m microgpt.train` run to its end."""
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "microgpt.train", *MODEL, *overrides, f"hydra.run.dir={run_dir}"],
                            env={**os.environ, **THREADS}, capture_output=True, text=True)
    if result.returncode:
        raise SystemExit(f"{run_dir.name} failed:\n{result.stderr[-3000:]}")
    return time.perf_counter() - start


def pass_at_1(ckpt: Path, digits: int, start_from: Path | None = None) -> dict:
    """Held-out greedy pass@1 of a chat checkpoint, or of `start_from`'s weights as a chat model
    (the chat tokens' rows at the mean embedding: where stage=sft starts)."""
    from microgpt.evals.arithmetic import checkpoint_pass_at_1, held_out_rows
    from microgpt.evals.arithmetic import pass_at_1 as score

    if start_from is None:
        return checkpoint_pass_at_1(str(ckpt), digits, 200, ["+"], 8)
    model, tokenizer = grown(start_from)
    return score(model.eval(), tokenizer, held_out_rows(tokenizer, digits, 200))


def grown(pretrained: Path):
    from microgpt.core.chat import with_chat_tokens
    from microgpt.core.model import GPT, GPTConfig
    from microgpt.io.init_from import initial_weights
    from microgpt.io.loading import load_model

    start = load_model(pretrained)
    tokenizer = with_chat_tokens(start.tokenizer)
    settings = {**start.model.config.to_dict(), "vocab_size": tokenizer.vocab_size}
    model = GPT(GPTConfig.from_dict(settings))
    initial_weights(str(pretrained), model, tokenizer)
    return model, tokenizer


def pair_margin(ckpt: Path, pairs: Path) -> float:
    """Mean log p(chosen) - log p(rejected) over the held-out pairs, for the checkpoint's model."""
    import torch

    from microgpt.data.preferences import preference_data
    from microgpt.io.loading import load_model
    from microgpt.lightning.objectives.dpo import reply_logprobs

    lm = load_model(ckpt)
    data = preference_data({"kind": "preferences", "path": str(pairs), "val_path": str(pairs), "batch_size": 64},
                           lm.tokenizer, seed=0, block_size=lm.model.config.block_size)
    margins = []
    with torch.no_grad():
        for i in range(0, len(data.val), 64):
            logp = reply_logprobs(lm.model, data.collate(data.val[i : i + 64]), lm.model.config.vocab_size)
            half = logp.numel() // 2
            margins += (logp[:half] - logp[half:]).tolist()
    return sum(margins) / len(margins)


def main(argv: list[str] | None = None) -> list[Row]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--digits", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="a quarter of the steps (a smoke run)")
    args = parser.parse_args(argv)
    scale = 4 if args.quick else 1
    steps = {"pretrain": 1200 // scale, "sft": 300 // scale, "dpo": 100 // scale, "grpo": 100 // scale}
    from microgpt.evals.arithmetic import write_dpo_jsonl, write_sft_jsonl, write_text

    load_before, rows = load_average(), []
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        write_text(root / "sums.txt", 20000, args.digits, seed=1)
        write_sft_jsonl(root / "sft.jsonl", 4000, args.digits, seed=2)
        write_dpo_jsonl(root / "pairs.jsonl", 2000, args.digits, seed=3)
        write_dpo_jsonl(root / "pairs_val.jsonl", 200, args.digits, seed=4)
        ckpt = {name: root / name / "checkpoints" / "last.ckpt" for name in steps}
        seconds = {"pretrain": train(root / "pretrain", "data=files", f"data.paths=[{root / 'sums.txt'}]",
                                     f"max_steps={steps['pretrain']}", f"eval_every={steps['pretrain']}", "optim.lr=3e-3")}
        seconds["sft"] = train(root / "sft", "stage=sft", f"init_from={ckpt['pretrain']}", f"data.path={root / 'sft.jsonl'}",
                               f"max_steps={steps['sft']}", f"eval_every={steps['sft']}", "optim.lr=1e-3",
                               "data.batch_size=32")
        seconds["dpo"] = train(root / "dpo", "stage=dpo", f"init_from={ckpt['sft']}", f"data.path={root / 'pairs.jsonl'}",
                               f"data.val_path={root / 'pairs_val.jsonl'}", f"max_steps={steps['dpo']}",
                               f"eval_every={steps['dpo']}", "optim.lr=1e-4")
        seconds["grpo"] = train(root / "grpo", "stage=grpo", f"init_from={ckpt['sft']}", f"data.digits={args.digits}",
                                f"max_steps={steps['grpo']}", f"eval_every={steps['grpo']}", "optim.lr=1e-4")
        before = pass_at_1(ckpt["pretrain"], args.digits, start_from=ckpt["pretrain"])
        after = {name: pass_at_1(ckpt[name], args.digits) for name in ("sft", "dpo", "grpo")}
        margin_sft, margin_dpo = pair_margin(ckpt["sft"], root / "pairs_val.jsonl"), pair_margin(ckpt["dpo"], root / "pairs_val.jsonl")
    task = f"{args.digits}-digit addition, 200 held-out problems"
    rows.append(Row("post-training", f"pretrain {steps['pretrain']} steps on sums as text ({seconds['pretrain']:.0f} s)",
                    f"pass@1 {before['pass@1']:.3f} as a chat model (chat tokens at the mean embedding)"))
    rows.append(Row("post-training", f"stage=sft {steps['sft']} steps ({seconds['sft']:.0f} s)",
                    f"pass@1 {before['pass@1']:.3f} -> {after['sft']['pass@1']:.3f} ({task})"))
    rows.append(Row("post-training", f"stage=dpo {steps['dpo']} steps from SFT ({seconds['dpo']:.0f} s)",
                    f"held-out log p(chosen) - log p(rejected) {margin_sft:.2f} -> {margin_dpo:.2f}; pass@1 "
                    f"{after['sft']['pass@1']:.3f} -> {after['dpo']['pass@1']:.3f}"))
    rows.append(Row("post-training", f"stage=grpo {steps['grpo']} steps from SFT ({seconds['grpo']:.0f} s)",
                    f"pass@1 {after['sft']['pass@1']:.3f} -> {after['grpo']['pass@1']:.3f}; mean reward "
                    f"{after['sft']['reward']:.3f} -> {after['grpo']['reward']:.3f}"))
    print_rows(f"CPU post-training path (one thread; load average before: {load_before}, after: {load_average()})", rows)
    return rows


if __name__ == "__main__":
    main()
