"""Sweeps that survive a real cluster: FAILED markers that a fixed rerun clears, interrupted jobs
that are not failures, failures seen under every launcher, and DDP jobs under joblib."""

import json
import os
import time
from pathlib import Path

import pytest
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import open_dict

from conftest import TINY, finish, popen
from microgpt.cli.command import keep_sweeping
from microgpt.core.errors import ConfigError, Interrupted, Requeued, report_user_errors
from microgpt.io.run_dir import FAILED_MARKER, failed_jobs

pytestmark = pytest.mark.heavy  # long real-process runs: handed to a worker first (conftest.py)

SHORT = [*TINY, "max_steps=4", "eval_every=2", "checkpoint_every=2", "callbacks.text_samples=null", "data=files"]
SOUP = "+hydra.callbacks.soup._target_=microgpt.souping.callback.SoupCallback"


def train(*args: str, cwd: Path, timeout: float = 240) -> tuple[int, str, str]:
    """`python -m microgpt.train args...`; a hang kills the whole tree (DDP ranks, joblib workers) and fails."""
    return finish(popen(list(args), cwd), timeout=timeout)


def error_lines(stderr: str) -> list[str]:
    assert "Traceback" not in stderr, stderr[-3000:]
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def markers(sweep: Path) -> list[Path]:
    return sorted(sweep.glob(f"*/{FAILED_MARKER}"))


def test_a_fixed_job_rerun_into_its_sweep_is_souped(tmp_path, small_corpus):
    """Fix-and-rerun: seed 2's data is missing, then supplied; the rerun soups all three seeds."""
    for seed in (1, 3):
        (tmp_path / f"corpus_{seed}.txt").write_text(small_corpus.read_text())
    sweep = tmp_path / "sweep"
    args = ["-m", "seed=1,2,3", *SHORT, f"data.paths=['{tmp_path}/corpus_${{seed}}.txt']", SOUP,
            f"hydra.sweep.dir={sweep}"]

    code, _, err = train(*args, cwd=tmp_path)
    assert code == 1, err[-3000:]
    reason = f"data file {tmp_path}/corpus_2.txt does not exist"
    assert any(line.startswith(f"error: {reason}") for line in error_lines(err))  # as a single run says it
    assert markers(sweep) == [sweep / "1" / FAILED_MARKER]
    assert reason in (sweep / "1" / FAILED_MARKER).read_text()  # the real reason, not an exit status
    report = json.loads((sweep / "soup_report.json").read_text())
    assert [(j["job"], reason in j["reason"]) for j in report["failed_jobs"]] == [("job 1 (seed=2)", True)]
    assert reason in (sweep / "soup_report.md").read_text()

    (tmp_path / "corpus_2.txt").write_text(small_corpus.read_text())
    code, _, err = train(*args, cwd=tmp_path)
    assert code == 0, err[-3000:]
    assert markers(sweep) == []
    report = json.loads((sweep / "soup_report.json").read_text())
    assert report["failed_jobs"] == [] and len(report["ingredients"]) == 3
    assert "failed" not in (sweep / "soup_report.md").read_text()


def test_a_failed_job_fails_a_joblib_multirun_without_a_soup(tmp_path, small_corpus):
    """Joblib runs jobs in worker processes: the launching process learns of failures from the markers."""
    sweep = tmp_path / "sweep"
    code, _, err = train("-m", "optim.lr=1e-3,-1", *SHORT, f"data.paths=[{small_corpus}]", "hydra/launcher=joblib",
                       "hydra.launcher.n_jobs=2", f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert code == 1, err[-3000:]
    summary = error_lines(err)[-1]
    assert summary.startswith("error: 1 job(s) of the multirun failed: #1 (") and "optim.lr" in summary, summary
    assert (sweep / "0/checkpoints/last.ckpt").is_file() and markers(sweep) == [sweep / "1" / FAILED_MARKER]


def test_only_markers_written_by_this_run_count(tmp_path):
    for job, age in (("0", 0), ("1", 3600), ("10", 0), ("2", 0)):
        (tmp_path / job).mkdir()
        marker = tmp_path / job / FAILED_MARKER
        marker.write_text(f"reason {job}\n")
        os.utime(marker, (time.time() - age,) * 2)
    assert failed_jobs(tmp_path, since=time.time() - 60) == ["#0 (reason 0)", "#2 (reason 2)", "#10 (reason 10)"]


@pytest.fixture
def multirun_job(tmp_path):
    """This process as job #4 of a multirun, with its job directory under tmp_path."""
    from hydra import compose, initialize_config_dir

    from microgpt.cli.overrides import CONFIG_DIR

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name="train", return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.mode, cfg.hydra.job.num, cfg.hydra.runtime.output_dir = RunMode.MULTIRUN, 4, str(tmp_path)
    HydraConfig.instance().set_config(cfg)
    (tmp_path / FAILED_MARKER).write_text("an earlier run's failure\n")
    yield tmp_path
    HydraConfig.instance().cfg = None


def job_raising(error: BaseException):
    """A job wrapped the way hydra_command wraps every task."""
    def task(cfg):
        raise error

    return keep_sweeping(report_user_errors(task))


@pytest.mark.parametrize("error", [SystemExit(0), SystemExit(None), SystemExit(130), SystemExit(143), Requeued(-1),
                                   Requeued(3), Interrupted("stopped by SIGTERM at step 5", exit_code=143)],
                         ids=repr)
def test_interrupted_and_requeued_jobs_are_not_failures(multirun_job, error):
    with pytest.raises(SystemExit) as stopped:
        job_raising(error)(None)
    assert stopped.value.code == (error.exit_code if isinstance(error, Interrupted) else error.code)
    assert not (multirun_job / FAILED_MARKER).exists()  # cleared at the start, not written again


@pytest.mark.parametrize("error, reason", [(ConfigError("optim.lr must be\n  positive"), "optim.lr must be positive"),
                                           (SystemExit(2), "exit status 2"), (KeyError("x"), "KeyError: 'x'")])
def test_a_failed_job_records_its_last_error_line(multirun_job, capsys, error, reason):
    assert job_raising(error)(None) is None  # the sweep goes on
    assert (multirun_job / FAILED_MARKER).read_text() == reason + "\n"
    if isinstance(error, ConfigError):
        assert capsys.readouterr().err == f"error: {reason}\n"  # the one line a single run prints


def test_ddp_jobs_under_joblib_run_their_own_command(tmp_path, small_corpus):
    """In a loky worker `__main__` is loky's: rank 1 must still start `microgpt.train` with its job."""
    sweep = tmp_path / "sweep"
    code, out, err = train("-m", "seed=1,2", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "trainer=ddp_cpu",
                       *SHORT, f"data.paths=[{small_corpus}]", f"hydra.sweep.dir={sweep}", cwd=tmp_path, timeout=300)
    assert code == 0, err[-3000:]
    assert (out + err).count("is launching 2 jobs") == 1
    for job, seed in (("0", 1), ("1", 2)):
        assert f"seed={seed}" in (sweep / job / ".hydra/overrides.yaml").read_text()
        assert torch.load(sweep / job / "checkpoints/last.ckpt", weights_only=True)["global_step"] == 4
        assert (sweep / job / "train_rank1.log").read_text().count("GLOBAL_RANK: 1, MEMBER: 2/2") == 1


def test_ddp_ranks_compose_from_the_users_config_dir_and_name(tmp_path, small_corpus):
    """A primary config and an experiment that exist only in --config-dir: rank 1 must find both."""
    conf = tmp_path / "conf"
    (conf / "experiment").mkdir(parents=True)
    (conf / "mytrain.yaml").write_text("defaults:\n  - train\n  - _self_\nmodel:\n  n_embd: 48\n")
    (conf / "experiment" / "three_layers.yaml").write_text("# @package _global_\nmodel:\n  n_layer: 3\n")
    run = tmp_path / "run"
    overrides = [o for o in SHORT if not o.startswith(("model.n_layer", "model.n_embd"))]
    code, _, err = train("--config-dir", str(conf), "-cn", "mytrain", "experiment=three_layers", "trainer=ddp_cpu",
                       *overrides, f"data.paths=[{small_corpus}]", f"hydra.run.dir={run}", cwd=tmp_path)
    assert code == 0, err[-3000:]
    model = torch.load(run / "checkpoints/last.ckpt", weights_only=True)["hyper_parameters"]["model"]
    assert (model["n_layer"], model["n_embd"]) == (3, 48)

    def size_line(log: str) -> str:
        return next(line.split(" - ")[-1] for line in (run / log).read_text().splitlines() if "parameters" in line)

    assert size_line("train_rank1.log") == size_line("train.log")  # rank 1 built the same model


def test_child_ranks_get_the_options_that_chose_the_config():
    from omegaconf import OmegaConf

    from microgpt.cli.ddp import config_args

    hydra_cfg = OmegaConf.create({
        "runtime": {"config_sources": [
            {"provider": "hydra", "path": "pkg://hydra.conf"},
            {"provider": "main", "path": "file:///repo/conf"},
            {"provider": "command-line", "path": "file:///mine/conf"},
            {"provider": "hydra.searchpath in command-line", "path": "file:///extra"}]},
        "job": {"config_name": "mytrain"},
        "overrides": {"hydra": ["hydra.mode=MULTIRUN", "hydra.searchpath=[file:///extra]", "hydra/launcher=joblib"]},
    })
    assert config_args(hydra_cfg) == ["--config-path=/repo/conf", "--config-dir=/mine/conf", "--config-name=mytrain",
                                      "hydra.searchpath=[file:///extra]"]
