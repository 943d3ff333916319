"""Mixture of experts: routing against a per-token reference, the balancing and z-losses on cases
worked by hand, layer placement, and a real training run that logs the router statistics."""

from __future__ import annotations

import csv
import math

import pytest
import torch
import torch.nn as nn

import microgpt.core.moe as moe_module
from conftest import TINY, compose_train
from microgpt.core.errors import ConfigError
from microgpt.core.layers import MLP
from microgpt.core.model import GPT, GPTConfig
from microgpt.core.moe import MoE, moe_loss, moe_stats
from microgpt.lightning.module import log_expert_load

SMALL = dict(vocab_size=64, block_size=16, n_layer=2, n_head=2, n_embd=16, bias=False)


def moe_config(**kw) -> GPTConfig:
    settings = {**SMALL, "n_experts": 6, "n_experts_per_tok": 2, "moe_intermediate_size": 12, **kw}
    return GPTConfig(**settings)


def act(kind: str, h: torch.Tensor) -> torch.Tensor:
    """The activations written out, independently of the model's own helper."""
    if kind == "swiglu":
        g, u = h.chunk(2)
        return g * torch.sigmoid(g) * u
    if kind == "relu2":
        return torch.clamp(h, min=0) ** 2
    if kind == "gelu":
        return 0.5 * h * (1 + torch.erf(h / math.sqrt(2)))
    return 0.5 * h * (1 + torch.tanh(math.sqrt(2 / math.pi) * (h + 0.044715 * h**3)))


def reference(moe: MoE, x: torch.Tensor, config: GPTConfig) -> torch.Tensor:
    """One token at a time: score every expert, take the k best, weigh their outputs."""
    out = []
    for token in x.reshape(-1, x.size(-1)):
        logits = moe.router.weight @ token
        scores = torch.softmax(logits, 0) if config.router == "softmax" else torch.sigmoid(logits)
        chosen = sorted(range(config.n_experts), key=lambda e: -scores[e].item())[: config.n_experts_per_tok]
        weights = scores[chosen]
        if config.router_norm_topk:
            weights = weights / weights.sum()
        y = sum(w * (moe.expert_proj[e] @ act(config.mlp, moe.expert_fc[e] @ token)) for w, e in zip(weights, chosen))
        if moe.shared is not None:
            y = y + moe.shared(token)
        out.append(y)
    return torch.stack(out).view_as(x)


@pytest.mark.parametrize("settings", [
    dict(mlp="swiglu"),
    dict(mlp="swiglu", router_norm_topk=False),  # Qwen3-MoE's norm_topk_prob=false
    dict(mlp="gelu_tanh", router="sigmoid"),
    dict(mlp="gelu", router="sigmoid", router_norm_topk=False, n_experts_per_tok=3),
    dict(mlp="relu2", n_shared_experts=2, bias=True),
    dict(mlp="swiglu", n_experts_per_tok=6),  # top-k = all experts
])
@pytest.mark.parametrize("grouped", [True, False])
def test_routing_matches_a_per_token_reference(settings, grouped, monkeypatch):
    monkeypatch.setattr(moe_module, "use_grouped_mm", lambda *args: grouped)
    config = moe_config(**settings)
    torch.manual_seed(0)
    moe = MoE(config)
    nn.init.normal_(moe.router.weight, std=0.5)  # decisive routing, no near-ties
    nn.init.normal_(moe.expert_proj, std=0.2)
    x = torch.randn(3, 5, config.n_embd)
    with torch.no_grad():
        torch.testing.assert_close(moe(x), reference(moe, x, config), atol=1e-5, rtol=1e-5)


def test_the_experts_get_gradients_only_for_their_tokens():
    config = moe_config(n_experts=4, n_experts_per_tok=1)
    torch.manual_seed(0)
    moe = MoE(config)
    x = torch.randn(1, 3, config.n_embd)
    moe(x).pow(2).sum().backward()
    _, chosen, _ = moe.route(moe.router(x.view(-1, config.n_embd)))
    used = set(chosen.flatten().tolist())
    for e in range(4):
        assert (moe.expert_fc.grad[e].abs().sum() > 0) == (e in used)


def logits_router(settings: dict) -> MoE:
    """An MoE of 4 experts over 4 features whose router logits are the input itself."""
    moe = MoE(GPTConfig(**{**SMALL, "n_embd": 4, "n_head": 1, "n_experts": 4, "n_experts_per_tok": 1,
                           "moe_intermediate_size": 8, **settings}))
    with torch.no_grad():
        moe.router.weight.copy_(torch.eye(4))
    return moe


def test_the_balancing_and_z_losses_on_worked_cases():
    moe = logits_router(dict(aux_loss_weight=0.5, z_loss_weight=0.25))
    lse = math.log(math.exp(10) + 3)
    # Every token prefers expert 0: it gets all the load (f_0 = 1) with probability e^10 / (e^10 + 3).
    moe(torch.tensor([10.0, 0, 0, 0]).repeat(1, 6, 1))
    assert moe.aux_loss.item() == pytest.approx(4 * math.exp(10 - lse), rel=1e-6)
    assert moe.z_loss.item() == pytest.approx(lse**2, rel=1e-6)
    assert moe.load.tolist() == [1.0, 0.0, 0.0, 0.0]
    model = nn.Sequential(moe)
    assert moe_loss(model).item() == pytest.approx(0.5 * moe.aux_loss.item() + 0.25 * lse**2, rel=1e-6)
    stats = moe_stats(model)
    assert stats["max_load"].item() == 1.0 and stats["load"].tolist() == [1.0, 0.0, 0.0, 0.0]
    # Token i prefers expert i: each gets a quarter of the load; the mean probabilities sum to 1.
    moe((10 * torch.eye(4))[None])
    assert moe.aux_loss.item() == pytest.approx(1.0, rel=1e-6)
    assert moe.load.tolist() == [0.25] * 4
    assert moe_stats(model)["max_load"].item() == 0.25


def test_sigmoid_routing_balances_normalised_scores():
    moe = logits_router(dict(router="sigmoid"))
    moe(torch.tensor([3.0, 0, 0, 0]).repeat(1, 5, 1))
    s = 1 / (1 + math.exp(-3))
    assert moe.aux_loss.item() == pytest.approx(4 * s / (s + 1.5), rel=1e-6)  # P_0 = s / (s + 3 * 0.5)


def test_the_balancing_loss_trains_the_router_alone():
    torch.manual_seed(0)
    model = GPT(moe_config())
    ids = torch.randint(0, 64, (2, 8))
    model(ids)
    model.moe_loss().backward()
    router = model.transformer.h[0].mlp.router.weight
    assert router.grad is not None and router.grad.abs().sum() > 0
    # The last layer's experts feed no router: nothing of the losses reaches them.
    assert model.transformer.h[-1].mlp.expert_fc.grad is None


def test_a_dense_model_has_no_moe_loss_and_unchanged_parameters():
    model = GPT(GPTConfig(**SMALL))
    model(torch.randint(0, 64, (1, 4)))
    assert model.moe_loss().item() == 0.0 and moe_stats(model) == {}
    assert not any("router" in k or "expert" in k for k in model.state_dict())


def test_moe_layers_every_kth_after_the_first_dense():
    config = moe_config(n_layer=6, moe_every=2, moe_first_dense=2, n_shared_experts=1)
    model = GPT(config)
    kinds = [type(block.mlp) for block in model.transformer.h]
    assert kinds == [MLP, MLP, MLP, MoE, MLP, MoE]
    names = set(model.state_dict())
    for suffix in ("router.weight", "expert_fc", "expert_proj", "shared.c_fc.weight", "shared.c_proj.weight"):
        assert f"transformer.h.3.mlp.{suffix}" in names and f"transformer.h.2.mlp.{suffix}" not in names
    moe = model.transformer.h[3].mlp
    assert moe.expert_fc.shape == (6, 12, 16) and moe.expert_proj.shape == (6, 16, 12)
    assert moe.shared.c_fc.weight.shape == (12, 16)  # one shared expert of the experts' width
    swiglu = GPT(moe_config(mlp="swiglu", n_shared_experts=2)).transformer.h[0].mlp
    assert swiglu.expert_fc.shape == (6, 24, 16) and swiglu.shared.c_fc.weight.shape == (48, 16)  # [gate | up]


def test_top_k_above_the_expert_count_is_a_config_error():
    with pytest.raises(ConfigError, match="n_experts_per_tok"):
        moe_config(n_experts=4, n_experts_per_tok=5)


def test_expert_initialisation_follows_gpt2():
    torch.manual_seed(0)
    model = GPT(moe_config(n_layer=8, n_embd=64, n_head=4, n_experts=4, moe_intermediate_size=128))
    moe = model.transformer.h[0].mlp
    assert moe.expert_fc.std().item() == pytest.approx(0.02, rel=0.05)
    assert moe.expert_proj.std().item() == pytest.approx(0.02 / math.sqrt(16), rel=0.05)
    assert moe.router.weight.std().item() == pytest.approx(0.02, rel=0.1)


@pytest.mark.parametrize("hidden", [16, 12])  # 12: bf16 rows of 24 bytes, which grouped_mm refuses
def test_bf16_autocast_runs_the_experts_in_bf16(hidden):
    torch.manual_seed(0)
    moe = MoE(moe_config(mlp="swiglu", moe_intermediate_size=hidden))
    x = torch.randn(2, 4, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = moe(x)
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), moe(x), atol=2e-2, rtol=5e-2)


def test_the_wandb_histogram_has_one_bin_per_expert(tmp_path, monkeypatch):
    from lightning.pytorch.loggers import CSVLogger, WandbLogger

    wandb_logger, csv_logger = WandbLogger(offline=True, save_dir=tmp_path), CSVLogger(tmp_path)
    sent = []
    monkeypatch.setattr(wandb_logger, "log_metrics", lambda metrics, step: sent.append(("wandb", metrics, step)))
    monkeypatch.setattr(csv_logger, "log_metrics", lambda metrics, step: sent.append(("csv", metrics, step)))
    trainer = type("T", (), {"global_step": 7, "loggers": [wandb_logger, csv_logger]})()
    log_expert_load(trainer, [0.5, 0.25, 0.25])
    (_, w, w_step), (_, c, c_step) = sent
    histogram = w["train/expert_load"]
    assert list(histogram.histogram) == [0.5, 0.25, 0.25] and list(histogram.bins) == [0, 1, 2, 3]
    assert c == {"train/expert_load_0": 0.5, "train/expert_load_1": 0.25, "train/expert_load_2": 0.25}
    assert w_step == c_step == 7


TINY_MOE = ["model=moe_nano", *TINY, "model.n_embd=32", "model.n_head=2", "model.n_kv_head=1",
            "model.intermediate_size=64", "model.moe_intermediate_size=32", "trainer.log_every_n_steps=2"]


def test_training_adds_the_moe_loss_and_validation_does_not(small_corpus):
    from microgpt.lightning.builders import build_datamodule, build_module, training_tokenizer

    cfg = compose_train(*TINY_MOE, "data=files", f"data.paths=[{small_corpus}]")
    module = build_module(cfg, build_datamodule(cfg.data, training_tokenizer(cfg), cfg.seed).load())
    batch = torch.randint(0, module.model.config.vocab_size, (2, 17))
    _, ce = module.model(batch[:, :-1], batch[:, 1:])
    total = module.training_step(batch, 0)
    assert total.item() == pytest.approx((ce + module.model.moe_loss()).item(), rel=1e-6)
    assert total.item() > ce.item()
    module.validation_step(batch, 0)
    assert module.objective.val_loss.compute().item() == pytest.approx(ce.item(), rel=1e-6)


def test_a_training_run_logs_the_router_statistics(tmp_path, small_corpus):
    from microgpt.lightning.training import train

    train(compose_train(*TINY_MOE, "data=files", f"data.paths=[{small_corpus}]", output_dir=tmp_path / "run"))
    rows = list(csv.DictReader(open(tmp_path / "run" / "metrics.csv")))
    stats = [r for r in rows if r.get("train/moe_aux_loss")]
    loads = [r for r in rows if r.get("train/expert_load_0")]
    assert [int(r["step"]) for r in stats] == [1, 3, 5, 7, 9, 11]
    assert [int(r["step"]) for r in loads] == [1, 3, 5, 7, 9, 11]
    for r in stats:
        assert 0.9 < float(r["train/moe_aux_loss"]) < 8  # 1.0 balanced, n_experts at the worst
        assert float(r["train/moe_z_loss"]) > 0
        assert 1 / 8 <= float(r["train/expert_max_load"]) <= 1
    for r in loads:
        assert sum(float(r[f"train/expert_load_{e}"]) for e in range(8)) == pytest.approx(1.0, abs=1e-5)


@pytest.mark.slow
def test_a_compiled_moe_model_trains_as_the_eager_one():
    torch.manual_seed(0)
    model = GPT(moe_config(mlp="swiglu", n_shared_experts=1))
    compiled = torch.compile(model)
    ids = torch.randint(0, 64, (2, 9))
    results = []
    for forward in (model, compiled):
        model.zero_grad()
        _, loss = forward(ids[:, :-1], ids[:, 1:])
        total = loss + model.moe_loss()  # the losses the compiled forward left on the (eager) MoE layers
        total.backward()
        results.append((total.detach(), [p.grad.clone() for p in model.parameters()]))
    (eager, eager_grads), (comp, comp_grads) = results
    torch.testing.assert_close(comp, eager, atol=1e-5, rtol=1e-5)
    for a, b in zip(comp_grads, eager_grads):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
