"""Hugging Face interop of the mixture-of-experts and latent-attention families (Mixtral, Qwen3-MoE,
DeepSeek-V3) against real `transformers` models: random weights, fp32, tiny shapes, no network.
A directory `save_pretrained` writes loads with the same logits and greedy tokens; our model
exported loads in `AutoModelForCausalLM` with the same logits and tokens; what we do not reproduce
is refused naming the key."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file, save_file

from conftest import compose_train, perturbed
from microgpt.core.errors import CheckpointError
from microgpt.core.model import GPT, GPTConfig
from microgpt.core.tokenizer import CharTokenizer
from microgpt.io.export import export
from microgpt.io.hf.families import family_for_config
from microgpt.io.loading import load_model

transformers = pytest.importorskip("transformers")
transformers.logging.set_verbosity_error()

VOCAB = 61
CHARS = "".join(chr(ord("A") + i) for i in range(VOCAB - 1))
SHAPE = dict(vocab_size=VOCAB, hidden_size=32, num_attention_heads=4, intermediate_size=24, max_position_embeddings=64)
MLA = dict(kv_lora_rank=8, qk_rope_head_dim=8, qk_nope_head_dim=8, v_head_dim=8)
ROUTED = dict(moe_intermediate_size=16, n_routed_experts=4, num_experts_per_tok=2, n_group=1, topk_group=1,
              routed_scaling_factor=1.0)
# name -> (transformers config, what our config must say about it)
CASES = {
    "mixtral": (lambda: transformers.MixtralConfig(**SHAPE, num_hidden_layers=2, num_key_value_heads=2,
                                                   num_local_experts=4, num_experts_per_tok=2),
                dict(n_experts=4, n_experts_per_tok=2, router="softmax", router_norm_topk=True, n_kv_head=2,
                     moe_intermediate_size=None, intermediate_size=24)),
    "qwen3_moe": (lambda: transformers.Qwen3MoeConfig(**SHAPE, num_hidden_layers=3, num_key_value_heads=2, head_dim=16,
                                                      moe_intermediate_size=16, num_experts=4, num_experts_per_tok=2,
                                                      mlp_only_layers=[0], norm_topk_prob=False),
                  dict(qk_norm="head", head_dim=16, moe_first_dense=1, router_norm_topk=False, moe_intermediate_size=16)),
    "qwen3_moe_every_2nd": (lambda: transformers.Qwen3MoeConfig(**SHAPE, num_hidden_layers=4, num_key_value_heads=1,
                                                                moe_intermediate_size=8, num_experts=6,
                                                                num_experts_per_tok=3, decoder_sparse_step=2,
                                                                norm_topk_prob=True, head_dim=8),
                            dict(moe_every=2, n_experts=6, n_experts_per_tok=3, router_norm_topk=True, n_kv_head=1)),
    "deepseek_v3_dense": (lambda: transformers.DeepseekV3Config(**SHAPE, **MLA, num_hidden_layers=2, q_lora_rank=16,
                                                                first_k_dense_replace=2),
                          dict(attention="mla", q_lora_rank=16, kv_lora_rank=8, n_experts=0, norm_eps=1e-6)),
    "deepseek_v3_full_rank_q": (lambda: transformers.DeepseekV3Config(**SHAPE, **MLA, num_hidden_layers=2,
                                                                      q_lora_rank=None, first_k_dense_replace=2),
                                dict(attention="mla", q_lora_rank=None, n_experts=0)),
    "deepseek_v3_moe": (lambda: transformers.DeepseekV3Config(**SHAPE, **MLA, **ROUTED, num_hidden_layers=2,
                                                              q_lora_rank=16, first_k_dense_replace=1),
                        dict(attention="mla", n_experts=4, router="sigmoid", moe_first_dense=1, n_shared_experts=1)),
}
ARCHITECTURES = {"mixtral": "MixtralForCausalLM", "qwen3_moe": "Qwen3MoeForCausalLM",
                 "deepseek_v3": "DeepseekV3ForCausalLM"}




def ids(seed: int, batch: int = 2, length: int = 48) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


def hf_greedy(hf, prompt: torch.Tensor, n: int) -> torch.Tensor:
    # No end-of-text (ours decodes on through it; min_new_tokens would forbid it instead), and an
    # explicit mask: with pad_token_id set, generate would mask prompt tokens equal to it.
    hf.generation_config.eos_token_id = None
    return hf.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=n, do_sample=False,
                       use_cache=True, pad_token_id=0)


def assert_same(ours: GPT, hf, name: str) -> None:
    x = ids(1)
    with torch.no_grad():
        expected = hf(x).logits
        assert expected.std() > 0.3
        diff = (ours(x)[0][..., :VOCAB] - expected).abs().max().item()
    print(f"{name}: max |logit diff| {diff:.2e}")
    assert diff < 1e-4
    for seed in (2, 3):
        prompt = ids(seed, batch=1, length=5)
        assert torch.equal(ours.generate(prompt, 24, temperature=0), hf_greedy(hf, prompt, 24))


@pytest.fixture(scope="module", params=list(CASES))
def hf_case(request, tmp_path_factory):
    directory = tmp_path_factory.mktemp(request.param)
    torch.manual_seed(0)
    hf = perturbed(transformers.AutoModelForCausalLM.from_config(CASES[request.param][0]()), 0)
    hf.save_pretrained(directory)
    CharTokenizer(CHARS).save(directory / "microgpt_tokenizer.json")
    return request.param, directory, hf


def test_a_transformers_directory_loads_with_its_logits_and_greedy_tokens(hf_case):
    name, directory, hf = hf_case
    lm = load_model(directory)
    for key, value in CASES[name][1].items():
        assert getattr(lm.model.config, key) == value, key
    assert_same(lm.model, hf, f"{name} import")


def test_our_model_exports_to_its_transformers_family(hf_case, tmp_path):
    name, directory, _ = hf_case
    config = load_model(directory).model.config
    torch.manual_seed(3)
    model = perturbed(GPT(GPTConfig(**{**config.to_dict(), "vocab_multiple": 64})), 3)
    export(model, CharTokenizer(CHARS), tmp_path / "out")
    written = json.loads((tmp_path / "out" / "config.json").read_text())
    assert written["architectures"] == [next(a for prefix, a in ARCHITECTURES.items() if name.startswith(prefix))]
    back = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    assert_same(model, back, f"{name} export")


def test_the_fused_spelling_of_the_experts_loads_too(tmp_path):
    """transformers 5's in-memory names (experts.gate_up_proj / down_proj), saved as they are."""
    torch.manual_seed(0)
    hf = perturbed(transformers.AutoModelForCausalLM.from_config(CASES["mixtral"][0]()), 0)
    hf.save_pretrained(tmp_path)
    save_file({k: v.contiguous() for k, v in hf.state_dict().items()}, tmp_path / "model.safetensors",
              metadata={"format": "pt"})
    assert any(k.endswith("experts.gate_up_proj") for k in load_file(tmp_path / "model.safetensors"))
    CharTokenizer(CHARS).save(tmp_path / "microgpt_tokenizer.json")
    assert_same(load_model(tmp_path).model, hf, "mixtral fused")


def preset(name: str) -> GPTConfig:
    settings = OmegaConf.to_container(compose_train(f"model={name}").model)
    return GPTConfig(**{**settings, "vocab_size": VOCAB})


@pytest.mark.parametrize("name, architecture", [("moe_nano", "MixtralForCausalLM"),
                                                ("mla_nano", "DeepseekV3ForCausalLM")])
def test_the_presets_export_to_their_family(name, architecture, tmp_path):
    torch.manual_seed(0)
    model = perturbed(GPT(preset(name)), 0)
    assert family_for_config(model.config).ARCHITECTURE == architecture
    export(model, CharTokenizer(CHARS), tmp_path / "out")
    back = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    assert type(back).__name__ == architecture
    assert_same(model, back, f"{name} preset export")


@pytest.mark.parametrize("settings, family", [
    (dict(qk_norm="head"), "Qwen3MoeForCausalLM"),  # Mixtral has no QK-norm
    (dict(router_norm_topk=False, qk_norm="head"), "Qwen3MoeForCausalLM"),
    (dict(moe_every=2, n_layer=4, qk_norm="head"), "Qwen3MoeForCausalLM"),
])
def test_export_picks_the_moe_family_that_expresses_the_model(settings, family):
    config = GPTConfig(**{**preset("moe_nano").to_dict(), **settings})
    assert family_for_config(config).ARCHITECTURE == family


@pytest.mark.parametrize("settings, words", [
    (dict(router="sigmoid"), "model.router=sigmoid"),
    (dict(n_shared_experts=1), "model.n_shared_experts=1"),
    (dict(bias=True), "model.bias=true"),
])
def test_a_moe_model_no_family_expresses_is_refused(settings, words):
    from microgpt.core.errors import ConfigError

    config = GPTConfig(**{**preset("moe_nano").to_dict(), **settings})
    with pytest.raises(ConfigError, match=words):
        family_for_config(config)


def edited(hf_case_name: str, tmp_path: Path, **changes) -> Path:
    torch.manual_seed(0)
    hf = transformers.AutoModelForCausalLM.from_config(CASES[hf_case_name][0]())
    hf.save_pretrained(tmp_path)
    CharTokenizer(CHARS).save(tmp_path / "microgpt_tokenizer.json")
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, **changes}))
    return tmp_path


@pytest.mark.parametrize("case, changes, words", [
    ("deepseek_v3_dense", {"rope_parameters": {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0,
                                               "original_max_position_embeddings": 16}}, "rope_type=yarn"),
    ("deepseek_v3_dense", {"rope_interleave": False}, "rope_interleave=false"),
    ("deepseek_v3_moe", {"n_group": 2, "topk_group": 1}, "n_group=2"),
    ("deepseek_v3_moe", {"routed_scaling_factor": 2.5}, "routed_scaling_factor=2.5"),
    ("qwen3_moe", {"mlp_only_layers": [1]}, "mlp_only_layers=[1]"),
    ("mixtral", {"sliding_window": 8}, "sliding_window=8"),
])
def test_a_directory_we_do_not_reproduce_is_refused_naming_the_key(case, changes, words, tmp_path):
    with pytest.raises(CheckpointError, match=words.replace("[", r"\[").replace("]", r"\]")):
        load_model(edited(case, tmp_path, **changes))


def test_a_nonzero_expert_bias_is_refused(tmp_path):
    directory = edited("deepseek_v3_moe", tmp_path)
    state = load_file(directory / "model.safetensors")
    key = "model.layers.1.mlp.gate.e_score_correction_bias"
    state[key] = torch.full_like(state[key], 0.5)
    save_file(state, directory / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match="e_score_correction_bias"):
        load_model(directory)
