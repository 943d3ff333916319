"""trainer=fsdp for real: Lightning's FSDPStrategy and torch FSDP on 2 CPU ranks over gloo.

One tiny run (2 ranks x 2 micro-batches per step, activation checkpointing on, text samples and
HellaSwag mid-run and at the end) records what each rank saw; the tests compare it with the same
model in one plain process: weight-decay groups, the clipping norm, what the callbacks produced,
and the checkpoint.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.strategies import FSDPStrategy
from torch.distributed.fsdp import FullStateDictConfig, FullyShardedDataParallel, StateDictType

from conftest import TINY, compose_train, finish, popen, run_cli, torch_threads
from microgpt.core.model import GPT, GPTConfig
from microgpt.evals.hellaswag import evaluate_hellaswag
from microgpt.io.checkpoints import model_from_checkpoint, read_checkpoint
from microgpt.lightning.callbacks.samples import TextSamples
from microgpt.lightning.module import unwrapped_name

TESTS = Path(__file__).resolve().parent
MAX_STEPS = 3
HELLASWAG_EXAMPLES = 6  # 3 batches of 2: rank 0 scores two, rank 1 one


class CPUFSDPStrategy(FSDPStrategy):
    """Lightning's FSDPStrategy on CPU ranks, for these tests. Lightning refuses the CPU (by an
    exact type check, which a subclass passes) and gives torch FSDP `device_id=None` there, which
    makes torch look for an accelerator; and its full state dict offloads to the CPU, which for
    tensors already on the CPU frees storage the state dict still uses (torch 2.13 segfaults)."""

    def _setup_model(self, model):
        model = FullyShardedDataParallel(
            model, device_id=torch.device("cpu"), cpu_offload=self.cpu_offload,
            mixed_precision=self.mixed_precision_config, sharding_strategy=self.sharding_strategy, **self.kwargs,
        )
        self.kwargs.pop("auto_wrap_policy", None)  # applied: Lightning warns about it on a wrapped model
        return super()._setup_model(model)  # activation checkpointing, metrics to the device

    def lightning_module_state_dict(self) -> dict:
        config = FullStateDictConfig(offload_to_cpu=False, rank0_only=True)
        with FullyShardedDataParallel.state_dict_type(self.model, StateDictType.FULL_STATE_DICT, config):
            return self.model.state_dict()


class Probe(L.Callback):
    """Records per rank: the initial weights (rank 0), the optimizer's groups, step 1's micro-batches,
    this rank's own shard norm at step 1, and every gradient norm the module reports."""

    def __init__(self, out: str) -> None:
        self.out = Path(out)
        self.record: dict = {"batches": [], "norms": []}

    def setup(self, trainer, pl_module, stage) -> None:  # before FSDP wraps the model
        if trainer.is_global_zero:
            torch.save(pl_module.model.state_dict(), self.out / "initial.pt")

    def on_fit_start(self, trainer, pl_module) -> None:  # wrapped, optimizer configured
        names = {id(p): unwrapped_name(n) for n, p in pl_module.model.named_parameters()}
        optimizer = trainer.optimizers[0]
        self.record["groups"] = [
            {"names": sorted(names[id(p)] for p in g["params"]), "numel": sum(p.numel() for p in g["params"]),
             "weight_decay": g["weight_decay"]}
            for g in optimizer.param_groups
        ]
        self.record["fused"] = optimizer.defaults["fused"]
        self.record["any_2d"] = any(p.dim() >= 2 for p in pl_module.model.parameters())

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == 0:
            self.record["batches"].append(batch.cpu())

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:  # before clipping
        if trainer.global_step == 0:
            grads = [p.grad for p in pl_module.parameters() if p.grad is not None]
            self.record["shard_norm"] = float(torch.nn.utils.get_total_norm(grads))

    def on_gradient_norm(self, trainer, pl_module, optimizer, norm) -> None:
        self.record["norms"].append(float(norm))

    def on_train_end(self, trainer, pl_module) -> None:
        torch.save(self.record, self.out / f"probe_rank{trainer.global_rank}.pt")


def hellaswag_file(path: Path) -> Path:
    words = ["the cat sat on the mat", "a dog ran in the park", "she read a book", "he made some tea"]
    records = [{"ctx": f"{words[i % 4]} and then", "endings": [f" {w}" for w in words], "label": i % 4}
               for i in range(HELLASWAG_EXAMPLES)]
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def run_ranks(args: list[str], cwd: Path, timeout: float = 150) -> subprocess.CompletedProcess:
    """`python -m microgpt.train` with this file importable (its strategy and probe); on a timeout
    the whole process group goes (Lightning's child rank included): a hang is a failure."""
    env = {"OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
    code, out, err = finish(popen(args, cwd, env), timeout)
    return subprocess.CompletedProcess(args, code, out, err)


MICRO_BATCH = ["data.batch_size=4", "model.block_size=32"]  # 4 sequences x 32 tokens
FSDP_ON_CPU = [
    "trainer=fsdp", "trainer.strategy._target_=test_fsdp.CPUFSDPStrategy", "trainer.accelerator=cpu",
    "trainer.devices=2", "trainer.precision=32-true", "tf32=false", "data.num_workers=0",
]


@pytest.fixture(scope="module")
def fsdp_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("fsdp")
    run_dir = root / "run"
    run_dir.mkdir()
    result = run_ranks([
        *TINY, *FSDP_ON_CPU, "model.dropout=0.0", f"max_steps={MAX_STEPS}", f"eval_every={MAX_STEPS}",
        f"checkpoint_every={MAX_STEPS}", "eval_batches=1",
        *MICRO_BATCH, "global_batch_tokens=512",  # 2 ranks x 2 micro-batches x 4 x 32 tokens
        "callbacks=hellaswag", f"callbacks.hellaswag.source={hellaswag_file(root / 'hs.jsonl')}",
        "callbacks.hellaswag.every_n_steps=2", "callbacks.hellaswag.batch_size=2",
        "callbacks.text_samples.every_n_steps=2",
        "+callbacks.probe._target_=test_fsdp.Probe", f"+callbacks.probe.out={run_dir}",
        f"hydra.run.dir={run_dir}",
    ], cwd=root)
    assert result.returncode == 0, result.stderr[-4000:]
    probes = [torch.load(run_dir / f"probe_rank{r}.pt", weights_only=True) for r in (0, 1)]
    return run_dir, probes, read_checkpoint(run_dir / "checkpoints" / "last.ckpt")


def test_decay_groups_under_fsdp_are_those_of_the_plain_model(fsdp_run):
    _, probes, ckpt = fsdp_run
    plain = GPT(GPTConfig.from_dict(ckpt["hyper_parameters"]["model"]))
    params = dict(plain.named_parameters())
    matrices = sorted(n for n, p in params.items() if p.dim() >= 2)  # linear weights, embeddings
    assert matrices and all(n.endswith(".weight") for n in matrices)
    others = sorted(set(params) - set(matrices))  # biases and norm gains
    weight_decay = ckpt["hyper_parameters"]["optim"]["weight_decay"]
    for probe in probes:
        assert not probe["any_2d"]  # the shards are flat: shapes could not have told them apart
        decayed, not_decayed = probe["groups"]
        assert (decayed["names"], decayed["weight_decay"]) == (matrices, weight_decay)
        assert (not_decayed["names"], not_decayed["weight_decay"]) == (others, 0.0)
        assert probe["fused"] is True
    # Each rank holds a shard of every group; together they hold the whole model once.
    assert sum(p["groups"][0]["numel"] for p in probes) == sum(params[n].numel() for n in matrices)
    assert sum(p["groups"][1]["numel"] for p in probes) == sum(params[n].numel() for n in others)


def test_the_clipping_norm_is_the_norm_of_the_whole_gradient(fsdp_run):
    run_dir, probes, ckpt = fsdp_run
    # The same step in one process: the initial weights, all 4 micro-batches (2 per rank), the loss
    # averaged over them as accumulation and FSDP's gradient averaging do.
    model = GPT(GPTConfig.from_dict(ckpt["hyper_parameters"]["model"]))
    model.load_state_dict(torch.load(run_dir / "initial.pt", weights_only=True))
    batches = [b for p in probes for b in p["batches"]]
    assert len(batches) == 4
    loss = sum(model(b[:, :-1], b[:, 1:])[1] for b in batches) / len(batches)
    loss.backward()
    expected = float(torch.nn.utils.get_total_norm([p.grad for p in model.parameters()]))
    first, second = probes
    assert first["norms"][0] == pytest.approx(expected, abs=1e-5)
    assert first["norms"] == second["norms"]  # every rank clips (and NaN-checks) by the same norm
    assert len(first["norms"]) == MAX_STEPS  # once per optimizer step, not per micro-batch
    # Not vacuous: a rank's own shard has a different norm (the bug this guards against).
    assert all(abs(p["shard_norm"] - expected) > 1e-3 for p in probes)


def test_text_samples_and_hellaswag_run_under_fsdp_on_every_rank(fsdp_run):
    run_dir, _, ckpt = fsdp_run
    text = (run_dir / "samples.txt").read_text()
    assert text.count("=== step 2 |") == 1 and text.count(f"=== step {MAX_STEPS} |") == 1
    # The final sample is what the checkpoint's model samples in one plain process (the settings
    # of conf/callbacks/default.yaml are the class defaults; the run ran on one thread per rank).
    model, tokenizer = model_from_checkpoint(ckpt)
    with torch_threads(1):
        (prompt, continuation), = TextSamples(prompts=[""], max_new_tokens=16).generate(model, tokenizer)
    assert len(set(continuation)) > 2  # sampled text, not a repeated token
    assert text.endswith(f"=== step {MAX_STEPS} | prompt {prompt!r}\n{prompt}{continuation}\n\n")
    # HellaSwag: every example scored once across the ranks; the same figure as the checkpoint's.
    with open(run_dir / "metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r.get("hellaswag/acc")]
    assert [int(r["step"]) for r in rows] == [2, MAX_STEPS]
    alone = evaluate_hellaswag(model, tokenizer, source=run_dir.parent / "hs.jsonl", batch_size=2)
    assert alone.count == HELLASWAG_EXAMPLES
    assert float(rows[-1]["hellaswag/acc"]) == pytest.approx(alone.acc)
    assert float(rows[-1]["hellaswag/acc_norm"]) == pytest.approx(alone.acc_norm)


def test_the_fsdp_checkpoint_loads_and_generates_in_one_process(fsdp_run):
    run_dir, _, ckpt = fsdp_run
    assert ckpt["global_step"] == MAX_STEPS
    state = ckpt["state_dict"]
    assert not [k for k in state if "_fsdp" in k or "_checkpoint_wrapped" in k]
    model_from_checkpoint(ckpt)  # plain names and whole tensors: a single-process GPT takes them
    result = run_cli("generate", f"ckpt={run_dir / 'checkpoints' / 'last.ckpt'}", "prompt=The", "max_new_tokens=8",
                     cwd=run_dir, timeout=60)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.startswith("The") and len(result.stdout.strip()) > len("The")


def test_the_gradient_norm_is_reported_once_per_step_with_clipping_off(tmp_path):
    """No clipping, 2 micro-batches per step, one process: the norm is still computed, once per
    optimizer step, from the whole accumulated gradient."""
    from microgpt.lightning.training import train

    train(compose_train(*TINY, "callbacks.text_samples=null", "trainer.gradient_clip_val=null",
                        f"max_steps={MAX_STEPS}", f"eval_every={MAX_STEPS}", f"checkpoint_every={MAX_STEPS}",
                        *MICRO_BATCH, "global_batch_tokens=256",
                        "+callbacks.probe._target_=test_fsdp.Probe", f"+callbacks.probe.out={tmp_path}",
                        output_dir=tmp_path))
    probe = torch.load(tmp_path / "probe_rank0.pt", weights_only=True)
    assert len(probe["batches"]) == 2 and len(probe["norms"]) == MAX_STEPS
    assert probe["norms"][0] == pytest.approx(probe["shard_norm"], rel=1e-6)  # one rank: its gradient is the whole one
