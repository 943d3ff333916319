"""Runs treated the way a cluster treats them: signals to the whole process group and to one rank,
repeated, with and without gradient accumulation; SLURM pre-emption through submitit; copied run
directories; two runs in one directory. Real processes, 2 CPU ranks over gloo; a hang fails."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import warnings
from pathlib import Path

import pytest
import torch

from conftest import (
    TINY,
    assert_clean_error,
    assert_same_weights,
    compose_train,
    finish,
    free_port,
    popen,
    run_cli,
    wait_for,
)
from microgpt.io.run_dir import newest_checkpoint
from microgpt.lightning.training import train

pytestmark = pytest.mark.heavy  # long real-process runs: handed to a worker first (conftest.py)

FAULT = [*TINY, "callbacks.text_samples=null", "model.dropout=0.1", "eval_every=1000"]


def run_args(corpus: Path, *extra: str) -> list[str]:
    return [*FAULT, "data=files", f"data.paths=[{corpus}]", *extra]


def saved(path: Path) -> dict:
    return torch.load(path, weights_only=True)


def child_ranks(pid: int) -> list[int]:
    """The processes Lightning's launcher started from rank 0 (the other DDP ranks)."""
    children = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in children.read_text().split()] if children.exists() else []


def next_periodic(step: int, every: int) -> int:
    return (step // every + 1) * every


def interrupt(run_dir: Path, args: list[str], tmp_path: Path, deliver, expected_code: int, after_step: int,
              every: int) -> int:
    """Start (or resume) the run, let it pass a periodic checkpoint after `after_step`, deliver the
    signal, and check the stop: the exit status, one `stopped:` line, last.ckpt at an optimizer-step
    boundary past `after_step`. Returns the step it stopped at."""
    proc = popen([*args, f"hydra.run.dir={run_dir}", "resume=auto"], tmp_path)
    wait_for(run_dir / "checkpoints" / f"step{next_periodic(after_step, every):06d}.ckpt", proc)
    deliver(proc)
    code, _, err = finish(proc, timeout=120)
    assert code == expected_code, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    stopped = [line for line in err.splitlines() if line.startswith("stopped: stopped by")]
    assert len(stopped) == 1 and "resume=auto" in stopped[0], err[-3000:]
    ckpt = saved(run_dir / "checkpoints" / "last.ckpt")
    step = ckpt["global_step"]
    assert after_step < step, (after_step, step)
    # Micro-batches fetched and run ("completed" lags by one in a save made from the batch-end hook).
    micro = ckpt["loops"]["fit_loop"]["epoch_loop.batch_progress"]["total"]["ready"]
    accumulate = next((int(a.split("=")[1]) for a in args if a.startswith("trainer.accumulate_grad_batches=")), 1)
    assert micro == step * accumulate, (micro, step, accumulate)  # never mid-accumulation
    assert f"at step {step};" in stopped[0]
    return step


def to_group(signum: int, copies: int = 1):
    def deliver(proc) -> None:
        for _ in range(copies):  # a launcher forwarding its own copy after the terminal's
            os.killpg(proc.pid, signum)
    return deliver


def to_rank(rank: int, signum: int):
    def deliver(proc) -> None:
        pid = proc.pid if rank == 0 else child_ranks(proc.pid)[rank - 1]
        os.kill(pid, signum)
    return deliver


def assert_no_versioned_files(checkpoints: Path) -> None:
    assert not [p.name for p in checkpoints.iterdir() if "-v" in p.name]


@pytest.mark.parametrize("signame, accumulate", [("SIGTERM", 1), ("SIGINT", 2)])
def test_signals_to_a_ddp_run_stop_every_rank_and_resume_bit_identical(tmp_path, small_corpus, signame, accumulate):
    signum = getattr(signal, signame)
    code = 128 + signum
    every, max_steps = 10, 150
    args = run_args(small_corpus, "trainer=ddp_cpu", f"max_steps={max_steps}", f"checkpoint_every={every}",
                    f"trainer.accumulate_grad_batches={accumulate}")
    straight = run_cli("train", *args, f"hydra.run.dir={tmp_path / 'straight'}", cwd=tmp_path, timeout=300)
    assert straight.returncode == 0, straight.stderr[-3000:]

    run_dir = tmp_path / "run"
    # The whole group (terminal, kill -TERM -pgid, cgroups) with a forwarded duplicate, then rank 1 alone.
    step = interrupt(run_dir, args, tmp_path, to_group(signum, copies=2), code, 0, every)
    step = interrupt(run_dir, args, tmp_path, to_rank(1, signum), code, step, every)
    assert step < max_steps
    code, _, err = finish(popen([*args, f"hydra.run.dir={run_dir}", "resume=auto"], tmp_path), timeout=300)
    assert code == 0, err[-3000:]
    assert saved(run_dir / "checkpoints/last.ckpt")["global_step"] == max_steps
    assert_same_weights(tmp_path / "straight/checkpoints/last.ckpt", run_dir / "checkpoints/last.ckpt", atol=0)
    assert_no_versioned_files(run_dir / "checkpoints")


def test_sigterm_under_accumulation_in_one_process_resumes_bit_identical(tmp_path, small_corpus):
    every, max_steps = 10, 80
    args = run_args(small_corpus, f"max_steps={max_steps}", f"checkpoint_every={every}",
                    "trainer.accumulate_grad_batches=4")
    train(compose_train(*args, output_dir=tmp_path / "straight"))
    run_dir = tmp_path / "run"
    step = interrupt(run_dir, args, tmp_path, to_group(signal.SIGTERM), 143, 0, every)
    step = interrupt(run_dir, args, tmp_path, to_rank(0, signal.SIGINT), 130, step, every)
    code, _, err = finish(popen([*args, f"hydra.run.dir={run_dir}", "resume=auto"], tmp_path))
    assert code == 0, err[-3000:]
    assert_same_weights(tmp_path / "straight/checkpoints/last.ckpt", run_dir / "checkpoints/last.ckpt", atol=0)


def test_a_copied_run_directory_resumes_from_its_highest_step(tmp_path, small_corpus):
    args = run_args(small_corpus, "max_steps=16", "checkpoint_every=4", "eval_every=4")
    original = tmp_path / "original"
    train(compose_train(*args, output_dir=original))
    copy = tmp_path / "copy"
    shutil.copytree(original, copy)
    for path in (copy / "checkpoints").glob("*.ckpt"):  # as if the run had stopped at step 8
        if saved(path)["global_step"] > 8:
            path.unlink()
    shutil.copy(copy / "checkpoints/step000008.ckpt", copy / "checkpoints/last.ckpt")
    os.utime(copy / "checkpoints/step000004.ckpt")  # the newest file is not the newest state

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train(compose_train(*args, "resume=auto", output_dir=copy))
    assert not [w for w in caught if "dirpath has changed" in str(w.message)]
    last = saved(copy / "checkpoints/last.ckpt")
    assert last["global_step"] == 16
    assert_same_weights(original / "checkpoints/last.ckpt", copy / "checkpoints/last.ckpt", atol=0)
    assert_no_versioned_files(copy / "checkpoints")
    states = [s for k, s in last["callbacks"].items() if "RunCheckpoint" in k]
    assert states and all(s["dirpath"] == str(copy / "checkpoints") for s in states)
    best = next(s for s in states if s["monitor"] == "val/loss")
    assert Path(best["best_model_path"]) == copy / "checkpoints/best.ckpt"
    # The best score so far travelled with the copy: best.ckpt holds the best of all 16 steps.
    assert saved(copy / "checkpoints/best.ckpt")["global_step"] == saved(original / "checkpoints/best.ckpt")["global_step"]


def test_a_second_run_in_the_same_directory_is_refused_and_a_dead_ones_lock_is_taken_over(tmp_path, small_corpus):
    args = run_args(small_corpus, "max_steps=100000", "checkpoint_every=20")
    run_dir = tmp_path / "run"
    first = popen([*args, f"hydra.run.dir={run_dir}"], tmp_path)
    try:
        wait_for(run_dir / "checkpoints/step000020.ckpt", first)
        second = run_cli("train", *args, "max_steps=4", f"hydra.run.dir={run_dir}", cwd=tmp_path)
        line = assert_clean_error(second, "in use by another run", f"pid {first.pid}")
        assert "hydra.run.dir" in line
        assert first.poll() is None  # the first run goes on,
        assert "max_steps=4" not in (run_dir / ".hydra/overrides.yaml").read_text()  # its config untouched
    finally:
        os.killpg(first.pid, signal.SIGKILL)  # dies holding the lock
        first.communicate()
    _, reached = newest_checkpoint(run_dir / "checkpoints")  # how far the first run got before it died
    end = reached + 4
    third = run_cli("train", *args, f"max_steps={end}", "resume=auto", f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert third.returncode == 0, third.stderr[-3000:]
    assert saved(run_dir / "checkpoints/last.ckpt")["global_step"] == end
    assert json.loads((run_dir / "run.lock").read_text())["pid"] != first.pid


def metrics_rows(run_dir: Path) -> list[dict]:
    with open(run_dir / "metrics.csv") as f:
        return list(csv.DictReader(f))


def test_train_loss_and_val_loss_do_not_depend_on_the_world_size(tmp_path, small_corpus):
    """The same global batch on 1 rank x 2 micro-batches and on 2 ranks x 1: train/loss is the mean
    over the step's micro-batches and ranks, and eval_batches means the same windows."""
    common = [*TINY, "callbacks.text_samples=null", "data=files", f"data.paths=[{small_corpus}]", "max_steps=1",
              "eval_every=1", "checkpoint_every=1", "schedule.warmup_steps=0", "global_batch_tokens=256",
              "trainer.log_every_n_steps=1", "eval_batches=3"]
    values = {}
    for trainer in ("cpu", "ddp_cpu"):
        result = run_cli("train", *common, f"trainer={trainer}", f"hydra.run.dir={tmp_path / trainer}", cwd=tmp_path)
        assert result.returncode == 0, result.stderr[-3000:]
        rows = metrics_rows(tmp_path / trainer)
        values[trainer] = (float(next(r["train/loss"] for r in rows if r.get("train/loss"))),
                           float(next(r["val/loss"] for r in rows if r.get("val/loss"))))
    by_hand = micro_batch_losses(compose_train(*common, output_dir=tmp_path / "hand"), count=2)
    assert values["cpu"][0] == pytest.approx(sum(by_hand) / 2, abs=1e-5)
    assert values["ddp_cpu"][0] == pytest.approx(sum(by_hand) / 2, abs=1e-5)
    assert abs(by_hand[0] - by_hand[1]) > 1e-4  # rank 0's own loss alone would differ
    assert values["ddp_cpu"][1] == pytest.approx(values["cpu"][1], abs=1e-5)


def micro_batch_losses(cfg, count: int) -> list[float]:
    """The initial model's loss on the first `count` global micro-batches, computed by hand."""
    import lightning as L

    from microgpt.data.packing import PackedWindows, StepIndexedSampler
    from microgpt.lightning.builders import build_datamodule, build_module, training_tokenizer

    L.seed_everything(cfg.seed, workers=True, verbose=False)
    datamodule = build_datamodule(cfg.data, training_tokenizer(cfg), cfg.seed)
    module = build_module(cfg, datamodule.load())
    module.model.train()  # dropout is 0 in TINY: train mode changes nothing but is what training runs
    windows = PackedWindows(datamodule.train_tokens, cfg.data.block_size)
    sampler = StepIndexedSampler(len(windows), cfg.data.batch_size, seed=cfg.seed)
    losses = []
    with torch.no_grad():
        for j in range(count):
            batch = torch.stack([windows[i] for i in sampler.micro_batch(j)])
            losses.append(float(module.model(batch[:, :-1], batch[:, 1:])[1]))
    return losses


def test_submitit_preemption_checkpoints_requeues_and_resumes(tmp_path, small_corpus):
    """Hydra's submitit launcher (its local executor, which requeues like SLURM does): SIGUSR2 to the
    job, as submitit's --signal=USR2@delay sends it; the job checkpoints at a step boundary, is
    requeued, resumes with resume=auto and ends where an uninterrupted run ends; not marked FAILED."""
    every, max_steps = 10, 100
    args = run_args(small_corpus, f"max_steps={max_steps}", f"checkpoint_every={every}", "resume=auto",
                    "interrupt.requeue_signal=SIGUSR2")
    train(compose_train(*args, output_dir=tmp_path / "straight"))
    sweep = tmp_path / "sweep"
    proc = popen(["-m", "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=10", *args,
                  f"hydra.sweep.dir={sweep}"], tmp_path)
    job = sweep / "0"
    wait_for(job / "checkpoints" / f"step{every:06d}.ckpt", proc)
    pid = json.loads((job / "run.lock").read_text())["pid"]
    os.kill(pid, signal.SIGUSR2)
    code, out, err = finish(proc, timeout=300)
    assert code == 0, (out + err)[-3000:]
    logs = "".join(p.read_text() for p in sweep.glob(".submitit/*/*_log.*"))
    assert "pre-empted (SIGUSR2) at step" in logs, logs[-3000:]
    assert "Requeued" in logs, logs[-3000:]
    assert "resuming from" in logs, logs[-3000:]
    assert not (job / "FAILED").exists()
    assert saved(job / "checkpoints/last.ckpt")["global_step"] == max_steps
    assert_same_weights(tmp_path / "straight/checkpoints/last.ckpt", job / "checkpoints/last.ckpt", atol=0)


def test_resume_across_nodes_without_a_shared_run_directory_is_one_clear_error(tmp_path, small_corpus):
    """Two nodes (one process each, on 127.0.0.1) that each see their own copy of the run directory,
    as on node-local disks: resuming is refused on both with one line, and neither hangs."""
    args = run_args(small_corpus, "max_steps=4", "trainer.num_nodes=2", "trainer.devices=1", "trainer.strategy=ddp",
                    "resume=auto")
    port = free_port()
    procs = []
    for node in (0, 1):
        env = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "WORLD_SIZE": "2", "NODE_RANK": str(node),
               "LOCAL_RANK": "0"}
        procs.append(popen([*args, f"hydra.run.dir={tmp_path / f'node{node}'}"], tmp_path, env))
    for node, proc in enumerate(procs):
        code, _, err = finish(proc, timeout=180)
        result = subprocess.CompletedProcess(proc.args, code, "", err)
        assert_clean_error(result, "shared", "hydra.run.dir")
    assert not (tmp_path / "node0/checkpoints").exists()
