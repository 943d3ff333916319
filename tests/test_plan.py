"""Every model x trainer pair composes; derived batch numbers and memory estimates are right."""

import pytest
import torch

from conftest import compose_train, run_cli
from microgpt.cli.overrides import available_options
from microgpt.core.errors import ConfigError
from microgpt.core.model import GPT, GPTConfig
from microgpt.core.tokenizer import TiktokenTokenizer
from microgpt.lightning.builders import model_settings
from microgpt.lightning.plan import make_plan

GPT2 = TiktokenTokenizer("gpt2")


def plan_for(*overrides):
    cfg = compose_train(*overrides, "tokenizer=gpt2")
    config = GPTConfig.from_dict(model_settings(cfg, GPT2))
    return cfg, config, make_plan(cfg, config)


@pytest.mark.parametrize("trainer", available_options("trainer"))
@pytest.mark.parametrize("model", available_options("model"))
def test_every_model_and_trainer_compose_and_plan(model, trainer):
    cfg, config, plan = plan_for(f"model={model}", f"trainer={trainer}")
    with torch.device("meta"):
        assert plan.params == GPT(config).count_params()
    devices, nodes = cfg.trainer.devices, cfg.trainer.num_nodes
    assert plan.world_size == devices * nodes
    assert plan.tokens_per_step == cfg.data.batch_size * cfg.data.block_size * devices * nodes * plan.accumulate
    if cfg.global_batch_tokens:
        assert plan.tokens_per_step == cfg.global_batch_tokens
    assert plan.memory_gib == pytest.approx(plan.state_gib + plan.activation_gib)
    assert plan.sharded == (trainer == "fsdp")


def test_gpt2_124m_on_8xh200_numbers():
    _, config, plan = plan_for("model=gpt2_124m", "trainer=8xh200")
    assert (plan.world_size, plan.micro_batch, plan.accumulate, plan.tokens_per_step) == (8, 64, 1, 524_288)
    # 16 bytes/param of state; bf16 activations 34 B x tokens x width x layers + logits (2 + 4 bytes)
    tokens = 64 * 1024
    expected = 124_475_904 * 16 + 12 * 34 * tokens * 768 + tokens * 50304 * 6
    assert plan.memory_gib * 1024**3 == pytest.approx(expected - 786_432 * 16, rel=1e-9)  # RoPE: no position table
    assert plan.memory_gib < 141  # fits an H200


def test_smaller_micro_batch_accumulates_and_fsdp_shards_state():
    _, _, plan = plan_for("model=gpt2_124m", "trainer=8xh200", "data.batch_size=16")
    assert plan.accumulate == 4 and plan.tokens_per_step == 524_288
    _, _, sharded = plan_for("model=gpt2_1558m", "trainer=fsdp")
    _, _, replicated = plan_for("model=gpt2_1558m", "trainer=fsdp", "trainer.strategy=ddp")
    assert sharded.state_gib == pytest.approx(replicated.state_gib / 8)
    assert sharded.activation_gib < replicated.activation_gib  # activation checkpointing


def test_global_batch_mismatch_is_an_error():
    with pytest.raises(ConfigError, match="not a multiple"):
        plan_for("model=gpt2_124m", "trainer=8xh200", "data.batch_size=48")
    with pytest.raises(ConfigError, match="contradicts"):
        plan_for("model=gpt2_124m", "trainer=8xh200", "data.batch_size=16", "trainer.accumulate_grad_batches=2")


def test_the_gpu_command_validates_here_with_a_dry_run(tmp_path):
    result = run_cli("train", "model=gpt2_124m", "trainer=8xh200", "tokenizer=gpt2", "dry_run=true",
                     f"hydra.run.dir={tmp_path}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "tokens_per_step  524,288" in result.stdout


def test_more_gpus_than_available_is_a_clear_error(tmp_path):
    from conftest import TINY, assert_clean_error

    result = run_cli("train", *TINY, "trainer=gpu", f"hydra.run.dir={tmp_path}", cwd=tmp_path)
    assert_clean_error(result, "GPUs requested", "0 visible")
