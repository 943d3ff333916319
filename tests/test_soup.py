"""The two-stage recipe end to end: stage 1, a stage-2 multirun of three seeds, and the soup."""

import json
from pathlib import Path

import pytest
import torch

from conftest import TINY, assert_clean_error, compose_train, run_cli
from microgpt.io.loading import load_model
from microgpt.lightning.training import train
from microgpt.souping.average import average

SOUP_TINY = [*TINY, "data.batch_size=8", "eval_batches=4", "callbacks.text_samples=null"]


@pytest.fixture(scope="module")
def stage1(tmp_path_factory, request):
    """A short stage-1 run on the first part of a corpus."""
    from conftest import fixture_text

    tmp = tmp_path_factory.mktemp("stage1")
    corpus = tmp / "corpus.txt"
    corpus.write_text(fixture_text("tinyshakespeare.txt")[:150_000])
    train(compose_train("stage=1", *SOUP_TINY, "data=files", f"data.paths=[{corpus}]", "tokenizer=char",
                        "max_steps=60", "eval_every=30", "optim.lr=3e-3", output_dir=tmp / "run"))
    return tmp / "run" / "checkpoints" / "last.ckpt", corpus


def stage2_args(stage1_ckpt: Path, corpus: Path, sweep: Path, *extra: str) -> list[str]:
    return ["-m", "stage=2", f"init_from={stage1_ckpt}", *SOUP_TINY, "data=files", f"data.paths=[{corpus}]",
            "max_steps=20", "eval_every=10", "optim.lr=1e-3", f"hydra.sweep.dir={sweep}", *extra]


@pytest.fixture(scope="module")
def sweep(stage1, tmp_path_factory):
    ckpt, corpus = stage1
    sweep = tmp_path_factory.mktemp("stage2") / "sweep"
    result = run_cli("train", *stage2_args(ckpt, corpus, sweep, "seed=1,2,3"), cwd=sweep.parent, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return sweep, result


def test_stage2_sweep_is_souped(sweep):
    sweep_dir, result = sweep
    report = json.loads((sweep_dir / "soup_report.json").read_text())
    assert report["status"] == "ok" and report["method"] == "uniform"
    assert [i["name"] for i in report["ingredients"]] == ["job 0 (seed=1)", "job 1 (seed=2)", "job 2 (seed=3)"]
    # Soups fine-tuned from one start: the uniform soup is no worse than the average ingredient.
    losses = [i["val_loss"] for i in report["ingredients"]]
    assert report["mean_ingredient_val_loss"] == pytest.approx(sum(losses) / 3)
    assert report["soup_val_loss"] <= report["mean_ingredient_val_loss"]
    assert report["soup_beats_mean"] is True
    table = (sweep_dir / "soup_report.md").read_text()
    assert "uniform soup" in table and f"{report['soup_val_loss']:.4f}" in table and "mean of ingredients" in table
    assert "# Model soup" in result.stdout


def test_soup_weights_are_the_exact_mean(sweep):
    sweep_dir, _ = sweep
    states = [torch.load(sweep_dir / str(j) / "checkpoints/last.ckpt", weights_only=True)["state_dict"] for j in range(3)]
    soup = torch.load(sweep_dir / "soup.ckpt", weights_only=True)
    assert soup["soup"]["method"] == "uniform" and len(soup["soup"]["ingredients"]) == 3
    for k, v in soup["state_dict"].items():
        expected = (states[0][k].float() + states[1][k].float() + states[2][k].float()) / 3
        assert torch.equal(v, expected.to(v.dtype)), k
    assert not torch.equal(states[0]["model.transformer.wte.weight"], states[1]["model.transformer.wte.weight"])


def test_the_soup_is_a_normal_checkpoint(sweep, tmp_path):
    sweep_dir, _ = sweep
    lm = load_model(sweep_dir / "soup.ckpt")
    assert len(lm.generate_text("ROMEO:", max_new_tokens=10, seed=0, stop_at_eot=False)) == len("ROMEO:") + 10
    gen = run_cli("generate", f"ckpt={sweep_dir / 'soup.ckpt'}", "prompt=ROMEO:", "max_new_tokens=10", cwd=tmp_path)
    assert gen.returncode == 0 and gen.stdout.startswith("ROMEO:"), gen.stderr[-2000:]


def test_greedy_soup_is_never_worse_than_its_best_ingredient(sweep, stage1, tmp_path):
    sweep_dir, _ = sweep
    _, corpus = stage1
    ckpts = ",".join(str(sweep_dir / str(j) / "checkpoints/last.ckpt") for j in range(3))
    result = run_cli("soup", f"ckpts=[{ckpts}]", "method=greedy", "data=files", f"data.paths=[{corpus}]",
                     "data.block_size=32", "val_batches=4", f"out={tmp_path}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "soup_report.json").read_text())
    greedy = report["soups"]["greedy"]
    assert greedy["val_loss"] <= report["best_ingredient_val_loss"]
    assert greedy["members"][0] == min(report["ingredients"], key=lambda i: i["val_loss"])["name"]
    assert torch.load(tmp_path / "soup.ckpt", weights_only=True)["soup"]["method"] == "greedy"


def test_mismatched_ingredients_are_refused(sweep, stage1, tmp_path):
    sweep_dir, corpus = sweep[0], stage1[1]
    other = tmp_path / "other"
    train(compose_train(*SOUP_TINY, "data=files", f"data.paths=[{corpus}]", "model.n_layer=3", "max_steps=2",
                        "eval_every=2", output_dir=other))
    result = run_cli("soup", f"ckpts=[{sweep_dir / '0/checkpoints/last.ckpt'},{other / 'checkpoints/last.ckpt'}]",
                     "data=files", f"data.paths=[{corpus}]", f"out={tmp_path / 'soup'}", cwd=tmp_path)
    assert_clean_error(result, "cannot soup", "n_layer=2 vs 3")


def test_a_failed_job_is_left_out_and_reported_loudly(stage1, tmp_path):
    """Here with the local parallel launcher (joblib): jobs run in worker processes."""
    ckpt, corpus = stage1
    sweep = tmp_path / "sweep"
    result = run_cli("train", *stage2_args(ckpt, corpus, sweep, "optim.lr=1e-3,2e-3,-1", "hydra/launcher=joblib",
                                           "hydra.launcher.n_jobs=2"), cwd=tmp_path, timeout=600)
    assert result.returncode == 1, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    assert "job(s) of the sweep failed; the soup used the other 2" in result.stderr
    report = json.loads((sweep / "soup_report.json").read_text())
    assert len(report["ingredients"]) == 2 and len(report["failed_jobs"]) == 1
    assert "optim.lr=-1" in report["failed_jobs"][0]["job"]
    assert (sweep / "soup.ckpt").is_file()
    assert "failed and was left out" in (sweep / "soup_report.md").read_text()


def test_a_soup_that_cannot_be_made_fails_the_command(stage1, tmp_path):
    ckpt, corpus = stage1
    sweep = tmp_path / "sweep"
    result = run_cli("train", *stage2_args(ckpt, corpus, sweep, "optim.lr=1e-3,-1,-2"), cwd=tmp_path, timeout=600)
    assert result.returncode == 1
    assert "error: the soup failed: only 1 of 3 jobs finished" in result.stderr
    assert json.loads((sweep / "soup_report.json").read_text())["status"] == "failed"


def test_average_keeps_integer_buffers_and_dtypes():
    a = {"w": torch.tensor([1.0, 2.0], dtype=torch.bfloat16), "n": torch.tensor([3])}
    b = {"w": torch.tensor([2.0, 4.0], dtype=torch.bfloat16), "n": torch.tensor([5])}
    out = average([a, b])
    assert out["w"].dtype == torch.bfloat16 and out["w"].tolist() == [1.5, 3.0]
    assert out["n"].tolist() == [3]


def test_stage_configs_compose_for_the_gpu_recipe():
    cfg = compose_train("stage=2", "init_from=stage1.ckpt", "model=gpt2_124m", "trainer=slurm")
    assert cfg.data.sources[0].kind == "mixture" and cfg.optim.lr < compose_train("stage=1").optim.lr
    from hydra import compose, initialize_config_dir

    from microgpt.cli.overrides import CONFIG_DIR

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        hcfg = compose("train", overrides=["stage='2'", "init_from=x.ckpt", "trainer=slurm"], return_hydra_config=True)
    assert hcfg.hydra.callbacks.soup._target_ == "microgpt.souping.callback.SoupCallback"
    assert hcfg.hydra.launcher._target_.endswith("SlurmLauncher")
