"""The architecture presets (conf/model/*_nano and the real shapes of issue 17).

- Real shapes: parameters counted three ways, all equal: `GPT(config)` on the meta device, the
  closed form `microgpt.core.flops.param_count`, and `transformers`' own model of that checkpoint's
  config.json (also on meta); and the figure each family publishes, rounded as published.
- FLOPs per token against `torch.utils.flop_counter.FlopCounterMode` on a real forward + backward.
- KV-cache bytes per token: the closed form, the model's own figure and the allocated caches.
- Each nano preset end to end: `python -m microgpt.train model=<preset>`, an exact resume, cached
  generation identical to uncached, and a soup of two of its checkpoints.
"""

from __future__ import annotations

import csv
import math

import pytest
import torch
from omegaconf import OmegaConf
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from conftest import assert_same_weights, compose_train, run_cli, torch_threads, weights
from microgpt.core.flops import (
    active_param_count,
    flops_per_token,
    kv_cache_bytes_per_token,
    non_embedding_param_count,
    param_count,
)
from microgpt.core.model import GPT, GPTConfig

NANO = ("llama_nano", "qwen3_nano", "olmo2_nano", "moe_nano", "mla_nano")

# The published config.json of each checkpoint (the keys that differ from transformers' defaults).
HF_CONFIGS = {
    "llama3_1b": ("LlamaConfig", dict(
        vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
        num_key_value_heads=8, head_dim=64, max_position_embeddings=131072, rope_theta=500000.0, rms_norm_eps=1e-5,
        rope_scaling={"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                      "original_max_position_embeddings": 8192}, tie_word_embeddings=True)),
    "qwen3_0_6b": ("Qwen3Config", dict(
        vocab_size=151936, hidden_size=1024, intermediate_size=3072, num_hidden_layers=28, num_attention_heads=16,
        num_key_value_heads=8, head_dim=128, max_position_embeddings=40960, rope_theta=1000000.0, rms_norm_eps=1e-6,
        tie_word_embeddings=True)),
    "olmo2_1b": ("Olmo2Config", dict(
        vocab_size=100352, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=16,
        num_key_value_heads=16, max_position_embeddings=4096, rope_theta=500000.0, rms_norm_eps=1e-6,
        tie_word_embeddings=False)),
    "mixtral_8x7b": ("MixtralConfig", dict(
        vocab_size=32000, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
        num_key_value_heads=8, max_position_embeddings=32768, rope_theta=1000000.0, rms_norm_eps=1e-5,
        num_local_experts=8, num_experts_per_tok=2, tie_word_embeddings=False)),
}


def preset(name: str, **overrides) -> GPTConfig:
    """The GPTConfig `model=<name>` composes to (vocab_size null: a character-sized 65)."""
    settings = OmegaConf.to_container(compose_train(f"model={name}").model, resolve=True)
    if settings.get("vocab_size") is None:
        settings["vocab_size"] = 65
    return GPTConfig.from_dict({**settings, **overrides})


def hf_param_count(name: str) -> int:
    import transformers

    cls, kwargs = HF_CONFIGS[name]
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(getattr(transformers, cls)(**kwargs))
    return sum(p.numel() for p in model.parameters())  # a tied head is the embedding: counted once


@pytest.mark.parametrize("name", sorted(HF_CONFIGS))
def test_real_shapes_count_as_transformers_and_as_published(name):
    config = preset(name)
    assert config.padded_vocab_size == config.vocab_size == HF_CONFIGS[name][1]["vocab_size"]  # nothing padded
    with torch.device("meta"):
        model = GPT(config)
    n = param_count(config)
    assert model.count_params() == n == hf_param_count(name)
    assert model.count_params(non_embedding=True) == non_embedding_param_count(config)
    billions = n / 1e9
    if name == "llama3_1b":
        assert round(billions, 2) == 1.24  # Llama 3.2 1B: "1.24B"
    elif name == "qwen3_0_6b":
        assert round(billions, 1) == 0.6 and round(non_embedding_param_count(config) / 1e9, 2) == 0.44
    elif name == "olmo2_1b":
        assert round(billions, 1) == 1.5  # OLMo 2 1B: 1.48B
    else:
        assert round(billions, 1) == 46.7 and round(active_param_count(config) / 1e9, 1) == 12.9
    if not config.n_experts:
        assert active_param_count(config) == n


def test_active_parameters_of_an_moe_model():
    config = preset("mixtral_8x7b")
    expert = 3 * 4096 * 14336
    assert param_count(config) - active_param_count(config) == 32 * (8 - 2) * expert
    # Shared experts always run; dense layers (moe_every) have no experts to skip.
    shared = preset("moe_nano", n_shared_experts=1, moe_every=2)
    assert param_count(shared) - active_param_count(shared) == 2 * (8 - 2) * 3 * 128 * 176


# Small variants besides the presets: the parts the presets do not exercise.
VARIANTS = {
    "nano": {},
    "gelu_learned_mqa": dict(mlp="gelu", pos_emb="learned", n_kv_head=1, norm="rmsnorm"),
    "relu2_nopos_nobias": dict(mlp="relu2", pos_emb="none", bias=False, intermediate_size=200),
    "mla_full_rank_q_bias": dict(q_lora_rank=None, bias=True),
}


def variant(name: str) -> GPTConfig:
    if name in NANO:
        return preset(name)
    if name.startswith("mla"):
        return preset("mla_nano", **VARIANTS[name])
    return preset("nano", **VARIANTS[name])


@pytest.mark.parametrize("name", [*NANO, *VARIANTS])
def test_flops_per_token_match_a_counted_forward_and_backward(name, monkeypatch):
    """FlopCounterMode counts the matmuls (mm, addmm, bmm) of one training step; SDPA in its math
    form so the attention's matmuls are counted too, and the experts through their loop over
    groups (the counter has no formula for grouped_mm; both compute the same routed tokens). The
    closed form also counts 6 FLOPs per norm gain and bias (per-element ops the counter skips):
    those are added back."""
    import microgpt.core.moe

    monkeypatch.setattr(microgpt.core.moe, "use_grouped_mm", lambda *args: False)
    config = variant(name)
    torch.manual_seed(0)
    model = GPT(config)
    B, T = 2, 32
    idx = torch.randint(0, config.vocab_size, (B, T))
    with FlopCounterMode(display=False) as counter, sdpa_kernel(SDPBackend.MATH):
        _, loss = model(idx, idx)
        (loss + model.moe_loss()).backward()
    per_element = sum(p.numel() for p in model.parameters() if p.dim() == 1)  # norm gains, biases
    assert counter.get_total_flops() + 6 * per_element * B * T == flops_per_token(config, T) * B * T
    assert model.count_params() == param_count(config) + (config.block_size * config.n_embd
                                                          if config.pos_emb == "learned" else 0)


def cache_bytes(caches: list) -> int:
    return sum(t.numel() * t.element_size() for c in caches for t in vars(c).values() if isinstance(t, torch.Tensor))


@pytest.mark.parametrize("name", [*NANO, "nano", *HF_CONFIGS])
def test_kv_cache_bytes_per_token(name):
    config = preset(name)
    dtype = torch.bfloat16 if name in HF_CONFIGS else torch.float32
    with torch.device("meta"):
        model = GPT(config).to(dtype)
        allocated = cache_bytes(model.new_caches(1)) // config.block_size
    assert kv_cache_bytes_per_token(config, dtype) == model.kv_cache_bytes_per_token(dtype) == allocated
    # 2 (k, v) x layers x kv heads x head size x bytes (real shapes in bf16, as served; nanos in fp32);
    # MLA: layers x (latent + shared rotary key) x bytes
    published = {"llama3_1b": 32 * 1024, "qwen3_0_6b": 112 * 1024, "mixtral_8x7b": 128 * 1024,
                 "olmo2_1b": 128 * 1024, "nano": 4096, "llama_nano": 2048, "moe_nano": 2048,
                 "qwen3_nano": 4 * 2 * 2 * 64 * 4, "olmo2_nano": 4096, "mla_nano": 4 * (32 + 16) * 4}
    assert allocated == published[name]


# --- end to end: the real entry points, with the smallest runs that checkpoint twice ---------------

SMALL = ["data.block_size=32", "data.batch_size=4", "max_steps=4", "eval_every=2", "eval_batches=2",
         "checkpoint_every=2", "schedule.warmup_steps=1", "optim.lr=3e-3", "model.dropout=0.1",
         "callbacks.text_samples=null", "callbacks.progress_bar=null", "trainer.enable_model_summary=false"]
# Tiny models run fastest on one thread, most of all on a machine shared with other jobs (two
# threads there made a 4 x 128 forward 16x slower); the resumed run must use the same count.
ONE_THREAD = {"OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def one_thread():
    with torch_threads(1):
        yield


def job_dirs(sweep) -> dict[str, object]:
    """{preset: job dir} of a multirun over model=..."""
    found = {}
    for job in sweep.iterdir():
        if (job / ".hydra/overrides.yaml").is_file():
            model = [o for o in OmegaConf.load(job / ".hydra/overrides.yaml") if o.startswith("model=")]
            found[model[0].split("=", 1)[1]] = job
    return found


@pytest.fixture(scope="module")
def nano_runs(module_corpus, tmp_path_factory):
    """Every nano preset trained by one `python -m microgpt.train -m model=...` (one start-up for all),
    then a soup of each one's step-2 and step-4 checkpoints by one `python -m microgpt.soup -m`."""
    tmp = tmp_path_factory.mktemp("nano")
    data = ["data=files", f"data.paths=[{module_corpus}]"]
    result = run_cli("train", "-m", f"model={','.join(NANO)}", *data, *SMALL, f"hydra.sweep.dir={tmp / 'sweep'}",
                     cwd=tmp, env=ONE_THREAD, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    runs = job_dirs(tmp / "sweep")
    assert sorted(runs) == sorted(NANO)
    pairs = ",".join(f"[{runs[n] / 'checkpoints/step000002.ckpt'},{runs[n] / 'checkpoints/last.ckpt'}]" for n in NANO)
    result = run_cli("soup", "-m", f"ckpts={pairs}", *data, "data.block_size=32", "val_batches=2",
                     f"out={tmp / 'soups'}/${{hydra:job.num}}", cwd=tmp, env=ONE_THREAD, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return {n: (runs[n], tmp / "soups" / str(i)) for i, n in enumerate(NANO)}, data


def val_losses(run_dir) -> list[float]:
    with open(run_dir / "metrics.csv") as f:
        return [float(r["val/loss"]) for r in csv.DictReader(f) if r.get("val/loss")]


@pytest.mark.parametrize("name", NANO)
def test_nano_preset_trains_resumes_generates_and_soups(name, nano_runs, one_thread, tmp_path):
    from microgpt.io.loading import load_model
    from microgpt.lightning.training import train

    (run, soup), data = nano_runs[0][name], nano_runs[1]
    losses = val_losses(run)
    assert len(losses) == 2 and all(math.isfinite(v) for v in losses) and losses[1] < losses[0], losses
    ckpts = run / "checkpoints"

    # Resumed from step 2 (dropout on: the RNG is restored too): the same final weights.
    train(compose_train(f"model={name}", *data, *SMALL, f"ckpt_path={ckpts / 'step000002.ckpt'}",
                        output_dir=tmp_path / "resumed"))
    assert_same_weights(ckpts / "last.ckpt", tmp_path / "resumed/checkpoints/last.ckpt", atol=1e-6)
    middle, last = weights(ckpts / "step000002.ckpt"), weights(ckpts / "last.ckpt")
    assert any(not torch.equal(middle[k], last[k]) for k in last)

    # The checkpoint rebuilds the preset's architecture; its cache decodes as uncached decoding
    # does, past the 128-token window (where the window restarts and the cache is refilled).
    lm = load_model(ckpts / "last.ckpt")
    assert lm.model.config == preset(name, vocab_size=lm.model.config.vocab_size, dropout=0.1)
    prompt = torch.tensor([lm.tokenizer.encode("ROMEO:")])
    cached = lm.model.generate(prompt, 140, temperature=0.0, use_cache=True)
    assert torch.equal(cached, lm.model.generate(prompt, 140, temperature=0.0, use_cache=False))

    # The soup is the exact mean of the two checkpoints, and a model that generates.
    souped = weights(soup / "soup.ckpt")
    assert souped.keys() == last.keys()
    for k, v in souped.items():
        assert torch.equal(v, ((middle[k].float() + last[k].float()) / 2).to(v.dtype)), k
    text = load_model(soup / "soup.ckpt").generate_text("ROMEO:", max_new_tokens=8, seed=0, stop_at_eot=False)
    assert len(text) == len("ROMEO:") + 8
