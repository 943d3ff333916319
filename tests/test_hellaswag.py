"""HellaSwag scoring (hand-computed, batched vs one-at-a-time, distributed), its data loading and
download, the training callback and `python -m microgpt.eval`."""

from __future__ import annotations

import csv
import http.server
import json
import math
import threading
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F

from conftest import TINY, assert_clean_error, fixture_file, run_cli, torch_threads
from microgpt.core.errors import ConfigError, DataError
from microgpt.core.model import GPT, GPTConfig
from microgpt.core.tokenizer import CharTokenizer
from microgpt.evals.hellaswag import (
    EncodedExample,
    encode_examples,
    ending_losses,
    evaluate,
    evaluate_hellaswag,
    load_examples,
    predictions,
    read_examples,
    score_shard,
)

# Tiny models run fastest on one thread, especially on a machine shared with other jobs.
ONE_THREAD = {"OMP_NUM_THREADS": "1"}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    with torch_threads(1):
        yield


def jsonl(path: Path, records: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path


def record(ctx: str, endings: list[str], label: int) -> dict:
    return {"ctx": ctx, "endings": endings, "label": label, "activity_label": "test", "split": "val"}


# ----------------------------------------------------------------------------------------------
# Scoring against a model whose logits are known


CHARS = " abxyz"


def unigram_gpt(logits: list[float], block_size: int = 16) -> GPT:
    """A real GPT whose output is the same logits at every position: the final LayerNorm has zero
    gain, so it emits its bias, and the (tied) embedding is the identity, so logits = that bias."""
    config = GPTConfig(vocab_size=len(CHARS) + 1, block_size=block_size, n_layer=1, n_head=2, n_embd=8,
                       vocab_multiple=8)
    model = GPT(config)
    with torch.no_grad():
        model.transformer.wte.weight.copy_(torch.eye(8))
        model.transformer.ln_f.weight.zero_()
        bias = torch.full((8,), 10.0)  # the padded ids 7..: high logits that must never count
        bias[: len(logits)] = torch.tensor(logits)
        model.transformer.ln_f.bias.copy_(bias)
    return model


def test_acc_and_acc_norm_match_a_hand_computation(tmp_path):
    # log-probabilities over the 7 real ids (" abxyz" + eot): a long cheap ending vs a short dear one.
    log_probs = {" ": math.log(0.4), "a": math.log(0.2), "b": math.log(0.2), "x": math.log(0.02),
                 "y": math.log(0.15), "z": math.log(0.0099)}
    log_probs["<eot>"] = math.log(1 - sum(math.exp(v) for v in log_probs.values()))
    model = unigram_gpt([log_probs[c] for c in CHARS] + [log_probs["<eot>"]])
    tokenizer = CharTokenizer(CHARS)
    # "x": 2 tokens (" x"), total 0.92 + 3.91 = 4.83, mean 2.41; "yyyy": 5 tokens, total 8.50, mean 1.70.
    short, long, bad = "x", "yyyy", "zz"
    path = jsonl(tmp_path / "hs.jsonl", [
        record("ab", [short, long, bad, bad], 0),   # acc right (lowest total), acc_norm wrong
        record("ba", [bad, short, long, bad], 2),   # acc wrong, acc_norm right (lowest mean)
        record("abba", [bad, "a", bad, "bb"], 1),  # " a" beats everything either way
        record("a", [long, bad, short, bad], 2),    # acc right, acc_norm wrong
    ])
    examples = read_examples(path)
    encoded, skipped = encode_examples(examples, tokenizer)
    assert skipped == 0

    def by_hand(ending: str) -> tuple[float, int]:
        chars = " " + ending  # the ending is scored with its leading space
        return -sum(log_probs[c] for c in chars), len(chars)

    sums, counts = ending_losses(model, encoded)
    for i, ex in enumerate(examples):
        for j, ending in enumerate(ex.endings):
            total, n = by_hand(ending)
            assert counts[i, j] == n
            assert sums[i, j].item() == pytest.approx(total, abs=1e-4), (i, j)
    result = evaluate(model, encoded, batch_size=3)  # 2 batches, the second one short
    assert (result.correct, result.correct_norm, result.count) == (3, 2, 4)
    assert result.acc == 0.75 and result.acc_norm == 0.5


def test_a_context_longer_than_the_window_is_truncated_from_the_left():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=7, block_size=16, n_layer=2, n_head=2, n_embd=16, vocab_multiple=8)).eval()
    context = [1, 2, 3, 4, 5, 6] * 5  # 30 tokens, far past the 16-token window
    endings = [[0, 1, 2], [3, 4, 5], [5, 5, 1], [2, 2, 2]]
    long = EncodedExample(context, endings, 0)
    # What fits: the last 16 + 1 - 3 context tokens, then the whole ending.
    cut = EncodedExample(context[-(16 + 1 - 3):], endings, 0)
    assert torch.equal(ending_losses(model, [long])[0], ending_losses(model, [cut])[0])
    assert ending_losses(model, [long])[1].tolist() == [[3, 3, 3, 3]]


# ----------------------------------------------------------------------------------------------
# A small trained model on 250 official validation examples (tests/fixtures/hellaswag_val.jsonl)


@pytest.fixture(scope="module")
def hellaswag_path() -> Path:
    return fixture_file("hellaswag_val.jsonl")


@pytest.fixture(scope="module")
def trained(hellaswag_path):
    """A 2-layer char GPT trained briefly on HellaSwag's own text (so every character is known)."""
    examples = read_examples(hellaswag_path)
    text = "\n".join(ex.context + " " + " ".join(ex.endings) for ex in examples)
    tokenizer = CharTokenizer.from_texts([text])
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=tokenizer.vocab_size, block_size=64, n_layer=2, n_head=2, n_embd=32))
    ids = torch.tensor(tokenizer.encode(text))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for step in range(60):
        starts = torch.randint(0, len(ids) - 65, (16,))
        batch = torch.stack([ids[s : s + 65] for s in starts])
        _, loss = model(batch[:, :-1], batch[:, 1:])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.5  # it learned something
    return model.eval(), tokenizer, examples


def one_at_a_time(model: GPT, example: EncodedExample) -> tuple[list[float], list[int]]:
    """The plain reference: one ending per forward pass, no padding, no batching."""
    window = model.config.block_size
    sums, counts = [], []
    with torch.no_grad():
        for ending in example.endings:
            ids = (example.context + ending)[-(window + 1):]
            n = min(len(ending), len(ids) - 1)
            logits, _ = model(torch.tensor([ids[:-1]]))
            losses = F.cross_entropy(logits[0, -n:, : model.config.vocab_size], torch.tensor(ids[-n:]), reduction="none")
            sums.append(losses.sum().item())
            counts.append(n)
    return sums, counts


def test_batched_scoring_equals_one_example_at_a_time(trained):
    model, tokenizer, examples = trained
    encoded, skipped = encode_examples(examples, tokenizer)
    assert skipped == 0 and len(encoded) == len(examples) == 250
    ref_correct = ref_correct_norm = 0
    batch_size = 16
    for start in range(0, len(encoded), batch_size):
        batch = encoded[start : start + batch_size]
        sums, counts = ending_losses(model, batch)
        for i, ex in enumerate(batch):
            ref_sums, ref_counts = one_at_a_time(model, ex)
            assert counts[i].tolist() == ref_counts
            torch.testing.assert_close(sums[i], torch.tensor(ref_sums), rtol=1e-5, atol=1e-4)
            ref = torch.tensor([ref_sums]), torch.tensor([ref_counts])
            pred, pred_norm = predictions(*ref)
            ref_correct += int(pred[0] == ex.label)
            ref_correct_norm += int(pred_norm[0] == ex.label)
    result = evaluate(model, encoded, batch_size=batch_size)
    assert (result.correct, result.correct_norm, result.count) == (ref_correct, ref_correct_norm, 250)
    assert result.acc != result.acc_norm or ref_correct == ref_correct_norm  # both computed, not one copied


# ----------------------------------------------------------------------------------------------
# Distributed: 2 gloo processes give exactly the single-process result


def distributed_worker(rank: int, world: int, store: str, model_path: str, data_path: str, out_dir: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        model, tokenizer = torch.load(model_path, weights_only=False)
        encoded, _ = encode_examples(read_examples(data_path, limit=150), tokenizer)
        local = score_shard(model, encoded, batch_size=8, rank=rank, world_size=world)
        result = evaluate(model, encoded, batch_size=8)
        Path(out_dir, f"rank{rank}.json").write_text(json.dumps(
            {"local": local.tolist(), "total": [result.correct, result.correct_norm, result.count]}))
    finally:
        dist.destroy_process_group()


def test_two_processes_score_disjoint_examples_and_match_one_process(trained, tmp_path, hellaswag_path):
    model, tokenizer, _ = trained
    model_path = tmp_path / "model.pt"
    torch.save((model, tokenizer), model_path)
    mp.spawn(distributed_worker, args=(2, str(tmp_path / "store"), str(model_path), str(hellaswag_path), str(tmp_path)),
             nprocs=2, join=True)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    encoded, _ = encode_examples(read_examples(hellaswag_path, limit=150), tokenizer)
    single = evaluate(model, encoded, batch_size=8)
    expected = [single.correct, single.correct_norm, single.count]
    assert ranks[0]["total"] == ranks[1]["total"] == expected
    # 150 examples = 18 batches of 8 and one of 6: rank 0 scores 10 batches (the short one last), rank 1 nine.
    assert [r["local"][2] for r in ranks] == [9 * 8 + 6, 9 * 8]
    assert [a + b for a, b in zip(ranks[0]["local"], ranks[1]["local"])] == expected


# ----------------------------------------------------------------------------------------------
# Bad input and the download path


@pytest.mark.parametrize("bad_line, words", [
    ('{"ctx": "a", "endings": ["1", "2", "3", "4"], "label": 1', ["line 2", "not valid JSON"]),
    (record("a", ["1", "2", "3", "4"], 4), ["line 2", "label 4", "0..3"]),
    (record("a", ["1", "2", "3"], 0), ["line 2", "4 string endings", "found 3"]),
    ({"endings": ["1", "2", "3", "4"], "label": 0}, ["line 2", "ctx"]),
])
def test_a_bad_line_is_a_clear_error_naming_the_line(tmp_path, bad_line, words):
    path = jsonl(tmp_path / "bad.jsonl", [record("fine", ["1", "2", "3", "4"], 0), bad_line])
    with pytest.raises(DataError) as err:
        read_examples(path)
    for word in words:
        assert word in str(err.value)
    assert str(path) in str(err.value)


class ServeFiles(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


class Truncating(http.server.BaseHTTPRequestHandler):
    """Promises the whole file, sends half of it, then hangs up."""

    body = b""
    requests = 0

    def do_GET(self) -> None:
        Truncating.requests += 1
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body[: len(self.body) // 2])
        self.wfile.flush()
        self.close_connection = True

    def log_message(self, *args) -> None:
        pass


def serve(handler) -> http.server.ThreadingHTTPServer:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def test_download_from_a_url_is_cached_and_a_truncated_download_leaves_no_cache_entry(tmp_path, hellaswag_path,
                                                                                       monkeypatch):
    monkeypatch.setattr("microgpt.evals.hellaswag.DOWNLOAD_RETRIES", 1)  # one retry, not the default's backoff
    served = tmp_path / "served"
    served.mkdir()
    (served / "hellaswag_val.jsonl").write_bytes(hellaswag_path.read_bytes())
    server = serve(lambda *a: ServeFiles(*a, directory=str(served)))
    url = f"http://127.0.0.1:{server.server_port}/hellaswag_val.jsonl"
    cache = tmp_path / "cache"
    try:
        examples = load_examples(url, limit=5, cache_dir=cache)
        with pytest.raises(DataError, match="404"):
            load_examples(url.replace("val", "missing"), cache_dir=cache)
    finally:
        server.shutdown()
        server.server_close()
    assert examples == read_examples(hellaswag_path, limit=5)
    [cached] = [p for p in cache.rglob("*") if p.is_file()]
    assert cached.read_bytes() == hellaswag_path.read_bytes()
    assert load_examples(url, limit=5, cache_dir=cache) == examples  # the server is gone: from the cache

    Truncating.body, Truncating.requests = hellaswag_path.read_bytes(), 0
    server = serve(Truncating)
    truncated_cache = tmp_path / "cache2"
    try:
        with pytest.raises(DataError, match="download"):
            load_examples(f"http://127.0.0.1:{server.server_port}/hellaswag_val.jsonl", cache_dir=truncated_cache)
    finally:
        server.shutdown()
        server.server_close()
    assert Truncating.requests == 2  # tried, retried, gave up
    assert [p for p in truncated_cache.rglob("*") if p.is_file()] == []  # no partial file poisons the cache

    with pytest.raises(DataError, match="http"):
        load_examples("ftp://127.0.0.1/hellaswag_val.jsonl", cache_dir=cache)
    with pytest.raises(DataError, match="does not exist"):
        load_examples(tmp_path / "nowhere.jsonl")


def test_examples_a_char_tokenizer_cannot_encode_are_skipped_and_counted(tmp_path):
    path = jsonl(tmp_path / "hs.jsonl", [record("ab", ["a", "b", "x", "y"], 0), record("ab", ["a", "b", "Q", "y"], 1)])
    model = unigram_gpt([0.0] * 7)
    result = evaluate_hellaswag(model, CharTokenizer(CHARS), source=path)
    assert (result.count, result.skipped) == (1, 1)
    with pytest.raises(DataError, match="cannot encode any"):
        encode_examples(read_examples(path)[1:], CharTokenizer(CHARS))


# ----------------------------------------------------------------------------------------------
# The training callback and the eval command, through the real entry points


def test_unknown_eval_tasks_are_refused_by_name():
    from microgpt.evals.suite import check_tasks

    assert check_tasks("hellaswag") == ["hellaswag"]
    with pytest.raises(ConfigError, match="mmlu.*val_loss"):
        check_tasks(["val_loss", "mmlu"])


def metric_rows(run_dir: Path, name: str) -> dict[int, float]:
    with open(run_dir / "metrics.csv") as f:
        return {int(row["step"]): float(row[name]) for row in csv.DictReader(f) if row.get(name)}


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, hellaswag_path):
    """A tiny training run with `callbacks=hellaswag` on text covering HellaSwag's characters."""
    root = tmp_path_factory.mktemp("hellaswag_run")
    examples = read_examples(hellaswag_path)
    corpus = root / "corpus.txt"
    corpus.write_text("\n".join(ex.context + " " + " ".join(ex.endings) for ex in examples)[:150_000])
    run_dir = root / "run"
    result = run_cli(
        "train", *TINY, "data=files", f"data.paths=[{corpus}]", "callbacks=hellaswag",
        f"callbacks.hellaswag.source={hellaswag_path}", "callbacks.hellaswag.limit=40",
        "callbacks.hellaswag.every_n_steps=5", "callbacks.text_samples=null", f"hydra.run.dir={run_dir}",
        cwd=root, env=ONE_THREAD,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return root, run_dir, corpus


def test_the_callback_logs_hellaswag_every_n_steps_and_at_the_end(trained_run, hellaswag_path):
    from microgpt.io.loading import load_model

    _, run_dir, _ = trained_run
    acc, acc_norm = metric_rows(run_dir, "hellaswag/acc"), metric_rows(run_dir, "hellaswag/acc_norm")
    # After 5 and 10 optimizer steps, then at the end (12). (Lightning logs val/loss after step 12 as 11.)
    assert sorted(acc) == sorted(acc_norm) == [5, 10, 12]
    assert max(metric_rows(run_dir, "val/loss")) == 11
    assert all(0 <= v <= 1 and v * 40 == round(v * 40) for v in [*acc.values(), *acc_norm.values()])
    # The final figures are those of the saved model, scored independently.
    lm = load_model(run_dir / "checkpoints" / "last.ckpt")
    final = evaluate_hellaswag(lm.model, lm.tokenizer, source=hellaswag_path, limit=40)
    assert final.count == 40
    assert (acc[12], acc_norm[12]) == (pytest.approx(final.acc), pytest.approx(final.acc_norm))


def test_eval_command_prints_and_saves_val_loss_and_hellaswag(trained_run, hellaswag_path):
    root, run_dir, corpus = trained_run
    out = root / "eval_out"
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    result = run_cli(
        "eval", f"ckpt={ckpt}", "tasks=[val_loss,hellaswag]", "data=files", f"data.paths=[{corpus}]",
        "data.batch_size=4", "val_batches=2", f"hellaswag.source={hellaswag_path}", "hellaswag.limit=40",
        f"out={out}", cwd=root, env=ONE_THREAD,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    saved = json.loads((out / "results.json").read_text())["results"]
    # val_loss over the same 2 validation batches training evaluated at its last step.
    assert saved["val_loss"]["loss"] == pytest.approx(metric_rows(run_dir, "val/loss")[11], abs=1e-5)
    assert saved["val_loss"]["tokens"] == 2 * 4 * 32
    assert saved["val_loss"]["ppl"] == pytest.approx(math.exp(saved["val_loss"]["loss"]))
    assert saved["hellaswag"]["acc"] == pytest.approx(metric_rows(run_dir, "hellaswag/acc")[12])
    assert saved["hellaswag"]["count"] == 40
    table = (out / "results.md").read_text()
    assert f"| hellaswag | acc_norm | {saved['hellaswag']['acc_norm']:.4f} |" in table
    assert table.strip() in result.stdout  # printed too

    bad_file = jsonl(root / "bad.jsonl", [record("a", ["1", "2", "3", "4"], 7)])
    bad_label = run_cli("eval", f"ckpt={ckpt}", "tasks=[hellaswag]", f"hellaswag.source={bad_file}", cwd=root, env=ONE_THREAD)
    assert_clean_error(bad_label, "line 1", "label 7")
