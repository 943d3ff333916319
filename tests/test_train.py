"""Training through the real entry points: `python -m microgpt.train` / `generate`, and in-process runs
of the same composed config."""

import csv
import math
from pathlib import Path

import pytest
import torch

from conftest import TINY, assert_clean_error, assert_resume_is_exact, compose_train, run_cli
from microgpt.io.loading import load_model
from microgpt.lightning.training import train


def val_losses(run_dir: Path) -> list[float]:
    with open(run_dir / "metrics.csv") as f:
        return [float(row["val/loss"]) for row in csv.DictReader(f) if row.get("val/loss")]


def files_data(corpus: Path) -> list[str]:
    return ["data=files", f"data.paths=[{corpus}]"]


def test_train_then_generate_through_the_entry_points(tmp_path, small_corpus):
    run_dir = tmp_path / "run"
    result = run_cli("train", *TINY, *files_data(small_corpus), "max_steps=30", "eval_every=10", "optim.lr=1e-2",
                     f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    ckpts = run_dir / "checkpoints"
    for name in ("last.ckpt", "best.ckpt", "step000006.ckpt", "step000030.ckpt"):
        assert (ckpts / name).is_file(), sorted(p.name for p in ckpts.iterdir())
    assert (run_dir / ".hydra" / "config.yaml").is_file()
    losses = val_losses(run_dir)
    # Learned: well below a uniform guess over the characters (the first evaluation is at step 10,
    # when much of the fall has already happened), and still falling.
    vocab = len(set(small_corpus.read_text())) + 1  # + end-of-text
    assert len(losses) == 3 and losses[-1] < math.log(vocab) - 0.5 and losses[-1] < losses[0], losses
    assert (run_dir / "samples.txt").read_text().strip()

    gen = run_cli("generate", f"ckpt={ckpts / 'last.ckpt'}", "prompt=ROMEO:", "max_new_tokens=40",
                  "seed=3", "stop_at_eot=false", cwd=tmp_path)
    assert gen.returncode == 0, gen.stderr[-3000:]
    assert gen.stdout.startswith("ROMEO:") and len(gen.stdout.strip()) >= len("ROMEO:") + 20
    again = run_cli("generate", f"ckpt={ckpts / 'last.ckpt'}", "prompt=ROMEO:", "max_new_tokens=40",
                    "seed=3", "stop_at_eot=false", cwd=tmp_path)
    assert again.stdout == gen.stdout  # a seed reproduces the sample

    lm = load_model(ckpts / "last.ckpt")
    assert lm.count_params() == sum(p.numel() for p in lm.model.parameters())
    text = lm.generate_text(text="ROMEO:", max_new_tokens=20, seed=0, stop_at_eot=False)
    assert text.startswith("ROMEO:") and len(text) == len("ROMEO:") + 20  # char model: 1 token = 1 char


def test_resume_from_a_checkpoint_reproduces_the_uninterrupted_run(tmp_path, small_corpus):
    # Dropout on: the RNG state is part of what a resume must restore.
    assert_resume_is_exact([*TINY, *files_data(small_corpus), "model.dropout=0.1", "callbacks.text_samples=null"], tmp_path)


def test_resume_with_ckpt_path_last_in_the_same_run_dir(tmp_path, small_corpus):
    common = [*TINY, *files_data(small_corpus), "callbacks.text_samples=null"]
    train(compose_train(*common, "max_steps=6", output_dir=tmp_path))
    metrics = train(compose_train(*common, "max_steps=12", "ckpt_path=last", output_dir=tmp_path))
    assert torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 12
    assert math.isfinite(metrics["val/loss"])


def test_resume_with_another_model_shape_is_refused(tmp_path, small_corpus):
    common = [*TINY, *files_data(small_corpus), "callbacks.text_samples=null", "max_steps=6"]
    train(compose_train(*common, output_dir=tmp_path / "a"))
    result = run_cli("train", *common, "model.n_layer=3", f"ckpt_path={tmp_path / 'a/checkpoints/last.ckpt'}",
                     f"hydra.run.dir={tmp_path / 'b'}", cwd=tmp_path)
    assert_clean_error(result, "different model", "n_layer")


@pytest.mark.parametrize(
    "args, words",
    [
        (["model=huge"], ["unknown model", "nano"]),
        (["tokenizer=klingon"], ["unknown tokenizer", "gpt2"]),
        (["data=nowhere"], ["unknown data", "files"]),
        (["data=files", "data.paths=[missing.txt]"], ["missing.txt", "does not exist"]),
        (["data=text", "data.text= "], ["empty"]),  # free text is literal: the shell's "data.text= "
        (["data=text", "data.text=tiny corpus"], ["fewer than one block"]),
        (["data.block_size=4096"], ["above the model's context"]),
        (["ckpt_path=nowhere.ckpt"], ["nowhere.ckpt", "does not exist"]),
        (["max_steps=abc"], ["max_steps", "integer"]),
        (["max_steps=0"], ["max_steps"]),
        (["data.batch_size=-2"], ["data.batch_size"]),
        (["model.n_head=3"], ["divisible"]),
        (["no_such_key=1"], ["no_such_key"]),
    ],
)
def test_bad_input_is_one_clear_line(tmp_path, args, words):
    result = run_cli("train", *args, f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path, timeout=120)
    assert_clean_error(result, *words)


def test_corrupt_checkpoint_is_reported_and_left_alone(tmp_path):
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(b"PK\x03\x04 not really a checkpoint")
    result = run_cli("generate", f"ckpt={bad}", cwd=tmp_path)
    assert_clean_error(result, "corrupt")
    assert bad.read_bytes() == b"PK\x03\x04 not really a checkpoint"


def test_bad_sampling_parameters_through_generate(tmp_path):
    result = run_cli("generate", "ckpt=x.ckpt", "temperature=-1", cwd=tmp_path)
    assert_clean_error(result, "temperature")


def test_debug_switch_shows_the_traceback(tmp_path):
    result = run_cli("generate", "ckpt=missing.ckpt", cwd=tmp_path, env={"MICROGPT_DEBUG": "1"})
    assert result.returncode != 0 and "Traceback" in result.stderr


def test_bf16_autocast_with_fused_adamw_and_clipping_trains(tmp_path, small_corpus):
    """Lightning's mixed-precision plugin refuses to clip gradients for fused optimizers; bf16 needs no
    scaler, so the module clips itself (this used to crash)."""
    metrics = train(compose_train(*TINY, *files_data(small_corpus), "trainer.precision=bf16-mixed", "optim.lr=1e-2",
                                  "callbacks.text_samples=null", output_dir=tmp_path))
    assert metrics["val/loss"] < 3.8  # from ~ln(61) = 4.1 at initialisation


def test_last_checkpoint_holds_the_final_step_between_periodic_saves(tmp_path, small_corpus):
    train(compose_train(*TINY, *files_data(small_corpus), "max_steps=9", "checkpoint_every=4",
                        "callbacks.text_samples=null", output_dir=tmp_path))
    ckpts = tmp_path / "checkpoints"
    assert torch.load(ckpts / "last.ckpt", weights_only=True)["global_step"] == 9
    assert torch.load(ckpts / "step000008.ckpt", weights_only=True)["global_step"] == 8
