"""stage=dpo: preference-pair formats, the reply-only scores, the loss at the start, and real runs
(the held-out chosen-minus-rejected margin rises, exact resume, DDP, bad records)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from conftest import assert_clean_error, assert_resume_is_exact, run_cli
from microgpt.core.chat import ChatTokenizer
from microgpt.core.errors import DataError
from microgpt.core.model import GPT, GPTConfig
from microgpt.core.tokenizer import CharTokenizer
from microgpt.data.preferences import collate_pairs, pair_of, preference_data, scored
from microgpt.lightning.objectives.dpo import DPO, reply_logprobs
from posttrain import TINY, preference_pairs

USER = [{"role": "user", "content": "ab"}]


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    root = tmp_path_factory.mktemp("pairs")
    preference_pairs(root / "train.jsonl", 300, seed=1)
    preference_pairs(root / "val.jsonl", 40, seed=2)
    return root


def dpo_args(pretrained, pairs, *extra: str) -> list[str]:
    return ["stage=dpo", f"init_from={pretrained}", f"data.path={pairs / 'train.jsonl'}",
            f"data.val_path={pairs / 'val.jsonl'}", *TINY, "optim.lr=3e-3", *extra]


def test_pair_formats():
    assert pair_of({"prompt": "ab", "chosen": "ab", "rejected": "ba"}, "r") == (
        USER, [{"role": "assistant", "content": "ab"}], [{"role": "assistant", "content": "ba"}])
    whole = {"chosen": USER + [{"role": "assistant", "content": "ab"}], "rejected": USER + [{"role": "assistant", "content": "ba"}]}
    assert pair_of(whole, "r") == pair_of({"prompt": USER, "chosen": "ab", "rejected": "ba"}, "r")
    with pytest.raises(DataError, match="record 7.*rejected"):
        pair_of({"prompt": "ab", "chosen": "ab"}, "record 7")
    with pytest.raises(DataError, match="differ only in their last"):
        pair_of({"chosen": USER + [{"role": "assistant", "content": "a"}],
                 "rejected": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "b"}]}, "r")


def test_only_the_reply_is_scored_and_chosen_rows_come_first():
    tok = ChatTokenizer(CharTokenizer("ab"))  # a=0 b=1 eot=2; user=4 assistant=5 end=6
    chosen = scored(tok, USER, [{"role": "assistant", "content": "ab"}])
    assert chosen.ids == [2, 4, 0, 1, 6, 5, 0, 1, 6]
    assert chosen.trained == [False] * 6 + [True] * 3
    rejected = scored(tok, USER, [{"role": "assistant", "content": "b"}])
    batch = collate_pairs([(chosen, rejected)], pad_id=tok.eot)
    assert batch["ids"][1].tolist() == [2, 4, 0, 1, 6, 5, 1, 6, 2] and batch["trained"][1].sum() == 2


def test_the_loss_starts_at_log_two_and_follows_the_formula():
    torch.manual_seed(0)
    tok = ChatTokenizer(CharTokenizer("ab"))
    model = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=16, block_size=16, vocab_size=tok.vocab_size))
    batch = collate_pairs([(scored(tok, USER, [{"role": "assistant", "content": "ab"}]),
                            scored(tok, USER, [{"role": "assistant", "content": "ba"}]))], pad_id=tok.eot)
    objective = DPO(beta=0.5)

    class Module:
        pass

    module = Module()
    module.model = model
    objective.set_reference(GPT(model.config).requires_grad_(False))
    objective.reference.load_state_dict(model.state_dict())
    assert float(objective.scores(model, module, batch)["loss"].detach()) == pytest.approx(math.log(2), abs=1e-6)
    with torch.no_grad():
        model.lm_head.weight.add_(0.3 * torch.randn_like(model.lm_head.weight))
    s = objective.scores(model, module, batch)
    policy, reference = reply_logprobs(model, batch, tok.vocab_size), reply_logprobs(objective.reference, batch, tok.vocab_size)
    margin = 0.5 * ((policy[0] - reference[0]) - (policy[1] - reference[1]))
    assert float(s["loss"].detach()) == pytest.approx(float(-torch.nn.functional.logsigmoid(margin.detach())), abs=1e-6)


def held_out_margin(model: GPT, tokenizer: ChatTokenizer, path) -> float:
    """Mean chosen-minus-rejected log-probability of the pairs in `path`."""
    data = preference_data({"kind": "preferences", "path": str(path), "val_path": str(path), "batch_size": 8},
                           tokenizer, seed=0, block_size=model.config.block_size)
    batch = data.collate(data.val)
    with torch.no_grad():
        logp = reply_logprobs(model.eval(), batch, model.config.vocab_size)
    half = logp.numel() // 2
    return float((logp[:half] - logp[half:]).mean())


def test_dpo_raises_the_held_out_margin(tmp_path, pretrained, pairs):
    from microgpt.io.init_from import chat_start
    from microgpt.io.loading import load_model

    result = run_cli("train", *dpo_args(pretrained, pairs, "max_steps=40", "eval_every=20"),
                     f"hydra.run.dir={tmp_path / 'dpo'}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    after = load_model(tmp_path / "dpo" / "checkpoints" / "last.ckpt")
    before = chat_start(str(pretrained)).model
    start, end = held_out_margin(before, after.tokenizer, pairs / "val.jsonl"), held_out_margin(after.model, after.tokenizer, pairs / "val.jsonl")
    assert end > start + 1.0, (start, end)
    logged = (tmp_path / "dpo" / "metrics.csv").read_text()
    assert "val/reward_accuracy" in logged and "train/reward_margin" in logged


def test_dpo_resumes_exactly(tmp_path, pretrained, pairs):
    assert_resume_is_exact(dpo_args(pretrained, pairs, "max_steps=8", "eval_every=4", "checkpoint_every=4"),
                           tmp_path, resume_step=4)


def test_dpo_under_ddp_cpu(tmp_path, pretrained, pairs):
    result = run_cli("train", *dpo_args(pretrained, pairs, "max_steps=4", "eval_every=4", "trainer=ddp_cpu"),
                     f"hydra.run.dir={tmp_path / 'ddp'}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert torch.load(tmp_path / "ddp" / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 4


def test_bad_dpo_input_is_one_line(tmp_path, pretrained, pairs):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "ab", "chosen": "ab", "rejected": "ba"}) + "\n" + json.dumps({"prompt": "ab"}) + "\n")
    result = run_cli("train", *dpo_args(pretrained, pairs, "max_steps=2"), f"data.path={bad}",
                     f"hydra.run.dir={tmp_path / 'a'}", cwd=tmp_path)
    assert_clean_error(result, "record 1", "chosen")
    no_start = run_cli("train", "stage=dpo", f"data.path={pairs / 'train.jsonl'}", *TINY, f"hydra.run.dir={tmp_path / 'b'}",
                       cwd=tmp_path)
    assert_clean_error(no_start, "init_from")
    beta = run_cli("train", *dpo_args(pretrained, pairs, "max_steps=2", "objective.beta=0"), f"hydra.run.dir={tmp_path / 'c'}",
                   cwd=tmp_path)
    assert_clean_error(beta, "objective.beta")


def test_the_arithmetic_pairs_read_as_preferences(tmp_path):
    """The shipped task's pairs (python -m microgpt.evals.arithmetic dpo): a near miss rejected, never
    a character the right answers lack (a minus sign for sums)."""
    from microgpt.evals.arithmetic import write_dpo_jsonl

    path = write_dpo_jsonl(tmp_path / "pairs.jsonl", 60, digits=1, seed=3)
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(records) == 60
    for r in records:
        a, b = r["prompt"][0]["content"].rstrip("=").split("+")
        assert r["chosen"] == str(int(a) + int(b)) and r["rejected"] != r["chosen"] and int(r["rejected"]) >= 0
    data = preference_data({"kind": "preferences", "path": str(path), "val_fraction": 0.1, "batch_size": 4},
                           {"kind": "char"}, seed=0, block_size=32)
    assert len(data.train) + len(data.val) == 60 and "-" not in data.tokenizer.base.chars
