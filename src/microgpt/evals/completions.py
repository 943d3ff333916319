"""Answer-checked evaluation of a chat model: complete left-padded prompts with the KV cache until
end-of-turn, score the completions with a reward function, pass@1 (greedy) and the sampled reward.
What GRPO samples and validates with, the arithmetic task's pass@1, and SFT's exact match use."""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence

import torch

from microgpt.core.errors import ConfigError
from microgpt.core.model import GPT
from microgpt.core.tokenizer import Tokenizer
from microgpt.data.arithmetic import exact_answer
from microgpt.data.prompts import PromptRow, collate_prompts

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


