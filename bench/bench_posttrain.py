"""The whole CPU post-training path on the shipped arithmetic task, each stage's before / after:
pretrain on sums as text -> stage=sft -> stage=dpo and stage=grpo (each from the SFT model).

    python bench/bench_posttrain.py                 # 1-digit addition, 2 x 64 model, one thread
    python bench/bench_posttrain.py --digits 2      # 2-digit addition, 4 x 128 model (~15 min)

The runs are bench_posttrain_grpo.py's recipe (pretrain, SFT and GRPO as a user runs them); this
adds the pretrained model's pass@1 as a chat model (where SFT starts: the chat tokens' rows at the
mean embedding) and a DPO run from the SFT model on pairs of training problems (the right sum
chosen, a near miss rejected), scored by the mean log p(chosen) - log p(rejected) of held-out pairs.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from bench_posttrain_grpo import RECIPES, model_args, scores, stages, train
from common import Row, load_average, print_rows


def pair_margin(ckpt: Path, pairs: Path) -> float:
    """Mean log p(chosen) - log p(rejected) of the pairs in `pairs`, under the checkpoint's model."""
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
            margins += (logp[: logp.numel() // 2] - logp[logp.numel() // 2 :]).tolist()
    return sum(margins) / len(margins)


def main(argv: list[str] | None = None) -> list[Row]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--digits", type=int, default=1, choices=sorted(RECIPES))
    parser.add_argument("--dpo-steps", type=int, default=40)
    parser.add_argument("--dpo-lr", type=float, default=5e-4)
    args = parser.parse_args(argv)
    from microgpt.evals.arithmetic import problem_rows, write_dpo_jsonl
    from microgpt.evals.completions import pass_at_1
    from microgpt.io.init_from import chat_start

    r, load_before = RECIPES[args.digits], load_average()
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        seconds = stages(root, args.digits, r, [])
        write_dpo_jsonl(root / "pairs.jsonl", r["sft_records"], args.digits, seed=r["data_seed"] + 2)
        write_dpo_jsonl(root / "pairs_val.jsonl", 50, args.digits, seed=r["data_seed"] + 3)
        sft = root / "sft" / "checkpoints" / "last.ckpt"
        seconds["dpo"] = train(root / "dpo", "stage=dpo", *model_args(r), f"init_from={sft}", f"data.path={root / 'pairs.jsonl'}",
                               f"data.val_path={root / 'pairs_val.jsonl'}", f"max_steps={args.dpo_steps}",
                               f"eval_every={args.dpo_steps}", f"optim.lr={args.dpo_lr}", "data.batch_size=16")
        start = chat_start(str(root / "pretrain" / "checkpoints" / "last.ckpt"))
        model, tokenizer = start.model, start.tokenizer
        rows = problem_rows(tokenizer, args.digits, r["n_val"])
        before_sft = pass_at_1(model, tokenizer, rows, max_new_tokens=args.digits + 3)
        after = {name: scores(root / run / "checkpoints" / "last.ckpt", args.digits, r["n_val"])
                 for name, run in (("sft", "sft"), ("dpo", "dpo"), ("grpo", next(p.name for p in root.glob("grpo_*"))))}
        margins = [pair_margin(root / run / "checkpoints" / "last.ckpt", root / "pairs_val.jsonl") for run in ("sft", "dpo")]
    task = f"{args.digits}-digit addition, {r['n_val']} held-out problems, greedy pass@1"
    out = [
        Row("post-training", f"pretrain {r['pretrain_steps']} steps on sums as text ({seconds['pretrain']:.0f} s)",
            f"pass@1 {before_sft['pass@1']:.3f} as a chat model (before SFT; {task})"),
        Row("post-training", f"stage=sft {r['sft_steps']} steps ({seconds['sft']:.0f} s)",
            f"pass@1 {before_sft['pass@1']:.3f} -> {after['sft']['pass@1']:.3f}", "rises", after["sft"]["pass@1"] > before_sft["pass@1"]),
        Row("post-training", f"stage=dpo {args.dpo_steps} steps from SFT ({seconds['dpo']:.0f} s)",
            f"held-out log p(chosen) - log p(rejected) {margins[0]:.2f} -> {margins[1]:.2f}; pass@1 "
            f"{after['sft']['pass@1']:.3f} -> {after['dpo']['pass@1']:.3f}", "margin rises", margins[1] > margins[0]),
        Row("post-training", f"stage=grpo {r['grpo_steps']} steps from SFT ({seconds['grpo']:.0f} s)",
            f"pass@1 {after['sft']['pass@1']:.3f} -> {after['grpo']['pass@1']:.3f}; sampled reward "
            f"{after['sft']['sampled']:.3f} -> {after['grpo']['sampled']:.3f}", "reward rises",
            after["grpo"]["sampled"] > after["sft"]["sampled"]),
    ]
    print_rows(f"CPU post-training path (one thread; load average before: {load_before}, after: {load_average()})", out)
    return out


if __name__ == "__main__":
    main()
