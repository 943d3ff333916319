"""`init_from=`: start training from pretrained GPT-2, a Hugging Face directory of any family io/hf
lists, an exported directory or a checkpoint's weights."""

from __future__ import annotations

import dataclasses

from microgpt.core.chat import ChatTokenizer, grow_vocabulary, with_chat_tokens
from microgpt.core.errors import ConfigError
from microgpt.core.language_model import LanguageModel
from microgpt.core.model import GPT, GPTConfig
from microgpt.core.tokenizer import TiktokenTokenizer, Tokenizer
from microgpt.core.tokenizer_json import HFTokenizer
from microgpt.io.hf.families import show
from microgpt.io.pretrained import (
    GPT2_MODELS,
    PretrainedModelConfig,
    copy_weights,
    is_pretrained_source,
    pretrained_dir,
    read_pretrained_dir,
)

ARCHITECTURE_SETTINGS = ("n_layer", "n_head", "n_embd", "vocab_size", "pos_emb", "bias", "norm", "norm_eps",
                         "norm_placement", "qk_norm", "mlp", "tie_embeddings", "attention", "n_experts")
# A setting that may be left to its default (None) -> the value it resolves to.
RESOLVED_SETTINGS = {"head_dim": "head_size", "n_kv_head": "kv_heads", "intermediate_size": "hidden_size",
                     "moe_intermediate_size": "expert_hidden_size"}
ROPE_SETTINGS = {"linear": ("rope_factor",),
                 "llama3": ("rope_factor", "rope_original_block_size", "rope_low_freq_factor", "rope_high_freq_factor"),
                 "yarn": ("rope_factor", "rope_original_block_size", "rope_beta_fast", "rope_beta_slow")}
MLA_SETTINGS = ("q_lora_rank", "kv_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim")
MOE_SETTINGS = ("n_experts_per_tok", "n_shared_experts", "moe_intermediate_size", "moe_every", "moe_first_dense",
                "router", "router_norm_topk")


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
    state, source_config = source_model.state_dict(), source_model.config
    if adds_chat_tokens(source_tokenizer, tokenizer):
        state = with_chat_rows(state, source_config.vocab_size, model.config.padded_vocab_size)
        source_config, source_tokenizer = dataclasses.replace(source_config, vocab_size=model.config.vocab_size), tokenizer
    check_same_network(init_from, source_config, source_tokenizer, model.config, tokenizer)
    copy_weights(model, state, init_from)


def chat_start(ckpt: str) -> LanguageModel:
    """A pretrained checkpoint as the chat model a post-training stage starts from: its tokenizer with
    the chat tokens, its embedding grown to fit them (new rows at the mean embedding). What
    `stage=sft init_from=<ckpt>` trains from step 0, for before / after comparisons."""
    from microgpt.io.checkpoints import model_from_checkpoint, read_checkpoint

    source, tokenizer = model_from_checkpoint(read_checkpoint(ckpt), source=ckpt)
    tokenizer = with_chat_tokens(tokenizer)
    model = GPT(dataclasses.replace(source.config, vocab_size=max(source.config.vocab_size, tokenizer.vocab_size)))
    initial_weights(ckpt, model, tokenizer)
    return LanguageModel(model, tokenizer)


def adds_chat_tokens(source: Tokenizer, target: Tokenizer) -> bool:
    """The run's tokenizer is the source's plus the chat template's tokens (a post-training stage
    starting from a pretrained model)."""
    return isinstance(target, ChatTokenizer) and not isinstance(source, ChatTokenizer) and target.base.state() == source.state()


def with_chat_rows(state: dict, used: int, rows: int) -> dict:
    """The embedding (and an untied head) grown to `rows`, the new tokens' rows at the mean embedding."""
    return {k: grow_vocabulary(v, used, rows) if k in ("transformer.wte.weight", "lm_head.weight") else v
            for k, v in state.items()}


def architecture_settings(config: GPTConfig) -> list[str]:
    """The settings that decide what the network computes (dropout, padding, the window and the MoE
    loss weights do not): the parts a config does not use are left out."""
    names = list(ARCHITECTURE_SETTINGS)
    names += ["head_dim", "n_kv_head"] if config.attention == "mha" else list(MLA_SETTINGS)
    names += ["intermediate_size"]
    if config.pos_emb == "rope":
        names += ["rope_base", "rope_scaling", *ROPE_SETTINGS.get(config.rope_scaling, ())]
    if config.n_experts:
        names += MOE_SETTINGS
    return names


def differences(source: GPTConfig, target: GPTConfig) -> dict[str, tuple]:
    """name -> (value here, value in the weights, the override that gives the weights' network)."""
    found = {}
    for name in dict.fromkeys(architecture_settings(source) + architecture_settings(target)):
        raw_source, raw_target = getattr(source, name), getattr(target, name)
        if name in RESOLVED_SETTINGS:
            if raw_source is None and raw_target is None:
                continue  # both derived: a difference shows in what they derive from
            resolved = RESOLVED_SETTINGS[name]
            here, there = getattr(target, resolved), getattr(source, resolved)
        else:
            here, there = raw_target, raw_source
        if here != there:
            found[name] = (here, there, raw_source)
    return found


def check_same_network(init_from: str, source: GPTConfig, source_tokenizer: Tokenizer,
                       target: GPTConfig, tokenizer: Tokenizer) -> None:
    found = differences(source, target)
    fixes = {f"model.{k}": fix for k, (_, _, fix) in found.items()}
    problems = [f"model.{k} is {here!r} here, {there!r} in the weights" for k, (here, there, _) in found.items()]
    if source.pos_emb == "learned" and target.block_size > source.block_size:
        problems.append(f"model.block_size={target.block_size} is longer than its {source.block_size} learned positions")
        fixes["model.block_size"] = source.block_size
    if source_tokenizer.state() != tokenizer.state():
        problems.append(f"the tokenizer differs ({source_tokenizer!r} there, {tokenizer!r} here)")
        if isinstance(source_tokenizer, TiktokenTokenizer):
            fixes["tokenizer"] = "gpt2" if source_tokenizer.encoding_name == "gpt2" else source_tokenizer.encoding_name
        elif isinstance(source_tokenizer, HFTokenizer) and is_pretrained_source(init_from):
            fixes["tokenizer"], fixes["tokenizer.path"] = "hf", init_from  # the directory's own tokenizer.json
    if not problems:
        return
    fixes.pop("model.vocab_size", None)  # follows from the tokenizer
    if init_from in GPT2_MODELS and any(k in fixes for k in ("model.n_layer", "model.n_head", "model.n_embd")):
        # The matching size preset, switched to GPT-2's learned positions (the presets use RoPE).
        for key in ("model.n_layer", "model.n_head", "model.n_embd", "model.bias", "model.block_size"):
            fixes.pop(key, None)
        fixes = {"model": GPT2_MODELS[init_from][2], "model.pos_emb": "learned", **fixes}
    overrides = [f"{k}={show(v)}" for k, v in fixes.items()]
    raise ConfigError(
        f"init_from={init_from} does not match this run's model ({'; '.join(problems)}); "
        f"override: {' '.join(overrides)}"
    )
