"""optim=muon: Muon on the blocks' matrices, AdamW on the rest, as one optimizer. Its updates are
checked against torch's own Muon and AdamW, then trained, resumed and run through the entry point."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

from conftest import TINY, assert_resume_is_exact, compose_train, run_cli
from microgpt.core.muon import MuonAdamW, orthogonalize
from microgpt.lightning.builders import build_datamodule, build_module, training_tokenizer

QUICK = [*TINY, "callbacks.text_samples=null", "optim=muon"]


def files(corpus: Path) -> list[str]:
    return ["data=files", f"data.paths=[{corpus}]"]


@pytest.mark.parametrize("shape", [(64, 32), (32, 64), (3, 48, 16)])
def test_orthogonalize_gives_an_update_with_every_singular_value_near_one(shape):
    g = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    g[..., 0, :] *= 100.0  # one direction dominating the gradient
    singular = torch.linalg.svdvals(orthogonalize(g, 5, torch.float32))
    assert singular.min() > 0.5 and singular.max() < 1.3  # the quintic's band; the input spanned 1e2x
    assert torch.linalg.svdvals(g).max() / torch.linalg.svdvals(g).min() > 50


def test_a_muon_step_is_torchs_muon_step_and_an_adam_step_is_torchs_adamw_step():
    gen = torch.Generator().manual_seed(1)
    w, b = torch.randn(48, 24, generator=gen), torch.randn(24, generator=gen)
    ours_w, ours_b, ref_w, ref_b = (t.clone().requires_grad_() for t in (w, b, w, b))
    ours = MuonAdamW([{"params": [ours_w], "kind": "hidden", "weight_decay": 0.1},
                      {"params": [ours_b], "weight_decay": 0.05}],
                     lr=0.02, momentum=0.9, adam_lr=3e-3, adam_betas=(0.8, 0.9), ns_dtype="bfloat16")
    muon = torch.optim.Muon([ref_w], lr=0.02, weight_decay=0.1, momentum=0.9)
    adamw = torch.optim.AdamW([ref_b], lr=3e-3, betas=(0.8, 0.9), eps=1e-8, weight_decay=0.05)
    for step in range(3):
        grads = torch.randn(48, 24, generator=gen), torch.randn(24, generator=gen)
        for params, opt in (((ours_w, ours_b), ours), ((ref_w, ref_b), None)):
            for p, g in zip(params, grads):
                p.grad = g.clone()
        ours.step()
        muon.step()
        adamw.step()
        torch.testing.assert_close(ours_w, ref_w, atol=1e-6, rtol=1e-5, msg=f"muon step {step}")
        torch.testing.assert_close(ours_b, ref_b, atol=1e-6, rtol=1e-5, msg=f"adamw step {step}")


def test_the_module_gives_muon_the_blocks_matrices_and_adamw_the_rest(small_corpus):
    cfg = compose_train(*QUICK, *files(small_corpus), "model=llama_nano", "model.n_layer=2")
    module = build_module(cfg, build_datamodule(cfg.data, training_tokenizer(cfg), cfg.seed).load())
    optimizer = module.configure_optimizers()["optimizer"]
    assert isinstance(optimizer, MuonAdamW)
    names = {id(p): n for n, p in module.model.named_parameters()}
    by_kind = {}
    for group in optimizer.param_groups:
        by_kind.setdefault((group["kind"], group["weight_decay"] > 0 or group["kind"] == "hidden"), []).extend(
            names[id(p)] for p in group["params"])
    hidden = by_kind[("hidden", True)]
    assert hidden and all(n.startswith("transformer.h.") and n.endswith(".weight") and "ln_" not in n for n in hidden)
    assert {"transformer.wte.weight", "lm_head.weight"} <= set(sum((v for k, v in by_kind.items() if k[0] == "adam"), []))
    lrs = {g["kind"]: g["initial_lr"] for g in optimizer.param_groups}  # the peaks the schedule scales
    assert lrs == {"hidden": 0.02, "adam": 3e-3}  # conf/optim/muon.yaml


def test_muon_resumes_exactly(tmp_path, small_corpus):
    assert_resume_is_exact([*QUICK, *files(small_corpus), "model.dropout=0.1"], tmp_path)


def test_muon_trains_through_the_entry_point(tmp_path, small_corpus):
    run_dir = tmp_path / "run"
    result = run_cli("train", *QUICK, *files(small_corpus), f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["hyper_parameters"]["optim"]["_target_"] == "microgpt.core.muon.MuonAdamW"
    kinds = [g["kind"] for g in ckpt["optimizer_states"][0]["param_groups"]]
    assert kinds == ["hidden", "adam", "adam"]
    with open(run_dir / "metrics.csv") as f:
        losses = [float(row["val/loss"]) for row in csv.DictReader(f) if row.get("val/loss")]
    assert len(losses) >= 2 and losses[-1] < losses[0]
