"""What a user can type into the non-train commands and the Python API, and what a train run reports:
each mistake is one `error:` line naming the fix, valid input is kept exactly, work is never lost."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import TINY, assert_clean_error, compose_train, run_cli
from microgpt.core.errors import CheckpointError, ConfigError
from microgpt.core.sampling import SamplingOptions
from microgpt.io.loading import load_model

ROOT_IGNORES_PERMISSIONS = hasattr(os, "geteuid") and os.geteuid() == 0


@pytest.fixture(scope="module")
def corpus(module_corpus) -> Path:
    return module_corpus


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory, corpus) -> Path:
    """One tiny char-level checkpoint for the whole module (6 steps, through the real entry point)."""
    run_dir = tmp_path_factory.mktemp("run")
    result = run_cli("train", *TINY, "max_steps=6", "callbacks.text_samples=null", "data=files",
                     f"data.paths=[{corpus}]", f"hydra.run.dir={run_dir}", cwd=run_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    return run_dir / "checkpoints" / "last.ckpt"


def generate(ckpt: Path, *args: str, cwd: Path, **kwargs):
    return run_cli("generate", f"ckpt={ckpt}", "max_new_tokens=12", "stop_at_eot=false", "seed=7", *args,
                   cwd=cwd, timeout=120, **kwargs)


# --- generate: prompts from a file and from stdin, exactly as written; CLI == API ---

PROMPT = "ROMEO, it's late, \nand yet "  # commas, an apostrophe, a newline, trailing space


def test_prompt_file_and_stdin_keep_the_exact_text_and_match_the_api(ckpt, tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text(PROMPT)
    api = load_model(ckpt).generate_text(PROMPT, max_new_tokens=12, seed=7, stop_at_eot=False)
    assert api.startswith(PROMPT) and len(api) == len(PROMPT) + 12  # char model: 1 token = 1 char
    from_file = generate(ckpt, f"prompt_file={notes}", cwd=tmp_path)
    assert from_file.returncode == 0, from_file.stderr[-3000:]
    assert from_file.stdout == api + "\n"
    env = {k: v for k, v in os.environ.items() if k not in ("HYDRA_FULL_ERROR", "MICROGPT_DEBUG")}
    piped = subprocess.run([sys.executable, "-m", "microgpt.generate", f"ckpt={ckpt}", "prompt=-", "max_new_tokens=12",
                            "stop_at_eot=false", "seed=7"], input=PROMPT, capture_output=True, text=True,
                           cwd=tmp_path, env=env, timeout=120)
    assert piped.returncode == 0, piped.stderr[-3000:]
    assert piped.stdout == api + "\n"


def test_typed_prompt_matches_the_api_for_the_same_seed(ckpt, tmp_path):
    typed = generate(ckpt, "prompt=ROMEO:", cwd=tmp_path)
    assert typed.returncode == 0, typed.stderr[-3000:]
    assert typed.stdout == load_model(ckpt).generate_text("ROMEO:", 12, seed=7, stop_at_eot=False) + "\n"


@pytest.mark.parametrize("args, words", [
    (["prompt_file=missing.txt"], ["prompt_file", "missing.txt", "does not exist"]),
    (["prompt_file=notes.txt", "prompt=hello"], ["one way"]),
    (["device=banana"], ["device", "banana"]),
    (["num_samples=0"], ["num_samples"]),
    (["top_p=1.5"], ["top_p"]),
    (["top_k=0"], ["top_k"]),
])
def test_generate_refuses_bad_input_in_one_line(ckpt, tmp_path, args, words):
    (tmp_path / "notes.txt").write_text("hi")
    assert_clean_error(generate(ckpt, *args, cwd=tmp_path), *words)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
@pytest.mark.parametrize("command", ["generate", "eval"])
def test_cuda_on_a_machine_without_it_is_one_line(ckpt, tmp_path, command):
    extra = ["tasks=[val_loss]", f"out={tmp_path / 'eval'}"] if command == "eval" else []
    result = run_cli(command, f"ckpt={ckpt}", "device=cuda", *extra, cwd=tmp_path, timeout=120)
    assert_clean_error(result, "device=cuda", "no usable CUDA", "device=cpu")
    with pytest.raises(ConfigError, match="no usable CUDA"):
        load_model(ckpt, device="cuda")


def test_load_model_refuses_an_unknown_device(ckpt):
    with pytest.raises(ConfigError, match="banana"):
        load_model(ckpt, device="banana")


# --- the Python API's sampling arguments ---

@pytest.mark.parametrize("settings, word", [
    ({"max_new_tokens": -1}, "max_new_tokens"),
    ({"max_new_tokens": 2.5}, "max_new_tokens"),
    ({"temperature": math.inf}, "temperature"),
    ({"temperature": math.nan}, "temperature"),
    ({"temperature": -0.5}, "temperature"),
    ({"top_p": 0.0}, "top_p"),
    ({"top_p": 1.5}, "top_p"),
    ({"top_k": 0}, "top_k"),
    ({"seed": "abc"}, "seed"),
])
def test_api_refuses_bad_sampling_arguments_before_sampling(ckpt, settings, word):
    lm = load_model(ckpt)
    for call in (lambda: lm.generate_text("Hi", **settings), lambda: lm.stream_text("Hi", **settings),
                 lambda: lm.generate_texts(["Hi", "Yo"], **settings)):
        with pytest.raises(ValueError, match=word):  # ConfigError is a ValueError
            call()
    with pytest.raises(ValueError, match=word):
        SamplingOptions(**settings)


def test_sampling_options_and_keywords_are_one_thing(ckpt):
    lm = load_model(ckpt)
    options = SamplingOptions(max_new_tokens=9, temperature=0.5, top_k=5, seed=3, stop_at_eot=False)
    assert lm.generate_text("Hi", options=options) == lm.generate_text(
        "Hi", 9, temperature=0.5, top_k=5, seed=3, stop_at_eot=False)
    assert lm.generate_texts(["Hi"], options=options) == [lm.generate_text("Hi", options=options)]
    with pytest.raises(TypeError, match="tempreature"):
        lm.generate_text("Hi", tempreature=0.5)


# --- checkpoints that are not what they claim ---

@pytest.fixture(scope="module")
def bad_checkpoints(tmp_path_factory, ckpt) -> dict[str, tuple[Path, list[str]]]:
    folder = tmp_path_factory.mktemp("bad")
    notes = folder / "notes.txt"
    notes.write_text("ROMEO, my dear, this is not a model\n")
    data = ckpt.read_bytes()
    truncated = folder / "truncated.ckpt"
    truncated.write_bytes(data[: len(data) // 2])
    edited = torch.load(ckpt, weights_only=True)
    edited["hyper_parameters"]["model"]["n_embd"] = 64
    mismatched = folder / "mismatched.ckpt"
    torch.save(edited, mismatched)
    (folder / "empty_dir").mkdir()
    return {
        "text file": (notes, ["notes.txt is not a microgpt checkpoint"]),
        "truncated": (truncated, ["truncated or corrupt"]),
        "config vs weights": (mismatched, ["does not match its own model config", "n_embd=64",
                                             ", 32) in the weights", ", 64) by the config"]),
        "missing": (folder / "nowhere.ckpt", ["nowhere.ckpt", "does not exist"]),
        "directory without a model": (folder / "empty_dir", ["empty_dir", "config.json"]),
    }


CASES = ["text file", "truncated", "config vs weights", "missing", "directory without a model"]


@pytest.mark.parametrize("case", CASES)
def test_load_model_names_what_is_wrong_with_a_checkpoint(bad_checkpoints, case):
    path, words = bad_checkpoints[case]
    with pytest.raises(CheckpointError) as info:
        load_model(path)
    for word in words:
        assert word.lower() in str(info.value).lower()
    assert "weights_only" not in str(info.value)


@pytest.mark.parametrize("command", ["generate", "eval", "export", "soup"])
@pytest.mark.parametrize("case", ["text file", "truncated", "config vs weights"])
def test_commands_name_what_is_wrong_with_a_checkpoint(bad_checkpoints, ckpt, corpus, tmp_path, command, case):
    path, words = bad_checkpoints[case]
    before = path.read_bytes()
    args = {"generate": [f"ckpt={path}"],
            "eval": [f"ckpt={path}", "tasks=[val_loss]", f"out={tmp_path / 'eval'}"],
            "export": [f"ckpt={path}", f"out={tmp_path / 'export'}"],
            "soup": [f"ckpts=[{ckpt},{path}]", "data=files", f"data.paths=[{corpus}]", f"out={tmp_path / 'soup'}"]}
    line = assert_clean_error(run_cli(command, *args[command], cwd=tmp_path, timeout=120), *words)
    assert "weights_only" not in line
    assert path.read_bytes() == before  # left alone
    assert not any((tmp_path / d).exists() for d in ("eval", "export", "soup"))


# --- where results are written: checked before the work ---

def unwritable_parent(tmp_path: Path) -> Path:
    """A path whose folder cannot be made whoever runs the test (root too): it lies under a file."""
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    return blocker / "sub"


def output_args(command: str, ckpt: Path, corpus: Path, out: Path) -> list[str]:
    return {
        "eval": [f"ckpt={ckpt}", "tasks=[val_loss]", "data=files", f"data.paths=[{corpus}]", f"out={out}"],
        "soup": [f"ckpts=[{ckpt},{ckpt}]", "data=files", f"data.paths=[{corpus}]", "val_batches=2", f"out={out}"],
        "export": [f"ckpt={ckpt}", f"out={out}"],
        "train_tokenizer": ["data=files", f"data.paths=[{corpus}]", "tokenizer.vocab_size=300",
                            f"tokenizer.out={out / 'bpe.json'}"],
    }[command]


EXISTING = {"eval": "results.json", "soup": "soup.ckpt", "export": "model.safetensors", "train_tokenizer": "bpe.json"}


@pytest.mark.parametrize("command", ["eval", "soup", "export", "train_tokenizer"])
def test_an_output_under_a_file_is_refused_before_the_work(ckpt, corpus, tmp_path, command):
    out = unwritable_parent(tmp_path)
    setting = "tokenizer.out" if command == "train_tokenizer" else "out"
    result = run_cli(command, *output_args(command, ckpt, corpus, out), cwd=tmp_path, timeout=120)
    assert_clean_error(result, setting, "a_file", "not a directory")


@pytest.mark.skipif(ROOT_IGNORES_PERMISSIONS, reason="root writes into read-only folders")
@pytest.mark.parametrize("command", ["eval", "train_tokenizer"])
def test_a_read_only_output_folder_is_refused(ckpt, corpus, tmp_path, command):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        result = run_cli(command, *output_args(command, ckpt, corpus, locked), cwd=tmp_path, timeout=120)
        assert_clean_error(result, "locked", "permission denied")
    finally:
        locked.chmod(0o700)


@pytest.mark.parametrize("command", ["eval", "soup", "export", "train_tokenizer"])
def test_an_existing_output_is_kept_unless_overwrite(ckpt, corpus, tmp_path, command):
    out = tmp_path / "out"
    out.mkdir()
    existing = out / EXISTING[command]
    existing.write_bytes(b"earlier result")
    args = output_args(command, ckpt, corpus, out)
    assert_clean_error(run_cli(command, *args, cwd=tmp_path, timeout=120), str(existing), "overwrite=true")
    assert existing.read_bytes() == b"earlier result"
    again = run_cli(command, *args, "overwrite=true", cwd=tmp_path, timeout=180)
    assert again.returncode == 0, again.stderr[-3000:]
    assert existing.read_bytes() != b"earlier result"


# --- eval: a task that cannot run does not lose the others ---

def test_eval_keeps_val_loss_when_hellaswag_cannot_run(ckpt, corpus, tmp_path):
    out = tmp_path / "eval"
    result = run_cli("eval", f"ckpt={ckpt}", "tasks=[val_loss,hellaswag]", "data=files", f"data.paths=[{corpus}]",
                     f"hellaswag.source={tmp_path / 'offline' / 'hellaswag_val.jsonl'}", f"out={out}",
                     cwd=tmp_path, timeout=180)
    line = assert_clean_error(result, "hellaswag", "val_loss finished", str(out / "results.json"))
    assert "could not run" in line
    assert "| val_loss | loss |" in result.stdout
    saved = json.loads((out / "results.json").read_text())
    assert math.isfinite(saved["results"]["val_loss"]["loss"]) and "hellaswag" not in saved["results"]
    assert "hellaswag" in saved["failed"]


# --- train: the data an experiment needs, W&B without a login, why a run ended, console noise ---

def test_shakespeare_char_without_data_paths_says_what_to_pass(tmp_path):
    result = run_cli("train", "experiment=shakespeare_char", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path,
                     timeout=120)
    # The command line's check quotes the experiment's own hint for its ??? setting.
    assert_clean_error(result, "data.paths= is required", "data.paths=[path/to/shakespeare.txt]",
                       "experiment=shakespeare_char")
    from microgpt.lightning.training import check_data_paths

    cfg = compose_train("experiment=shakespeare_char")  # the train run's own check, for in-process runs
    with pytest.raises(ConfigError, match=r"data\.paths=\[corpus\.txt\]"):
        check_data_paths(cfg)


def no_wandb_login_env(tmp_path: Path) -> dict:
    """No key, no netrc, no W&B settings (a fake HOME), and an unreachable W&B server: were the
    check to let the run through, W&B would fail at once rather than reach the network."""
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("WANDB_") and k not in ("NETRC", "HYDRA_FULL_ERROR", "MICROGPT_DEBUG")}
    return {**env, "HOME": str(home), "WANDB_BASE_URL": "http://127.0.0.1:9", "WANDB_SILENT": "true"}


def test_wandb_without_a_login_fails_before_training(tmp_path, corpus):
    run_dir = tmp_path / "run"
    env = no_wandb_login_env(tmp_path)
    assert "WANDB_MODE" not in env  # unset, as for a user who never chose a mode
    result = subprocess.run([sys.executable, "-m", "microgpt.train", *TINY, "logger=wandb", "data=files",
                             f"data.paths=[{corpus}]", f"hydra.run.dir={run_dir}"], cwd=tmp_path, env=env,
                            stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120)
    assert_clean_error(result, "wandb login", "WANDB_MODE=offline")
    assert not (run_dir / "checkpoints").exists()
    assert "W&B login" in (run_dir / "train.log").read_text()


def test_wandb_offline_still_trains_without_a_login(tmp_path, corpus):
    run_dir = tmp_path / "run"
    env = {**no_wandb_login_env(tmp_path), "WANDB_MODE": "offline"}
    # The fake HOME has no login; WANDB_MODE=offline is all it takes.
    result = run_cli("train", *TINY, "max_steps=2", "eval_every=2", "callbacks.text_samples=null", "logger=wandb",
                     "data=files", f"data.paths=[{corpus}]", f"hydra.run.dir={run_dir}", cwd=tmp_path, timeout=180,
                     env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert list((run_dir / "wandb").glob("offline-run-*"))


def test_train_log_says_why_the_run_stopped_on_nan(tmp_path, corpus):
    run_dir = tmp_path / "run"
    result = run_cli("train", *TINY, "callbacks.text_samples=null", "data=files", f"data.paths=[{corpus}]",
                     "optim.lr=1e6", "trainer.gradient_clip_val=null", "schedule.warmup_steps=0",
                     f"hydra.run.dir={run_dir}",
                     cwd=tmp_path, timeout=180)
    assert_clean_error(result, "NaN/inf")
    log = (run_dir / "train.log").read_text()
    assert "run ended with an error" in log and "NaN/inf" in log
    assert "run ended: completed" not in log


def test_train_log_says_why_the_run_ended_on_a_config_error_and_on_completion(tmp_path, corpus):
    run_dir = tmp_path / "run"
    bad = run_cli("train", *TINY, "data=files", f"data.paths=[{corpus}]", "data.batch_size=-2",
                  f"hydra.run.dir={run_dir}", cwd=tmp_path, timeout=120)
    line = assert_clean_error(bad, "data.batch_size")
    assert line.removeprefix("error: ") in (run_dir / "train.log").read_text()
    good_dir = tmp_path / "good"
    good = run_cli("train", *TINY, "max_steps=2", "eval_every=2", "callbacks.text_samples=null",
                   "trainer.enable_model_summary=true", "data=files", f"data.paths=[{corpus}]",
                   f"hydra.run.dir={good_dir}", cwd=tmp_path, timeout=180)
    assert good.returncode == 0, good.stderr[-3000:]
    assert "run ended: completed" in (good_dir / "train.log").read_text()
    console = good.stdout + good.stderr
    # Each Lightning message once (it was printed by Lightning's handler and the run's), and no
    # FLOPs column Lightning never counted.
    for message in ("GPU available:", "`Trainer.fit` stopped"):
        assert console.count(message) == 1, console[-3000:]
    assert "FLOPs" not in console and "Total Flops" not in console
    assert "Total params" in (good_dir / "train.log").read_text()  # the summary is in the log now
