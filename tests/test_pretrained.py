"""Pretrained GPT-2 in (Hugging Face format), our models out, batched generation, fine-tuning.

No network: the "pretrained" models are small random `transformers.GPT2LMHeadModel`s saved with
`save_pretrained` (safetensors) in each test.
"""

from __future__ import annotations

import asyncio
import csv
import json
import math
import shutil
from pathlib import Path

import pytest
import torch

from conftest import TINY, assert_clean_error, compose_train, run_cli
from microgpt.core.errors import CheckpointError, ConfigError
from microgpt.core.model import GPT, GPTConfig
from microgpt.core.tokenizer import CharTokenizer, TiktokenTokenizer
from microgpt.io.export import export
from microgpt.io.loading import load_model
from microgpt.io.pretrained import PretrainedModelConfig

transformers = pytest.importorskip("transformers")
transformers.logging.set_verbosity_error()

TINY_SHAPE = dict(n_layer=2, n_head=2, n_embd=32)
TINY_OVERRIDES = ["model.n_layer=2", "model.n_head=2", "model.n_embd=32", "model.pos_emb=learned", "tokenizer=gpt2"]


def save_hf_gpt2(directory: Path, seed: int = 0, initializer_range: float = 0.02, n_positions: int = 64):
    """A random GPT-2 with GPT-2's vocabulary, as `save_pretrained` writes it; returns the model."""
    torch.manual_seed(seed)
    config = transformers.GPT2Config(
        **TINY_SHAPE, n_positions=n_positions, vocab_size=50257, initializer_range=initializer_range,
    )
    model = transformers.GPT2LMHeadModel(config).eval()
    if initializer_range > 0.02:  # confident, far-from-uniform predictions: a loss nothing else gives
        with torch.no_grad():
            model.transformer.wte.weight.mul_(10)
    model.save_pretrained(directory, safe_serialization=True)
    return model


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory) -> tuple[Path, object]:
    directory = tmp_path_factory.mktemp("hf_gpt2")
    return directory, save_hf_gpt2(directory)


def test_hf_gpt2_loads_with_the_same_logits_sync_and_async(hf_dir):
    directory, hf = hf_dir
    lm = load_model(config=PretrainedModelConfig(name=str(directory)))

    async def load_in_async_code():
        return await load_model(config=PretrainedModelConfig(name=str(directory)))

    lm_async = asyncio.run(load_in_async_code())
    idx = torch.randint(0, 50257, (2, 40), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = hf(idx).logits
        for model in (lm.model, lm_async.model, load_model(directory).model):
            ours = model(idx)[0]
            assert ours.shape == expected.shape  # exactly GPT-2's vocabulary: no padding ids
            torch.testing.assert_close(ours, expected, atol=1e-4, rtol=0)
    assert lm.model.config.pos_emb == "learned" and lm.model.config.block_size == 64
    assert lm.tokenizer.state() == TiktokenTokenizer("gpt2").state()
    text = lm.generate_text(text="Hi, I'm a language model,", max_new_tokens=8, seed=0, stop_at_eot=False)
    assert text.startswith("Hi, I'm a language model,") and len(text) > len("Hi, I'm a language model,")


def test_greedy_generation_matches_transformers(hf_dir):
    directory, hf = hf_dir
    lm = load_model(directory)
    prompt = torch.tensor([[464, 2068, 7586, 21831, 18045]])
    ours = lm.model.generate(prompt, 20, temperature=0)
    theirs = hf.generate(prompt, max_new_tokens=20, min_new_tokens=20, do_sample=False, use_cache=True,
                         pad_token_id=50256)
    assert torch.equal(ours, theirs)


def hf_logits_of_export(out: Path, idx: torch.Tensor) -> torch.Tensor:
    model = transformers.GPT2LMHeadModel.from_pretrained(out).eval()
    with torch.no_grad():
        return model(idx).logits


def fake_checkpoint(path: Path, model: GPT, tokenizer) -> Path:
    """A file in the layout of a training checkpoint (what `load_model` / `export` read)."""
    torch.save({
        "hyper_parameters": {"model": model.config.to_dict(), "tokenizer": tokenizer.state()},
        "state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
    }, path)
    return path


@pytest.mark.parametrize("bias", [True, False])
def test_export_round_trip_through_transformers(tmp_path, bias):
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=50257, block_size=48, pos_emb="learned", bias=bias, **TINY_SHAPE)).eval()
    with torch.no_grad():  # non-zero biases and norms, so a dropped or mis-transposed tensor shows
        for name, p in model.named_parameters():
            if p.dim() == 1:
                p.add_(torch.randn_like(p) * 0.1)
    out = tmp_path / "hf"
    written = export(model, TiktokenTokenizer("gpt2"), out)
    assert sorted(p.name for p in written) == ["config.json", "generation_config.json", "model.safetensors",
                                               "special_tokens_map.json", "tokenizer.json", "tokenizer_config.json"]
    idx = torch.randint(0, 50257, (2, 48))
    with torch.no_grad():
        ours = model(idx)[0][..., :50257]
    torch.testing.assert_close(hf_logits_of_export(out, idx), ours, atol=1e-4, rtol=0)


def test_export_command_writes_a_transformers_directory(tmp_path):
    torch.manual_seed(1)
    model = GPT(GPTConfig(vocab_size=50257, block_size=32, pos_emb="learned", **TINY_SHAPE)).eval()
    ckpt = fake_checkpoint(tmp_path / "model.ckpt", model, TiktokenTokenizer("gpt2"))
    result = run_cli("export", f"ckpt={ckpt}", f"out={tmp_path / 'hf'}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["n_positions"] == 32
    idx = torch.randint(0, 50257, (1, 32))
    with torch.no_grad():
        ours = model(idx)[0][..., :50257]
    torch.testing.assert_close(hf_logits_of_export(tmp_path / "hf", idx), ours, atol=1e-4, rtol=0)
    # ... and our own loader reads the exported directory back.
    with torch.no_grad():
        torch.testing.assert_close(load_model(tmp_path / "hf").model(idx)[0], ours, atol=1e-5, rtol=0)


def test_rope_export_is_a_gpt_neox_directory(tmp_path):
    torch.manual_seed(2)
    model = GPT(GPTConfig(vocab_size=30, block_size=32, pos_emb="rope", **TINY_SHAPE)).eval()
    tokenizer = CharTokenizer("abcdefghijklmnopqrstuvwxyz .!")
    names = sorted(p.name for p in export(model, tokenizer, tmp_path / "rope"))
    assert names == ["config.json", "generation_config.json", "microgpt_tokenizer.json", "model.safetensors",
                     "special_tokens_map.json", "tokenizer.json", "tokenizer_config.json"]
    lm = load_model(tmp_path / "rope")
    idx = torch.randint(0, 30, (2, 32))
    with torch.no_grad():
        torch.testing.assert_close(lm.model(idx)[0], model(idx)[0][..., :30], atol=1e-6, rtol=0)
        hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "rope").eval()
        assert type(hf).__name__ == "GPTNeoXForCausalLM"
        torch.testing.assert_close(hf(idx).logits, model(idx)[0][..., :30], atol=1e-4, rtol=0)
    assert lm.tokenizer.state() == tokenizer.state()


def tiny(pos_emb: str, block_size: int = 16) -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=50, block_size=block_size, pos_emb=pos_emb, **TINY_SHAPE)).eval()


@pytest.mark.parametrize("pos_emb", ["rope", "learned"])
def test_batched_prompts_of_different_lengths_decode_as_each_alone(pos_emb):
    model = tiny(pos_emb)
    prompts = [[3, 1, 4], [1, 5, 9, 2, 6, 5, 3], [5]]
    width, new = max(map(len, prompts)), 20  # 27 tokens: crosses the 16-token window
    idx = torch.tensor([[0] * (width - len(p)) + p for p in prompts])
    pad = torch.tensor([width - len(p) for p in prompts])
    alone = [model.generate(torch.tensor([p]), new, temperature=0)[0, len(p):] for p in prompts]
    for use_cache in (True, False):
        batched = model.generate(idx, new, temperature=0, pad=pad, use_cache=use_cache)
        for row, expected in zip(batched[:, width:], alone):
            assert torch.equal(row, expected), use_cache


def test_padded_rows_get_the_logits_they_get_alone():
    model = tiny("rope", block_size=32)
    short, long = torch.tensor([[7, 8, 9]]), torch.tensor([[1, 2, 3, 4, 5, 6]])
    batch = torch.tensor([[0, 0, 0, 7, 8, 9], [1, 2, 3, 4, 5, 6]])
    with torch.no_grad():
        logits, _ = model(batch, pad=torch.tensor([3, 0]))
        torch.testing.assert_close(logits[0, 3:], model(short)[0][0], atol=1e-5, rtol=0)
        torch.testing.assert_close(logits[1], model(long)[0][0], atol=1e-5, rtol=0)
        assert torch.isfinite(logits).all()


def test_generate_command_with_a_model_directory_and_batched_prompts(tmp_path, hf_dir):
    directory, _ = hf_dir
    args = [f"ckpt={directory}", "prompts=[Hello world,The quick brown fox]", "max_new_tokens=6",
            "seed=5", "stop_at_eot=false", "top_p=0.9"]
    result = run_cli("generate", *args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    expected = load_model(directory).generate_texts(
        ["Hello world", "The quick brown fox"], 6, temperature=0.8, top_k=200, top_p=0.9, seed=5, stop_at_eot=False)
    assert result.stdout == "\n---\n".join(expected) + "\n"  # the seed reproduces it


@pytest.mark.parametrize("bad, words", [("top_p=1.5", ["top_p", "(0, 1]"]), ("temperature=hot", ["temperature"])])
def test_invalid_sampling_settings_are_clean_errors(tmp_path, hf_dir, bad, words):
    result = run_cli("generate", f"ckpt={hf_dir[0]}", bad, cwd=tmp_path)
    assert_clean_error(result, *words)


def test_unknown_pretrained_name(tmp_path):
    with pytest.raises(ConfigError, match="unknown pretrained model 'gpt3'.*gpt2-medium"):
        load_model(config=PretrainedModelConfig(name="gpt3"))
    assert_clean_error(run_cli("generate", "ckpt=gpt3", cwd=tmp_path), "unknown pretrained model", "gpt2-xl")


def test_directory_missing_files(tmp_path, hf_dir):
    partial = tmp_path / "partial"
    partial.mkdir()
    shutil.copy(hf_dir[0] / "config.json", partial)
    with pytest.raises(CheckpointError, match="missing model.safetensors"):
        load_model(partial)
    assert_clean_error(run_cli("generate", f"ckpt={partial}", cwd=tmp_path), "missing model.safetensors")


def test_weights_that_do_not_match_the_requested_size(tmp_path, hf_dir):
    # A local copy that is not the size its name says.
    with pytest.raises(CheckpointError, match="not gpt2-medium's"):
        load_model(config=PretrainedModelConfig(name="gpt2-medium", local_dir=str(hf_dir[0])))
    # A config.json that disagrees with the tensors beside it.
    lying = tmp_path / "lying"
    shutil.copytree(hf_dir[0], lying)
    config = json.loads((lying / "config.json").read_text())
    (lying / "config.json").write_text(json.dumps({**config, "n_embd": 64}))
    with pytest.raises(CheckpointError, match=r"c_attn.bias has shape \(96,\) but the model needs \(192,\)"):
        load_model(lying)


def test_hub_download_failure_is_a_clean_error(tmp_path):
    # The real download path (huggingface_hub, into a fresh cache) with the Hub unreachable (offline).
    with pytest.raises(CheckpointError, match="could not download gpt2 .*local_dir"):
        load_model(config=PretrainedModelConfig(name="gpt2", cache_dir=str(tmp_path / "cache")))


def val_losses(run_dir: Path) -> list[float]:
    with open(run_dir / "metrics.csv") as f:
        return [float(row["val/loss"]) for row in csv.DictReader(f) if row.get("val/loss")]


def hf_val_loss(hf, overrides: list[str]) -> float:
    """The transformers model's loss on exactly the validation batches training evaluates."""
    from microgpt.lightning.builders import build_datamodule, training_tokenizer

    cfg = compose_train(*overrides)
    datamodule = build_datamodule(cfg.data, training_tokenizer(cfg), cfg.seed)
    datamodule.load()
    total, count = 0.0, 0
    with torch.no_grad():
        for i, batch in enumerate(datamodule.val_dataloader()):
            if i == cfg.eval_batches:
                break
            logits = hf(batch[:, :-1]).logits
            targets = batch[:, 1:]
            total += torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="sum").item()
            count += targets.numel()
    return total / count


def test_fine_tune_from_a_hf_directory_then_from_its_checkpoint(tmp_path, small_corpus):
    from microgpt.lightning.training import train

    pretrained = tmp_path / "pretrained"
    hf = save_hf_gpt2(pretrained, seed=3, initializer_range=0.2)
    # A vanishing learning rate: the first evaluation sees the pretrained weights themselves.
    common = [*TINY, *TINY_OVERRIDES, "data=files", f"data.paths=[{small_corpus}]", "max_steps=6",
              "optim.lr=1e-9", "schedule.end_lr=0", "callbacks.text_samples=null"]
    expected = hf_val_loss(hf, common)
    assert expected > math.log(50257) + 1  # far from the ~ln(vocab) a fresh init gives

    first = tmp_path / "first"
    result = run_cli("train", *common, f"init_from={pretrained}", f"hydra.run.dir={first}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    # Within the padding rows' bound (< 0.001 nats: see copy_weights) plus rounding.
    assert abs(val_losses(first)[0] - expected) < 2e-3, (val_losses(first), expected)

    # init_from a microgpt checkpoint: weights only, fresh optimizer and schedule (step 6 again).
    second = tmp_path / "second"
    train(compose_train(*common, f"init_from={first / 'checkpoints' / 'last.ckpt'}", output_dir=second))
    assert abs(val_losses(second)[0] - val_losses(first)[0]) < 1e-4
    assert (second / "checkpoints" / "step000006.ckpt").is_file()


def test_fine_tune_with_a_mismatched_model_names_the_overrides(tmp_path, small_corpus, hf_dir):
    from microgpt.io.init_from import initial_weights

    result = run_cli("train", *TINY, "data=files", f"data.paths=[{small_corpus}]", f"init_from={hf_dir[0]}",
                     cwd=tmp_path)  # the default RoPE char model
    line = assert_clean_error(result, "init_from", "model.pos_emb=learned", "tokenizer=gpt2")
    assert "model.n_layer=" not in line  # TINY already has the right depth
    gpt2 = TiktokenTokenizer("gpt2")
    wrong = GPT(GPTConfig(vocab_size=50257, block_size=128, n_layer=2, n_head=2, n_embd=64, pos_emb="learned"))
    with pytest.raises(ConfigError, match="override: model.n_embd=32 model.block_size=64$"):
        initial_weights(str(hf_dir[0]), wrong, gpt2)
    with pytest.raises(ConfigError, match="override: model=gpt2_124m model.pos_emb=learned tokenizer=gpt2"):
        from microgpt.io.init_from import check_same_network

        gpt2_124m = GPTConfig(pos_emb="learned", vocab_multiple=1)
        check_same_network("gpt2", gpt2_124m, gpt2, GPTConfig(vocab_size=65, **TINY_SHAPE), CharTokenizer("abc"))
    with pytest.raises(ConfigError, match="unknown pretrained model 'gpt5'"):
        initial_weights("gpt5", wrong, gpt2)
