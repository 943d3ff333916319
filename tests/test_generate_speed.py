"""The fast decoding path (core/model.py: GPT.decode_step, core/attention.py: the caches): an
inference dtype that keeps fp32's greedy tokens, few-row CPU products on oneDNN (all cores), a
compiled decode step that keeps eager's tokens (its one-token products a fused multiply-and-sum),
caches written in place (never reallocated), and a bad dtype refused in one line."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

import microgpt.core.attention as attention
import microgpt.core.layers as layers
from conftest import assert_clean_error, perturbed, run_cli, torch_threads
from microgpt.core.errors import ConfigError
from microgpt.core.model import GPT, GPTConfig
from microgpt.io.loading import check_dtype, load_model

BASE = dict(vocab_size=97, block_size=32, n_layer=2, n_head=4, n_embd=32)
VARIANTS = {
    "gpt_learned": dict(pos_emb="learned"),
    "gqa_rope_untied": dict(n_kv_head=2, norm="rmsnorm", mlp="swiglu", bias=False, tie_embeddings=False),
    "mla": dict(attention="mla", kv_lora_rank=12, qk_nope_head_dim=8, qk_rope_head_dim=4, v_head_dim=6),
    "moe": dict(n_experts=4, n_experts_per_tok=2, mlp="swiglu", bias=False),
}


def build(seed: int = 0, **overrides) -> GPT:
    torch.manual_seed(seed)
    return GPT(GPTConfig(**{**BASE, **overrides})).eval()


def prompt(batch: int = 1, length: int = 6) -> torch.Tensor:
    return torch.randint(0, BASE["vocab_size"], (batch, length), generator=torch.Generator().manual_seed(1))


def decode_logits(model: GPT, tokens: torch.Tensor, prompt_len: int) -> torch.Tensor:
    """The logits the cached path computes along `tokens` (teacher-forced): the prefill's last
    position, then one decode_step per token; (B, len - prompt_len + 1, V) in fp32."""
    batch = tokens.size(0)
    caches = model.new_caches(batch, tokens.size(1) + 1)
    with torch.no_grad():
        steps = [model(tokens[:, :prompt_len], caches=caches, last_only=True)[0][:, -1]]
        pad = torch.zeros(batch, dtype=torch.long)
        for t in range(prompt_len, tokens.size(1)):
            steps.append(model.decode_step(tokens[:, t : t + 1], caches, torch.tensor([t]), pad))
    return torch.stack(steps, dim=1).float()


@pytest.mark.parametrize("name, dtype", [("gpt_learned", torch.bfloat16), ("gqa_rope_untied", torch.bfloat16),
                                         ("mla", torch.bfloat16), ("moe", torch.bfloat16),
                                         ("gqa_rope_untied", torch.float16)])
def test_a_half_precision_model_decodes_fp32s_greedy_tokens_within_its_rounding(name, dtype):
    fp32 = build(**VARIANTS[name])
    half = build(**VARIANTS[name]).to(dtype)
    n, p = 20, prompt()
    tokens = fp32.generate(p, n, temperature=0)
    expected = decode_logits(fp32, tokens, p.size(1))
    got = decode_logits(half, tokens, p.size(1))
    assert half.new_caches(1, 4)[0].capacity == 4 and all(t.dtype == dtype for t in vars(half.new_caches(1, 4)[0]).values())
    spread = expected.std().item()
    assert (got - expected).abs().max().item() < 0.05 * spread  # half precision's rounding (~2%), no more
    # Its own greedy tokens are fp32's up to the first step where fp32's top two were within that rounding.
    out = half.generate(p, n, temperature=0)
    assert out.dtype == torch.long and out.shape == tokens.shape
    differs = (out != tokens)[0, p.size(1):].nonzero()
    if len(differs):
        step = int(differs[0])
        top2 = expected[0, step, : BASE["vocab_size"]].topk(2).values
        assert float(top2[0] - top2[1]) < 0.1 * spread, f"{dtype} left fp32's greedy path at step {step}"


def test_a_half_precision_model_matches_fp32_exactly_where_its_margins_are_wide():
    """A model whose next-token choice is never close: bf16 gives fp32's tokens exactly."""
    fp32 = build(**VARIANTS["gqa_rope_untied"])
    with torch.no_grad():
        fp32.lm_head.weight.mul_(30)  # wide logit margins (the rounding scales with them less)
    half = build(**VARIANTS["gqa_rope_untied"]).to(torch.bfloat16)
    half.load_state_dict({k: v.to(torch.bfloat16) for k, v in fp32.state_dict().items()})
    p = prompt(batch=2)
    assert torch.equal(half.generate(p, 16, temperature=0), fp32.generate(p, 16, temperature=0))


def test_the_decode_step_logits_are_the_full_forwards():
    model = build(**VARIANTS["gqa_rope_untied"])
    tokens = model.generate(prompt(batch=2), 12, temperature=0)
    full = model(tokens)[0]
    torch.testing.assert_close(decode_logits(model, tokens, 6), full[:, 5:], atol=1e-5, rtol=1e-5)


@pytest.fixture
def caches_made(monkeypatch) -> list:
    """Every cache object made (KVCache and LatentCache), in order."""
    made: list = []
    for cls in (attention.KVCache, attention.LatentCache):
        def init(self, *args, _init=cls.__init__, **kwargs):
            _init(self, *args, **kwargs)
            made.append(self)

        monkeypatch.setattr(cls, "__init__", init)
    return made


@pytest.fixture
def updates(monkeypatch) -> dict:
    """Each cache's updates (eager only): its tensors' storage and shapes, the storage it returned,
    and how many positions were written."""
    seen: dict = {}
    for cls in (attention.KVCache, attention.LatentCache):
        def update(self, a, b, offset, _update=cls.update):
            out = _update(self, a, b, offset)
            seen.setdefault(id(self), []).append((
                [t.data_ptr() for t in tensors(self)], [tuple(t.shape) for t in tensors(self)],
                [t.data_ptr() for t in out], a.size(-2) if a.dim() == 4 else a.size(1)))
            return out

        monkeypatch.setattr(cls, "update", update)
    return seen


def tensors(cache) -> list[torch.Tensor]:
    return [v for v in vars(cache).values() if isinstance(v, torch.Tensor)]


@pytest.mark.parametrize("name", ["gpt_learned", "mla"])
def test_each_decode_step_writes_one_column_of_the_caches_allocated_up_front(caches_made, updates, name):
    model = build(**VARIANTS[name])
    p, n = prompt(batch=2, length=7), 10
    model.generate(p, n, temperature=0)
    assert len(caches_made) == model.config.n_layer  # one cache per layer for the whole generation
    for cache in caches_made:
        assert cache.capacity == 7 + n  # the prompt and the new tokens, not the context window
        steps = updates[id(cache)]
        assert len(steps) == n  # the prefill, then one per decode step (the last token is never fed)
        first_ptrs, first_shapes = steps[0][0], steps[0][1]
        for ptrs, shapes, returned, _ in steps:
            assert ptrs == first_ptrs and shapes == first_shapes  # the same storage every step: nothing regrown
        assert [s[3] for s in steps] == [7] + [1] * (n - 1)  # the prompt once, then one column a step
        assert all(returned == first_ptrs for _, _, returned, _ in steps)  # attention reads the cache, no copy


def test_a_compiled_decode_step_gives_eager_tokens_and_fills_the_same_caches(caches_made):
    torch._dynamo.reset()
    model = build(**VARIANTS["gqa_rope_untied"])
    p = prompt(batch=2)
    pad = torch.tensor([2, 0])  # the first row's prompt is 4 tokens, left-padded: the mask is exercised
    eager = model.generate(p, 12, temperature=0, pad=pad)
    eager_caches = [tensors(c) for c in caches_made]
    caches_made.clear()
    compiled = model.compile_decode_step(dynamic=False).generate(p, 12, temperature=0, pad=pad)
    assert torch.equal(compiled, eager)
    assert len(caches_made) == model.config.n_layer
    for cache, before in zip(caches_made, eager_caches):  # the compiled steps wrote into the caches made up front
        for t, e in zip(tensors(cache), before):
            torch.testing.assert_close(t, e, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ["gqa_rope_untied", "mla", "moe"])
def test_a_compiled_one_token_decode_step_gives_eager_tokens_in_every_architecture(name):
    torch._dynamo.reset()  # one prompt: the step's one-token products take the fused multiply-and-sum
    compiled = build(**VARIANTS[name]).compile_decode_step().generate(prompt(), 10, temperature=0)
    assert torch.equal(compiled, build(**VARIANTS[name]).generate(prompt(), 10, temperature=0))


def test_a_compiled_decode_step_serves_other_lengths_and_a_deep_copy_decodes_its_own_weights():
    torch._dynamo.reset()
    model = build(**VARIANTS["gpt_learned"]).compile_decode_step()
    eager = build(**VARIANTS["gpt_learned"])
    for n in (5, 9):  # another cache length: compiled again, not run with the first one's shapes
        assert torch.equal(model.generate(prompt(), n, temperature=0), eager.generate(prompt(), n, temperature=0))
    twin, eager_twin = perturbed(copy.deepcopy(model), seed=3), perturbed(copy.deepcopy(eager), seed=3)
    out = twin.generate(prompt(), 9, temperature=0)
    assert torch.equal(out, eager_twin.generate(prompt(), 9, temperature=0))
    assert not torch.equal(out, model.generate(prompt(), 9, temperature=0))  # not the original's weights


def graph_ops(fn, *args, grad: bool = False) -> set:
    """The functions dynamo's graph of `fn(*args)` calls (no inductor: the graph as traced)."""
    graphs = []

    def record(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    torch._dynamo.reset()
    with torch.set_grad_enabled(grad):
        torch.compile(fn, backend=record, fullgraph=True)(*args)
    return {getattr(node.target, "__name__", str(node.target)) for gm in graphs for node in gm.graph.nodes
            if node.op in ("call_function", "call_method")}


def test_a_compiled_one_token_product_is_a_fused_multiply_and_sum_that_matches_f_linear():
    torch.manual_seed(0)
    linear = layers.Linear(64, 96)
    one, three = torch.randn(1, 1, 64), torch.randn(3, 1, 64)
    assert "linear" not in graph_ops(linear, one) and {"mul", "sum"} <= graph_ops(linear, one)
    assert "linear" in graph_ops(linear, three)  # more rows: one matrix product reads the weights once
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert "linear" in graph_ops(linear, one)  # autocast's dtype rules belong to F.linear
    assert "linear" in graph_ops(linear, one, grad=True)  # autograd on: training's product
    torch._dynamo.reset()
    for dtype, tolerance in ((torch.float32, 1e-5), (torch.bfloat16, 2e-2)):  # through inductor, as decoding runs
        layer, x = copy.deepcopy(linear).to(dtype), one.to(dtype)
        with torch.no_grad():
            got, expected = torch.compile(layer)(x), F.linear(x, layer.weight, layer.bias)
        assert got.dtype == dtype and got.shape == expected.shape
        torch.testing.assert_close(got.float(), expected.float(), atol=tolerance, rtol=tolerance)


def test_the_decode_step_compiles_in_inductors_deterministic_mode_unless_told_otherwise():
    from microgpt.core.model import decode_compile_options

    assert decode_compile_options({}) == {"options": {"deterministic": True}}
    assert decode_compile_options({"dynamic": False, "options": {"deterministic": False, "freezing": True}}) == {
        "dynamic": False, "options": {"deterministic": False, "freezing": True}}  # the caller's options win
    assert decode_compile_options({"mode": "max-autotune"}) == {"mode": "max-autotune"}  # a mode excludes options


def test_dtype_names_are_checked():
    assert check_dtype("bfloat16") is torch.bfloat16 and check_dtype(torch.float16) is torch.float16
    for bad in ("float8", "int8", torch.int64, 16):
        with pytest.raises(ConfigError, match="dtype=.*float32, bfloat16, float16"):
            check_dtype(bad)
    with pytest.raises(ConfigError, match="dtype=fp8"):
        load_model("never-read.ckpt", dtype="fp8")  # before any file is read


def test_load_model_in_bfloat16_generates_with_a_bfloat16_cache(tmp_path):
    transformers = pytest.importorskip("transformers")
    transformers.logging.set_verbosity_error()
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=2, n_head=2, n_embd=32, n_positions=64, vocab_size=50257)
    transformers.GPT2LMHeadModel(config).save_pretrained(tmp_path, safe_serialization=True)
    lm = load_model(tmp_path, dtype="bfloat16")
    assert {p.dtype for p in lm.model.parameters()} == {torch.bfloat16}
    assert lm.model.kv_cache_bytes_per_token() == 2 * 2 * 32 * 2  # k and v, 2 layers, 32 wide, 2 bytes
    text = lm.generate_text("Hello", max_new_tokens=5, temperature=0, stop_at_eot=False)
    assert text.startswith("Hello") and len(text) > len("Hello")


def test_the_generate_command_with_compile_true_prints_the_eager_text(tmp_path):
    transformers = pytest.importorskip("transformers")
    transformers.logging.set_verbosity_error()
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=2, n_head=2, n_embd=64, n_positions=64, vocab_size=50257)
    transformers.GPT2LMHeadModel(config).save_pretrained(tmp_path / "model", safe_serialization=True)
    args = (f"ckpt={tmp_path / 'model'}", "prompt=Hello there", "max_new_tokens=12", "temperature=0", "stop_at_eot=false")
    eager = run_cli("generate", *args, cwd=tmp_path, timeout=300)
    compiled = run_cli("generate", *args, "compile=true", cwd=tmp_path, timeout=300)
    assert eager.returncode == compiled.returncode == 0, compiled.stderr[-3000:]
    assert eager.stdout.startswith("Hello there") and len(eager.stdout.strip()) > len("Hello there")
    assert compiled.stdout == eager.stdout


def test_a_bad_dtype_stops_the_generate_command_in_one_line(tmp_path):
    result = run_cli("generate", "ckpt=missing.ckpt", "dtype=float8", cwd=tmp_path, timeout=120)
    assert result.returncode == 2
    assert_clean_error(result, "dtype=float8", "bfloat16")


@pytest.fixture
def two_threads():
    with torch_threads(2):
        yield


def onednn_calls(fn) -> tuple[int, object]:
    """How many oneDNN linear products `fn` ran, and what it returned."""
    from torch.profiler import profile

    with profile() as prof:
        out = fn()
    return sum(e.count for e in prof.key_averages() if e.key == "mkldnn::_linear_pointwise"), out


needs_onednn = pytest.mark.skipif(layers._ONEDNN_LINEAR is None, reason="this torch build has no oneDNN")


@needs_onednn
def test_few_row_cpu_products_without_autograd_run_on_onednn_and_match_f_linear(two_threads):
    torch.manual_seed(0)
    linear = layers.Linear(768, 1024)  # past the size where spreading pays
    one_token = torch.randn(2, 1, 768)
    with torch.no_grad():
        calls, out = onednn_calls(lambda: linear(one_token))
        assert calls == 1
        torch.testing.assert_close(out, F.linear(one_token, linear.weight, linear.bias), atol=1e-4, rtol=1e-4)
        many_rows = torch.randn(4, 16, 768)  # training / prefill-sized: MKL's matrix product
        assert onednn_calls(lambda: linear(many_rows))[0] == 0
        assert onednn_calls(lambda: layers.Linear(64, 64)(one_token[..., :64]))[0] == 0  # too small to pay
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert onednn_calls(lambda: linear(one_token))[0] == 0
    calls, out = onednn_calls(lambda: linear(one_token))  # autograd on: the weights get their gradient
    out.sum().backward()
    assert calls == 0 and linear.weight.grad is not None
    with torch_threads(1), torch.no_grad():
        assert onednn_calls(lambda: linear(one_token))[0] == 0  # one core: nothing to spread over


@needs_onednn
def test_a_wide_model_decodes_on_onednn_with_the_full_forwards_logits_and_tokens(two_threads):
    model = build(n_layer=1, n_head=12, n_embd=768)
    p = prompt(batch=2)
    with torch.no_grad():
        calls, tokens = onednn_calls(lambda: model.generate(p, 8, temperature=0))
        assert calls > 0
        assert torch.equal(model.generate(p, 8, temperature=0, use_cache=False), tokens)
        full = model(tokens)[0]
    torch.testing.assert_close(decode_logits(model, tokens, 6), full[:, 5:], atol=1e-4, rtol=1e-4)
