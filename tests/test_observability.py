"""Observability through the real entry points: W&B offline runs read back from their files,
TensorBoard and CSV logs of the same run, throughput / MFU, progress lines, and the plot command."""

from __future__ import annotations

import csv
import io
import json
import re
import sys
import time
from datetime import datetime
from pathlib import Path

import lightning as L
import matplotlib.image
import pytest
import torch

import wandb_offline
from conftest import TINY, assert_clean_error, fixture_file, run_cli
from microgpt.core.errors import ConfigError
from microgpt.core.flops import flops_per_token, measure_matmul_flops, param_count
from microgpt.core.model import GPT, GPTConfig
from microgpt.lightning.callbacks.progress import StepLogLines, StepProgressBar, progress_bar
from microgpt.lightning.callbacks.throughput import Throughput, fabric_peak_flops, resolve_peak_flops

FAKE_KEY = "fakekey0123456789abcdef0123456789abcdef0"  # 40 characters, like a real W&B key
PEAK = 1e10  # a given peak FLOP/s, so MFU is exactly checkable
QUIET_TINY = [a for a in TINY if not a.startswith("callbacks.progress_bar")]  # keep the progress display


def hand_flops_per_token(vocab: int, T: int) -> int:
    """FLOPs per token of the TINY model (2 layers, 32 wide, biases, RoPE), counted by hand."""
    C, layers = 32, 2
    padded_vocab = -(-vocab // 64) * 64
    per_layer = (3 * C * C + 3 * C) + (C * C + C) + (4 * C * C + 4 * C) + (4 * C * C + C) + 2 * (2 * C)
    n = layers * per_layer + 2 * C + padded_vocab * C  # + final LayerNorm + tied embedding / LM head
    return 6 * n + 12 * layers * C * T


def metrics_rows(run_dir: Path) -> list[dict]:
    with open(run_dir / "metrics.csv") as f:
        return list(csv.DictReader(f))


def csv_series(rows: list[dict], key: str) -> dict[int, float]:
    return {int(r["step"]): float(r[key]) for r in rows if r.get(key)}


def wandb_series(history: list[dict], key: str) -> dict[int, float]:
    return {int(r["trainer/global_step"]): float(r[key]) for r in history if key in r}


def assert_readable_png(path: Path, min_bytes: int = 20_000) -> None:
    assert path.is_file() and path.stat().st_size > min_bytes, path
    pixels = matplotlib.image.imread(path)[..., :3]
    assert pixels.shape[0] >= 400 and pixels.shape[1] >= 600, pixels.shape
    assert pixels.std() > 0.05  # not a blank canvas
    drawn = (pixels < 0.9).any(axis=-1).mean()
    assert 0.01 < drawn < 0.6, drawn  # lines and text, on a mostly white background


@pytest.fixture(scope="module")
def corpus(module_corpus) -> Path:
    return module_corpus


@pytest.fixture(scope="module")
def observed_run(tmp_path_factory):
    """One tiny run with every logger, HellaSwag, samples every 6 steps and throughput every 3."""
    hellaswag = fixture_file("hellaswag_val.jsonl")
    tmp = tmp_path_factory.mktemp("observed")
    run_dir = tmp / "run"
    result = run_cli(
        "train", *QUIET_TINY, "logger=many",  # the default corpus: its characters cover HellaSwag's text
        "logger.wandb.project=obs-test", "logger.wandb.tags=[tiny,test]",
        "callbacks=hellaswag", f"callbacks.hellaswag.source={hellaswag}", "callbacks.hellaswag.limit=12",
        "callbacks.text_samples.every_n_steps=6", "callbacks.throughput.every_n_steps=3",
        f"callbacks.throughput.peak_flops={PEAK}", "callbacks.progress_bar.log_every_n_steps=3",
        "trainer.log_every_n_steps=3", f"hydra.run.dir={run_dir}",
        cwd=tmp, env={"WANDB_API_KEY": FAKE_KEY},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return run_dir, result


def test_wandb_offline_run_records_what_the_csv_logger_recorded(observed_run):
    run_dir, _ = observed_run
    files = wandb_offline.run_files(run_dir)
    assert len(files) == 1, files
    history = wandb_offline.history(files[0])
    rows = metrics_rows(run_dir)
    for key in ("train/loss", "val/loss", "train/tokens_per_sec", "train/mfu", "hellaswag/acc_norm"):
        logged = csv_series(rows, key)
        assert logged, key
        assert wandb_series(history, key) == pytest.approx(logged, rel=1e-6), key
    assert sorted(csv_series(rows, "val/loss")) == [5, 11]  # after steps 6 and 12

    config = wandb_offline.config(files[0])  # the whole composed config, not only the module's
    assert config["model"]["n_layer"] == 2 and config["data"]["batch_size"] == 4
    assert config["trainer"]["max_steps"] == 12 and config["callbacks"]["hellaswag"]["limit"] == 12

    run = next(r.run for r in wandb_offline.read_records(files[0]) if r.WhichOneof("record_type") == "run")
    assert run.project == "obs-test" and list(run.tags) == ["tiny", "test"]
    assert run.run_id == (run_dir / "wandb" / "run_id").read_text().strip()
    assert any(r.WhichOneof("record_type") == "exit" for r in wandb_offline.read_records(files[0]))

    # The samples table: one row per sample written to samples.txt, the latest table holding all.
    tables = sorted(files[0].parent.glob("files/media/table/samples_*.table.json"), key=lambda p: p.stat().st_mtime)
    table = json.loads(tables[-1].read_text())
    assert table["columns"] == ["step", "prompt", "text"]
    assert [row[0] for row in table["data"]] == [6, 12]
    samples = (run_dir / "samples.txt").read_text()
    assert all(row[1] + row[2] in samples for row in table["data"])


def test_tensorboard_records_the_same_losses(observed_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir, _ = observed_run
    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    tb = {e.step: e.value for e in events.Scalars("train/loss")}
    assert tb == pytest.approx(csv_series(metrics_rows(run_dir), "train/loss"), rel=1e-6)


def test_the_api_key_is_written_nowhere(observed_run):
    run_dir, result = observed_run
    files = [p for p in run_dir.rglob("*") if p.is_file()]
    assert len(files) > 15  # checkpoints, configs, logs, W&B run files, event files
    leaks = [p for p in files if FAKE_KEY.encode() in p.read_bytes()]
    assert not leaks, leaks
    assert FAKE_KEY not in result.stdout + result.stderr


def test_throughput_and_mfu_match_a_hand_count(observed_run):
    run_dir, _ = observed_run
    rows = metrics_rows(run_dir)
    vocab = int(re.search(r"vocabulary (\d+)", (run_dir / "train.log").read_text()).group(1))
    flops = hand_flops_per_token(vocab, T=32)
    tokens = csv_series(rows, "train/tokens")
    assert tokens == {s: (s + 1) * 4 * 32 for s in (2, 5, 8, 11)}  # batch 4 x 32 tokens per step
    rates = csv_series(rows, "train/tokens_per_sec")
    assert sorted(rates) == [5, 8, 11]  # the first interval holds start-up costs: no rate
    # The progress lines of steps 3, 6, 9, 12 are stamped: 3 steps took at most the time between two
    # lines (the rate leaves out validation, samples and HellaSwag scoring, so it may be faster).
    stamps = {int(m.group(2)): datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
              for m in re.finditer(r"^\[([\d\- :,]+)\]\S* - step (\d+)/12 ", (run_dir / "train.log").read_text(), re.M)}
    assert sorted(stamps) == [3, 6, 9, 12]
    for step, rate in rates.items():
        wall = stamps[step + 1] - stamps[step - 2]
        assert rate >= 0.98 * 3 * 4 * 32 / (wall + 0.002), (step, rate, wall)
        assert flops * rate < 1e12  # 32-wide matmuls run nowhere near 1 TFLOP/s on a CPU
        assert csv_series(rows, "train/samples_per_sec")[step] == pytest.approx(rate / 32, rel=1e-5)
        assert csv_series(rows, "train/mfu")[step] == pytest.approx(flops * rate / PEAK, rel=1e-5)


def test_flops_count_agrees_with_the_model():
    for settings in ({}, {"bias": False}, {"pos_emb": "learned"}, {"vocab_size": 50257, "n_layer": 12, "n_head": 12,
                                                                   "n_embd": 768, "block_size": 1024}):
        config = GPTConfig(**{"vocab_size": 100, "block_size": 32, "n_layer": 2, "n_head": 2, "n_embd": 32, **settings})
        with torch.device("meta"):
            model = GPT(config)
        positions = config.block_size * config.n_embd if config.pos_emb == "learned" else 0
        assert param_count(config) == model.count_params() - positions, settings
    gpt2 = GPTConfig(vocab_size=50257, pos_emb="learned")
    assert param_count(gpt2) == 124_475_904 - 1024 * 768  # GPT-2 124M with the vocabulary padded to 50304
    assert flops_per_token(GPTConfig(vocab_size=100, block_size=64, n_layer=2, n_head=2, n_embd=32), 32) == \
        hand_flops_per_token(100, T=32)


@pytest.fixture
def gpu_named(monkeypatch):
    """A CUDA device as Fabric's peak lookup sees it, by name (no GPU here): an Ampere or later one."""
    def device(name: str) -> torch.device:
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)
        monkeypatch.setattr("lightning.fabric.accelerators.cuda._is_ampere_or_later", lambda device=None: True)
        return torch.device("cuda")

    return device


def test_peak_flops_table_and_settings(gpu_named):
    assert fabric_peak_flops(gpu_named("NVIDIA H100 80GB HBM3"), torch.bfloat16) == 989.4e12
    assert fabric_peak_flops(gpu_named("NVIDIA H100 PCIe"), torch.bfloat16) == 756e12
    assert fabric_peak_flops(gpu_named("NVIDIA H200"), torch.bfloat16) == 989.4e12
    assert fabric_peak_flops(gpu_named("NVIDIA A100-SXM4-80GB"), torch.float16) == 312e12
    assert fabric_peak_flops(gpu_named("NVIDIA A100-SXM4-80GB"), torch.float32) == 19.5e12  # true fp32 matmuls
    assert fabric_peak_flops(gpu_named("Tesla T4"), torch.bfloat16) is None
    cpu = torch.device("cpu")
    assert resolve_peak_flops("2.5e12", cpu, torch.float32) == (2.5e12, "given")
    assert resolve_peak_flops(None, cpu, torch.float32)[0] is None
    assert resolve_peak_flops("auto", cpu, torch.float32) == (None, "no datasheet peak for cpu")
    measured, source = resolve_peak_flops("measure", cpu, torch.float32)
    assert 1e8 < measured < 1e13 and "measured" in source
    assert measured == measure_matmul_flops("cpu", torch.float32)  # measured once per process
    for wrong in ("fast", -1, True):
        with pytest.raises(ConfigError, match="peak_flops"):
            resolve_peak_flops(wrong, cpu, torch.float32)


def test_auto_peak_comes_from_fabrics_table(gpu_named, monkeypatch):
    from lightning.fabric.utilities.throughput import _CUDA_FLOPS, get_available_flops

    h100 = gpu_named("NVIDIA H100 80GB HBM3")
    peak, source = resolve_peak_flops("auto", h100, torch.bfloat16)
    assert peak == _CUDA_FLOPS["h100 sxm"][torch.bfloat16] and "Fabric" in source
    monkeypatch.setattr(torch, "get_float32_matmul_precision", lambda: "high")  # fp32 matmuls on TF32 cores
    assert resolve_peak_flops("auto", h100, torch.float32)[0] == _CUDA_FLOPS["h100 sxm"]["tfloat32"] == 494.7e12
    # torch's name for an H200 is not in Fabric's table (lightning 2.6): it is looked up as the H100 SXM it
    # computes like. Once Fabric finds it alone, this fails: check its figure is dense, then drop FABRIC_NAMES.
    h200 = gpu_named("NVIDIA H200")
    assert get_available_flops(h200, torch.bfloat16) is None
    assert resolve_peak_flops("auto", h200, torch.bfloat16)[0] == _CUDA_FLOPS["h100 sxm"][torch.bfloat16]


class PretendFourRanks(L.pytorch.strategies.SingleDeviceStrategy):
    """One process that counts as four ranks: what DDP changes in the callback's arithmetic."""

    def __init__(self) -> None:
        super().__init__("cpu")
        self.world_size = 4


class TinyGPT(L.LightningModule):
    """A 1-layer GPT on random tokens; each validation batch sleeps, so validation time stands out."""

    def __init__(self, validation_sleep: float = 0.0) -> None:
        super().__init__()
        self.model = GPT(GPTConfig(vocab_size=64, block_size=16, n_layer=1, n_head=2, n_embd=16))
        self.validation_sleep = validation_sleep

    def training_step(self, batch, batch_idx):
        return self.model(batch[:, :-1], batch[:, 1:])[1]

    def validation_step(self, batch, batch_idx):
        time.sleep(self.validation_sleep)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


class StepEnds(L.Callback):
    """When each optimizer step ended, by step."""

    def __init__(self) -> None:
        self.at: dict[int, float] = {}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.at.setdefault(trainer.global_step, time.perf_counter())  # its last micro-batch, not the next


def fit_tiny(tmp_path: Path, throughput: Throughput, module: TinyGPT, **trainer_settings) -> tuple[list[dict], StepEnds]:
    """Fit `module` on 3 x 17-token batches with the callback; the rows of its metrics.csv, and when steps ended."""
    from torch.utils.data import DataLoader

    tokens = torch.randint(0, 64, (48, 17), generator=torch.Generator().manual_seed(0))
    logger = L.pytorch.loggers.CSVLogger(tmp_path, name="", version="")
    ends = StepEnds()
    trainer = L.Trainer(callbacks=[throughput, ends], logger=logger, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                        **trainer_settings)
    trainer.fit(module, DataLoader(tokens, batch_size=3), DataLoader(tokens[:3], batch_size=3))
    return metrics_rows(tmp_path), ends


def test_throughput_counts_accumulation_and_ranks_and_leaves_validation_out(tmp_path):
    sleep = 0.5
    rows, ends = fit_tiny(tmp_path, Throughput(every_n_steps=2, peak_flops=PEAK), TinyGPT(validation_sleep=sleep),
                          strategy=PretendFourRanks(), accumulate_grad_batches=2, max_steps=8, log_every_n_steps=2,
                          val_check_interval=6, limit_val_batches=1)  # validation after steps 3 and 6
    tokens_per_step = 3 * 16 * 2 * 4  # micro-batch x block x accumulation x ranks
    assert sorted(csv_series(rows, "train/tokens").values()) == [s * tokens_per_step for s in (2, 4, 6, 8)]
    rates = csv_series(rows, "train/tokens_per_sec")
    assert sorted(rates) == [3, 5, 7]  # steps 4, 6, 8 (logged at step - 1): the first interval holds start-up
    flops = flops_per_token(TinyGPT().model.config, 16)
    validations = {4: 1, 6: 0, 8: 1}  # inside the wall time from the step before: after steps 3 and 6
    for csv_step, rate in rates.items():
        step = csv_step + 1
        seconds = 2 * tokens_per_step / rate  # the interval's time, as the rate has it
        assert 0 < seconds <= ends.at[step] - ends.at[step - 2] - 0.9 * sleep * validations[step] + 1e-3, step
        assert csv_series(rows, "train/samples_per_sec")[csv_step] == pytest.approx(rate / 16, rel=1e-5)
        assert csv_series(rows, "train/mfu")[csv_step] == pytest.approx(flops * rate / (PEAK * 4), rel=1e-5)


def test_no_mfu_on_a_cpu_under_auto(tmp_path):
    rows, _ = fit_tiny(tmp_path, Throughput(every_n_steps=2, peak_flops="auto"), TinyGPT(), max_steps=6,
                       log_every_n_steps=2, limit_val_batches=0)
    assert len(csv_series(rows, "train/tokens_per_sec")) == 2
    assert not csv_series(rows, "train/mfu")


def test_progress_is_single_log_lines_when_not_a_terminal(observed_run):
    _, result = observed_run
    assert "\r" not in result.stdout + result.stderr  # no redrawn bar in a log file
    pattern = re.compile(r"step (\d+)/12 \(\d+%\) \| loss \d+\.\d{4} \|(?: val/loss \d+\.\d{4} \|)? [\d,]+ tok/s \| "
                         r"elapsed \d+:\d\d:\d\d \| eta \d+:\d\d:\d\d$")
    steps = [int(m.group(1)) for line in result.stdout.splitlines() if (m := pattern.search(line))]
    assert steps == [6, 9, 12], result.stdout[-3000:]  # step 3's line has no rate yet
    assert len([line for line in result.stdout.splitlines() if re.search(r"step (3|6|9|12)/12", line)]) == 4
    assert "step 12/12 (100%)" in result.stdout and "eta 0:00:00" in result.stdout


def test_progress_bar_on_a_terminal(monkeypatch):
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.setattr(sys, "stdout", Terminal())
    assert isinstance(progress_bar(), StepProgressBar)
    monkeypatch.setattr(sys, "stdout", io.StringIO())
    assert isinstance(progress_bar(), StepLogLines)
    assert isinstance(progress_bar(plain=False), StepProgressBar)


def test_plot_a_run(observed_run, tmp_path):
    run_dir, _ = observed_run
    result = run_cli("plot", str(run_dir), "--out", str(tmp_path / "plots"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    png = tmp_path / "plots" / "loss_and_eval.png"
    assert result.stdout.split() == [str(png)]
    assert_readable_png(png)
    assert matplotlib.image.imread(png).shape[1] > 1500  # two panels: loss, and HellaSwag


def test_plot_a_sweep_with_a_soup_report_and_resume_continues_the_wandb_run(tmp_path, corpus):
    sweep = tmp_path / "sweep"
    common = [*TINY, "data=files", f"data.paths=[{corpus}]", "logger=wandb", "callbacks.text_samples=null",
              "max_steps=6", "eval_every=3", "trainer.log_every_n_steps=3"]
    result = run_cli("train", "-m", *common, "seed=1,2", f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    runs = []
    for job in ("0", "1"):
        (file,) = wandb_offline.run_files(sweep / job)
        records = list(wandb_offline.read_records(file))
        runs.append(next(r.run for r in records if r.WhichOneof("record_type") == "run"))
        assert records[-1].WhichOneof("record_type") == "exit"  # finished before the next job began
        assert wandb_series(wandb_offline.history(file), "val/loss") == pytest.approx(
            csv_series(metrics_rows(sweep / job), "val/loss"), rel=1e-6)
    assert runs[0].run_id != runs[1].run_id
    assert runs[0].run_group == runs[1].run_group == sweep.as_posix()
    assert runs[0].display_name.endswith("/0 seed=1") and runs[1].display_name.endswith("/1 seed=2")

    # Resuming job 0 in its own directory continues its W&B run, and its metrics.csv.
    resumed = run_cli("train", *common, "seed=1", "max_steps=9", "ckpt_path=last", f"hydra.run.dir={sweep / '0'}",
                      "logger.csv._target_=microgpt.lightning.loggers.ResumableCSVLogger", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    files = wandb_offline.run_files(sweep / "0")
    assert len(files) == 2 and all(f.name == f"run-{runs[0].run_id}.wandb" for f in files)
    assert sorted(wandb_series(wandb_offline.history(files[1]), "val/loss")) == [8]
    assert sorted(csv_series(metrics_rows(sweep / "0"), "val/loss")) == [2, 5, 8]

    report = {  # the layout microgpt.soup writes
        "status": "ok", "method": "uniform", "checkpoint": str(sweep / "soup.ckpt"),
        "ingredients": [{"name": "0", "path": "0/checkpoints/last.ckpt", "val_loss": 4.10, "hellaswag_acc_norm": 0.25},
                        {"name": "1", "path": "1/checkpoints/last.ckpt", "val_loss": 4.12, "hellaswag_acc_norm": 0.27}],
        "soups": {"uniform": {"members": ["0", "1"], "val_loss": 4.05, "hellaswag_acc_norm": 0.28}},
        "mean_ingredient_val_loss": 4.11, "best_ingredient_val_loss": 4.10, "soup_val_loss": 4.05,
        "soup_beats_mean": True, "soup_beats_best": True, "failed_jobs": [],
    }
    (sweep / "soup_report.json").write_text(json.dumps(report))
    plotted = run_cli("plot", str(sweep), cwd=tmp_path)
    assert plotted.returncode == 0, plotted.stderr[-3000:]
    assert plotted.stdout.split() == [str(sweep / "plots" / "loss_and_eval.png"), str(sweep / "plots" / "soup.png")]
    assert_readable_png(sweep / "plots" / "loss_and_eval.png")
    assert_readable_png(sweep / "plots" / "soup.png", min_bytes=10_000)
    assert matplotlib.image.imread(sweep / "plots" / "soup.png").shape[1] == 2 * 6 * 120  # val_loss, hellaswag


def test_plot_reports_a_directory_without_metrics(tmp_path):
    (tmp_path / "empty" / "0").mkdir(parents=True)
    assert_clean_error(run_cli("plot", str(tmp_path / "empty"), cwd=tmp_path), "no metrics.csv", "empty")
    assert_clean_error(run_cli("plot", str(tmp_path / "missing"), cwd=tmp_path), "not a directory")
    (tmp_path / "early").mkdir()
    (tmp_path / "early" / "metrics.csv").write_text("epoch,step,lr-AdamW\n0,0,0.001\n")
    assert_clean_error(run_cli("plot", str(tmp_path / "early"), cwd=tmp_path), "no train/loss")


def test_offline_reader_reassembles_records_split_across_blocks(tmp_path):
    import wandb

    run = wandb.init(project="reader", dir=tmp_path, mode="offline", config={"big": "x" * 100_000})
    for i in range(3):
        run.log({"loss": 1 / (i + 1), "note": "y" * (40_000 + i)}, step=i)  # > one 32 KiB block each
    run.finish()
    wandb.teardown()  # waits for wandb's writer process: finish() returns before the file is complete
    (file,) = wandb_offline.run_files(tmp_path)
    rows = wandb_offline.history(file)
    assert [r["loss"] for r in rows] == [1, 0.5, 1 / 3]
    assert [len(r["note"]) for r in rows] == [40_000, 40_001, 40_002]
    assert wandb_offline.config(file)["big"] == "x" * 100_000
    damaged = tmp_path / "damaged.wandb"
    data = bytearray(file.read_bytes())
    data[40_000] ^= 0xFF  # inside the first long row
    damaged.write_bytes(bytes(data))
    with pytest.raises(wandb_offline.WandbFileError, match="checksum"):
        wandb_offline.history(damaged)


def test_long_config_values_are_shortened_for_the_dashboard():
    from microgpt.lightning.loggers import shorten_long_values

    config = {"tokenizer": {"kind": "bpe", "merges": [[1, 2]] * 500, "pattern": "p" * 300}, "model": {"n_layer": 2}}
    assert shorten_long_values(config) == {
        "tokenizer": {"kind": "bpe", "merges": "<500 items>", "pattern": "<300 characters>"}, "model": {"n_layer": 2}}
