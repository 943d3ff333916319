"""The architecture parts of one GPT (core/config.py, layers.py, attention.py): each variant checked
against an independent statement of what it computes, its cache against uncached decoding, and the
settings that do not fit against the one-line errors the commands print."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml

from conftest import assert_clean_error, run_cli
from microgpt.core.errors import ConfigError
from microgpt.core.layers import RMSNorm, activation, rope_frequencies
from microgpt.core.model import GPT, GPTConfig

ROOT = Path(__file__).resolve().parents[1]
BASE = dict(vocab_size=97, block_size=24, n_layer=2, n_head=4, n_embd=32)
MLA = dict(attention="mla", kv_lora_rank=12, qk_nope_head_dim=8, qk_rope_head_dim=4, v_head_dim=6)
VARIANTS = {
    "gpt": {},
    "gqa_llama": dict(n_kv_head=2, norm="rmsnorm", mlp="swiglu", bias=False, tie_embeddings=False, intermediate_size=40),
    "mqa": dict(n_kv_head=1),
    "qwen3": dict(n_kv_head=2, qk_norm="head", head_dim=12, norm="rmsnorm", mlp="swiglu", bias=False),
    "olmo2": dict(norm_placement="post", qk_norm="full", norm="rmsnorm", mlp="swiglu", bias=False),
    "mla": dict(MLA, norm="rmsnorm", mlp="swiglu", bias=False),
    "mla_q_lora": dict(MLA, q_lora_rank=16),
    "relu2_nopos": dict(mlp="relu2", pos_emb="none"),
    "gelu_learned": dict(mlp="gelu", pos_emb="learned"),
    "yarn": dict(rope_scaling="yarn", rope_factor=4.0, rope_original_block_size=8),
    "llama3_rope": dict(rope_scaling="llama3", rope_factor=8.0, rope_original_block_size=12),
}


def build(seed: int = 0, **overrides) -> GPT:
    torch.manual_seed(seed)
    return GPT(GPTConfig(**{**BASE, **overrides})).eval()


def test_the_defaults_file_lists_every_setting_at_its_default():
    listed = yaml.safe_load((ROOT / "conf" / "gpt_defaults.yaml").read_text())
    defaults = {f.name: f.default for f in dataclasses.fields(GPTConfig)}
    defaults["vocab_size"] = None  # the configs take the tokenizer's
    assert listed == defaults


@pytest.mark.parametrize("name", VARIANTS)
def test_cached_generation_equals_uncached_past_the_window(name):
    model = build(**VARIANTS[name])
    prompt = torch.randint(0, BASE["vocab_size"], (2, 5), generator=torch.Generator().manual_seed(1))
    cached = model.generate(prompt, 40, top_k=1)
    uncached = model.generate(prompt, 40, top_k=1, use_cache=False)
    assert torch.equal(cached, uncached)
    # and the cache's incremental logits are the full forward's, position by position
    ids = cached[:, : BASE["block_size"]]
    full, _ = model(ids)
    caches = model.new_caches(2)
    steps = [model(ids[:, :7], caches=caches)[0]] + [model(ids[:, t : t + 1], caches=caches, offset=t)[0] for t in range(7, ids.size(1))]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", VARIANTS)
def test_the_cache_holds_what_the_variant_needs(name):
    model = build(**VARIANTS[name])
    held = sum(t.numel() * t.element_size() for cache in model.new_caches(1) for t in vars(cache).values())
    assert held == model.kv_cache_bytes_per_token() * BASE["block_size"]
    c = model.config
    per_layer = c.kv_lora_rank + c.qk_rope_head_dim if c.attention == "mla" else 2 * c.kv_heads * c.head_size
    assert model.kv_cache_bytes_per_token() == c.n_layer * per_layer * 4


def test_grouped_query_attention_is_multi_head_with_shared_key_value_heads():
    gqa = build(n_kv_head=2)
    mha = build(seed=1)
    hd, q_width = gqa.config.head_size, 4 * gqa.config.head_size
    state = gqa.state_dict()
    for i in range(2):
        w = state[f"transformer.h.{i}.attn.c_attn.weight"]
        b = state[f"transformer.h.{i}.attn.c_attn.bias"]
        q, k, v = w.split([q_width, 2 * hd, 2 * hd])
        qb, kb, vb = b.split([q_width, 2 * hd, 2 * hd])
        # query heads 0, 1 share kv head 0; heads 2, 3 share kv head 1
        expand = lambda t: t.view(2, hd, *t.shape[1:]).repeat_interleave(2, dim=0).reshape(4 * hd, *t.shape[1:])  # noqa: E731
        state[f"transformer.h.{i}.attn.c_attn.weight"] = torch.cat([q, expand(k), expand(v)])
        state[f"transformer.h.{i}.attn.c_attn.bias"] = torch.cat([qb, expand(kb), expand(vb)])
    mha.load_state_dict(state)
    ids = torch.randint(0, 97, (2, 20))
    torch.testing.assert_close(gqa(ids)[0], mha(ids)[0], atol=1e-5, rtol=1e-5)
    assert gqa.kv_cache_bytes_per_token() * 2 == mha.kv_cache_bytes_per_token()


def test_post_norm_never_normalises_the_residual_stream():
    model = build(norm_placement="post", norm="rmsnorm")
    with torch.no_grad():
        for block in model.transformer.h:  # zero gains: every sublayer's output is zeroed by its norm
            block.ln_1.weight.zero_()
            block.ln_2.weight.zero_()
        x = torch.randn(2, 10, 32)
        for block in model.transformer.h:
            torch.testing.assert_close(block(x), x)
    pre = build(norm="rmsnorm")
    with torch.no_grad():
        pre.transformer.h[0].ln_1.weight.zero_()
        assert not torch.allclose(pre.transformer.h[0](x), x)  # pre-norm: the MLP still adds to x


@pytest.mark.parametrize("qk_norm", ["head", "full"])
def test_qk_norm_makes_attention_blind_to_the_scale_of_queries_and_keys(qk_norm):
    model = build(qk_norm=qk_norm, n_kv_head=2)
    ids = torch.randint(0, 97, (1, 16))
    before = model(ids)[0]
    with torch.no_grad():
        for block in model.transformer.h:
            block.attn.c_attn.weight[: 4 * 8 + 2 * 8] *= 7.0  # queries and keys, not values
            block.attn.c_attn.bias[: 4 * 8 + 2 * 8] *= 7.0
    torch.testing.assert_close(model(ids)[0], before, atol=1e-4, rtol=1e-4)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items() if "_norm" in k}
    width = (8, 8) if qk_norm == "head" else (32, 16)
    assert shapes["transformer.h.0.attn.q_norm.weight"] == (width[0],)
    assert shapes["transformer.h.0.attn.k_norm.weight"] == (width[1],)


def test_rmsnorm_and_activations_match_their_definitions():
    x = torch.randn(3, 5, 16)
    norm = RMSNorm(16, eps=1e-6)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
    torch.testing.assert_close(norm(x), F.rms_norm(x, (16,), norm.weight, eps=1e-6))
    gate, up = x.chunk(2, dim=-1)
    torch.testing.assert_close(activation("swiglu", x), gate * torch.sigmoid(gate) * up)
    torch.testing.assert_close(activation("relu2", x), torch.clamp(x, min=0) ** 2)
    torch.testing.assert_close(activation("gelu", x), 0.5 * x * (1 + torch.erf(x / 2**0.5)))


@pytest.mark.parametrize("scaling", [
    dict(rope_type="linear", factor=4.0),
    dict(rope_type="llama3", factor=32.0, low_freq_factor=1.0, high_freq_factor=4.0, original_max_position_embeddings=8192),
    dict(rope_type="yarn", factor=4.0, original_max_position_embeddings=4096, beta_fast=32.0, beta_slow=1.0),
])
def test_rope_scaling_matches_transformers(scaling):
    from transformers import LlamaConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    hf = LlamaConfig(hidden_size=512, num_attention_heads=8, max_position_embeddings=32768,
                     rope_parameters=dict(rope_theta=500000.0, **scaling))
    expected, expected_factor = ROPE_INIT_FUNCTIONS[scaling["rope_type"]](hf, "cpu")
    ours = GPTConfig(n_embd=512, n_head=8, rope_base=500000.0, rope_scaling=scaling["rope_type"],
                     rope_factor=scaling["factor"], rope_original_block_size=scaling.get("original_max_position_embeddings"))
    inv_freq, factor = rope_frequencies(64, 500000.0, ours)
    torch.testing.assert_close(inv_freq, expected.float(), atol=0, rtol=1e-6)
    assert factor == pytest.approx(expected_factor)
    assert not torch.allclose(inv_freq, rope_frequencies(64, 500000.0)[0])  # the scaling did something


@pytest.mark.parametrize("settings, words", [
    (dict(n_kv_head=3), ["model.n_kv_head", "1|2|4"]),
    (dict(n_experts=4, n_experts_per_tok=5), ["model.n_experts_per_tok", "model.n_experts"]),
    (dict(MLA, kv_lora_rank=32), ["model.kv_lora_rank", "model.n_embd"]),
    (dict(MLA, q_lora_rank=64), ["model.q_lora_rank"]),
    (dict(MLA, n_kv_head=2), ["model.attention=mla", "n_kv_head"]),
    (dict(qk_norm="both"), ["model.qk_norm", "head"]),
    (dict(rope_scaling="yarn", rope_factor=4.0), ["rope_original_block_size"]),
    (dict(n_experts=2, moe_first_dense=2), ["no layer is moe"]),
    (dict(n_embd=30), ["model.head_dim"]),
])
def test_settings_that_do_not_fit_name_the_setting(settings, words):
    with pytest.raises(ConfigError) as error:
        GPTConfig(**{**BASE, **settings})
    message = str(error.value).lower()
    assert "\n" not in message
    for word in words:
        assert word.lower() in message


def test_a_setting_that_does_not_fit_stops_the_train_command_in_one_line(tmp_path):
    result = run_cli("train", "model.n_kv_head=3", "dry_run=true", cwd=tmp_path, timeout=120)
    assert result.returncode == 2
    assert_clean_error(result, "model.n_kv_head", "1|2|4")


def test_the_cache_is_sized_to_the_generation_not_the_context(monkeypatch):
    import microgpt.core.attention as attention

    lengths = []
    original = attention.KVCache.__init__

    def recording(self, batch, n_head, max_len, head_dim, device, dtype):
        lengths.append(max_len)
        original(self, batch, n_head, max_len, head_dim, device, dtype)

    monkeypatch.setattr(attention.KVCache, "__init__", recording)
    model = build(**{**VARIANTS["gqa_llama"], "block_size": 131072, "rope_scaling": "llama3",
                     "rope_factor": 32.0, "rope_original_block_size": 8192})
    prompt = torch.randint(0, 97, (1, 6))
    out = model.generate(prompt, 10, top_k=1)
    assert lengths == [16, 16]  # per layer: the prompt and the new tokens, not 131072
    assert torch.equal(out, model.generate(prompt, 10, top_k=1, use_cache=False))
