"""`init_from=`: start training from pretrained GPT-2, an exported directory or a checkpoint's weights."""

from __future__ import annotations

from microgpt.core.errors import ConfigError
from microgpt.core.model import GPT, GPTConfig
from microgpt.core.tokenizer import TiktokenTokenizer, Tokenizer
from microgpt.io.pretrained import (
    GPT2_MODELS,
    PretrainedModelConfig,
    copy_weights,
    is_pretrained_source,
    pretrained_dir,
    read_pretrained_dir,
)

SHAPE_SETTINGS = ("n_layer", "n_head", "n_embd", "vocab_size", "pos_emb", "bias")


def initial_weights(init_from: str, model: GPT, tokenizer: Tokenizer) -> None:
    """Copy pretrained weights (a GPT-2 name, a Hugging Face directory or a microgpt .ckpt) into a
    freshly built `model`; the optimizer and schedule start fresh.

    The run's model and tokenizer settings must describe the same network: a ConfigError names
    each difference and the overrides that fix it.
    """
    from microgpt.io.checkpoints import model_from_checkpoint, read_checkpoint

    if is_pretrained_source(init_from):
        source_model, source_tokenizer = read_pretrained_dir(pretrained_dir(PretrainedModelConfig(name=init_from)))
    else:
        source_model, source_tokenizer = model_from_checkpoint(read_checkpoint(init_from), source=init_from)
    check_same_network(init_from, source_model.config, source_tokenizer, model.config, tokenizer)
    copy_weights(model, source_model.state_dict(), init_from)


def check_same_network(init_from: str, source: GPTConfig, source_tokenizer: Tokenizer,
                       target: GPTConfig, tokenizer: Tokenizer) -> None:
    fixes = {f"model.{k}": getattr(source, k) for k in SHAPE_SETTINGS if getattr(source, k) != getattr(target, k)}
    problems = [f"model.{k[6:]} is {getattr(target, k[6:])!r} here, {v!r} in the weights" for k, v in fixes.items()]
    if source.pos_emb == "learned" and target.block_size > source.block_size:
        problems.append(f"model.block_size={target.block_size} is longer than its {source.block_size} learned positions")
        fixes["model.block_size"] = source.block_size
    if source_tokenizer.state() != tokenizer.state():
        problems.append(f"the tokenizer differs ({source_tokenizer!r} there, {tokenizer!r} here)")
        if isinstance(source_tokenizer, TiktokenTokenizer):
            fixes["tokenizer"] = "gpt2" if source_tokenizer.encoding_name == "gpt2" else source_tokenizer.encoding_name
    if not problems:
        return
    fixes.pop("model.vocab_size", None)  # follows from the tokenizer
    if init_from in GPT2_MODELS and any(k in fixes for k in ("model.n_layer", "model.n_head", "model.n_embd")):
        # The matching size preset, switched to GPT-2's learned positions (the presets use RoPE).
        for key in ("model.n_layer", "model.n_head", "model.n_embd", "model.bias", "model.block_size"):
            fixes.pop(key, None)
        fixes = {"model": GPT2_MODELS[init_from][2], "model.pos_emb": "learned", **fixes}
    overrides = [f"{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in fixes.items()]
    raise ConfigError(
        f"init_from={init_from} does not match this run's model ({'; '.join(problems)}); "
        f"override: {' '.join(overrides)}"
    )
