"""Hugging Face interop of the dense families, against real `transformers` models (random weights,
fp32, tiny shapes, no network): a directory `save_pretrained` writes loads through `load_model` with
the same logits and the same greedy tokens; our model exported loads in `AutoModelForCausalLM` with
the same logits; what no family expresses, and directories we cannot reproduce, are refused in one line.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import assert_clean_error, perturbed, run_cli
from microgpt.core.errors import CheckpointError, ConfigError
from microgpt.core.model import GPT, GPTConfig
from microgpt.core.tokenizer import CharTokenizer, TiktokenTokenizer
from microgpt.io.export import export
from microgpt.io.init_from import check_same_network, initial_weights
from microgpt.io.loading import load_model

transformers = pytest.importorskip("transformers")
transformers.logging.set_verbosity_error()

VOCAB = 61
CHARS = "".join(chr(ord("A") + i) for i in range(VOCAB - 1))  # + end-of-text: VOCAB ids
LLAMA3 = {"rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0, "low_freq_factor": 1.0,
          "high_freq_factor": 4.0, "original_max_position_embeddings": 16}
YARN = {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0, "original_max_position_embeddings": 16}
SHAPE = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48,
             max_position_embeddings=64)
# name -> (transformers config, what our config must say about it)
CASES = {
    "gpt_neox": (lambda: transformers.GPTNeoXConfig(**SHAPE, use_parallel_residual=False, rotary_pct=1.0,
                                                    hidden_act="gelu_pytorch_tanh", tie_word_embeddings=True),
                 dict(norm="layernorm", mlp="gelu_tanh", bias=True, tie_embeddings=True)),
    "gpt_neox_untied_gelu": (lambda: transformers.GPTNeoXConfig(**SHAPE, use_parallel_residual=False, rotary_pct=1.0,
                                                                hidden_act="gelu", rotary_emb_base=500.0),
                             dict(mlp="gelu", tie_embeddings=False, rope_base=500.0)),
    "llama_gqa_llama3": (lambda: transformers.LlamaConfig(**SHAPE, num_key_value_heads=2, rope_parameters=LLAMA3,
                                                          rms_norm_eps=1e-5),
                         dict(norm="rmsnorm", mlp="swiglu", n_kv_head=2, tie_embeddings=False,
                              rope_scaling="llama3", rope_original_block_size=16)),
    "llama_mqa_linear_bias_tied": (lambda: transformers.LlamaConfig(
        **SHAPE, num_key_value_heads=1, attention_bias=True, mlp_bias=True, tie_word_embeddings=True,
        rope_parameters={"rope_type": "linear", "rope_theta": 10000.0, "factor": 2.0}),
        dict(n_kv_head=1, bias=True, tie_embeddings=True, rope_scaling="linear")),
    "qwen3_yarn": (lambda: transformers.Qwen3Config(**SHAPE, num_key_value_heads=2, head_dim=16, rope_parameters=YARN,
                                                    tie_word_embeddings=True),
                   dict(qk_norm="head", head_dim=16, n_kv_head=2, rope_scaling="yarn", bias=False)),
    "olmo2": (lambda: transformers.Olmo2Config(**SHAPE, num_key_value_heads=2, pad_token_id=None, eos_token_id=None),
              dict(norm_placement="post", qk_norm="full", n_kv_head=2, tie_embeddings=False)),
}
ARCHITECTURES = {"gpt_neox": "GPTNeoXForCausalLM", "llama": "LlamaForCausalLM", "qwen3": "Qwen3ForCausalLM",
                 "olmo2": "Olmo2ForCausalLM"}




def save_hf(name: str, directory: Path, seed: int = 0):
    """A random transformers model of case `name`, saved as save_pretrained does, plus the tokenizer
    file microgpt reads for a vocabulary that is not GPT-2's."""
    torch.manual_seed(seed)
    model = perturbed(transformers.AutoModelForCausalLM.from_config(CASES[name][0]()), seed)
    model.save_pretrained(directory)
    CharTokenizer(CHARS).save(directory / "microgpt_tokenizer.json")
    return model


def ids(seed: int, batch: int = 2, length: int = 48) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape
    return (a - b).abs().max().item()


@pytest.fixture(scope="module", params=list(CASES))
def hf_case(request, tmp_path_factory):
    directory = tmp_path_factory.mktemp(request.param)
    return request.param, directory, save_hf(request.param, directory)


def test_a_transformers_directory_loads_with_its_logits_and_greedy_tokens(hf_case):
    name, directory, hf = hf_case
    lm = load_model(directory)
    for key, value in CASES[name][1].items():
        assert getattr(lm.model.config, key) == value, key
    x = ids(1)
    with torch.no_grad():
        expected = hf(x).logits
        assert expected.std() > 0.3  # a model whose logits carry its weights
        assert max_diff(lm.model(x)[0], expected) < 1e-4
    prompt = ids(2, batch=1, length=5)
    ours = lm.model.generate(prompt, 24, temperature=0)
    # An explicit mask: without one, transformers masks every prompt token equal to pad_token_id.
    theirs = hf.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=24, min_new_tokens=24,
                         do_sample=False, use_cache=True, pad_token_id=0)
    assert torch.equal(ours, theirs)


def test_our_model_exports_to_its_transformers_family(hf_case, tmp_path):
    name, directory, _ = hf_case
    config = load_model(directory).model.config
    torch.manual_seed(3)
    model = perturbed(GPT(GPTConfig(**{**config.to_dict(), "vocab_multiple": 64})), 3)  # padded: cropped on export
    export(model, CharTokenizer(CHARS), tmp_path / "out")
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    assert type(hf).__name__ == next(a for prefix, a in ARCHITECTURES.items() if name.startswith(prefix))
    x = ids(4)
    with torch.no_grad():
        assert max_diff(hf(x).logits, model(x)[0][..., :VOCAB]) < 1e-4
        back = load_model(tmp_path / "out").model
        assert max_diff(back(x)[0], model(x)[0][..., :VOCAB]) < 1e-5


@pytest.mark.parametrize("settings, architecture", [
    (dict(), "GPTNeoXForCausalLM"),  # the default RoPE GPT
    (dict(pos_emb="learned"), "GPT2LMHeadModel"),
    (dict(bias=False, mlp="relu2"), "GPTNeoXForCausalLM"),
    (dict(norm="rmsnorm", mlp="swiglu", n_kv_head=2, tie_embeddings=False, bias=False), "LlamaForCausalLM"),
    (dict(norm="rmsnorm", mlp="swiglu", qk_norm="head", bias=False), "Qwen3ForCausalLM"),
    (dict(norm="rmsnorm", mlp="swiglu", qk_norm="full", norm_placement="post", bias=False), "Olmo2ForCausalLM"),
])
def test_export_picks_the_family_that_expresses_the_model(tmp_path, settings, architecture):
    model = GPT(GPTConfig(vocab_size=VOCAB, block_size=16, n_layer=1, n_head=4, n_embd=32, **settings)).eval()
    export(model, CharTokenizer(CHARS), tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["architectures"] == [architecture]
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        assert max_diff(hf(ids(5, length=16)).logits, model(ids(5, length=16))[0][..., :VOCAB]) < 1e-4


@pytest.mark.parametrize("settings, words", [
    (dict(norm="rmsnorm"), ["model.mlp=gelu_tanh", "LlamaForCausalLM"]),
    (dict(pos_emb="none"), ["model.pos_emb=none", "GPTNeoXForCausalLM"]),
    (dict(pos_emb="learned", n_kv_head=2), ["model.n_kv_head=2", "GPT2LMHeadModel"]),
    (dict(norm="rmsnorm", mlp="swiglu", qk_norm="head", bias=True), ["model.bias=true", "Qwen3ForCausalLM"]),
])
def test_a_model_no_family_expresses_is_refused_before_writing(tmp_path, settings, words):
    model = GPT(GPTConfig(vocab_size=VOCAB, block_size=16, n_layer=1, n_head=4, n_embd=32, **settings))
    with pytest.raises(ConfigError) as error:
        export(model, CharTokenizer(CHARS), tmp_path / "out")
    for word in words:
        assert word in str(error.value)
    assert not (tmp_path / "out").exists()


def fake_checkpoint(path: Path, model: GPT, tokenizer) -> Path:
    torch.save({"hyper_parameters": {"model": model.config.to_dict(), "tokenizer": tokenizer.state()},
                "state_dict": {f"model.{k}": v for k, v in model.state_dict().items()}}, path)
    return path


def old_format_export(out: Path, model: GPT, tokenizer) -> None:
    """What `export` wrote for a RoPE model before the GPT-NeoX family: our names + microgpt_config.json."""
    out.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items() if k != "lm_head.weight"},
              out / "model.safetensors", metadata={"format": "pt"})
    payload = {"format": "microgpt-export", "model": model.config.to_dict(), "tokenizer": tokenizer.state()}
    (out / "microgpt_config.json").write_text(json.dumps(payload))
    tokenizer.save(out / "microgpt_tokenizer.json")


def test_an_export_replaces_an_earlier_one_of_either_format(tmp_path):
    torch.manual_seed(6)
    model = perturbed(GPT(GPTConfig(vocab_size=VOCAB, block_size=32, n_layer=2, n_head=2, n_embd=32)), 6)
    tokenizer, out = CharTokenizer(CHARS), tmp_path / "out"
    old_format_export(out, model, tokenizer)
    (out / "notes.txt").write_text("not ours")
    x = ids(7, length=32)
    with torch.no_grad():  # the old format still loads
        assert max_diff(load_model(out).model(x)[0], model(x)[0]) == 0
    ckpt = fake_checkpoint(tmp_path / "model.ckpt", model, tokenizer)
    refused = run_cli("export", f"ckpt={ckpt}", f"out={out}", cwd=tmp_path)
    assert_clean_error(refused, "overwrite=true")
    result = run_cli("export", f"ckpt={ckpt}", f"out={out}", "overwrite=true", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(p.name for p in out.iterdir()) == [
        "config.json", "generation_config.json", "microgpt_tokenizer.json", "model.safetensors", "notes.txt",
        "special_tokens_map.json", "tokenizer.json", "tokenizer_config.json"]
    hf = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    with torch.no_grad():
        assert max_diff(hf(x).logits, model(x)[0][..., :VOCAB]) < 1e-4
    # A GPT-2-tokenizer model over it: our tokenizer file goes, as GPT-2's needs none.
    gpt2 = GPT(GPTConfig(vocab_size=50257, block_size=16, n_layer=1, n_head=2, n_embd=32, pos_emb="learned"))
    export(gpt2, TiktokenTokenizer("gpt2"), out)
    assert not (out / "microgpt_tokenizer.json").exists() and (out / "notes.txt").exists()
    assert load_model(out).tokenizer.state() == TiktokenTokenizer("gpt2").state()


def edit_config(directory: Path, tmp_path: Path, **changes) -> Path:
    copy = tmp_path / "edited"
    copy.mkdir()
    for f in directory.iterdir():
        (copy / f.name).write_bytes(f.read_bytes())
    config = json.loads((copy / "config.json").read_text())
    (copy / "config.json").write_text(json.dumps({**config, **changes}))
    return copy


@pytest.mark.parametrize("name, changes, words", [
    ("qwen3_yarn", dict(use_sliding_window=True, sliding_window=8), ["use_sliding_window=true"]),
    ("llama_gqa_llama3", dict(mlp_bias=True), ["mlp_bias=true", "attention_bias=false"]),
    ("llama_gqa_llama3", dict(rope_parameters={"rope_type": "dynamic", "factor": 2.0}), ["rope_type=dynamic"]),
    ("gpt_neox", dict(use_parallel_residual=True), ["use_parallel_residual=true"]),
    ("olmo2", dict(model_type="mamba"), ["'mamba'", "supported families", "olmo2"]),
])
def test_a_directory_we_do_not_reproduce_is_refused(tmp_path, name, changes, words):
    save_hf(name, tmp_path / "hf")
    with pytest.raises(CheckpointError) as error:
        load_model(edit_config(tmp_path / "hf", tmp_path, **changes))
    for word in words:
        assert word in str(error.value)


def test_neox_without_attention_biases_loads_only_when_its_other_biases_are_zero(tmp_path):
    torch.manual_seed(9)
    config = transformers.GPTNeoXConfig(**SHAPE, use_parallel_residual=False, rotary_pct=1.0, attention_bias=False)
    hf = perturbed(transformers.GPTNeoXForCausalLM(config), 9)
    hf.save_pretrained(tmp_path)
    CharTokenizer(CHARS).save(tmp_path / "microgpt_tokenizer.json")
    with pytest.raises(CheckpointError, match="bias is not zero while config.json says attention_bias=false"):
        load_model(tmp_path)
    with torch.no_grad():  # zero biases where NeoX always has them: microgpt's model.bias=false
        for name, p in hf.named_parameters():
            if name.endswith(".bias"):
                p.zero_()
    hf.save_pretrained(tmp_path)
    lm = load_model(tmp_path)
    assert lm.model.config.bias is False
    with torch.no_grad():
        assert max_diff(lm.model(ids(10))[0], hf(ids(10)).logits) < 1e-4


@pytest.mark.parametrize("edit, words", [
    ("drop", ["lacks the tensor model.layers.1.self_attn.k_proj.weight", "save_pretrained"]),
    ("add", ["has the tensor model.layers.0.self_attn.k_proj.bias", "does not describe"]),
])
def test_missing_or_unexpected_tensors_name_the_tensor(tmp_path, edit, words):
    save_hf("llama_gqa_llama3", tmp_path)
    state = load_file(tmp_path / "model.safetensors")
    if edit == "drop":
        del state["model.layers.1.self_attn.k_proj.weight"]
    else:
        state["model.layers.0.self_attn.k_proj.bias"] = torch.zeros(16)
    save_file(state, tmp_path / "model.safetensors")
    with pytest.raises(CheckpointError) as error:
        load_model(tmp_path)
    for word in words:
        assert word in str(error.value)
    if edit == "drop":  # through a command: one line, exit 2
        result = run_cli("generate", f"ckpt={tmp_path}", cwd=tmp_path)
        assert result.returncode == 2 and assert_clean_error(result, *words[:1])


def test_init_from_a_transformers_directory_checks_every_architecture_setting(tmp_path):
    save_hf("qwen3_yarn", tmp_path / "hf")
    source = load_model(tmp_path / "hf").model
    target = GPT(GPTConfig(**{**source.config.to_dict(), "vocab_multiple": 64, "dropout": 0.1}))
    initial_weights(str(tmp_path / "hf"), target, CharTokenizer(CHARS))  # dropout and padding may differ
    x = ids(8)
    with torch.no_grad():
        assert max_diff(target.eval()(x)[0][..., :VOCAB], source(x)[0]) < 1e-6
    for change, override in [(dict(qk_norm="none"), "model.qk_norm=head"), (dict(n_kv_head=4), "model.n_kv_head=2"),
                             (dict(rope_factor=2.0), "model.rope_factor=4.0"), (dict(norm_eps=1e-5), "model.norm_eps=1e-06"),
                             (dict(head_dim=None), "model.head_dim=16"), (dict(mlp="gelu"), "model.mlp=swiglu")]:
        other = GPTConfig(**{**source.config.to_dict(), **change})
        with pytest.raises(ConfigError, match=f"override: .*{override}"):
            check_same_network("hf", source.config, CharTokenizer(CHARS), other, CharTokenizer(CHARS))


@pytest.mark.parametrize("preset, architecture", [
    ("nano", "GPTNeoXForCausalLM"), ("llama_nano", "LlamaForCausalLM"), ("qwen3_nano", "Qwen3ForCausalLM"),
    ("olmo2_nano", "Olmo2ForCausalLM"),
])
def test_each_dense_preset_exports_and_fine_tunes_from_its_export(tmp_path, preset, architecture):
    from conftest import compose_train
    from microgpt.lightning.builders import model_settings

    tokenizer = CharTokenizer(CHARS)
    config = GPTConfig.from_dict(model_settings(compose_train(f"model={preset}"), tokenizer))
    torch.manual_seed(11)
    model = perturbed(GPT(config), 11)
    export(model, tokenizer, tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["architectures"] == [architecture]
    fresh = GPT(config)  # init_from=<export> with the same preset: no override needed
    initial_weights(str(tmp_path), fresh, tokenizer)
    x = ids(12, length=config.block_size)
    with torch.no_grad():
        assert max_diff(fresh.eval()(x)[0][..., :VOCAB], model(x)[0][..., :VOCAB]) < 1e-5
