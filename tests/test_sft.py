"""stage=sft: the chat template's loss mask, the record formats, packing with attention kept inside
each conversation, and real fine-tuning runs (better answers, exact resume, DDP, bad records)."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import assert_clean_error, assert_resume_is_exact, run_cli
from microgpt.core.chat import ChatTokenizer, check_messages, render
from microgpt.core.errors import DataError
from microgpt.core.layers import Linear
from microgpt.core.logprobs import masked_targets
from microgpt.core.model import GPT, GPTConfig
from microgpt.core.tokenizer import CharTokenizer
from microgpt.data.chat_data import sft_data
from microgpt.data.chat_records import conversation, read_records
from microgpt.lightning.objectives.sft import SFT
from posttrain import TINY, copy_task

pytestmark = pytest.mark.heavy  # long real-process runs: handed to a worker first (conftest.py)


@pytest.fixture(scope="module")
def chats(tmp_path_factory):
    path = tmp_path_factory.mktemp("chats") / "copy.jsonl"
    copy_task(path, 300, seed=1)
    return path


def sft_args(pretrained, chats, *extra: str) -> list[str]:
    return ["stage=sft", f"init_from={pretrained}", f"data.path={chats}", *TINY, "optim.lr=3e-3", *extra]


def test_only_assistant_tokens_carry_loss_token_by_token():
    tok = ChatTokenizer(CharTokenizer("abc"))  # a=0 b=1 c=2, eot=3; system=4 user=5 assistant=6 end=7
    turns = check_messages([{"role": "system", "content": "c"}, {"role": "user", "content": "ab"},
                            {"role": "assistant", "content": "ba"}, {"role": "user", "content": "c"},
                            {"role": "assistant", "content": "a"}], "test")
    rendered = render(tok, turns)
    assert rendered.ids == [3, 4, 2, 7, 5, 0, 1, 7, 6, 1, 0, 7, 5, 2, 7, 6, 0, 7]
    assert [i for i, t in enumerate(rendered.trained) if t] == [9, 10, 11, 16, 17]  # "ba" <|end|>, "a" <|end|>
    ids = torch.tensor([rendered.ids])
    targets = masked_targets(ids, torch.tensor([rendered.trained]))
    assert targets[0].tolist() == [-1] * 8 + [1, 0, 7] + [-1] * 4 + [0, 7]
    prompt = render(tok, turns[:2], generation_prompt=True)
    assert prompt.ids[-1] == tok.role_id("assistant") and not any(prompt.trained)
    assert tok.decode(rendered.ids[:4]) == "<|endoftext|><|system|>c<|end|>"


def test_every_record_format_reads_from_jsonl_and_parquet(tmp_path):
    records = [{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]},
               {"instruction": "say", "input": "hi", "output": "yo"},
               {"prompt": "hi", "completion": "yo"},
               {"prompt": [{"role": "system", "content": "s"}, {"role": "user", "content": "hi"}], "completion": "yo"}]
    jsonl = tmp_path / "r.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in records))
    import datasets

    datasets.Dataset.from_list([{"prompt": "hi", "completion": "yo"}]).to_parquet(str(tmp_path / "r.parquet"))
    read = [conversation(r, where) for where, r in read_records({"path": str(jsonl)})]
    assert read[0] == read[2] == [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]
    assert read[1][0] == {"role": "user", "content": "say\n\nhi"}
    assert [t["role"] for t in read[3]] == ["system", "user", "assistant"]
    (where, record), = read_records({"path": str(tmp_path / "r.parquet")})
    assert conversation(record, where, system="be brief")[0] == {"role": "system", "content": "be brief"}


@pytest.mark.parametrize("record, words", [
    ({"messages": [{"role": "user", "content": "hi"}]}, ["record 1", "no assistant turn"]),
    ({"messages": [{"role": "robot", "content": "hi"}, {"role": "assistant", "content": "x"}]}, ["record 1", "robot"]),
    ({"question": "hi", "answer": "yo"}, ["record 1", "question"]),
])
def test_a_bad_record_is_named(tmp_path, record, words):
    path = tmp_path / "bad.jsonl"
    good = {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}
    path.write_text(json.dumps(good) + "\n" + json.dumps(record) + "\n")
    with pytest.raises(DataError) as caught:
        for where, r in read_records({"path": str(path)}):
            conversation(r, where)
    for w in words:
        assert w in str(caught.value)


def test_packed_conversations_score_as_they_do_alone(tmp_path, chats):
    """The same held-out loss packed (several per window, document masking) as one per row."""
    settings = {"kind": "chat", "path": str(chats), "val_fraction": 0.2, "overlong": "truncate", "batch_size": 8}
    packed = sft_data({**settings, "pack": True}, {"kind": "char"}, seed=0, block_size=64)
    single = sft_data({**settings, "pack": False}, {"kind": "char"}, seed=0, block_size=64)
    assert len(packed.val) < len(single.val) and max(len(w.documents) and w.documents[-1] for w in packed.val) > 1
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=64, vocab_size=packed.tokenizer.vocab_size)).eval()

    class Module:  # what the objective reads of GPTModule
        pass

    module = Module()
    module.model = model
    losses = []
    for data in (packed, single):
        objective = SFT()
        for start in range(0, len(data.val), 8):
            objective.validation_update(module, data.collate(data.val[start : start + 8]))
        losses.append(float(objective.validation_metrics()["val/loss"]))
    assert losses[0] == pytest.approx(losses[1], abs=1e-5)


def test_overlong_conversations_are_truncated_or_dropped_and_counted(tmp_path, caplog):
    path = tmp_path / "long.jsonl"
    rows = [{"prompt": "a" * n, "completion": "b"} for n in (3, 4, 100, 5, 200)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "val.jsonl").write_text(json.dumps({"prompt": "ab", "completion": "b"}) + "\n")
    settings = {"kind": "chat", "path": str(path), "val_path": str(tmp_path / "val.jsonl"), "batch_size": 2, "pack": False}
    cut = sft_data({**settings, "overlong": "truncate"}, {"kind": "char"}, seed=0, block_size=16)
    dropped = sft_data({**settings, "overlong": "drop"}, {"kind": "char"}, seed=0, block_size=16)
    assert cut.notes[0].startswith("2 of 6 conversations") and dropped.notes[0].startswith("2 of 6 conversations")
    assert max(len(w.ids) for w in cut.train + cut.val) <= 17
    assert len(dropped.train) == 3 and len(dropped.val) == 1  # the two long ones left out
    # truncation keeping no assistant token drops the row: the long prompts lose their reply
    assert len(cut.train) == 3 and "truncated" in cut.notes[0] and "dropped" in dropped.notes[0]


def test_sft_teaches_the_task_measurably(tmp_path, pretrained, chats):
    """Exact-match on held-out prompts: the starting weights (chat rows at the mean embedding) vs after stage=sft."""
    from microgpt.evals.replies import exact_match
    from microgpt.io.init_from import chat_start
    from microgpt.io.loading import load_model

    result = run_cli("train", *sft_args(pretrained, chats, "max_steps=80", "eval_every=40"),
                     f"hydra.run.dir={tmp_path / 'sft'}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    held_out = copy_task(None, 40, seed=99)
    after = load_model(tmp_path / "sft" / "checkpoints" / "last.ckpt")
    assert isinstance(after.tokenizer, ChatTokenizer)
    before = chat_start(str(pretrained)).model
    assert before.config == after.model.config  # the network stage=sft trained
    rate_before = exact_match(before, after.tokenizer, held_out)
    rate_after = exact_match(after.model, after.tokenizer, held_out)
    assert rate_after >= 0.5 and rate_after > rate_before + 0.4, (rate_before, rate_after)
    # the learned rows kept: the pretrained embedding of every old id is where SFT started from
    assert before.transformer.wte.weight.shape[0] >= after.tokenizer.vocab_size


def test_sft_resumes_exactly(tmp_path, pretrained, chats):
    assert_resume_is_exact(sft_args(pretrained, chats, "max_steps=10", "eval_every=5", "checkpoint_every=5"),
                           tmp_path, resume_step=5)


def test_sft_under_ddp_cpu(tmp_path, pretrained, chats):
    result = run_cli("train", *sft_args(pretrained, chats, "max_steps=6", "eval_every=6", "trainer=ddp_cpu"),
                     f"hydra.run.dir={tmp_path / 'ddp'}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    state = torch.load(tmp_path / "ddp" / "checkpoints" / "last.ckpt", weights_only=True)
    assert state["global_step"] == 6 and state["hyper_parameters"]["tokenizer"]["kind"] == "chat"


def test_bad_sft_input_is_one_line(tmp_path, pretrained):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"messages": [{"role": "user", "content": "abc"}]}) + "\n")
    result = run_cli("train", *sft_args(pretrained, bad, "max_steps=2"), f"hydra.run.dir={tmp_path / 'a'}", cwd=tmp_path)
    assert_clean_error(result, "record 0", "no assistant turn")
    missing = run_cli("train", "stage=sft", f"data.path={bad}", *TINY, f"hydra.run.dir={tmp_path / 'b'}", cwd=tmp_path)
    assert_clean_error(missing, "init_from")
    nofile = run_cli("train", *sft_args(pretrained, tmp_path / "none.jsonl", "max_steps=2"),
                     f"hydra.run.dir={tmp_path / 'c'}", cwd=tmp_path)
    assert_clean_error(nofile, "none.jsonl")


def test_lora_trains_adapters_only_and_merges_into_plain_weights(tmp_path, pretrained, chats):
    """lora.r=8: the blocks' weights stay the pretrained ones, adapters (and the embedding, for the new
    chat tokens) train; loading merges the adapters in, giving the adapted model's logits exactly."""
    from microgpt.core.lora import add_lora, merge_lora
    from microgpt.io.checkpoints import check_checkpoint, read_checkpoint
    from microgpt.io.loading import load_model

    result = run_cli("train", *sft_args(pretrained, chats, "max_steps=20", "eval_every=10", "lora.r=8"),
                     f"hydra.run.dir={tmp_path / 'lora'}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    ckpt = read_checkpoint(tmp_path / "lora" / "checkpoints" / "last.ckpt")
    config, state = check_checkpoint(ckpt)
    start = torch.load(pretrained, weights_only=True)["state_dict"]
    base = "model.transformer.h.0.mlp.c_fc"
    assert torch.equal(state["transformer.h.0.mlp.c_fc.base_layer.weight"], start[f"{base}.weight"])
    assert state["transformer.h.0.mlp.c_fc.lora_B.default.weight"].abs().max() > 0  # B starts at zero: it trained
    adapted = GPT(config)
    add_lora(adapted, ckpt["hyper_parameters"]["lora"])
    adapted.load_state_dict(state)
    x = torch.randint(0, config.vocab_size, (2, 12))
    merged = load_model(tmp_path / "lora" / "checkpoints" / "last.ckpt").model
    assert type(merged.transformer.h[0].mlp.c_fc) is Linear  # the plain layer, no adapter left
    torch.testing.assert_close(merged(x)[0], adapted.eval()(x)[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(merge_lora(adapted)(x)[0], merged(x)[0], atol=1e-5, rtol=0)


def test_lora_resumes_exactly(tmp_path, pretrained, chats):
    assert_resume_is_exact(sft_args(pretrained, chats, "max_steps=8", "eval_every=4", "checkpoint_every=4", "lora.r=4"),
                           tmp_path, resume_step=4)
