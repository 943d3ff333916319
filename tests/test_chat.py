"""Chatting with a model: the template's prompt token by token, replies that end at their end-of-turn,
history and its trimming, `messages=` through the Python API and `microgpt.generate`, and the
`microgpt.chat` command (interactive over stdin, one-shot `prompt=`, its mistakes in one line).

The model is real: a tiny GPT with chat tokens, trained here by the project's GPTModule under a
Lightning Trainer until it knows three fixed conversations by heart, so greedy replies are exact."""

from __future__ import annotations

import io
import os
import queue
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch

from conftest import OFFLINE_ENV, assert_clean_error, run_cli
from microgpt.core.chat import ChatTokenizer, render
from microgpt.core.errors import ConfigError, DataError
from microgpt.core.tokenizer import CharTokenizer, Tokenizer
from microgpt.io.loading import load_model

SYSTEM = {"role": "system", "content": "be brief"}


def user(text: str) -> dict:
    return {"role": "user", "content": text}


def assistant(text: str) -> dict:
    return {"role": "assistant", "content": text}


# What the model learns: "name?" is answered "gpt." after "hi" and "who?" as the first question, so a
# reply shows whether the history reached the model; without a system prompt "hi" is answered "hey.".
CONVERSATIONS = [
    [SYSTEM, user("hi"), assistant("hello!"), user("name?"), assistant("gpt.")],
    [SYSTEM, user("name?"), assistant("who?")],
    [user("hi"), assistant("hey.")],
]
VOCABULARY = " abcdefghijklmnopqrstuvwxyz?!."
GREEDY = ["temperature=0", "max_new_tokens=16"]


def train_checkpoint(path: Path, tokenizer: Tokenizer, rows: list[list[int]], steps: int) -> Path:
    """A checkpoint as training writes it: GPTModule fitted by a Lightning Trainer on `rows`
    (padded with end-of-text to one length), every step one batch of all of them."""
    import lightning as L
    from torch.utils.data import DataLoader

    from microgpt.lightning.module import GPTModule

    width = max(len(r) for r in rows)
    data = torch.tensor([r + [tokenizer.eot] * (width - len(r)) for r in rows])
    module = GPTModule(
        model=dict(vocab_size=tokenizer.vocab_size, block_size=64, n_layer=2, n_head=2, n_embd=32),
        tokenizer=tokenizer.state(),
        optim={"_target_": "torch.optim.AdamW", "_partial_": True, "lr": 1e-2, "weight_decay": 0.0},
        schedule={"_target_": "microgpt.core.schedule.WarmupCosine", "warmup_steps": min(10, steps - 1),
                  "decay_steps": steps, "end_lr": 1e-3},
    )
    torch.manual_seed(0)
    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=steps, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module, DataLoader(data.repeat(steps, 1), batch_size=len(rows)))
    trainer.save_checkpoint(path)
    return path


@pytest.fixture(scope="module")
def chat_ckpt(tmp_path_factory) -> Path:
    tokenizer = ChatTokenizer(CharTokenizer(VOCABULARY))
    rows = [render(tokenizer, c).ids for c in CONVERSATIONS]
    return train_checkpoint(tmp_path_factory.mktemp("chat") / "chat.ckpt", tokenizer, rows, steps=300)


@pytest.fixture(scope="module")
def plain_ckpt(tmp_path_factory) -> Path:
    """A pretrained model: no chat tokens."""
    tokenizer = CharTokenizer(VOCABULARY)
    rows = [tokenizer.encode("hello there")]
    return train_checkpoint(tmp_path_factory.mktemp("plain") / "plain.ckpt", tokenizer, rows, steps=2)


@pytest.fixture(scope="module")
def lm(chat_ckpt):
    return load_model(chat_ckpt)


# --- the template and replies, through the Python API ---

def test_the_prompt_is_the_template_token_by_token(lm):
    tok = lm.tokenizer
    ids = lm.chat_prompt([SYSTEM, user("hi"), assistant("hello!"), user("name?")])
    end = tok.end_of_turn
    expected = [tok.eot,
                tok.role_id("system"), *tok.encode("be brief"), end,
                tok.role_id("user"), *tok.encode("hi"), end,
                tok.role_id("assistant"), *tok.encode("hello!"), end,
                tok.role_id("user"), *tok.encode("name?"), end,
                tok.role_id("assistant")]
    assert ids == expected
    assert tok.decode(ids) == ("<|endoftext|><|system|>be brief<|end|><|user|>hi<|end|>"
                               "<|assistant|>hello!<|end|><|user|>name?<|end|><|assistant|>")
    # The special tokens are the ids after the characters, in the template's order.
    assert [tok.role_id(r) for r in ("system", "user", "assistant")] + [end] == [len(VOCABULARY) + 1 + i for i in range(4)]


def test_a_reply_ends_at_its_end_of_turn_which_it_does_not_include(lm):
    assert lm.chat([SYSTEM, user("hi")], max_new_tokens=16, temperature=0) == "hello!"
    assert list(lm.stream_chat([SYSTEM, user("hi")], 16, temperature=0)) == list("hello!")  # streamed token by token
    # The model did end its turn there: sampling on shows the end-of-turn it stopped at.
    assert lm.chat([SYSTEM, user("hi")], 7, temperature=0, stop_at_eot=False) == "hello!<|end|>"
    assert lm.chat([user("hi")], 16, temperature=0) == "hey."


def test_the_history_reaches_the_model(lm):
    assert lm.chat([SYSTEM, user("hi"), assistant("hello!"), user("name?")], 16, temperature=0) == "gpt."
    assert lm.chat([SYSTEM, user("name?")], 16, temperature=0) == "who?"


def test_a_long_conversation_keeps_the_system_prompt_and_its_latest_turns(lm):
    tok = lm.tokenizer
    history = [user("hi"), assistant("hello!")] * 6  # 72 tokens: more than the 64 of the context
    messages = [SYSTEM, *history, user("name?")]

    def kept(n_exchanges: int) -> list[int]:
        return render(tok, [SYSTEM, *history[len(history) - 2 * n_exchanges:], user("name?")], True).ids

    # 64 - 16 tokens for the prompt: the system prompt, the last two exchanges (one more would not fit), the question.
    assert lm.chat_prompt(messages, max_new_tokens=16) == kept(2)
    assert len(kept(2)) <= 48 < len(kept(3))
    # A reply as long as the context still leaves the prompt half of it.
    assert lm.chat_prompt(messages, max_new_tokens=1000) == kept(1)
    # Once turns are dropped the kept history starts with a question: here the room (64 - 24) ends
    # just after an exchange's question, so its answer goes too. A greeting that fits stays.
    assert lm.chat_prompt(messages, max_new_tokens=24) == kept(1)
    greeting = [SYSTEM, assistant("hello!"), user("hi")]
    assert lm.chat_prompt(greeting) == render(tok, greeting, True).ids
    # The latest turn stays even alone over the limit (generation then sees its latest tokens).
    alone = lm.chat_prompt([SYSTEM, *history, user("hi " * 30)], max_new_tokens=16)
    assert alone == render(tok, [SYSTEM, user("hi " * 30)], True).ids


def test_bad_messages_and_a_model_without_chat_tokens_are_refused(lm, plain_ckpt):
    with pytest.raises(DataError, match="role 'bot'; roles are system, user, assistant"):
        lm.chat([{"role": "bot", "content": "hi"}])
    with pytest.raises(DataError, match="non-empty list"):
        lm.chat([])
    with pytest.raises(DataError, match="no text `content`"):
        lm.stream_chat([{"role": "user"}])  # refused when called, before any token
    with pytest.raises(ConfigError, match="no chat tokens.*stage=sft"):
        load_model(plain_ckpt).chat([user("hi")])


# --- microgpt.generate messages=... ---

def test_generate_answers_messages_like_the_api(chat_ckpt, tmp_path):
    result = run_cli("generate", f"ckpt={chat_ckpt}", *GREEDY,
                     "messages=[{role:system,content:be brief},{role:user,content:hi}]", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout == "hello!\n"
    wrong = run_cli("generate", f"ckpt={chat_ckpt}", "messages=[{role:bot,content:hi}]", cwd=tmp_path)
    assert_clean_error(wrong, "role 'bot'", "system, user, assistant")


def test_generate_takes_messages_or_a_prompt_not_both():
    from omegaconf import OmegaConf

    from microgpt.generate import read_messages

    assert read_messages(OmegaConf.create({"prompt": "", "messages": None})) is None
    assert read_messages(OmegaConf.create({"prompt": "", "messages": [user("hi")]})) == [user("hi")]
    with pytest.raises(ConfigError, match="not both"):
        read_messages(OmegaConf.create({"prompt": "Hi", "messages": [user("hi")]}))


# --- microgpt.chat ---

class Recorder(io.StringIO):
    """An output that remembers each write: what streaming looks like from outside."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[str] = []

    def write(self, text: str) -> int:
        self.writes.append(text)
        return super().write(text)


def test_a_session_streams_replies_and_keeps_the_history_until_reset(lm):
    from microgpt.chat import Conversation, run_session
    from microgpt.core.sampling import SamplingOptions

    conversation = Conversation(lm, SamplingOptions(max_new_tokens=16, temperature=0), system="be brief")
    out, err = Recorder(), io.StringIO()
    run_session(conversation, ["hi", "", "name?"], out, err)
    assert out.writes == [*"hello!", "\n", *"gpt.", "\n"]  # each token as it was sampled
    assert conversation.messages == CONVERSATIONS[0]
    # The second turn was answered from a prompt holding the first exchange.
    assert lm.tokenizer.decode(lm.chat_prompt(conversation.messages[:-1])).endswith(
        "<|user|>hi<|end|><|assistant|>hello!<|end|><|user|>name?<|end|><|assistant|>")
    run_session(conversation, ["/reset", "hi€", "/nope", "name?", "/quit", "hi"], out, err)
    assert out.getvalue() == "hello!\ngpt.\nwho?\n"  # after /quit nothing more is answered
    assert conversation.messages == CONVERSATIONS[1]  # /reset kept the system prompt
    errors = err.getvalue().splitlines()
    assert errors[0].startswith("error: characters ['€'] are not in") and errors[1].startswith("unknown command /nope")


def chat_process(ckpt: Path, *args: str, cwd: Path) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k not in ("HYDRA_FULL_ERROR", "MICROGPT_DEBUG")}
    return subprocess.Popen([sys.executable, "-m", "microgpt.chat", f"ckpt={ckpt}", *GREEDY, *args], cwd=cwd,
                            env={**env, **OFFLINE_ENV}, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, bufsize=1)


def test_the_chat_command_answers_each_line_as_it_is_typed(chat_ckpt, tmp_path):
    proc = chat_process(chat_ckpt, "system=be brief", cwd=tmp_path)
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout], daemon=True).start()

    def say(text: str) -> str:
        proc.stdin.write(text + "\n")
        proc.stdin.flush()
        try:
            return lines.get(timeout=120)  # the reply comes while the input is still open
        except queue.Empty:
            proc.kill()
            pytest.fail(f"no reply to {text!r}: {proc.stderr.read()[-3000:]}")

    try:
        assert say("hi") == "hello!\n"
        assert say("name?") == "gpt.\n"  # the history went with it
        proc.stdin.write("/reset\n")
        assert say("name?") == "who?\n"  # a fresh conversation (with the system prompt)
        proc.stdin.write("/quit\n")
        proc.stdin.flush()
        assert proc.wait(timeout=60) == 0
    finally:
        proc.kill()
    assert "Traceback" not in proc.stderr.read()


def test_the_chat_command_ends_at_the_end_of_its_input(chat_ckpt, tmp_path):
    proc = chat_process(chat_ckpt, "system=be brief", cwd=tmp_path)
    out, err = proc.communicate("hi€\nhi\n", timeout=120)
    assert proc.returncode == 0, err[-3000:]
    assert out == "hello!\n"
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "['€'] are not in" in errors[0], err[-3000:]  # that line only; the chat went on


def test_the_chat_command_answers_one_prompt_for_scripts(chat_ckpt, tmp_path):
    result = run_cli("chat", f"ckpt={chat_ckpt}", *GREEDY, "prompt=hi", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout == "hey.\n"  # the reply alone


def test_the_chat_command_refuses_a_model_without_chat_tokens(plain_ckpt, tmp_path):
    result = run_cli("chat", f"ckpt={plain_ckpt}", "prompt=hi", cwd=tmp_path)
    assert_clean_error(result, "no chat tokens", "stage=sft")
