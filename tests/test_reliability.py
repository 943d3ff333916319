"""Reliability and security (issue 11): bad input, faults, untrusted files, secrets.

Items another test file already covers fully are mapped to it here rather than repeated:

Bad input (one `error:` line, non-zero exit, no traceback; `assert_clean_error` through `run_cli`)
- unknown config group option ........ test_train.py::test_bad_input_is_one_clear_line (model=huge, ...)
- type error in an override .......... same table (max_steps=abc); below: optim.lr=fast, model.n_embd=abc
- missing / empty data ............... same table (missing.txt, data.text=' ', fewer than one block)
- unreachable URL .................... test_data_sources.py::test_unreachable_url_is_one_clear_line (404);
                                       below: connection refused, and a file:// URL
- unknown HF dataset ................. test_data_sources.py::test_unknown_hf_dataset_is_one_clear_line
- tokenizer / model vocab mismatch ... below (model.vocab_size smaller than the tokenizer's);
                                       resuming with another tokenizer: test_distributed.py::
                                       test_resume_with_another_tokenizer_is_refused
- checkpoint of another architecture . test_train.py::test_resume_with_another_model_shape_is_refused;
                                       init_from: test_pretrained.py::test_fine_tune_with_a_mismatched_model_names_the_overrides
- truncated / corrupt checkpoint ..... test_train.py::test_corrupt_checkpoint_is_reported_and_left_alone (generate);
                                       resume=auto past a torn file: test_distributed.py::test_sigkill_then_resume_auto...;
                                       below: a truncated checkpoint given to train as ckpt_path
- tokenizer file corrupt ............. test_bpe.py::test_training_with_a_corrupt_tokenizer_file_is_one_clear_line,
                                       test_tokenizer.py::test_corrupt_tokenizer_file
- block_size above context ........... test_train.py table (data.block_size=4096)
- negative or zero sizes ............. test_train.py table (max_steps=0, data.batch_size=-2); below: widths, block size
- batch not divisible as configured .. below (global_batch_tokens); test_plan.py::test_global_batch_mismatch_is_an_error
- out-of-range sampling parameters ... test_train.py::test_bad_sampling_parameters_through_generate,
                                       test_pretrained.py::test_invalid_sampling_settings_are_clean_errors
- the debug switch ................... test_train.py::test_debug_switch_shows_the_traceback (MICROGPT_DEBUG=1);
                                       below: HYDRA_FULL_ERROR=1
Faults
- NaN / inf loss (stop, skip) ........ below
- SIGTERM ............................ test_distributed.py::test_sigterm_saves_a_checkpoint_and_exits_cleanly
- SIGINT (Ctrl-C) .................... below
- SIGKILL + resume=auto .............. test_distributed.py::test_sigkill_then_resume_auto_matches_the_uninterrupted_run
- disk full while saving ............. below (a full tmpfs: real ENOSPC); an unwritable directory for non-root
                                       users: test_distributed.py::test_unwritable_checkpoint_directory_keeps_the_previous_checkpoint
Untrusted files
- a pickle that would run code ....... below, through every checkpoint load path
- exported weights are safetensors ... test_pretrained.py::test_export_command_writes_a_transformers_directory,
                                       test_rope_export_is_safetensors_plus_our_config
- downloads: http(s) only, size caps, timeouts, sha256, atomic cache files, no partial files:
                                       test_data_sources.py::test_only_http_urls,
                                       test_failed_downloads_are_clear_and_leave_no_cache_entry,
                                       test_shakespeare_config_downloads_and_verifies_the_real_file
- secrets never written .............. below (W&B key and HF token, every logger); the W&B key in a
                                       successful run: test_observability.py::test_the_api_key_is_written_nowhere
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import OFFLINE_ENV, TINY, assert_clean_error, compose_train, run_cli
from microgpt.core.errors import CheckpointError, ConfigError, DataError
from microgpt.lightning.training import train

QUICK = [*TINY, "callbacks.text_samples=null"]
FAKE_WANDB_KEY = "wandbfake" + "7" * 31  # 40 characters, like a real key
FAKE_HF_TOKEN = "hf_fakeTokenThatMustNeverBeWritten0123"


def files_data(corpus: Path) -> list[str]:
    return ["data=files", f"data.paths=[{corpus}]"]


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens once the socket is closed: connection refused


# --- bad input ---------------------------------------------------------------------------------
# In-process: every one of these must surface as a MicroGPTError (anything else would reach the user
# as a traceback); the entry points turn a MicroGPTError into one line, as the command-line tests show.

@pytest.mark.parametrize("args, error, words", [
    (["model.vocab_size=10"], ConfigError, ["model.vocab_size=10", "smaller than the tokenizer", "model.vocab_size=null"]),
    (["optim.lr=fast"], ConfigError, ["lr", "fast"]),
    (["model.n_embd=abc"], ConfigError, ["model.n_embd", "positive integer"]),
    (["model.n_embd=-32"], ConfigError, ["model.n_embd", "positive integer"]),
    (["model.n_layer=0"], ConfigError, ["model.n_layer"]),
    (["data.block_size=0"], ConfigError, ["data.block_size"]),
    (["eval_batches=-1"], ConfigError, ["eval_batches"]),
    (["global_batch_tokens=100"], ConfigError, ["global_batch_tokens=100", "not a multiple", "data.batch_size"]),
    (["callbacks.nan_guard.action=maybe"], ConfigError, ["nan_guard.action", "stop, skip"]),
    (["data=url", "data.url=file:///etc/passwd"], DataError, ["only http(s)"]),
    (["data=url", "data.url=http://127.0.0.1:{port}/corpus.txt", "data.retries=0"], DataError,
     ["could not download", "refused"]),
])
def test_bad_settings_are_user_errors_that_name_the_fix(tmp_path, small_corpus, monkeypatch, args, error, words):
    monkeypatch.setenv("MICROGPT_CACHE", str(tmp_path / "cache"))
    args = [a.replace("{port}", str(closed_port())) for a in args]
    data = [] if any(a.startswith("data=") for a in args) else files_data(small_corpus)
    with pytest.raises(error) as raised:
        train(compose_train(*QUICK, *data, *args, output_dir=tmp_path / "run"))
    for word in words:
        assert word.lower() in str(raised.value).lower(), str(raised.value)
    assert not (tmp_path / "run" / "checkpoints").exists()  # refused before any training


def test_hydra_full_error_shows_the_traceback(tmp_path):
    quiet = run_cli("train", "model=huge", cwd=tmp_path)
    assert_clean_error(quiet, "unknown model")
    loud = run_cli("train", "model=huge", cwd=tmp_path, env={"HYDRA_FULL_ERROR": "1"})
    assert loud.returncode != 0 and "Traceback" in loud.stderr and "ConfigError" in loud.stderr


def test_debug_mode_shows_the_cause_behind_the_one_line_error(tmp_path):
    """The one line names the problem; MICROGPT_DEBUG=1 shows the whole chain down to the library
    error that caused it, not only microgpt's own exception."""
    torn = tmp_path / "torn.ckpt"
    torch.save({"state_dict": {"model.w": torch.randn(64, 64)}}, torn)
    torn.write_bytes(torn.read_bytes()[:200])
    quiet = run_cli("generate", f"ckpt={torn}", cwd=tmp_path)
    assert_clean_error(quiet, "truncated or corrupt")
    loud = run_cli("generate", f"ckpt={torn}", cwd=tmp_path, env={"MICROGPT_DEBUG": "1"})
    assert loud.returncode != 0 and "CheckpointError" in loud.stderr
    assert "The above exception was the direct cause of the following exception" in loud.stderr, loud.stderr[-3000:]


def test_truncated_checkpoint_as_ckpt_path_is_refused_and_left_alone(tmp_path, small_corpus):
    good = tmp_path / "good.ckpt"
    torch.save({"state_dict": {"model.w": torch.randn(256, 256)}, "global_step": 3}, good)
    torn = tmp_path / "torn.ckpt"
    torn.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    before = torn.read_bytes()
    with pytest.raises(CheckpointError, match="truncated or corrupt.*earlier checkpoint"):
        train(compose_train(*QUICK, *files_data(small_corpus), f"ckpt_path={torn}", output_dir=tmp_path / "run"))
    assert torn.read_bytes() == before


# --- faults: NaN / inf ---------------------------------------------------------------------------
# optim.lr=1e6 with no clipping and no warmup: step 1 is finite, its update blows the weights up, and
# from step 2 on the loss is NaN. A real config, no test hook.
DIVERGING = [*QUICK, "optim.lr=1e6", "trainer.gradient_clip_val=null", "schedule.warmup_steps=0",
             "max_steps=6", "eval_every=3", "checkpoint_every=1", "trainer.log_every_n_steps=1"]


@pytest.fixture(scope="module")
def diverged_run(tmp_path_factory):
    """A diverging run through the command line, with every logger on and fake secrets in the environment."""
    tmp = tmp_path_factory.mktemp("diverged")
    run_dir = tmp / "run"
    result = run_cli("train", *DIVERGING, "logger=many", f"hydra.run.dir={run_dir}", cwd=tmp,
                     env={"WANDB_API_KEY": FAKE_WANDB_KEY, "HF_TOKEN": FAKE_HF_TOKEN})
    return run_dir, result


def all_finite(state: dict[str, torch.Tensor]) -> bool:
    return all(torch.isfinite(v).all() for v in state.values())


def test_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(diverged_run):
    run_dir, result = diverged_run
    line = assert_clean_error(result, "NaN/inf at step 2", "optim.lr", "gradient_clip_val", "nan_guard.action=skip")
    assert str(run_dir / "checkpoints") in line
    ckpts = run_dir / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == ["last.ckpt", "step000001.ckpt"]  # nothing of step 2
    last = torch.load(ckpts / "last.ckpt", weights_only=True)
    assert last["global_step"] == 1 and all_finite(last["state_dict"])


def test_secrets_in_the_environment_are_written_nowhere(diverged_run):
    run_dir, result = diverged_run
    files = [p for p in run_dir.rglob("*") if p.is_file()]
    names = {p.name for p in files}
    # Not vacuous: the config dump, the log, metrics, TensorBoard, W&B and checkpoints are all there.
    assert {"config.yaml", "hydra.yaml", "overrides.yaml", "metrics.csv", "last.ckpt"} <= names, names
    assert any(p.suffix == ".wandb" for p in files) and any("tfevents" in p.name for p in files), names
    assert any(p.suffix == ".log" for p in files), names
    for secret in (FAKE_WANDB_KEY, FAKE_HF_TOKEN):
        leaks = [p for p in files if secret.encode() in p.read_bytes()]
        assert not leaks, leaks
        assert secret not in result.stdout + result.stderr


def optimizer_steps(ckpt: dict) -> set[int]:
    return {int(s["step"]) for s in ckpt["optimizer_states"][0]["state"].values()}


@pytest.mark.parametrize("fused", ["true", "false"], ids=["fused-skips-on-device", "unfused-drops-gradients"])
def test_nan_guard_skip_applies_no_update_with_non_finite_gradients(tmp_path, fused):
    metrics = train(compose_train(*DIVERGING, "callbacks.nan_guard.action=skip", f"optim.fused={fused}",
                                  output_dir=tmp_path))
    assert not metrics["val/loss"] == metrics["val/loss"]  # NaN: the weights after step 1 are useless ...
    ckpts = tmp_path / "checkpoints"
    first = torch.load(ckpts / "step000001.ckpt", weights_only=True)
    last = torch.load(ckpts / "last.ckpt", weights_only=True)
    assert last["global_step"] == 6  # ... yet the run went on to the end,
    assert all_finite(last["state_dict"])  # every NaN update was skipped:
    for key, value in first["state_dict"].items():
        assert torch.equal(value, last["state_dict"][key]), key
    assert optimizer_steps(first) == optimizer_steps(last) == {1}  # AdamW took 1 step, not 6


# --- faults: Ctrl-C and a full disk ---------------------------------------------------------------

def test_ctrl_c_saves_a_checkpoint_at_a_step_boundary_and_exits_cleanly(tmp_path, small_corpus):
    run_dir = tmp_path / "run"
    args = [*QUICK, *files_data(small_corpus), "max_steps=100000", "checkpoint_every=1000", "eval_every=1000",
            f"hydra.run.dir={run_dir}"]
    proc = subprocess.Popen([sys.executable, "-m", "microgpt.train", *args], cwd=tmp_path,
                            env={**os.environ, **OFFLINE_ENV}, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while not (run_dir / "metrics.csv").exists():  # training has started
            assert proc.poll() is None and time.time() < deadline, "training did not start"
            time.sleep(0.05)
        time.sleep(1.0)
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal sends: the whole process group
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    stopped = [line for line in err.splitlines() if line.startswith("stopped: stopped by Ctrl-C (SIGINT) at step")]
    assert len(stopped) == 1, err[-3000:]
    assert "resume=auto" in stopped[0]
    step = int(stopped[0].split("at step ")[1].split(";")[0])
    ckpt = torch.load(run_dir / "checkpoints/last.ckpt", weights_only=True)
    assert 0 < ckpt["global_step"] == step < 1000
    # A step boundary: Lightning's loop counters agree with the optimizer step count.
    assert optimizer_steps(ckpt) == {step}


@pytest.fixture
def small_tmpfs(tmp_path):
    """A 4 MiB tmpfs at <tmp>/run/checkpoints: a disk that can really fill up (needs root)."""
    mount_point = tmp_path / "run" / "checkpoints"
    mount_point.mkdir(parents=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount_point)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def fill(folder: Path) -> None:
    with open(folder / "filler", "wb") as f:
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError:
            pass


def test_disk_full_while_saving_keeps_the_previous_checkpoint(tmp_path, small_corpus, small_tmpfs):
    common = [*QUICK, *files_data(small_corpus), "checkpoint_every=6", "eval_every=6"]
    train(compose_train(*common, "max_steps=6", output_dir=tmp_path / "run"))
    before = (small_tmpfs / "last.ckpt").read_bytes()
    fill(small_tmpfs)
    with pytest.raises(CheckpointError) as raised:
        train(compose_train(*common, "max_steps=12", "ckpt_path=last", output_dir=tmp_path / "run"))
    message = str(raised.value)
    assert "could not write checkpoint" in message and "previous checkpoint is intact" in message
    # ENOSPC reaches us as an OSError or, from inside torch.save's zip writer, as a RuntimeError.
    assert re.search("no space left on (the )?device", message.lower()) and "free disk space" in message, message
    assert (small_tmpfs / "last.ckpt").read_bytes() == before
    assert torch.load(small_tmpfs / "last.ckpt", weights_only=True)["global_step"] == 6
    assert not list(small_tmpfs.glob(".*.tmp"))  # the half-written file is gone


def test_a_checkpoint_folder_that_cannot_be_created_is_a_clear_error(tmp_path):
    """Works as root too (where a read-only folder does not stop writes): `checkpoints` is a file."""
    from microgpt.lightning.checkpoint_io import AtomicCheckpointIO

    (tmp_path / "checkpoints").write_text("not a folder")
    with pytest.raises(CheckpointError, match=r"could not write checkpoint .*last.ckpt \(File exists"):
        AtomicCheckpointIO().save_checkpoint({"w": torch.ones(2)}, tmp_path / "checkpoints" / "last.ckpt")
    assert (tmp_path / "checkpoints").read_text() == "not a folder"


# --- untrusted files ------------------------------------------------------------------------------

class RunsCode:
    """Unpickling this runs `exec(code)`: what a malicious checkpoint would do."""

    def __init__(self, code: str) -> None:
        self.code = code

    def __reduce__(self):
        return exec, (self.code,)


def crafted_checkpoint(path: Path, marker: Path, legacy: bool = False) -> Path:
    """A checkpoint-shaped file whose hyper-parameters, when unpickled, write `marker`."""
    payload = {
        "state_dict": {"model.transformer.wte.weight": torch.zeros(4, 4)},
        "hyper_parameters": RunsCode(f"open({str(marker)!r}, 'w').write('pwned')"),
        "global_step": 1,
    }
    torch.save(payload, path, _use_new_zipfile_serialization=not legacy)
    return path


@pytest.fixture
def evil(tmp_path) -> tuple[Path, Path]:
    marker = tmp_path / "pwned"
    path = crafted_checkpoint(tmp_path / "evil.ckpt", marker)
    # The file is really malicious: an unsafe load runs its code.
    torch.load(path, weights_only=False)
    assert marker.read_text() == "pwned"
    marker.unlink()
    return path, marker


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy-format"])
def test_read_checkpoint_refuses_code(tmp_path, legacy):
    from microgpt.io.checkpoints import read_checkpoint

    marker = tmp_path / "pwned"
    path = crafted_checkpoint(tmp_path / "evil.ckpt", marker, legacy=legacy)
    with pytest.raises(CheckpointError):
        read_checkpoint(path)
    assert not marker.exists()


def test_every_library_load_path_refuses_code(tmp_path, small_corpus, evil):
    path, marker = evil
    from microgpt.io.loading import load_model  # generate, eval and export load through it
    from microgpt.souping.average import read_ingredients

    with pytest.raises(CheckpointError, match="refused"):
        load_model(path)
    with pytest.raises(CheckpointError, match="refused"):
        read_ingredients([path])
    for setting in (f"ckpt_path={path}", f"init_from={path}"):
        with pytest.raises(CheckpointError, match="refused"):
            train(compose_train(*QUICK, *files_data(small_corpus), setting, output_dir=tmp_path / "run"))
    assert not marker.exists()


@pytest.mark.parametrize("command", ["generate", "eval", "export"])
def test_commands_refuse_a_checkpoint_that_would_run_code(tmp_path, evil, command):
    path, marker = evil
    extra = {"generate": [], "eval": ["tasks=[val_loss]", f"out={tmp_path / 'eval'}"],
             "export": [f"out={tmp_path / 'export'}"]}[command]
    result = run_cli(command, f"ckpt={path}", *extra, cwd=tmp_path)
    assert_clean_error(result, "refused", "not plain weights")
    assert not marker.exists()
    assert not (tmp_path / "export").exists()
