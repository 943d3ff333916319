"""A task with answers a program can check: multi-digit arithmetic ("23+58=" -> "81"), and the
reward functions GRPO scores completions with (exact answers; GSM8K-style final numbers).

The held-out problems are fixed by the problem itself, not by a seed: a problem is held out when
a stable hash of its text falls in one fifth of the hash range. Training problems (for SFT,
pretraining text or GRPO, at any seed and size) are drawn from the other four fifths, so they
never meet a held-out problem, and every stage scores its pass@1 on the same set."""

from __future__ import annotations

import functools
import math
import random
import re
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

from microgpt.core.errors import ConfigError

OPERATORS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}
HELD_OUT_SHARE = 5  # one problem in five (by hash) is held out
ENUMERATE_UP_TO = 200_000  # problem spaces this small are listed whole; larger ones are sampled


@dataclass(frozen=True)
class Problem:
    question: str  # "23+58="
    answer: str  # "81"

    def messages(self, with_answer: bool = False) -> list[dict]:
        """The problem as a chat: the user asks the question; the assistant's reply is the answer."""
        turns = [{"role": "user", "content": self.question}]
        return turns + [{"role": "assistant", "content": self.answer}] if with_answer else turns


def problem(a: int, op: str, b: int) -> Problem:
    return Problem(f"{a}{op}{b}=", str(OPERATORS[op](a, b)))


def is_held_out(question: str) -> bool:
    return zlib.crc32(question.encode()) % HELD_OUT_SHARE == 0


def check_task(digits: int, operators: Sequence[str]) -> None:
    if isinstance(digits, bool) or not isinstance(digits, int) or not 1 <= digits <= 18:
        raise ConfigError(f"data.digits must be an integer from 1 to 18 (operands below 10**digits), got {digits!r}")
    unknown = [op for op in operators if op not in OPERATORS]
    if not operators or unknown:
        raise ConfigError(f"data.operators={list(operators)!r}: choose from {list(OPERATORS)}")


def problems(n: int, digits: int, operators: Sequence[str] = ("+",), seed: int = 0,
             held_out: bool = False) -> list[Problem]:
    """`n` distinct problems with operands below 10**digits, drawn with `seed` from the held-out
    fifth (`held_out=True`) or from the rest."""
    check_task(digits, operators)
    operators = tuple(dict.fromkeys(operators))
    there = available(digits, operators, held_out)
    if n > there:
        what = "held-out" if held_out else "training"
        raise ConfigError(f"asked for {n} {what} problems with digits={digits} and operators={list(operators)}, but "
                          f"{there} can be drawn; ask for fewer or raise data.digits")
    rng = random.Random(seed)
    if space_size(digits, operators) <= ENUMERATE_UP_TO:
        return rng.sample(_pool(digits, operators, held_out), n)
    limit, seen, found = 10**digits, set(), []
    while len(found) < n:  # at most a tenth of the space is asked for: rejection sampling ends quickly
        p = problem(rng.randrange(limit), rng.choice(operators), rng.randrange(limit))
        if p.question not in seen and is_held_out(p.question) == held_out:
            seen.add(p.question)
            found.append(p)
    return found


def space_size(digits: int, operators: Sequence[str]) -> int:
    return 10 ** (2 * digits) * len(operators)


def available(digits: int, operators: Sequence[str], held_out: bool = False) -> int:
    """How many distinct problems `problems` can draw: all of a small space's, a tenth of a large one."""
    check_task(digits, operators)
    operators = tuple(dict.fromkeys(operators))
    if space_size(digits, operators) > ENUMERATE_UP_TO:
        return space_size(digits, operators) // 10
    return len(_pool(digits, operators, held_out))


@functools.cache
def _pool(digits: int, operators: tuple[str, ...], held_out: bool) -> list[Problem]:
    limit = 10**digits
    every = (problem(a, op, b) for op in operators for a in range(limit) for b in range(limit))
    return [p for p in every if is_held_out(p.question) == held_out]


# --- rewards: reward(completion, answer) -> a number, 1.0 for a right answer ---

def exact_answer(completion: str, answer: str) -> float:
    """1.0 when the completion (its end-of-turn already cut) is exactly the answer, spaces aside."""
    return float(completion.strip() == answer.strip())


NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def final_number(text: str) -> float | None:
    """The answer a GSM8K-style text gives: the number after its last "####", else its last number."""
    if "####" in text:
        text = text.rsplit("####", 1)[1]
        found = NUMBER.findall(text)[:1]
    else:
        found = NUMBER.findall(text)[-1:]
    if not found:
        return None
    try:
        return float(found[0].replace(",", ""))
    except ValueError:  # "1,2.3,4": not one number
        return None


def gsm8k_answer(completion: str, answer: str) -> float:
    """1.0 when the completion's final number equals the reference's (GSM8K answers end "#### 72")."""
    got, want = final_number(completion), final_number(answer)
    return float(got is not None and want is not None and math.isclose(got, want, rel_tol=0.0, abs_tol=1e-6))
