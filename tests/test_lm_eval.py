"""lm-evaluation-harness over microgpt models: the `microgpt` lm-eval model, `microgpt-lm-eval`,
`python -m microgpt.eval tasks=[lm_eval:<task>]` and `callbacks=lm_eval`, offline on the tiny task
YAMLs of tests/fixtures/lm_eval (a multiple-choice, a rolling-perplexity and a generation task over
local jsonl files)."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from conftest import FIXTURES, OFFLINE_ENV, TINY, compose_train, perturbed, torch_threads, write_small_corpus
from microgpt.core.errors import ConfigError
from microgpt.core.language_model import LanguageModel
from microgpt.core.model import GPT, GPTConfig
from microgpt.core.tokenizer import CharTokenizer, TiktokenTokenizer
from microgpt.io.loading import load_model

pytest.importorskip("lm_eval")
from lm_eval.api.instance import Instance  # noqa: E402

from microgpt.evals.lm_eval import register_microgpt  # noqa: E402
from microgpt.evals.lm_eval.runner import LmEvalOptions, run_lm_eval  # noqa: E402

TASKS_DIR = FIXTURES / "lm_eval"
MC, PPL, GEN = "microgpt_tiny_mc", "microgpt_tiny_ppl", "microgpt_tiny_gen"
ENV = {**OFFLINE_ENV, "OMP_NUM_THREADS": "1"}
MicroGPTLM = register_microgpt()


@pytest.fixture(autouse=True)
def one_thread():
    with torch_threads(1):
        yield


def requests(kind: str, args: list[tuple]) -> list[Instance]:
    return [Instance(kind, {}, a, i) for i, a in enumerate(args)]


def char_lm(chars: str, block_size: int, seed: int = 0) -> LanguageModel:
    torch.manual_seed(seed)
    tokenizer = CharTokenizer(chars)
    config = GPTConfig(vocab_size=tokenizer.vocab_size, block_size=block_size, n_layer=2, n_head=2, n_embd=16)
    return LanguageModel(perturbed(GPT(config), seed), tokenizer)


def reference_loglikelihood(lm: LanguageModel, context: str, continuation: str) -> tuple[float, bool]:
    """One row alone through the GPT's forward: the continuation's log-probability and whether
    greedy decoding gives it, the row cut from the left to the window."""
    tok, window = lm.tokenizer, lm.model.config.block_size
    ctx = tok.encode(context) or [tok.eot]
    cont = tok.encode(context + continuation)[len(tok.encode(context)):]
    ids = (ctx + cont)[-(window + 1):]
    with torch.no_grad():
        logits, _ = lm.model(torch.tensor([ids[:-1]]))
    logits = logits[0, -len(cont):, : lm.model.config.vocab_size].float()
    targets = torch.tensor(ids[1:][-len(cont):])
    return -float(F.cross_entropy(logits, targets, reduction="sum")), bool((logits.argmax(-1) == targets).all())


def reference_rolling(lm: LanguageModel, text: str) -> float:
    """A document's log-likelihood after end-of-text, `window` predicted tokens at a time, each
    window seeing as many earlier tokens as fit (the harness's definition of a rolling score)."""
    window = lm.model.config.block_size
    full = [lm.tokenizer.eot] + lm.tokenizer.encode(text)
    total, n = 0.0, len(full) - 1
    for start in range(0, n, window):
        end = min(start + window, n)
        first = max(0, end - window)
        with torch.no_grad():
            logits, _ = lm.model(torch.tensor([full[first:end]]))
        scored = logits[0, -(end - start):, : lm.model.config.vocab_size].float()
        total -= float(F.cross_entropy(scored, torch.tensor(full[start + 1 : end + 1]), reduction="sum"))
    return total


CHARS = "abcdefghijklmnopqrstuvwxyz .,"
PAIRS = [
    ("the cat sat", " on the mat"),
    ("a", " b"),
    ("", "an empty context"),  # scored after end-of-text
    ("a long context that does not fit in the window of sixteen", " so it is cut from the left"),
    ("x", " a continuation longer than the whole window of the model"),  # only what fits is scored
]


def test_loglikelihoods_equal_the_gpt_forward_and_batched_equals_one_at_a_time():
    lm = char_lm(CHARS, block_size=16)
    batched = MicroGPTLM.from_language_model(lm, batch_size=3).loglikelihood(requests("loglikelihood", PAIRS))
    alone = MicroGPTLM.from_language_model(lm, batch_size=1).loglikelihood(requests("loglikelihood", PAIRS))
    for (context, continuation), got, one in zip(PAIRS, batched, alone):
        want = reference_loglikelihood(lm, context, continuation)
        assert got[0] == pytest.approx(want[0], abs=1e-5) and got[1] == want[1], (context, got, want)
        assert one[0] == pytest.approx(got[0], abs=1e-5) and one[1] == got[1]
    assert len({round(g[0], 3) for g in batched}) == len(PAIRS)  # the rows differ: nothing was mixed up
    # A greedy continuation is recognised as such.
    greedy = lm.model.generate(torch.tensor([lm.tokenizer.encode("the cat")]), 4, temperature=0)[0, -4:].tolist()
    continuation = lm.tokenizer.decode(greedy)
    [(_, is_greedy)] = MicroGPTLM.from_language_model(lm).loglikelihood(requests("loglikelihood", [("the cat", continuation)]))
    assert is_greedy


def test_rolling_loglikelihood_covers_every_token_once_with_the_most_context():
    lm = char_lm(CHARS, block_size=16)
    docs = ["short one", "a document of many more characters than the sixteen of the window, in three windows", "x"]
    adapter = MicroGPTLM.from_language_model(lm, batch_size=2)
    got = adapter.loglikelihood_rolling(requests("loglikelihood_rolling", [(d,) for d in docs]))
    for doc, value in zip(docs, got):
        assert value == pytest.approx(reference_rolling(lm, doc), abs=1e-4), doc
    # A document that fits the window scores as a continuation after end-of-text.
    [(short, _)] = adapter.loglikelihood(requests("loglikelihood", [("", docs[0])]))
    assert got[0] == pytest.approx(short, abs=1e-5)


@pytest.fixture(scope="module")
def hf_gpt2_dir(tmp_path_factory) -> Path:
    """A random transformers GPT-2 (GPT-2's vocabulary, a 64-token window) with GPT-2's tokenizer files."""
    transformers = pytest.importorskip("transformers")
    from microgpt.io.hf_tokenizer import write_hf_tokenizer

    directory = tmp_path_factory.mktemp("hf_gpt2")
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=2, n_head=2, n_embd=32, n_positions=64, vocab_size=50257)
    perturbed(transformers.GPT2LMHeadModel(config), 0).save_pretrained(directory, safe_serialization=True)
    write_hf_tokenizer(TiktokenTokenizer("gpt2"), directory)
    return directory


def test_the_adapter_gives_lm_evals_own_hf_numbers_on_a_transformers_gpt2_directory(hf_gpt2_dir):
    pytest.importorskip("accelerate")
    from lm_eval.models.huggingface import HFLM

    long = "It was the best of times, it was the worst of times, it was the age of wisdom, it was the age of " * 3
    pairs = [("The quick brown fox", " jumps over the lazy dog"), ("Question: 2 + 2 =", " 4"),
             ("Hello, ", "world"),  # the context's trailing space moves to the continuation
             ("", "Nothing before this."), (long, " it was the epoch of belief")]  # > 64 tokens: cut from the left
    docs = [long + "it was the season of Light.", "A short document."]
    ours = MicroGPTLM.create_from_arg_string(f"ckpt={hf_gpt2_dir},batch_size=2", {"device": "cpu"})
    theirs = HFLM(pretrained=str(hf_gpt2_dir), batch_size=2, device="cpu", dtype="float32")
    assert ours.max_length == theirs.max_length == 64
    mine, hf = (m.loglikelihood(requests("loglikelihood", pairs)) for m in (ours, theirs))
    assert len({round(v, 4) for v, _ in hf}) == len(pairs)
    for a, b in zip(mine, hf):
        assert a[0] == pytest.approx(b[0], abs=1e-4) and a[1] == b[1], (a, b)
    mine, hf = (m.loglikelihood_rolling(requests("loglikelihood_rolling", [(d,) for d in docs])) for m in (ours, theirs))
    assert mine == pytest.approx(hf, abs=1e-3) and mine[0] < mine[1] < 0


def bigram_lm(successor: dict[str, str]) -> LanguageModel:
    """A real GPT whose greedy choice is `successor` of the last character ('' is end-of-text): its
    block adds nothing (zero output projections), the embedding is one-hot and the untied LM head
    maps each character's direction onto its successor's id."""
    chars = "".join(c for c in successor if c)
    tokenizer = CharTokenizer(chars)
    config = GPTConfig(vocab_size=len(chars) + 1, block_size=8, n_layer=1, n_head=1, n_embd=len(chars) + 1,
                       vocab_multiple=1, pos_emb="none", tie_embeddings=False)
    model = GPT(config)
    ids = {c: (tokenizer.encode(c)[0] if c else tokenizer.eot) for c in successor}
    with torch.no_grad():
        for block in model.transformer.h:
            for proj in (block.attn.c_proj, block.mlp.c_proj):
                proj.weight.zero_()
                proj.bias.zero_()
        model.transformer.wte.weight.copy_(5 * torch.eye(config.n_embd))
        model.lm_head.weight.zero_()
        for char, nxt in successor.items():
            model.lm_head.weight[ids[nxt], ids[char]] = 10.0
    return LanguageModel(model, tokenizer)


def test_generate_until_stops_at_its_until_strings_and_at_end_of_text():
    lm = bigram_lm({"a": "b", "b": "c", "c": "", "": "a", "x": "y", "y": "z", "z": "\n", "\n": "x"})
    adapter = MicroGPTLM.from_language_model(lm, batch_size=4, max_gen_toks=7)
    asks = [("x", {"until": ["\n"]}), ("a", {"until": ["\n"]}),  # "yz" at the newline; "bc" at end-of-text
            ("x", {"until": ["z\nx"], "max_gen_toks": 20}), ("y", {}),  # a stop across tokens; 7 tokens, no stop
            ("", {"until": ["q"]})]  # an empty prompt starts after end-of-text
    assert adapter.generate_until(requests("generate_until", asks)) == ["yz", "bc", "y", "z\nxyz\nx", "abc"]


def test_generate_until_cuts_a_long_prompt_from_the_left_to_leave_room_for_the_reply():
    lm = char_lm(CHARS, block_size=16)
    prompt = "a prompt far longer than the sixteen characters of the window"
    adapter = MicroGPTLM.from_language_model(lm, max_gen_toks=6)
    [reply] = adapter.generate_until(requests("generate_until", [(prompt, {"until": []})]))
    kept = torch.tensor([lm.tokenizer.encode(prompt)[-10:]])  # 16 - 6: the prompt and the reply fit the window
    expected = lm.model.generate(kept, 6, temperature=0)[0, 10:].tolist()
    assert reply == lm.tokenizer.decode(expected) and len(reply) == 6


def test_bad_model_args_and_a_missing_lm_eval_are_one_clear_line(tmp_path):
    with pytest.raises(ConfigError, match="needs ckpt=<path>"):
        MicroGPTLM.create_from_arg_string("batch_size=4", {"batch_size": 1, "device": "cpu"})
    with pytest.raises(ConfigError, match=r"unknown microgpt model_args \['temperature'\].*ckpt, batch_size"):
        MicroGPTLM.create_from_arg_string("ckpt=x.ckpt,temperature=1")
    with pytest.raises(ConfigError, match="batch_size=auto is not supported"):
        MicroGPTLM.from_language_model(char_lm(CHARS, 16), batch_size="auto")
    code = ("import sys; sys.modules['lm_eval'] = None; sys.argv[1:] = ['--model', 'microgpt', '--tasks', 'x'];"
            "from microgpt.lm_eval_cli import main; main()")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ, **ENV},
                            cwd=tmp_path, timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert result.stderr.strip().splitlines() == [
        "error: lm-eval tasks need the lm-evaluation-harness, which is not installed: pip install 'microgpt[eval]'"]


# ---------------------------------------------------------------- end to end, on a trained checkpoint

def metric_rows(run_dir: Path, name: str) -> dict[int, float]:
    with open(run_dir / "metrics.csv") as f:
        return {int(row["step"]): float(row[name]) for row in csv.DictReader(f) if row.get(name)}


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A tiny run with `callbacks=lm_eval` on the two local tasks, scored after steps 3 and 6."""
    from microgpt.lightning.training import train

    root = tmp_path_factory.mktemp("lm_eval_run")
    corpus = write_small_corpus(root)
    train(compose_train(*TINY, "max_steps=6", "eval_every=3", "data=files", f"data.paths=[{corpus}]",
                        "callbacks=lm_eval", f"callbacks.lm_eval.tasks=[{MC},{PPL}]",
                        f"callbacks.lm_eval.include_path={TASKS_DIR}", "callbacks.text_samples=null",
                        output_dir=root / "run"))
    return root / "run"


def test_training_with_callbacks_lm_eval_logs_each_tasks_metrics(trained):
    acc, bpb = metric_rows(trained, f"lm_eval/{MC}/acc"), metric_rows(trained, f"lm_eval/{PPL}/bits_per_byte")
    assert sorted(acc) == sorted(bpb) == [3, 6]
    assert all(v * 8 == round(v * 8) for v in acc.values())  # 8 questions
    assert bpb[6] < bpb[3] < 7  # learning: below a uniform guess over the ~60 characters (5.9 bits)
    # The last figures are the saved model's, scored afresh.
    final = run_lm_eval(load_model(trained / "checkpoints" / "last.ckpt"), [MC, PPL], LmEvalOptions(include_path=str(TASKS_DIR)))
    assert final[MC]["acc"] == pytest.approx(acc[6]) and final[PPL]["bits_per_byte"] == pytest.approx(bpb[6])


def test_the_callback_leaves_training_as_it_would_have_been(trained, tmp_path):
    """lm-eval seeds every generator and the scoring puts the model in eval mode: with dropout on,
    a run with the callback must still end with the same weights as one without."""
    from microgpt.lightning.training import train

    corpus = write_small_corpus(tmp_path)
    common = [*TINY, "max_steps=3", "eval_every=3", "data=files", f"data.paths=[{corpus}]", "model.dropout=0.1",
              "callbacks.text_samples=null"]
    train(compose_train(*common, output_dir=tmp_path / "plain"))
    train(compose_train(*common, "callbacks=lm_eval", f"callbacks.lm_eval.tasks=[{MC}]", "callbacks.lm_eval.every_n_steps=1",
                        f"callbacks.lm_eval.include_path={TASKS_DIR}", output_dir=tmp_path / "scored"))
    plain, scored = (torch.load(tmp_path / r / "checkpoints/last.ckpt", weights_only=True)["state_dict"] for r in ("plain", "scored"))
    assert all(torch.equal(plain[k], scored[k]) for k in plain)
    assert sorted(metric_rows(tmp_path / "scored", f"lm_eval/{MC}/acc")) == [1, 2, 3]


def reference_accuracy(lm: LanguageModel) -> float:
    rows = [json.loads(line) for line in (TASKS_DIR / "tiny_mc.jsonl").read_text().splitlines()]
    right = 0
    for row in rows:
        scores = [reference_loglikelihood(lm, row["question"], " " + c)[0] for c in row["choices"]]
        right += max(range(len(scores)), key=scores.__getitem__) == row["label"]
    return right / len(rows)


@pytest.fixture
def lm_eval_logging():
    """lm-eval's CLI configures its own logger (level, handler, no propagation): put it back after."""
    import logging

    logger = logging.getLogger("lm_eval")
    saved = logger.level, list(logger.handlers), logger.propagate
    yield
    logger.setLevel(saved[0])
    logger.handlers[:] = saved[1]
    logger.propagate = saved[2]


def test_microgpt_lm_eval_cli_runs_local_tasks_end_to_end(trained, tmp_path, capsys, lm_eval_logging):
    from importlib.metadata import entry_points

    from microgpt.lm_eval_cli import main

    [script] = [e for e in entry_points(group="console_scripts") if e.name == "microgpt-lm-eval"]
    assert script.load() is main  # what pyproject.toml installs as the microgpt-lm-eval command
    ckpt = trained / "checkpoints" / "last.ckpt"
    main(["--model", "microgpt", "--model_args", f"ckpt={ckpt},batch_size=4", "--tasks", f"{MC},{PPL},{GEN}",
          "--include_path", str(TASKS_DIR), "--output_path", str(tmp_path / "out")])
    [saved] = list((tmp_path / "out").rglob("results_*.json"))
    results = json.loads(saved.read_text())["results"]
    assert results[MC]["acc,none"] == pytest.approx(reference_accuracy(load_model(ckpt)))
    assert results[PPL]["bits_per_byte,none"] == pytest.approx(metric_rows(trained, f"lm_eval/{PPL}/bits_per_byte")[6])
    assert 0 <= results[GEN]["exact_match,none"] <= 1
    table = capsys.readouterr().out
    assert f"|{MC}" in table and "acc_norm" in table  # lm-eval's own table


def test_eval_command_prints_lm_eval_tasks_in_its_table(trained, tmp_path):
    ckpt, out = trained / "checkpoints" / "last.ckpt", tmp_path / "eval"
    result = subprocess.run(
        [sys.executable, "-m", "microgpt.eval", f"ckpt={ckpt}", f"tasks=[val_loss,lm_eval:{MC},lm_eval:{GEN},lm_eval:no_such_task]",
         f"lm_eval.include_path={TASKS_DIR}", "lm_eval.batch_size=4", "data=files",
         f"data.paths=[{write_small_corpus(tmp_path)}]", "data.batch_size=4", "val_batches=2", f"out={out}"],
        capture_output=True, text=True, env={**os.environ, **ENV}, cwd=tmp_path, timeout=300)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode == 2 and "Traceback" not in result.stderr and len(errors) == 1, result.stderr[-3000:]
    assert "lm_eval:no_such_task" in errors[0] and "include_path" in errors[0]
    saved = json.loads((out / "results.json").read_text())
    assert list(saved["results"]) == ["val_loss", f"lm_eval:{MC}", f"lm_eval:{GEN}"]
    assert saved["results"][f"lm_eval:{MC}"]["acc"] == pytest.approx(metric_rows(trained, f"lm_eval/{MC}/acc")[6])
    assert saved["results"][f"lm_eval:{MC}"]["count"] == 8 and saved["results"][f"lm_eval:{GEN}"]["count"] == 4
    table = (out / "results.md").read_text()
    assert f"| lm_eval:{MC} | acc_norm |" in table and table.strip() in result.stdout
