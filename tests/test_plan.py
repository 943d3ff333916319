"""Every model x trainer pair composes; derived batch numbers and memory estimates are right."""

import pytest
import torch

from conftest import compose_train, run_cli
from microgpt.cli.overrides import available_options
from microgpt.core.errors import ConfigError
from microgpt.core.flops import flops_per_token
from microgpt.core.model import GPT, GPTConfig
from microgpt.core.tokenizer import TiktokenTokenizer
from microgpt.lightning.builders import model_settings
from microgpt.lightning.plan import make_plan

GPT2 = TiktokenTokenizer("gpt2")


class MistralVocabulary:
    """Stands in for Mixtral's own tokenizer: model_settings only reads its size (below GPT-2's)."""

    vocab_size = 32000


def plan_for(*overrides):
    cfg = compose_train(*overrides, "tokenizer=gpt2")
    tokenizer = MistralVocabulary() if cfg.model.vocab_size == 32000 else GPT2
    config = GPTConfig.from_dict(model_settings(cfg, tokenizer))
    return cfg, config, make_plan(cfg, config)


# The architecture presets of issue 17: composed with the CPU trainer, the real shapes with FSDP on
# 8 GPUs as well (each pair costs ~1 s, so not with every trainer), at a 4096-token window.
ARCH_PRESETS = ("llama_nano", "qwen3_nano", "olmo2_nano", "moe_nano", "mla_nano",
                "llama3_1b", "qwen3_0_6b", "olmo2_1b", "mixtral_8x7b")
PAIRS = [(m, t) for m in available_options("model") if m not in ARCH_PRESETS for t in available_options("trainer")]
PAIRS += [(m, t) for m in ARCH_PRESETS for t in ("cpu",) + (() if m.endswith("_nano") else ("fsdp",))]


def test_every_preset_is_in_a_pair():
    assert set(ARCH_PRESETS) <= set(available_options("model"))
    assert {m for m, _ in PAIRS} == set(available_options("model"))


@pytest.mark.parametrize(("model", "trainer"), PAIRS)
def test_every_model_and_trainer_compose_and_plan(model, trainer):
    window = ["data.block_size=4096"] if model in ARCH_PRESETS and not model.endswith("_nano") else []
    cfg, config, plan = plan_for(f"model={model}", f"trainer={trainer}", *window)
    with torch.device("meta"):
        assert plan.params == GPT(config).count_params()
    devices, nodes = cfg.trainer.devices, cfg.trainer.num_nodes
    assert plan.world_size == devices * nodes
    assert plan.tokens_per_step == cfg.data.batch_size * cfg.data.block_size * devices * nodes * plan.accumulate
    if cfg.global_batch_tokens:
        assert plan.tokens_per_step == cfg.global_batch_tokens
    assert plan.memory_gib == pytest.approx(plan.state_gib + plan.activation_gib)
    assert plan.sharded == (trainer == "fsdp")
    assert plan.flops_per_token == flops_per_token(config, cfg.data.block_size)
    assert (plan.active_params < plan.params) == bool(config.n_experts)  # only routed experts sit idle


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


def test_variant_activations_and_the_real_shapes_on_8xh200():
    """The activation estimate follows each variant's shapes; the state of the real shapes is
    16 bytes per parameter, sharded over 8 GPUs by FSDP."""
    _, _, base = plan_for("model=nano", "trainer=cpu")
    for preset in ("llama_nano", "moe_nano", "mla_nano"):
        _, _, plan = plan_for(f"model={preset}", "trainer=cpu")
        assert plan.activation_gib != base.activation_gib, preset
    _, _, gqa = plan_for("model=llama_nano", "trainer=cpu")
    _, _, mha = plan_for("model=llama_nano", "model.n_kv_head=null", "trainer=cpu")
    # 4 layers x (k and v) x 2 fewer heads x 32 features, 4 bytes each in fp32, per token
    tokens = 16 * 128
    assert (mha.activation_gib - gqa.activation_gib) * 1024**3 == pytest.approx(4 * 2 * 2 * 32 * 4 * tokens)
    _, _, moe = plan_for("model=mixtral_8x7b", "trainer=fsdp", "data.block_size=4096")
    assert moe.params == 46_702_792_704 and moe.active_params == 12_879_925_248
    assert moe.state_gib * 1024**3 == pytest.approx(moe.params * 16 / 8)
    assert moe.flops_per_token == pytest.approx(6 * (moe.active_params - 32000 * 4096) + 6 * 32 * 2 * 4096 * 4096)
    _, _, olmo = plan_for("model=olmo2_1b", "trainer=fsdp", "data.block_size=4096")
    assert olmo.memory_gib < 141  # 1.5B trains on 8 x H200 with FSDP at its full context


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
