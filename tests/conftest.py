"""Shared fixtures: the real entry points as subprocesses, composed configs, small corpora."""

from __future__ import annotations

import contextlib
import functools
import gzip
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from microgpt.cli.overrides import CONFIG_DIR

FIXTURES = Path(__file__).resolve().parent / "fixtures"  # shipped test data: see fixtures/README.md
# The larger data files beside the clone, for benchmarks only. MICROGPT_NO_SHARED=1 hides them, so
# a run of the suite proves it passes on a plain clone (.ci/run does).
SHARED_DATA = (FIXTURES / "no-shared" if os.environ.get("MICROGPT_NO_SHARED")
               else Path(__file__).resolve().parents[2] / "shared" / "data")

# No test may touch the network: hubs fail fast, W&B stays offline.
OFFLINE_ENV = {
    "HF_DATASETS_OFFLINE": "1",
    "HF_HUB_OFFLINE": "1",
    "WANDB_MODE": "offline",
    "WANDB_SILENT": "true",
    "TOKENIZERS_PARALLELISM": "false",
}
os.environ.update(OFFLINE_ENV)

# A tiny model and run: seconds on a laptop CPU.
TINY = [
    "model.n_layer=2", "model.n_head=2", "model.n_embd=32", "model.block_size=32",
    "data.batch_size=4", "max_steps=12", "eval_every=6", "eval_batches=2", "checkpoint_every=6",
    "schedule.warmup_steps=2", "callbacks.text_samples.max_new_tokens=16",
    "callbacks.progress_bar=null", "trainer.enable_model_summary=false",
]


def shared_file(name: str) -> Path:
    """A data file of `../shared/data` (benchmarks); the benchmark is skipped without it."""
    path = SHARED_DATA / name
    if not path.is_file():
        pytest.skip(f"{path} is not available")
    return path


def fixture_file(name: str) -> Path:
    """A data file shipped under tests/fixtures: always there."""
    path = FIXTURES / name
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: tests/fixtures/README.md lists the shipped data")
    return path


@functools.cache
def fixture_text(name: str) -> str:
    """The text of a shipped data file, unpacked when it is shipped as `<name>.gz`."""
    packed = FIXTURES / f"{name}.gz"
    if packed.is_file():
        return gzip.decompress(packed.read_bytes()).decode("utf-8")
    return fixture_file(name).read_text()


@pytest.fixture(scope="session")
def shakespeare(tmp_path_factory) -> Path:
    """The whole Tiny Shakespeare (1,115,394 bytes), unchanged."""
    path = tmp_path_factory.mktemp("fixtures") / "tinyshakespeare.txt"
    path.write_bytes(fixture_text("tinyshakespeare.txt").encode("utf-8"))
    return path


def write_small_corpus(folder: Path) -> Path:
    """~60 kB of real English, the start of Tiny Shakespeare, as <folder>/corpus.txt."""
    path = folder / "corpus.txt"
    path.write_text(fixture_text("tinyshakespeare.txt")[:60_000])
    return path


@pytest.fixture
def small_corpus(tmp_path: Path) -> Path:
    return write_small_corpus(tmp_path)


@pytest.fixture(scope="module")
def module_corpus(tmp_path_factory) -> Path:
    """The small corpus, once per test module (for module-scoped runs)."""
    return write_small_corpus(tmp_path_factory.mktemp("corpus"))


def command_env(env: dict | None) -> dict[str, str]:
    """A command's environment: this one's, offline, without the debugging switches, plus `env`."""
    full_env = {k: v for k, v in os.environ.items() if k not in ("HYDRA_FULL_ERROR", "MICROGPT_DEBUG")}
    return {**full_env, **OFFLINE_ENV, **(env or {})}


def run_cli(module: str, *args: str, cwd: Path, timeout: float = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    """`python -m microgpt.<module> args...`, the way a user runs it: as a child of the fork server
    (tests/readme_runner.py: the imports paid once, then argv, environment and directory the command's
    own) where it can run there, else as a new process. MICROGPT_TEST_FORK=0: always a new process."""
    full_env = command_env(env)
    argv = [sys.executable, "-m", f"microgpt.{module}", *args]
    server = fork_server(module, list(args))
    if server is None:
        return subprocess.run(argv, cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout)
    from readme_runner import Plan

    result = server.run(Plan(f"microgpt.{module}", None, list(args), full_env, ""), Path(cwd), timeout)
    if result.returncode == -9 and result.stderr.endswith(f"[killed after {timeout} s]"):
        raise subprocess.TimeoutExpired(argv, timeout, result.stdout, result.stderr)
    return subprocess.CompletedProcess(argv, result.returncode, result.stdout, result.stderr)


_FORK_SERVER: list = []  # this worker's fork server (one per xdist worker), started by the first command that can use it


def fork_server(module: str, args: list[str]):
    from readme_runner import COMMANDS, ForkServer, own_process_reason

    if os.environ.get("MICROGPT_TEST_FORK", "1") == "0" or module not in COMMANDS or own_process_reason(args):
        return None
    if not _FORK_SERVER:
        import tempfile

        log = Path(tempfile.mkdtemp(prefix="microgpt-fork-server-")) / "server.log"
        _FORK_SERVER.append(ForkServer({**os.environ, **OFFLINE_ENV}, log))
    return _FORK_SERVER[0]


def pytest_collection_modifyitems(config, items):
    """The files marked `heavy` first. pytest-xdist hands out whole files in this order
    (--dist loadfile --no-loadscope-reorder), so the longest start at once rather than one of
    them running alone at the end; within each part the files keep their usual order."""
    items.sort(key=lambda item: item.get_closest_marker("heavy") is None)


def pytest_sessionfinish(session, exitstatus):
    while _FORK_SERVER:
        _FORK_SERVER.pop().close()


def compose_train(*overrides: str, output_dir: Path | None = None):
    """The real train config, composed as `python -m microgpt.train` would, for in-process runs."""
    from microgpt.cli.overrides import quote_numeric_choices

    extra = [f"paths.output_dir={output_dir}"] if output_dir is not None else []
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose(config_name="train", overrides=quote_numeric_choices([*overrides, *extra]))


def assert_clean_error(result: subprocess.CompletedProcess, *words: str) -> str:
    """A user mistake: non-zero exit, no traceback, an `error:` line naming the problem."""
    assert result.returncode != 0, result.stdout[-2000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, result.stderr[-3000:]
    for word in words:
        assert word.lower() in lines[0].lower(), lines[0]
    return lines[0]


def assert_resume_is_exact(overrides: list[str], tmp_path: Path, resume_step: int = 6) -> None:
    """Train straight through; train again resumed from the step-`resume_step` checkpoint of the
    first run: the final weights must be the same (and must have moved since that checkpoint)."""
    import torch

    from microgpt.lightning.training import train

    train(compose_train(*overrides, output_dir=tmp_path / "straight"))
    middle = tmp_path / "straight" / "checkpoints" / f"step{resume_step:06d}.ckpt"
    train(compose_train(*overrides, f"ckpt_path={middle}", output_dir=tmp_path / "resumed"))
    a = torch.load(tmp_path / "straight/checkpoints/last.ckpt", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "resumed/checkpoints/last.ckpt", weights_only=True)["state_dict"]
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6, msg=k)
    m = torch.load(middle, weights_only=True)["state_dict"]
    assert any(not torch.equal(m[k], a[k]) for k in a)


# --- training processes: started as a user would, in their own session (killable as a group) ---

def weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)["state_dict"]


def assert_same_weights(a: Path, b: Path, atol: float) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=0, atol=atol, msg=k)


def popen(args: list[str], cwd: Path, env: dict | None = None):
    """`python -m microgpt.train args...` started without waiting, in a process group of its own, so
    the whole process tree can be signalled or killed: a child of the fork server where it can run
    there (a `readme_runner.ForkedProcess`), else a new process (`subprocess.Popen`)."""
    server = fork_server("train", list(args))
    if server is not None:
        from readme_runner import Plan

        return server.start(Plan("microgpt.train", None, list(args), command_env(env), ""), Path(cwd))
    return subprocess.Popen([sys.executable, "-m", "microgpt.train", *args], cwd=cwd, env=command_env(env),
                            start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen, timeout: float = 300) -> tuple[int, str, str]:
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"timed out; stderr tail: {err[-3000:]}")
    return proc.returncode, out, err


@contextlib.contextmanager
def torch_threads(n: int):
    """This process's torch thread count set to `n` for the block, then put back."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while not path.exists():
        if proc.poll() is not None:
            pytest.fail(f"training ended before {path.name} appeared: {proc.stderr.read()[-3000:]}")
        if time.time() > deadline:
            os.killpg(proc.pid, signal.SIGKILL)
            pytest.fail(f"{path} did not appear")
        time.sleep(0.02)


def perturbed(model, seed: int):
    """Norm gains and biases moved off their 1 / 0 init, so a dropped or misplaced one shows, and
    weights 4x their init, so the logits spread (std ~0.5) and a wrong tensor moves them visibly
    (the parity tests against transformers)."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 1:
                p.add_(torch.randn(p.shape, generator=generator) * 0.2)
            else:
                p.mul_(4)
    return model.eval()


@pytest.fixture(scope="session")
def pretrained(tmp_path_factory) -> Path:
    """The post-training tests' starting point: a tiny char model pretrained briefly (tests/posttrain.py)."""
    from posttrain import pretrain_letters

    return pretrain_letters(tmp_path_factory.mktemp("pretrain"), run_cli)
