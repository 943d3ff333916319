"""Correctness: every loss is over the real vocabulary (not the padded one), generation past the
context window keeps one KV cache, and plot / soup labels tell the runs apart."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import microgpt.core.attention as attention_module
from conftest import TINY, compose_train
from microgpt.core.model import GPT, GPTConfig
from microgpt.evals.perplexity import held_out_loss

VOCAB = 50  # padded to 64: 14 rows of the embedding / LM head are no tokens


def tiny(pos_emb: str = "rope", block_size: int = 16, n_layer: int = 2) -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=VOCAB, block_size=block_size, n_layer=n_layer, n_head=2, n_embd=32,
                         pos_emb=pos_emb)).eval()


def with_loud_padding_rows(model: GPT) -> GPT:
    """Padding rows large enough that, left in the softmax, they would take most of the probability."""
    with torch.no_grad():
        rows = model.transformer.wte.weight[VOCAB:]
        rows.copy_(torch.randn(rows.shape, generator=torch.Generator().manual_seed(1)) * 5)
    return model


def sliced_loss(logits: torch.Tensor, targets: torch.Tensor, vocab: int = VOCAB) -> torch.Tensor:
    """The reference: cross-entropy over the real vocabulary's logits only."""
    return F.cross_entropy(logits[..., :vocab].reshape(-1, vocab).float(), targets.reshape(-1), ignore_index=-1)


# ----------------------------------------------------------------------------------------------
# The loss over the real vocabulary


@pytest.mark.parametrize("training", [True, False])
def test_the_loss_is_the_cross_entropy_over_the_real_vocabulary(training):
    model = with_loud_padding_rows(tiny()).train(training)
    idx, targets = torch.randint(0, VOCAB, (3, 12)), torch.randint(0, VOCAB, (3, 12))
    targets[0, :4] = -1  # ignored positions stay ignored
    logits, loss = model(idx, targets)
    assert logits.size(-1) == model.config.padded_vocab_size == 64
    padded = F.cross_entropy(logits.reshape(-1, 64), targets.reshape(-1), ignore_index=-1)
    assert padded > sliced_loss(logits, targets) + 1  # the padding rows would matter: this test can fail
    torch.testing.assert_close(loss, sliced_loss(logits, targets))
    loss.backward()  # no gradient pulls on rows that are no tokens
    assert model.transformer.wte.weight.grad[VOCAB:].abs().max() == 0
    assert model.transformer.wte.weight.grad[:VOCAB].abs().max() > 0


def test_held_out_loss_is_over_the_real_vocabulary():
    model = with_loud_padding_rows(tiny())
    batches = [torch.randint(0, VOCAB, (4, 17)) for _ in range(3)] + [torch.randint(0, VOCAB, (1, 17))]
    result = held_out_loss(model, batches)
    with torch.no_grad():
        total = sum(float(sliced_loss(model(b[:, :-1])[0], b[:, 1:])) * b[:, 1:].numel() for b in batches)
    assert result.tokens == 13 * 16
    assert result.loss == pytest.approx(total / result.tokens, rel=1e-6)


def test_a_training_runs_val_loss_is_the_loss_over_the_real_vocabulary(tmp_path):
    """Through the trainer (train and validation steps): the logged val/loss is the cross-entropy
    over the real vocabulary of the final weights on the same validation windows."""
    from microgpt.io.loading import load_model
    from microgpt.lightning.builders import build_datamodule
    from microgpt.lightning.training import train, training_tokenizer, validation_windows

    cfg = compose_train(*TINY, "max_steps=20", "eval_every=10", "checkpoint_every=10", "optim.lr=1e-2",
                        "callbacks.text_samples=null", output_dir=tmp_path / "run")
    metrics = train(cfg)
    model = load_model(tmp_path / "run" / "checkpoints" / "last.ckpt").model.eval()
    config = model.config
    assert config.padded_vocab_size > config.vocab_size  # the char vocabulary is padded
    datamodule = build_datamodule(cfg.data, training_tokenizer(cfg), cfg.seed,
                                  val_windows=validation_windows(cfg))
    datamodule.load()
    total = tokens = 0
    with torch.no_grad():
        for batch in datamodule.val_dataloader():
            logits, _ = model(batch[:, :-1])
            total += float(sliced_loss(logits, batch[:, 1:], config.vocab_size)) * batch[:, 1:].numel()
            tokens += batch[:, 1:].numel()
    assert tokens == cfg.eval_batches * cfg.data.batch_size * config.block_size
    assert metrics["val/loss"] == pytest.approx(total / tokens, abs=1e-5)


# ----------------------------------------------------------------------------------------------
# Generation past the context window: one cache, and the windows the docstring describes


@pytest.fixture
def caches_made(monkeypatch) -> list[int]:
    """Counts KVCache constructions (one per layer per cache set)."""
    made: list[int] = []

    class Counting(attention_module.KVCache):
        def __init__(self, *args, **kwargs) -> None:
            made.append(1)
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(attention_module, "KVCache", Counting)
    return made


@pytest.mark.parametrize("pos_emb", ["rope", "learned"])
def test_generating_past_the_window_keeps_one_cache(caches_made, pos_emb):
    model = tiny(pos_emb, n_layer=3)
    out = model.generate(torch.randint(0, VOCAB, (2, 16)), 48, temperature=0)  # 48 tokens past a full 16
    assert out.shape == (2, 64)
    assert len(caches_made) == model.config.n_layer  # one cache per layer, for the whole generation
    caches_made.clear()
    model.generate(torch.randint(0, VOCAB, (2, 16)), 48, temperature=0, use_cache=False)
    assert caches_made == []


def greedy_reference(model: GPT, prompt: torch.Tensor, n: int, restart: bool) -> torch.Tensor:
    """Greedy decoding by full recomputation, no cache. restart=False: the window is always the
    last block_size tokens. restart=True: the documented windows (grow to block_size, then start
    again from the latest block_size // 2 tokens)."""
    block, tokens = model.config.block_size, prompt
    start = max(0, prompt.size(1) - block)
    with torch.no_grad():
        for _ in range(n):
            if tokens.size(1) - start > block:
                start = tokens.size(1) - (block // 2 if restart else block)
            logits, _ = model(tokens[:, start:])
            tokens = torch.cat([tokens, logits[:, -1, :VOCAB].argmax(-1, keepdim=True)], dim=1)
    return tokens


@pytest.mark.parametrize("pos_emb", ["rope", "learned"])
@pytest.mark.parametrize("prompt_len", [5, 20])  # within the window, and already past it
def test_greedy_decoding_within_the_window_is_unchanged_and_past_it_follows_the_documented_windows(pos_emb,
                                                                                                 prompt_len):
    model = tiny(pos_emb)
    block = model.config.block_size
    prompt = torch.randint(0, VOCAB, (2, prompt_len))
    sliding = greedy_reference(model, prompt, 40, restart=False)
    windows = greedy_reference(model, prompt, 40, restart=True)
    for use_cache in (True, False):
        out = model.generate(prompt, 40, temperature=0, use_cache=use_cache)
        # Every token predicted from at most a full window of context is what it always was.
        agree = max(block + 1, prompt_len + 1)
        assert torch.equal(out[:, :agree], sliding[:, :agree]), use_cache
        assert torch.equal(out, windows), use_cache


def test_batched_prompts_restart_their_windows_as_each_alone(caches_made):
    model = tiny("learned")
    prompts = [[3, 1, 4], [1, 5, 9, 2, 6, 5, 3, 5, 8, 9, 7], [5]]
    width, new = max(map(len, prompts)), 40  # every row crosses the window twice or more
    idx = torch.tensor([[0] * (width - len(p)) + p for p in prompts])
    pad = torch.tensor([width - len(p) for p in prompts])
    batched = model.generate(idx, new, temperature=0, pad=pad)
    assert len(caches_made) == model.config.n_layer
    for row, p in zip(batched[:, width:], prompts):
        assert torch.equal(row, greedy_reference(model, torch.tensor([p]), new, restart=True)[0, len(p):])


# ----------------------------------------------------------------------------------------------
# Labels of sweep and soup figures


SWEEP = {  # job: overrides; the shared ones (stage, data.paths) say nothing about a job
    "0": ["stage=2", "data.paths=[/data/a/very/long/path/to/the/corpus.txt]", "model.n_embd=64",
          "schedule.warmup_steps=100", "optim.lr=0.001", "seed=1"],
    "1": ["stage=2", "data.paths=[/data/a/very/long/path/to/the/corpus.txt]", "model.n_embd=64",
          "schedule.warmup_steps=100", "optim.lr=0.001", "seed=2"],
    "2": ["stage=2", "data.paths=[/data/a/very/long/path/to/the/corpus.txt]", "model.n_embd=128",
          "schedule.warmup_steps=200", "optim.lr=0.0003", "seed=1"],
    "10": ["stage=2", "data.paths=[/data/a/very/long/path/to/the/corpus.txt]", "model.n_embd=128",
           "schedule.warmup_steps=200", "optim.lr=0.0003", "seed=2"],
}


def fabricated_sweep(root: Path) -> Path:
    """A multirun directory as Hydra and the trainer leave it: per job `.hydra/overrides.yaml`,
    metrics.csv and checkpoints/last.ckpt (empty: only its path matters here)."""
    import yaml

    sweep = root / "multirun" / "2024-01-01" / "12-00-00"
    for job, overrides in SWEEP.items():
        (sweep / job / ".hydra").mkdir(parents=True)
        (sweep / job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
        rows = ["step,epoch,train/loss,val/loss"] + [f"{s},0,{4 - s / 10 + int(job) / 100},"
                                                     for s in range(10)] + [f"9,0,,{3.5 + int(job) / 100}"]
        (sweep / job / "metrics.csv").write_text("\n".join(rows) + "\n")
        (sweep / job / "checkpoints").mkdir()
        (sweep / job / "checkpoints" / "last.ckpt").write_bytes(b"")
    return sweep


def assert_labels_tell_jobs_apart(labels: list[str]) -> None:
    assert len(set(labels)) == len(labels) == len(SWEEP), labels
    for label, (job, overrides) in zip(labels, SWEEP.items()):
        assert label.startswith(f"job {job} ("), label
        for varying in overrides[2:]:  # each override that differs between jobs, whole
            assert varying in label, (label, varying)
        assert "stage=2" not in label and "data.paths" not in label, label


def test_sweep_figure_labels_name_the_job_and_every_override_that_differs(tmp_path, monkeypatch):
    from microgpt.evals.plots import find_runs, plot_directory

    sweep = fabricated_sweep(tmp_path)
    found = find_runs(sweep)
    assert [d.name for d, _ in found] == ["0", "1", "2", "10"]
    assert_labels_tell_jobs_apart([label for _, label in found])
    legends = capture_legend_labels(monkeypatch)
    assert [p.name for p in plot_directory(sweep, tmp_path / "plots")] == ["loss_and_eval.png"]
    assert legends and all(any(label in text for text in legends) for _, label in found), legends


def capture_legend_labels(monkeypatch) -> list[str]:
    """The texts of every legend drawn from now on."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.axes import Axes

    texts: list[str] = []
    legend = Axes.legend

    def recording(self, *args, **kwargs):
        result = legend(self, *args, **kwargs)
        texts.extend(t.get_text() for t in result.get_texts())
        return result

    monkeypatch.setattr(Axes, "legend", recording)
    return texts


class FakeEvaluator:
    """Val loss = the single weight: enough for make_soup to rank, average and report."""

    def metrics(self, state: dict) -> dict:
        return {"val_loss": float(state["w"])}

    def loss(self, state: dict) -> float:
        return float(state["w"])


def test_soup_ingredients_all_named_last_ckpt_are_labelled_by_job_and_seed(tmp_path, monkeypatch):
    from microgpt.evals.plots import plot_soup_report
    from microgpt.souping.average import Ingredient
    from microgpt.souping.report import make_soup

    sweep = fabricated_sweep(tmp_path)
    ingredients = [Ingredient("last.ckpt", sweep / job / "checkpoints" / "last.ckpt",
                              {"state_dict": {"w": torch.tensor([3.0 + i / 10])}, "hyper_parameters": {}})
                   for i, job in enumerate(SWEEP)]
    report = make_soup(ingredients, FakeEvaluator(), "greedy", sweep)
    names = [i["name"] for i in report["ingredients"]]
    assert_labels_tell_jobs_apart(names)
    assert report["soups"]["uniform"]["members"] == names
    assert all(name in (sweep / "soup_report.md").read_text() for name in names)

    # An older report whose ingredients are all `last.ckpt`: the figure labels them by their paths.
    older = json.loads((sweep / "soup_report.json").read_text())
    for item in older["ingredients"]:
        item["name"] = "last.ckpt"
    (sweep / "soup_report.json").write_text(json.dumps(older))
    ticks = capture_tick_labels(monkeypatch)
    assert plot_soup_report(sweep / "soup_report.json", tmp_path).is_file()
    bars = [t for t in ticks if t.startswith("ingredients/")]
    assert_labels_tell_jobs_apart([t.removeprefix("ingredients/") for t in bars])


def capture_tick_labels(monkeypatch) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.axes import Axes

    texts: list[str] = []
    set_xticks = Axes.set_xticks

    def recording(self, ticks, labels=None, **kwargs):
        texts.extend(labels or [])
        return set_xticks(self, ticks, labels, **kwargs)

    monkeypatch.setattr(Axes, "set_xticks", recording)
    return texts
