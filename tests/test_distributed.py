"""DDP on 2 CPU processes (gloo), 2 nodes on 127.0.0.1, DDP inside a Hydra multirun, and
checkpoints that survive SIGKILL (signals that stop a run cleanly: tests/test_cluster.py)."""

import os
import signal
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
    weights,
)
from microgpt.lightning.training import train

STEP_TINY = [*TINY, "callbacks.text_samples=null"]


def test_one_step_on_two_ranks_equals_one_step_on_one_rank(tmp_path, small_corpus):
    common = [*STEP_TINY, "data=files", f"data.paths=[{small_corpus}]", "max_steps=1", "eval_every=1",
              "checkpoint_every=1", "schedule.warmup_steps=0", "global_batch_tokens=256"]  # 4 sequences x 32 tokens x 2
    one = run_cli("train", *common, "trainer=cpu", f"hydra.run.dir={tmp_path / 'one'}", cwd=tmp_path)
    assert one.returncode == 0, one.stderr[-3000:]
    two = run_cli("train", *common, "trainer=ddp_cpu", f"hydra.run.dir={tmp_path / 'two'}", cwd=tmp_path)
    assert two.returncode == 0, two.stderr[-3000:]
    assert "MEMBER: 2/2" in two.stdout + two.stderr
    assert_same_weights(tmp_path / "one/checkpoints/last.ckpt", tmp_path / "two/checkpoints/last.ckpt", atol=1e-5)
    assert torch.load(tmp_path / "two/checkpoints/last.ckpt", weights_only=True)["global_step"] == 1
    # ... and the step did change the weights: rebuild the initial model exactly as train() does.
    import lightning as L

    from microgpt.lightning.builders import build_datamodule, build_module, training_tokenizer

    cfg = compose_train(*common, output_dir=tmp_path / "init")
    L.seed_everything(cfg.seed)
    initial = build_module(cfg, build_datamodule(cfg.data, training_tokenizer(cfg), cfg.seed).load()).state_dict()
    stepped = weights(tmp_path / "one/checkpoints/last.ckpt")
    assert not torch.allclose(initial["model.transformer.wte.weight"], stepped["model.transformer.wte.weight"])
    # Rank 1 wrote its own log and nothing else.
    assert (tmp_path / "two/train_rank1.log").is_file()
    assert sorted(p.name for p in (tmp_path / "two/checkpoints").iterdir()) == sorted(
        p.name for p in (tmp_path / "one/checkpoints").iterdir())


def test_two_nodes_of_one_process_on_localhost(tmp_path, small_corpus):
    port = free_port()
    args = [*STEP_TINY, "data=files", f"data.paths=[{small_corpus}]", "max_steps=4", "eval_every=2",
            "trainer.num_nodes=2", "trainer.devices=1", "trainer.strategy=ddp"]
    procs = []
    for node in (0, 1):
        env = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "WORLD_SIZE": "2",
               "NODE_RANK": str(node), "LOCAL_RANK": "0"}
        procs.append(popen([*args, f"hydra.run.dir={tmp_path / f'node{node}'}"], tmp_path, env))
    results = [finish(p) for p in procs]
    for code, _, err in results:
        assert code == 0, err[-3000:]
    assert torch.load(tmp_path / "node0/checkpoints/last.ckpt", weights_only=True)["global_step"] == 4
    assert not (tmp_path / "node1/checkpoints").exists()  # only global rank 0 writes checkpoints
    assert not (tmp_path / "node1/metrics.csv").exists()


def test_ddp_inside_a_multirun_runs_each_job_once(tmp_path, small_corpus):
    sweep = tmp_path / "sweep"
    proc = popen(["-m", "seed=1,2", "trainer=ddp_cpu", *STEP_TINY, "data=files", f"data.paths=[{small_corpus}]",
                  "max_steps=4", "eval_every=2", f"hydra.sweep.dir={sweep}"], tmp_path)
    code, out, err = finish(proc, timeout=400)
    assert code == 0, err[-3000:]
    log = out + err
    assert log.count("Launching 2 jobs") == 1, log[-3000:]  # a child rank re-running the sweep would say it again
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir()) == ["0", "1"]
    for job, seed in (("0", 1), ("1", 2)):
        assert f"seed={seed}" in (sweep / job / ".hydra/overrides.yaml").read_text()
        assert torch.load(sweep / job / "checkpoints/last.ckpt", weights_only=True)["global_step"] == 4
        assert (sweep / job / "train_rank1.log").read_text().count("GLOBAL_RANK: 1, MEMBER: 2/2") == 1
    assert not list(tmp_path.glob("outputs"))  # no stray run directories from child ranks


def fault_args(corpus: Path) -> list[str]:
    return [*STEP_TINY, "data=files", f"data.paths=[{corpus}]", "model.dropout=0.1", "max_steps=60",
            "eval_every=20", "checkpoint_every=4", "data.batch_size=16"]


def test_sigkill_then_resume_auto_matches_the_uninterrupted_run(tmp_path, small_corpus):
    args = fault_args(small_corpus)
    train(compose_train(*args, output_dir=tmp_path / "straight"))

    run_dir = tmp_path / "killed"
    proc = popen([*args, f"hydra.run.dir={run_dir}"], tmp_path)
    wait_for(run_dir / "checkpoints/step000008.ckpt", proc)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate()
    ckpts = run_dir / "checkpoints"
    step_at_kill = max(torch.load(p, weights_only=True)["global_step"] for p in ckpts.glob("step*.ckpt"))
    assert 8 <= step_at_kill < 60, step_at_kill  # killed mid-way
    # The newest checkpoint is torn (as if the kill hit a non-atomic write): resume=auto skips it.
    newest = ckpts / "last.ckpt"
    newest.write_bytes(newest.read_bytes()[:1000])
    os.utime(newest)

    code, out, err = finish(popen([*args, f"hydra.run.dir={run_dir}", "resume=auto"], tmp_path))
    assert code == 0, err[-3000:]
    assert "skipping checkpoint" in out + err and "truncated or corrupt" in out + err
    assert_same_weights(tmp_path / "straight/checkpoints/last.ckpt", ckpts / "last.ckpt", atol=1e-6)


def test_resume_with_another_tokenizer_is_refused(tmp_path, small_corpus):
    common = [*STEP_TINY, "data=files", f"data.paths=[{small_corpus}]", "max_steps=2", "eval_every=2"]
    train(compose_train(*common, output_dir=tmp_path / "a"))
    result = run_cli("train", *common, "tokenizer=gpt2", f"ckpt_path={tmp_path / 'a/checkpoints/last.ckpt'}",
                     f"hydra.run.dir={tmp_path / 'b'}", cwd=tmp_path)
    assert_clean_error(result, "different")


def test_unwritable_checkpoint_directory_keeps_the_previous_checkpoint(tmp_path, small_corpus):
    from microgpt.core.errors import CheckpointError
    from microgpt.lightning.checkpoint_io import AtomicCheckpointIO

    target = tmp_path / "ckpts" / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"state_dict": {"w": torch.ones(3)}}, target)
    os.chmod(target.parent, 0o500)
    try:
        if os.access(target.parent, os.W_OK):
            pytest.skip("running as a user that ignores directory permissions")
        with pytest.raises(CheckpointError, match="previous checkpoint is intact"):
            io.save_checkpoint({"state_dict": {"w": torch.zeros(3)}}, target)
    finally:
        os.chmod(target.parent, 0o700)
    assert torch.equal(torch.load(target, weights_only=True)["state_dict"]["w"], torch.ones(3))
