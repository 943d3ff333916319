import pytest
import torch
from omegaconf import OmegaConf

from conftest import compose_train
from microgpt.core.errors import ConfigError
from microgpt.core.model import GPT, GPTConfig, RotaryEmbedding

# Published parameter counts of OpenAI's GPT-2 checkpoints (learned positions, vocab 50257, no padding).
HF_GPT2_PARAMS = {"gpt2_124m": 124_439_808, "gpt2_350m": 354_823_168, "gpt2_774m": 774_030_080, "gpt2_1558m": 1_557_611_200}


def preset(name: str, **overrides) -> GPTConfig:
    settings = OmegaConf.to_container(compose_train(f"model={name}").model)
    settings["vocab_size"] = settings["vocab_size"] or 50257
    return GPTConfig(**{**settings, **overrides})


def expected_params(c: GPTConfig) -> int:
    d = c.n_embd
    per_block = 12 * d * d + 13 * d  # attention 4d^2+4d, MLP 8d^2+5d, two LayerNorms 4d
    n = c.padded_vocab_size * d + c.n_layer * per_block + 2 * d
    return n + (c.block_size * d if c.pos_emb == "learned" else 0)


def tiny(**overrides) -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(**{"vocab_size": 50, "block_size": 16, "n_layer": 2, "n_head": 2, "n_embd": 16, **overrides})).eval()


@pytest.mark.parametrize("name", ["nano", "micro", *HF_GPT2_PARAMS])
@pytest.mark.parametrize("pos_emb", ["rope", "learned"])
def test_parameter_counts_on_meta_device(name, pos_emb):
    config = preset(name, pos_emb=pos_emb)
    with torch.device("meta"):
        model = GPT(config)
    assert model.count_params() == expected_params(config)
    assert config.padded_vocab_size % 64 == 0


@pytest.mark.parametrize("name", HF_GPT2_PARAMS)
def test_gpt2_shapes_match_openai_counts(name):
    with torch.device("meta"):
        model = GPT(preset(name, pos_emb="learned", vocab_multiple=1))
    assert model.count_params() == HF_GPT2_PARAMS[name]


def test_micro_is_about_ten_million_parameters_with_8k_vocab():
    with torch.device("meta"):
        n = GPT(preset("micro", vocab_size=8192)).count_params()
    assert 9.5e6 < n < 11e6


def test_residual_projections_are_scaled_at_init():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=64, block_size=8, n_layer=8, n_head=4, n_embd=256))
    proj = model.transformer.h[0].attn.c_proj.weight.std().item()
    fc = model.transformer.h[0].mlp.c_fc.weight.std().item()
    assert proj == pytest.approx(0.02 / 4, rel=0.05)  # 1/sqrt(2 * 8 layers)
    assert fc == pytest.approx(0.02, rel=0.05)
    assert model.lm_head.weight.data_ptr() == model.transformer.wte.weight.data_ptr()


@pytest.mark.parametrize("pos_emb", ["rope", "learned"])
def test_causality(pos_emb):
    model = tiny(pos_emb=pos_emb)
    idx = torch.randint(0, 50, (2, 12))
    changed = idx.clone()
    changed[:, 7] = (changed[:, 7] + 1) % 50
    with torch.no_grad():
        a, _ = model(idx)
        b, _ = model(changed)
    torch.testing.assert_close(a[:, :7], b[:, :7])
    assert not torch.allclose(a[:, 7:], b[:, 7:])


def test_rope_scores_depend_only_on_the_offset():
    rope = RotaryEmbedding(head_dim=8, max_len=64, base=10000.0)
    q, k = torch.randn(1, 1, 1, 8), torch.randn(1, 1, 1, 8)

    def score(m: int, n: int) -> float:
        return (rope(q, m) * rope(k, n)).sum().item()

    assert score(5, 2) == pytest.approx(score(40, 37), abs=1e-5)
    assert score(9, 9) == pytest.approx(score(0, 0), abs=1e-5)
    assert score(5, 2) != pytest.approx(score(5, 4), abs=1e-3)


def test_rope_base_is_configurable():
    q = torch.randn(1, 1, 1, 8)
    a = RotaryEmbedding(8, 16, base=10000.0)(q, 3)
    b = RotaryEmbedding(8, 16, base=500.0)(q, 3)
    assert not torch.allclose(a, b)


def test_learned_positions_train_and_carry_a_position_table():
    model = tiny(pos_emb="learned").train()
    assert "wpe" in model.transformer and model.rope is None
    idx = torch.randint(0, 50, (2, 16))
    _, loss = model(idx[:, :-1], idx[:, 1:])
    loss.backward()
    assert model.transformer.wpe.weight.grad.abs().sum() > 0


def test_sequence_longer_than_context_is_refused():
    with pytest.raises(ValueError, match="context window"):
        tiny()(torch.zeros(1, 17, dtype=torch.long))


@pytest.mark.parametrize("bad", [dict(n_head=3), dict(n_layer=0), dict(block_size=-1), dict(pos_emb="alibi"), dict(dropout=1.5)])
def test_bad_config_is_a_config_error(bad):
    with pytest.raises(ConfigError):
        GPTConfig(**{"vocab_size": 50, "n_embd": 16, "n_head": 2, **bad})


@pytest.mark.parametrize("pos_emb", ["rope", "learned"])
def test_kv_cache_matches_full_recomputation_across_the_context_boundary(pos_emb):
    model = tiny(pos_emb=pos_emb)
    prompt = torch.randint(0, 50, (2, 5))
    cached = model.generate(prompt, 30, temperature=0, use_cache=True)  # 35 tokens > block_size 16
    full = model.generate(prompt, 30, temperature=0, use_cache=False)
    assert cached.shape == (2, 35)
    assert torch.equal(cached, full)


def test_top_k_one_is_greedy_and_seeds_reproduce():
    model = tiny()
    prompt = torch.randint(0, 50, (1, 4))
    greedy = model.generate(prompt, 10, temperature=0)
    top1 = model.generate(prompt, 10, temperature=1.0, top_k=1, generator=torch.Generator().manual_seed(3))
    assert torch.equal(greedy, top1)
    a = model.generate(prompt, 10, temperature=1.0, generator=torch.Generator().manual_seed(7))
    b = model.generate(prompt, 10, temperature=1.0, generator=torch.Generator().manual_seed(7))
    assert torch.equal(a, b)
    assert int(a.max()) < 50  # padding ids are never sampled


def test_top_p_keeps_only_the_nucleus():
    from microgpt.core.sampling import sample_next

    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    g = torch.Generator().manual_seed(0)
    drawn = {int(sample_next(logits, 1.0, None, 0.7, g)) for _ in range(200)}
    assert drawn == {0, 1}


@pytest.mark.parametrize("kwargs", [dict(temperature=-1), dict(top_k=0), dict(top_p=0.0), dict(top_p=1.5)])
def test_bad_sampling_parameters(kwargs):
    with pytest.raises(ConfigError):
        tiny().generate(torch.zeros(1, 1, dtype=torch.long), 2, **kwargs)


def test_generation_stops_at_eot():
    model = tiny()
    prompt = torch.zeros(1, 1, dtype=torch.long)
    first = int(model.generate(prompt, 1, temperature=0)[0, -1])
    out = model.generate(prompt, 10, temperature=0, eot=first)
    assert out.shape[1] == 2
