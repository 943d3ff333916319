"""stage=grpo: the arithmetic task (problems, held-out set, rewards, SFT data), prompt rows, and real
runs from a pretrained + SFT policy (held-out reward rises, exact resume, DDP, bad reward functions)."""

from __future__ import annotations

import csv
import json
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

from conftest import assert_clean_error, assert_resume_is_exact, compose_train, run_cli, torch_threads
from microgpt.core.chat import ChatTokenizer
from microgpt.core.errors import ConfigError, DataError
from microgpt.data.arithmetic import exact_answer, gsm8k_answer, is_held_out, problems
from microgpt.data.chat_records import conversation
from microgpt.data.prompts import prompt_data
from microgpt.evals.arithmetic import checkpoint_pass_at_1, problem_rows, write_sft_jsonl, write_text
from microgpt.evals.completions import score
from microgpt.lightning.objectives.grpo import GRPO, group_advantages
from microgpt.lightning.training import train
from posttrain import TINY

# One-digit addition: 73 training problems, 27 held out (by hash); answers are 1-2 digits + end-of-turn.
TRAINING, HELD_OUT = 73, 27
TASK = ["data.digits=1", f"data.n_train={TRAINING}", f"data.n_val={HELD_OUT}", "objective.max_new_tokens=4"]


@pytest.fixture(scope="module")
def start_policy(tmp_path_factory) -> Path:
    """The policy GRPO starts from, made the README's way: pretraining on lines of sums, then a short
    SFT on the chat-format problems. About one answer in ten it samples to its training problems is
    right (measured 0.09-0.10 at four seeds; fewer, and more varied, on the held-out ones)."""
    root = tmp_path_factory.mktemp("start")
    with one_thread():
        return starting_policy(root)


@contextmanager
def one_thread():
    """One torch thread: the same arithmetic, so the same starting policy, on machines of any core count."""
    with torch_threads(1):
        yield


def starting_policy(root: Path) -> Path:
    write_text(root / "sums.txt", 4000, digits=1)
    write_sft_jsonl(root / "sft.jsonl", 73, digits=1)
    train(compose_train(*TINY, "data=files", f"data.paths=[{root / 'sums.txt'}]", "max_steps=1000", "eval_every=1000",
                        "checkpoint_every=1000", "optim.lr=3e-3", "schedule.warmup_steps=20", output_dir=root / "pre"))
    train(compose_train("stage=sft", *TINY, f"init_from={root / 'pre/checkpoints/last.ckpt'}", f"data.path={root / 'sft.jsonl'}",
                        "data.batch_size=8", "max_steps=50", "eval_every=50", "checkpoint_every=50", "optim.lr=2e-3",
                        output_dir=root / "sft"))
    return root / "sft" / "checkpoints" / "last.ckpt"


def grpo_args(start: Path, *extra: str) -> list[str]:
    return ["stage=grpo", f"init_from={start}", *TINY, *TASK, "data.batch_size=32", "optim.lr=5e-4",
            "schedule.warmup_steps=0", *extra]


def training_prompt_reward(ckpt: Path) -> float:
    """The mean reward of 16 sampled answers to each of the problems GRPO trains on (data.seed=0)."""
    return checkpoint_pass_at_1(str(ckpt), digits=1, n=TRAINING, operators=["+"], max_new_tokens=4, samples=16,
                                held_out=False)["sampled"]


def test_problems_are_seeded_and_the_held_out_ones_never_train():
    train_set = problems(73, digits=1, seed=0)
    assert train_set == problems(73, digits=1, seed=0) and problems(20, 1, seed=1) != problems(20, 1, seed=2)
    held = problems(HELD_OUT, digits=1, held_out=True)
    assert len({p.question for p in train_set + held}) == 73 + HELD_OUT  # every one-digit sum, once
    for seed in range(3):
        drawn = problems(1000, digits=3, operators="+-*", seed=seed)
        assert not any(is_held_out(p.question) for p in drawn)
        assert all(str(eval(p.question[:-1])) == p.answer for p in drawn)
    assert all(is_held_out(p.question) for p in problems(100, digits=3, seed=5, held_out=True))
    with pytest.raises(ConfigError, match="73 can be drawn"):
        problems(74, digits=1)
    with pytest.raises(ConfigError, match="operators"):
        problems(5, digits=1, operators="/")


def test_rewards():
    assert exact_answer(" 81 ", "81") == 1.0 and exact_answer("810", "81") == 0.0 and exact_answer("", "81") == 0.0
    assert gsm8k_answer("18 - 6 = 12 ... #### 12", "She has 12 left.\n#### 12") == 1.0
    assert gsm8k_answer("so the answer is 1,200.", "#### 1200") == 1.0  # the last number, commas dropped
    assert gsm8k_answer("#### -3.50", "#### -3.5") == 1.0
    assert gsm8k_answer("#### 13 because 12", "#### 12") == 0.0  # the number after ####, not the last
    assert gsm8k_answer("no idea", "#### 12") == 0.0
    assert score(gsm8k_answer, ["#### 4", "5"], ["#### 4", "#### 4"], ["a", "b"]) == [1.0, 0.0]
    advantages = group_advantages(torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0]), 4, 1e-4)
    assert advantages[:4].sum().abs() < 1e-5 and advantages[0] > 0 > advantages[1]
    assert advantages[4:].abs().max() == 0  # a group that all agrees teaches nothing


def test_sft_data_is_what_stage_sft_reads_and_holds_no_held_out_problem(tmp_path):
    path = write_sft_jsonl(tmp_path / "sft.jsonl", 500, digits=2, seed=3)
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(records) == 500
    for i, record in enumerate(records):
        user, assistant = conversation(record, f"record {i}")
        assert not is_held_out(user["content"]) and str(eval(user["content"][:-1])) == assistant["content"]


def test_prompt_rows_are_left_padded_for_generation(tmp_path):
    data = prompt_data({"kind": "prompts", "source": "arithmetic", "digits": 2, "n_train": 50, "n_val": 10, "seed": 1},
                       {"kind": "char"}, seed=0, block_size=32)
    tok = data.tokenizer
    assert isinstance(tok, ChatTokenizer) and set("0123456789+=") <= set(tok.base.chars)
    batch = data.collate(data.train[:8])
    assert batch["ids"].shape == (8, max(len(r.ids) for r in data.train[:8]))
    for row, ids, pad in zip(data.train[:8], batch["ids"], batch["pad"]):
        assert ids[pad:].tolist() == list(row.ids) and ids[-1] == tok.role_id("assistant")
    assert batch["answers"] == [r.answer for r in data.train[:8]]
    # The scorers' rows (evals/arithmetic.py) are the problems such a run trains and validates on.
    assert problem_rows(tok, 2, 50, seed=1, held_out=False) == data.train
    assert problem_rows(tok, 2, 10) == data.val
    # GSM8K-style records: a question and an answer ending "#### <number>".
    gsm = tmp_path / "gsm.jsonl"
    gsm.write_text("".join(json.dumps({"question": f"What is {i} plus {i}?", "answer": f"{i}+{i}={2 * i}\n#### {2 * i}"}) + "\n"
                           for i in range(12)))
    settings = {"kind": "prompts", "source": "records", "path": str(gsm), "prompt_field": "question", "n_val": 2}
    records = prompt_data(settings, {"kind": "char"}, seed=0, block_size=64)
    assert (len(records.train), len(records.val)) == (10, 2) and records.val[-1].answer.endswith("#### 22")
    assert gsm8k_answer("it is 22", records.val[-1].answer) == 1.0
    with pytest.raises(DataError, match="record 0.*'prompt'"):
        prompt_data({**settings, "prompt_field": "prompt"}, {"kind": "char"}, seed=0, block_size=64)


def test_grpo_raises_the_reward_on_its_prompts_above_the_starting_policy(tmp_path, start_policy):
    run_dir = tmp_path / "grpo"
    result = run_cli("train", *grpo_args(start_policy, "max_steps=60", "eval_every=20", "checkpoint_every=60"),
                     f"hydra.run.dir={run_dir}", cwd=tmp_path, env={"OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    last = run_dir / "checkpoints" / "last.ckpt"
    with one_thread():
        before, after = training_prompt_reward(start_policy), training_prompt_reward(last)
        pass_after = checkpoint_pass_at_1(str(last), digits=1, n=HELD_OUT, operators=["+"], max_new_tokens=4)["pass@1"]
        some = checkpoint_pass_at_1(str(last), digits=1, n=TRAINING, operators=["+"], max_new_tokens=4, held_out=False, first=5)
    assert some["problems"] == 5  # scored on the first 5 of the run's 73 training problems
    # GRPO can only sharpen what the starting policy half knows: with nothing right there is no signal.
    assert before > 0.03, f"the starting policy learned too little to start from ({before}): retune start_policy"
    # Measured on one thread by bench/bench_posttrain_grpo.py --seed S (the seed of every stage): 0.10 -> 0.44
    # at 1337 (this test's), 0.13 -> 0.41 at 0, 0.05 -> 0.21 at 3, 0.09 -> 0.24 at 4. 0.05 is over 3 standard
    # errors of a mean of 73 x 16 sampled rewards near 0.1. The held-out reward is not asserted: at this size
    # whether the rise carries over to unseen sums depends on the seed (0.10 -> 0.27 at 0, 0.05 -> 0.04 at 4).
    assert after > before + 0.05, (before, after)
    with open(run_dir / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    logged = {k for row in rows for k, v in row.items() if v}
    assert {"train/reward_mean", "train/completion_len", "val/pass@1", "val/reward", "val/loss"} <= logged
    final = [row for row in rows if row.get("val/pass@1")][-1]
    assert float(final["val/pass@1"]) == pytest.approx(pass_after, abs=1e-6)  # the same greedy evaluation
    assert float(final["val/loss"]) == pytest.approx(1 - pass_after, abs=1e-6)


def test_grpo_resumes_exactly_with_the_kl_reference(tmp_path, start_policy):
    assert_resume_is_exact(grpo_args(start_policy, "objective.kl=0.05", "data.batch_size=8", "max_steps=4", "eval_every=2",
                                     "checkpoint_every=2", "trainer.log_every_n_steps=1"), tmp_path, resume_step=2)
    with open(tmp_path / "resumed" / "metrics.csv") as f:
        assert any(row.get("train/kl") for row in csv.DictReader(f))


BAD_REWARDS = '''
def raises(completion, answer):
    raise ValueError("cannot parse " + repr(completion))


def words(completion, answer):
    return "right"
'''


def test_a_bad_reward_function_is_one_line_and_keeps_the_checkpoint(tmp_path, start_policy):
    run_dir = tmp_path / "run"
    train(compose_train(*grpo_args(start_policy, "data.batch_size=4", "max_steps=2", "eval_every=2", "checkpoint_every=2"),
                        output_dir=run_dir))
    last = run_dir / "checkpoints" / "last.ckpt"
    saved = last.read_bytes()
    (tmp_path / "bad_rewards.py").write_text(BAD_REWARDS)
    for name, words in (("raises", ["bad_rewards.raises", "ValueError", "problem '"]),
                        ("words", ["bad_rewards.words", "'right'", "finite number", "problem '"])):
        result = run_cli("train", *grpo_args(start_policy, "data.batch_size=4", "max_steps=4", "eval_every=2",
                                             f"objective.reward._target_=bad_rewards.{name}"),
                         f"hydra.run.dir={run_dir}", "ckpt_path=last", cwd=tmp_path, env={"PYTHONPATH": str(tmp_path)})
        assert_clean_error(result, *words)
        assert last.read_bytes() == saved  # the run stopped at step 3, before any save
    assert torch.load(last, weights_only=True)["global_step"] == 2


@pytest.mark.parametrize("settings, words", [
    ({"group_size": 1}, "at least 2"), ({"temperature": 0.0}, "temperature"), ({"kl": -1.0}, "objective.kl"),
    ({"reward": "exact_answer"}, "_target_")])
def test_grpo_settings_that_cannot_work_are_refused(settings, words):
    with pytest.raises(ConfigError, match=words):
        GRPO(**{"reward": exact_answer, **settings})


def test_grpo_under_ddp_cpu(tmp_path, start_policy):
    run_dir = tmp_path / "ddp"
    result = run_cli("train", *grpo_args(start_policy, "trainer=ddp_cpu", "data.batch_size=4", "max_steps=2",
                                         "eval_every=2", "objective.kl=0.05"), f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "MEMBER: 2/2" in result.stdout + result.stderr
    assert torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 2
    with open(run_dir / "metrics.csv") as f:
        passed = [float(row["val/pass@1"]) for row in csv.DictReader(f) if row.get("val/pass@1")]
    # The held-out problems split over the two ranks, and the metric gathered from both.
    assert len(passed) == 1 and round(passed[0] * HELD_OUT, 3).is_integer(), passed
