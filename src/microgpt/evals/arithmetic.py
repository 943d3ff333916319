"""Answer-checked evaluation: complete prompts with the KV cache until end-of-turn, score the
completions with a reward function, report pass@1 (greedy) on a held-out set. What GRPO samples
and validates with, and the arithmetic task's command line:

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
import numbers
import random
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from microgpt.core.errors import ConfigError, report_user_errors
from microgpt.core.model import GPT
from microgpt.core.tokenizer import Tokenizer
from microgpt.data.arithmetic import available, exact_answer, problems
from microgpt.data.prompts import PromptRow, arithmetic_prompts, collate_prompts, encoded

Reward = Callable[[str, str], float]


def complete(model: GPT, ids: torch.Tensor, pad: torch.Tensor, eot: int, max_new_tokens: int,
             temperature: float = 0.0, top_k: int | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """(B, n <= max_new_tokens) tokens continuing left-padded prompts `ids` (B, P), in eval mode
    and without gradients; a row that ended repeats `eot` after it. Temperature 0: greedy."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            new = list(model.generate_stream(ids, max_new_tokens, temperature=temperature, top_k=top_k, eot=eot,
                                             generator=generator, pad=pad))
    finally:
        model.train(was_training)
    return torch.stack(new, dim=1) if new else ids.new_empty(ids.size(0), 0)


def completion_mask(tokens: torch.Tensor, eot: int) -> torch.Tensor:
    """(B, n) bool: the completion's own tokens, up to and including its first `eot` (stopping is
    part of the answer); what follows it is filler."""
    ended = (tokens == eot).long()
    return (ended.cumsum(dim=1) - ended) == 0


def completion_texts(tokenizer: Tokenizer, tokens: torch.Tensor, eot: int) -> list[str]:
    """Each row's text before its first `eot`."""
    texts = []
    for row in tokens.tolist():
        texts.append(tokenizer.decode(row[: row.index(eot)] if eot in row else row))
    return texts


def reward_name(reward: Reward) -> str:
    fn = getattr(reward, "func", reward)  # a functools.partial (`_partial_: true`) names its function
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', type(fn).__name__)}"


def score(reward: Reward, texts: Sequence[str], answers: Sequence[str], where: Sequence[str]) -> list[float]:
    """The reward of each completion; a reward that raises or gives no finite number is a
    ConfigError naming the function and the prompt."""
    values = []
    for text, answer, prompt in zip(texts, answers, where):
        try:
            value = reward(text, answer)
        except Exception as e:
            raise ConfigError(f"reward function {reward_name(reward)} raised {type(e).__name__}: {e} on {prompt} "
                              f"(completion {text!r}); fix it or choose another with "
                              f"objective.reward._target_=...") from e
        if not isinstance(value, numbers.Real) or not math.isfinite(value):
            raise ConfigError(f"reward function {reward_name(reward)} returned {short(value)} ({type(value).__name__}) on "
                              f"{prompt}; a reward must return a finite number (1.0 for a right answer)")
        values.append(float(value))
    return values


def short(value, width: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= width else text[: width - 3] + "..."


def greedy_scores(model: GPT, tokenizer, batch: dict, reward: Reward, max_new_tokens: int) -> tuple[list[float], torch.Tensor]:
    """(rewards, completion lengths) of greedy completions of a collated prompt batch."""
    tokens = complete(model, batch["ids"], batch["pad"], tokenizer.end_of_turn, max_new_tokens)
    texts = completion_texts(tokenizer, tokens, tokenizer.end_of_turn)
    lengths = completion_mask(tokens, tokenizer.end_of_turn).sum(dim=1)
    return score(reward, texts, batch["answers"], batch["where"]), lengths


def pass_at_1(model: GPT, tokenizer, rows: Sequence[PromptRow], reward: Reward = exact_answer,
              max_new_tokens: int = 8, batch_size: int = 64) -> dict[str, float]:
    """pass@1 (the share of prompts whose greedy completion earns a reward of 1 or more), the mean
    reward and the mean completion length in tokens."""
    device = model.transformer.wte.weight.device
    rewards, lengths = [], []
    for i in range(0, len(rows), batch_size):
        batch = collate_prompts(list(rows[i : i + batch_size]), tokenizer.eot)
        batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
        values, length = greedy_scores(model, tokenizer, batch, reward, max_new_tokens)
        rewards += values
        lengths += length.tolist()
    n = max(1, len(rewards))
    return {"pass@1": sum(r >= 1.0 for r in rewards) / n, "reward": sum(rewards) / n,
            "completion_len": sum(lengths) / n, "problems": len(rewards)}


def sampled_reward(model: GPT, tokenizer, rows: Sequence[PromptRow], reward: Reward = exact_answer,
                   samples: int = 16, temperature: float = 1.0, max_new_tokens: int = 8, seed: int = 0) -> float:
    """The mean reward of `samples` completions per prompt sampled at `temperature`: what GRPO
    raises, with less noise than a greedy pass@1 on a small set."""
    device = model.transformer.wte.weight.device
    generator = torch.Generator(device=device).manual_seed(seed)
    total = 0.0
    for row in rows:
        batch = collate_prompts([row] * samples, tokenizer.eot)
        tokens = complete(model, batch["ids"].to(device), batch["pad"].to(device), tokenizer.end_of_turn, max_new_tokens,
                          temperature, generator=generator)
        total += sum(score(reward, completion_texts(tokenizer, tokens, tokenizer.end_of_turn), batch["answers"], batch["where"]))
    return total / max(1, len(rows) * samples)


def held_out_rows(tokenizer, digits: int, n: int, operators: Sequence[str] = ("+",), seed: int = 0) -> list[PromptRow]:
    """The held-out arithmetic problems GRPO validates on with the same settings (data=arithmetic)."""
    settings = {"digits": digits, "operators": list(operators), "n_train": 0, "n_val": n, "val_seed": seed}
    rows, _ = encoded(tokenizer, arithmetic_prompts(settings)[1], limit=math.inf)  # a problem is a few tokens
    return rows


def write_sft_jsonl(path: str | Path, n: int, digits: int, seed: int = 0, operators: Sequence[str] = ("+",)) -> Path:
    """`n` training problems as SFT conversations: {"messages": [user question, assistant answer]}."""
    path = Path(path)
    lines = (json.dumps({"messages": p.messages(with_answer=True)}) for p in problems(n, digits, operators, seed))
    path.write_text("".join(line + "\n" for line in lines))
    return path


def write_dpo_jsonl(path: str | Path, n: int, digits: int, seed: int = 0, operators: Sequence[str] = ("+",)) -> Path:
    """`n` training problems as preference pairs: the right answer chosen, a near miss (off by 1 to 10)
    rejected, so the pairs teach exactness rather than the answer's format."""
    rng = random.Random(seed)
    lines = []
    for p in problems(n, digits, operators, seed):
        wrong = int(p.answer) + rng.choice((-1, 1)) * rng.randint(1, 10)
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
                         samples: int = 0) -> dict:
    """`pass_at_1` of a chat checkpoint on `n` held-out problems; with `samples`, also the mean
    reward of that many completions per problem sampled at temperature 1 (`sampled`)."""
    from microgpt.core.chat import ChatTokenizer
    from microgpt.io.checkpoints import model_from_checkpoint, read_checkpoint

    model, tokenizer = model_from_checkpoint(read_checkpoint(ckpt), source=ckpt)
    if not isinstance(tokenizer, ChatTokenizer):
        raise ConfigError(f"{ckpt} has no chat tokens (a pretrained model): fine-tune it first with stage=sft")
    rows = held_out_rows(tokenizer, digits, n, operators)
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
