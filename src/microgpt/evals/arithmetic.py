"""The arithmetic task's held-out problems, pass@1 of a checkpoint on them (evals/completions.py),
its data writers and its command line:

    python -m microgpt.evals.arithmetic sft --out sft.jsonl --n 4000 --digits 2   # SFT conversations
    python -m microgpt.evals.arithmetic dpo --out pairs.jsonl --n 2000 --digits 2  # preference pairs
    python -m microgpt.evals.arithmetic text --out sums.txt --n 20000 --digits 2  # pretraining text
    python -m microgpt.evals.arithmetic pass1 --ckpt run/checkpoints/last.ckpt --digits 2

Every writer draws from the training problems only; `pass1` scores the fixed held-out ones
(microgpt.data.arithmetic), the same ones GRPO's validation uses."""

from __future__ import annotations

import argparse
import json
import math
import random
from collections.abc import Sequence
from pathlib import Path

from microgpt.core.errors import ConfigError, report_user_errors
from microgpt.data.arithmetic import available, exact_answer, problems
from microgpt.data.prompts import PromptRow, arithmetic_prompts, encoded
from microgpt.evals.completions import pass_at_1, sampled_reward


def problem_rows(tokenizer, digits: int, n: int, operators: Sequence[str] = ("+",), seed: int = 0,
                 held_out: bool = True) -> list[PromptRow]:
    """The held-out arithmetic problems GRPO validates on with the same settings (data=arithmetic);
    held_out=False: the training problems a run with data.n_train=`n`, data.seed=`seed` trains on."""
    settings = {"digits": digits, "operators": list(operators), "n_train": 0 if held_out else n,
                "n_val": n if held_out else 0, "seed": seed, "val_seed": seed}
    train, val = arithmetic_prompts(settings)
    rows, _ = encoded(tokenizer, val if held_out else train, limit=math.inf)  # a problem is a few tokens
    return rows


def write_sft_jsonl(path: str | Path, n: int, digits: int, seed: int = 0, operators: Sequence[str] = ("+",)) -> Path:
    """`n` training problems as SFT conversations: {"messages": [user question, assistant answer]}."""
    path = Path(path)
    lines = (json.dumps({"messages": p.messages(with_answer=True)}) for p in problems(n, digits, operators, seed))
    path.write_text("".join(line + "\n" for line in lines))
    return path


def write_dpo_jsonl(path: str | Path, n: int, digits: int, seed: int = 0, operators: Sequence[str] = ("+",)) -> Path:
    """`n` training problems as preference pairs: the right answer chosen, a near miss (off by 1 to 10,
    never below zero) rejected, so the pairs teach exactness rather than the answer's format."""
    rng = random.Random(seed)
    lines = []
    for p in problems(n, digits, operators, seed):
        miss = rng.randint(1, 10)
        right = int(p.answer)
        wrong = right - miss if right - miss >= 0 and rng.random() < 0.5 else right + miss  # no new characters (a minus)
        lines.append(json.dumps({"prompt": p.messages(with_answer=False), "chosen": p.answer, "rejected": str(wrong)}))
    path = Path(path)
    path.write_text("".join(line + "\n" for line in lines))
    return path


def write_text(path: str | Path, n: int, digits: int, seed: int = 0, operators: Sequence[str] = ("+",)) -> Path:
    """`n` lines of training problems with their answers ("23+58=81"), for pretraining: distinct
    problems while there are enough, then the training set again in another order (one digit
    has only 80 of them)."""
    path = Path(path)
    pool = problems(min(n, available(digits, operators)), digits, operators, seed)
    rng = random.Random(seed)
    lines = []
    while len(lines) < n:
        lines += [f"{p.question}{p.answer}\n" for p in rng.sample(pool, len(pool))]
    path.write_text("".join(lines[:n]))
    return path


def checkpoint_pass_at_1(ckpt: str, digits: int, n: int, operators: Sequence[str], max_new_tokens: int,
                         samples: int = 0, held_out: bool = True, first: int | None = None) -> dict:
    """`pass_at_1` of a chat checkpoint on `n` held-out problems (held_out=False: the training
    problems of a run with data.n_train=`n`, data.seed=0), or on the `first` of them (a draw of fewer
    problems is not the start of a larger one); with `samples`, also the mean reward of that many
    completions per problem sampled at temperature 1 (`sampled`)."""
    from microgpt.core.chat import ChatTokenizer
    from microgpt.io.checkpoints import model_from_checkpoint, read_checkpoint

    model, tokenizer = model_from_checkpoint(read_checkpoint(ckpt), source=ckpt)
    if not isinstance(tokenizer, ChatTokenizer):
        raise ConfigError(f"{ckpt} has no chat tokens (a pretrained model): fine-tune it first with stage=sft")
    rows = problem_rows(tokenizer, digits, n, operators, held_out=held_out)[:first]
    result = pass_at_1(model.eval(), tokenizer, rows, exact_answer, max_new_tokens)
    if samples:
        result["sampled"] = sampled_reward(model, tokenizer, rows, exact_answer, samples, max_new_tokens=max_new_tokens)
    return result


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m microgpt.evals.arithmetic", description=__doc__.split("\n\n")[0])
    p.add_argument("what", choices=("sft", "dpo", "text", "pass1"),
                   help="write SFT jsonl, DPO pairs jsonl or pretraining text, or score a checkpoint")
    p.add_argument("--out", help="the file to write (sft, text)")
    p.add_argument("--ckpt", help="the checkpoint to score (pass1)")
    p.add_argument("--n", type=int, default=None, help="problems (sft/text: 4000; pass1: 200, as data=arithmetic)")
    p.add_argument("--digits", type=int, default=2, help="operands below 10**digits")
    p.add_argument("--operators", default="+", help="any of + - *, e.g. +-")
    p.add_argument("--seed", type=int, default=0, help="which training problems (sft, text)")
    p.add_argument("--max-new-tokens", type=int, default=8, help="completion length limit (pass1)")
    p.add_argument("--samples", type=int, default=16, help="pass1: also the mean reward of N sampled answers each (0: no)")
    return p


@report_user_errors
def main(argv: Sequence[str] | None = None) -> None:
    args = parser().parse_args(argv)
    operators = list(dict.fromkeys(args.operators))
    if args.what == "pass1":
        if not args.ckpt:
            raise ConfigError("pass1 needs --ckpt <a checkpoint of stage=sft or stage=grpo>")
        result = checkpoint_pass_at_1(args.ckpt, args.digits, args.n or 200, operators, args.max_new_tokens, args.samples)
        sampled = f"  sampled reward {result['sampled']:.4f}" if args.samples else ""
        print(f"pass@1 {result['pass@1']:.4f}  reward {result['reward']:.4f}{sampled}  completion_len "
              f"{result['completion_len']:.2f}  ({result['problems']} held-out problems, digits={args.digits})")
        return
    if not args.out:
        raise ConfigError(f"{args.what} needs --out <file>")
    write = {"sft": write_sft_jsonl, "dpo": write_dpo_jsonl, "text": write_text}[args.what]
    path = write(args.out, args.n or 4000, args.digits, args.seed, operators)
    print(f"wrote {args.n or 4000} {args.what} problems to {path}")


if __name__ == "__main__":
    main()
