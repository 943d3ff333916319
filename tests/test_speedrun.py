"""The CPU speedrun preset and what its time-to-quality curve needs: every validation window
(eval_batches=null), the wall clock since the process started in metrics.csv, and the loss plotted
against it (`python -m microgpt.plot --x seconds`)."""

from __future__ import annotations

import csv
import gzip
import time

import pytest

from conftest import compose_train, fixture_file, run_cli

SMALL = ["model.n_layer=1", "model.n_head=2", "model.n_embd=32", "data.batch_size=8", "max_steps=6",
         "eval_every=3", "checkpoint_every=6", "callbacks.progress_bar=null", "trainer.enable_model_summary=false"]


@pytest.fixture(scope="module")
def shakespeare(tmp_path_factory):
    path = tmp_path_factory.mktemp("corpus") / "shakespeare.txt"
    path.write_text(gzip.decompress(fixture_file("tinyshakespeare.txt.gz").read_bytes()).decode()[:40_000])
    return path


def val_rows(run_dir) -> list[dict]:
    with (run_dir / "metrics.csv").open(newline="") as f:
        return [row for row in csv.DictReader(f) if row.get("val/loss")]


def test_the_preset_is_nanogpts_task_with_the_levers_it_names():
    cfg = compose_train("experiment=speedrun_shakespeare", "data.paths=[x.txt]")
    base = compose_train("experiment=shakespeare_char", "data.paths=[x.txt]")
    for key in ("n_layer", "n_head", "n_embd", "block_size"):  # nanoGPT's model and context
        assert cfg.model[key] == base.model[key]
    assert cfg.tokenizer.kind == base.tokenizer.kind == "char" and cfg.data.val_fraction == base.data.val_fraction
    assert cfg.optim._target_.endswith("MuonAdamW") and cfg.schedule._target_.endswith("WarmupStableDecay")
    assert (cfg.model.mlp, cfg.model.norm, cfg.model.qk_norm, cfg.model.tie_embeddings) == ("gelu_tanh", "rmsnorm", "head", True)
    assert cfg.eval_every == cfg.checkpoint_every == cfg.max_steps  # one evaluation and one checkpoint, at the end
    assert cfg.eval_batches is None and cfg.callbacks.text_samples is None


def test_a_speedrun_logs_its_process_clock_and_plots_loss_against_it(tmp_path, shakespeare):
    run_dir = tmp_path / "run"
    started = time.time()
    result = run_cli("train", "experiment=speedrun_shakespeare", f"data.paths=[{shakespeare}]", *SMALL,
                     f"hydra.run.dir={run_dir}", cwd=tmp_path)
    elapsed = time.time() - started
    assert result.returncode == 0, result.stderr[-2000:]
    rows = val_rows(run_dir)
    assert [int(r["step"]) for r in rows] == [2, 5]  # evaluations after steps 3 and 6
    seconds = [float(r["time/process_s"]) for r in rows]
    # after the imports and the data (seconds into the process), rising, and within the process's life
    assert 1.0 < seconds[0] < seconds[1] < elapsed, (seconds, elapsed)

    plotted = run_cli("plot", str(run_dir), "--x", "seconds", "--out", str(tmp_path / "plots"), cwd=tmp_path)
    assert plotted.returncode == 0, plotted.stderr
    png = tmp_path / "plots" / "loss_vs_seconds.png"
    assert plotted.stdout.split() == [str(png)] and png.stat().st_size > 10_000


def test_plotting_against_seconds_without_a_clock_says_so(tmp_path):
    run_dir = tmp_path / "old_run"
    run_dir.mkdir()
    (run_dir / "metrics.csv").write_text("step,val/loss\n9,2.5\n19,2.1\n")
    result = run_cli("plot", str(run_dir), "--x", "seconds", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: old_run: no time/process_s in its metrics.csv (it is logged by callbacks.throughput); "
        "plot it against tokens (--x tokens)"]
    assert run_cli("plot", str(run_dir), cwd=tmp_path).returncode == 0  # against steps it still plots


def test_eval_batches_null_reads_every_validation_window(tmp_path, shakespeare):
    from microgpt.data.packing import PackedWindows
    from microgpt.lightning.builders import build_datamodule, training_tokenizer
    from microgpt.lightning.training import validation_windows

    for eval_batches, expected in ((None, None), (3, 3 * 8)):
        cfg = compose_train("experiment=speedrun_shakespeare", f"data.paths=[{shakespeare}]", *SMALL,
                            f"eval_batches={'null' if eval_batches is None else eval_batches}")
        datamodule = build_datamodule(cfg.data, training_tokenizer(cfg), cfg.seed, val_windows=validation_windows(cfg))
        datamodule.load()
        windows = sum(len(batch) for batch in datamodule.val_dataloader())
        every = len(PackedWindows(datamodule.val_tokens, cfg.model.block_size))
        assert windows == (every if expected is None else expected) and every > 3 * 8


@pytest.mark.parametrize("value", ["0", "abc"])
def test_a_bad_eval_batches_is_one_line(tmp_path, value):
    result = run_cli("train", f"eval_batches={value}", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: eval_batches must be ") and value in lines[0], lines
