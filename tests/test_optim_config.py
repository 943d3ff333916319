"""The optimizer and the LR schedule are `_target_` configs (conf/optim, conf/schedule) whose values
are the only defaults; the data group takes its block size from the model."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from conftest import TINY, assert_clean_error, compose_train, run_cli
from microgpt.cli.overrides import CONFIG_DIR
from microgpt.core.errors import ConfigError
from microgpt.core.model import GPT, GPTConfig
from microgpt.core.schedule import WarmupStableDecay
from microgpt.lightning.builders import build_datamodule, build_module, training_tokenizer
from microgpt.lightning.module import GPTModule
from microgpt.lightning.training import train

QUICK = [*TINY, "callbacks.text_samples=null"]


def files_data(corpus: Path) -> list[str]:
    return ["data=files", f"data.paths=[{corpus}]"]


def module_for(*overrides: str) -> GPTModule:
    """The module `python -m microgpt.train <overrides>` would train, built in-process."""
    cfg = compose_train(*overrides)
    return build_module(cfg, build_datamodule(cfg.data, training_tokenizer(cfg), cfg.seed).load())


def decay_split(hparams: dict) -> tuple[int, int]:
    """How many parameters of the plain GPT are matrices (decayed) and how many are not."""
    params = list(GPT(GPTConfig.from_dict(hparams["model"])).parameters())
    matrices = sum(p.dim() >= 2 for p in params)
    return matrices, len(params) - matrices


def test_the_default_optimizer_is_adamw_with_the_config_values(small_corpus):
    module = module_for(*QUICK, *files_data(small_corpus))
    optimizer = module.configure_optimizers()["optimizer"]
    assert type(optimizer) is torch.optim.AdamW
    assert tuple(optimizer.defaults["betas"]) == (0.9, 0.99)  # conf/optim/adamw.yaml, not a fallback in code
    assert optimizer.defaults["eps"] == 1e-8 and optimizer.defaults["lr"] == 1e-3
    assert optimizer.defaults["fused"] is True  # fused: null -> fused, for CPU floating-point parameters
    decayed, not_decayed = optimizer.param_groups
    assert (decayed["weight_decay"], not_decayed["weight_decay"]) == (0.1, 0.0)
    assert (len(decayed["params"]), len(not_decayed["params"])) == decay_split(module.hparams)
    assert all(p.dim() >= 2 for p in decayed["params"]) and all(p.dim() == 1 for p in not_decayed["params"])


def test_another_optimizer_trains_through_the_entry_point(tmp_path, small_corpus):
    run_dir = tmp_path / "run"
    result = run_cli("train", *QUICK, *files_data(small_corpus), "optim=sgd", "optim.lr=0.05",
                     "optim.weight_decay=0.01", f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)  # hparams stay plain values
    assert ckpt["hyper_parameters"]["optim"]["_target_"] == "torch.optim.SGD"
    decayed, not_decayed = ckpt["optimizer_states"][0]["param_groups"]
    for group in (decayed, not_decayed):  # SGD's own settings; none of AdamW's
        assert (group["momentum"], group["nesterov"], group["fused"]) == (0.9, True, True)
        assert "betas" not in group
    assert (decayed["weight_decay"], not_decayed["weight_decay"]) == (0.01, 0.0)
    assert (len(decayed["params"]), len(not_decayed["params"])) == decay_split(ckpt["hyper_parameters"])


def test_a_checkpoint_from_before_optimizer_targets_still_resumes_and_loads(tmp_path, small_corpus):
    common = [*QUICK, *files_data(small_corpus)]
    train(compose_train(*common, "max_steps=6", output_dir=tmp_path / "first"))
    ckpt = torch.load(tmp_path / "first" / "checkpoints" / "last.ckpt", weights_only=True)
    for group in ("optim", "schedule"):  # what checkpoints held before conf/optim and conf/schedule
        ckpt["hyper_parameters"][group] = {k: v for k, v in ckpt["hyper_parameters"][group].items()
                                           if k not in ("_target_", "_partial_")}
    old = tmp_path / "old.ckpt"
    torch.save(ckpt, old)

    train(compose_train(*common, f"ckpt_path={old}", output_dir=tmp_path / "resumed"))
    resumed = torch.load(tmp_path / "resumed" / "checkpoints" / "last.ckpt", weights_only=True)
    assert resumed["global_step"] == 12
    assert {int(s["step"]) for s in resumed["optimizer_states"][0]["state"].values()} == {12}

    module = GPTModule(**ckpt["hyper_parameters"])  # rebuilt from the old hyper-parameters alone
    assert module.hparams.optim["_target_"] == "torch.optim.AdamW"
    assert module.hparams.schedule["_target_"] == "microgpt.core.schedule.WarmupCosine"
    assert type(module.configure_optimizers()["optimizer"]) is torch.optim.AdamW


def compose_command(name: str, *overrides: str):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose(config_name=name, overrides=list(overrides))


def test_data_block_size_follows_the_model():
    assert compose_train("model.block_size=48").data.block_size == 48
    assert compose_train("model=gpt2_124m").data.block_size == 1024
    assert compose_train("model.block_size=48", "data.block_size=16").data.block_size == 16
    # Commands whose model is a checkpoint's compose no model and invent no size: null, the checkpoint's.
    for name, overrides in [("eval", ["ckpt=x.ckpt"]), ("soup", ["ckpts=[a.ckpt,b.ckpt]"]), ("train_tokenizer", [])]:
        data = OmegaConf.to_container(compose_command(name, *overrides).data, resolve=True)
        assert data["block_size"] is None, name
    assert OmegaConf.to_container(compose_command("prepare", "out=x").data, resolve=True)["sources"]


def test_warmup_stable_decay():
    s = WarmupStableDecay(peak_lr=1e-3, warmup_steps=10, total_steps=100, cooldown_fraction=0.2, end_lr=1e-5)
    assert s(0) == 0.0 and s(5) == pytest.approx(5e-4)
    assert s(10) == s(50) == s(80) == pytest.approx(1e-3)  # held until the last 20 steps
    assert s(90) == pytest.approx((1e-3 + 1e-5) / 2)
    assert s(100) == s(1000) == pytest.approx(1e-5)
    assert WarmupStableDecay(peak_lr=1e-3, warmup_steps=0, total_steps=10, cooldown_fraction=0)(9) == 1e-3


def test_a_second_schedule_trains_with_its_own_shape(tmp_path, small_corpus):
    # 12 steps: warmup 2, the peak held to step 6, then a linear cooldown to end_lr at step 12.
    train(compose_train(*QUICK, *files_data(small_corpus), "schedule=wsd", "schedule.cooldown_fraction=0.5",
                        "schedule.end_lr=1e-5", "optim.lr=2e-3", output_dir=tmp_path))
    checkpoints = tmp_path / "checkpoints"
    last_lr = {step: torch.load(checkpoints / f"step{step:06d}.ckpt", weights_only=True)["lr_schedulers"][0]["_last_lr"]
               for step in (6, 12)}
    assert last_lr[6] == pytest.approx([2e-3, 2e-3])  # a cosine would have decayed by now
    assert last_lr[12] == pytest.approx([1e-5, 1e-5])


@pytest.mark.parametrize("args, words", [
    (["schedule=wsd", "schedule.cooldown_fraction=0.95"], ["schedule.warmup_steps", "cooldown_fraction", "total_steps"]),
    (["schedule.warmup_steps=-3"], ["schedule.warmup_steps", "positive integer"]),
    (["+schedule.plateau=5"], ["schedule", "plateau"]),
    (["schedule._target_=microgpt.core.schedule.Nope"], ["schedule._target_", "Nope"]),
    (["optim=sgd", "+optim.betas=[0.9,0.95]"], ["torch.optim.SGD", "betas"]),
    (["optim=sgd", "stage='1'"], ["betas"]),  # a stage written for AdamW, with SGD
    (["optim.eps=-1"], ["optim._target_=torch.optim.AdamW", "epsilon"]),
    (["optim._partial_=false"], ["_partial_: true"]),
    (["~optim.weight_decay"], ["optim.weight_decay"]),
])
def test_bad_optimizer_and_schedule_settings_are_user_errors(tmp_path, small_corpus, args, words):
    with pytest.raises(ConfigError) as raised:
        train(compose_train(*QUICK, *args, *files_data(small_corpus), output_dir=tmp_path / "run"))
    for word in words:
        assert word.lower() in str(raised.value).lower(), str(raised.value)
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_a_bad_schedule_setting_is_one_clear_line(tmp_path, small_corpus):
    result = run_cli("train", *QUICK, *files_data(small_corpus), "schedule=wsd", "schedule.cooldown_fraction=1.5",
                     f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert_clean_error(result, "schedule.cooldown_fraction", "[0, 1]")
