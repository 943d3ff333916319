"""`MicroGPTLM`: any model `load_model` reads (a checkpoint, a soup, an export, a Hugging Face
directory) as an lm-eval model, `--model microgpt --model_args ckpt=<path>,batch_size=16`.

lm-eval's TemplateLM splits (context, continuation) strings into ids exactly as its `hf` model does
(trailing spaces of a context move to the continuation; an empty context becomes end-of-text), so
both score the same ids; the scoring itself is microgpt's (scoring.py). This module imports
lm-eval at its top: only `register_microgpt()` and the adapter's users import it, never `microgpt`.
"""

from __future__ import annotations

import hashlib
import json
import logging

from lm_eval.api.model import TemplateLM
from lm_eval.models.utils import handle_stop_sequences, normalize_gen_kwargs
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

from microgpt.core.errors import ConfigError
from microgpt.core.language_model import LanguageModel
from microgpt.evals.lm_eval.scoring import GenerationSettings, by_length_descending, generate_until, score_requests
from microgpt.io.loading import check_device, load_model

log = logging.getLogger(__name__)

MODEL_ARGS = ("ckpt", "batch_size", "device", "dtype", "max_gen_toks")
# Settings lm-eval passes every model whatever the user gave (its own --batch_size and friends).
HARNESS_ARGS = ("max_batch_size",)
SAMPLING = ("until", "max_gen_toks", "do_sample", "temperature", "top_k", "top_p")


def usable(device: str) -> bool:
    """Whether this machine has `device` (the harness's default, cuda:0, may not be there)."""
    try:
        check_device(device)
    except ConfigError:
        return False
    return True


def positive_int(name: str, value) -> int:
    """`value` (an int, or digits from a command line) as a positive int; a ConfigError otherwise."""
    text = str(value).strip()
    if isinstance(value, bool) or not text.isdigit() or int(text) <= 0:
        hint = " (batch_size=auto is not supported: give a number, e.g. batch_size=16)" if name == "batch_size" else ""
        raise ConfigError(f"microgpt model_args {name}={value!r} must be a positive integer{hint}")
    return int(text)


class MicroGPTLM(TemplateLM):
    """lm-eval's `microgpt` model. model_args: `ckpt` (required: whatever `load_model` reads),
    `batch_size` (requests per forward, 16), `device` (cpu), `dtype` (float32, bfloat16, float16),
    `max_gen_toks` (generation length when a task sets none, 256)."""

    def __init__(self, ckpt: str | None = None, batch_size: int | str = 16, device: str | None = None,
                 dtype: str = "float32", max_gen_toks: int | str = 256, **others) -> None:
        unknown = sorted(set(others) - set(HARNESS_ARGS))
        if unknown:
            raise ConfigError(f"unknown microgpt model_args {unknown}; the keys are {', '.join(MODEL_ARGS)} "
                              f"(--model_args ckpt=<path>,batch_size=16)")
        if not ckpt:
            raise ConfigError("--model_args needs ckpt=<path>: a microgpt checkpoint, soup, export or Hugging Face "
                              "directory (--model_args ckpt=outputs/<run>/checkpoints/last.ckpt,batch_size=16)")
        lm = load_model(str(ckpt), device=device or "cpu", dtype=dtype)
        self._setup(lm, batch_size, max_gen_toks, name=str(ckpt))

    @classmethod
    def from_language_model(cls, lm: LanguageModel, batch_size: int = 16, max_gen_toks: int = 256,
                            name: str = "microgpt") -> MicroGPTLM:
        """An adapter over a model already in memory (the eval command's, or training's own)."""
        self = cls.__new__(cls)
        self._setup(lm, batch_size, max_gen_toks, name)
        return self

    def _setup(self, lm: LanguageModel, batch_size, max_gen_toks, name: str) -> None:
        TemplateLM.__init__(self)
        self.lm = lm
        self.batch_size = positive_int("batch_size", batch_size)
        self._max_gen_toks = positive_int("max_gen_toks", max_gen_toks)
        self._device = lm.device
        self.name = name

    @classmethod
    def create_from_arg_string(cls, arg_string: str, additional_config: dict | None = None) -> MicroGPTLM:
        from lm_eval.utils import simple_parse_args_string

        return cls.create_from_arg_obj(simple_parse_args_string(arg_string), additional_config)

    @classmethod
    def create_from_arg_obj(cls, arg_dict: dict, additional_config: dict | None = None) -> MicroGPTLM:
        # model_args win over the harness's own defaults (its --batch_size is 1 unless given), so
        # `--model_args ckpt=...,batch_size=16` means 16 rather than a duplicate-argument TypeError.
        extra = {k: v for k, v in (additional_config or {}).items() if v is not None}
        if "device" in extra and "device" not in arg_dict and not usable(extra["device"]):
            # The harness asks for cuda:0 unless told otherwise: on a machine without it, the CPU
            # (as its `hf` model falls back); a device named in model_args must exist.
            log.info("microgpt: device %s is not available; evaluating on the CPU", extra.pop("device"))
        return cls(**{**extra, **arg_dict})

    @property
    def eot_token_id(self) -> int:
        return self.lm.tokenizer.eot

    @property
    def max_length(self) -> int:
        return self.lm.model.config.block_size

    @property
    def max_gen_toks(self) -> int:
        return self._max_gen_toks

    @property
    def tokenizer_name(self) -> str:
        """What lm-eval's request cache (--cache_requests) keys on: this tokenizer, exactly."""
        state = json.dumps(self.lm.tokenizer.state(), sort_keys=True, ensure_ascii=False)
        return f"microgpt-{hashlib.sha256(state.encode()).hexdigest()[:16]}"

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs) -> list[int]:
        return self.lm.tokenizer.encode(string)

    def tok_decode(self, tokens: list[int]) -> str:
        return self.lm.tokenizer.decode(tokens)

    def get_model_info(self) -> dict:
        weight = self.lm.model.transformer.wte.weight
        return {"model_num_parameters": self.lm.count_params(), "model_dtype": str(weight.dtype),
                "block_size": self.max_length, "model_source": self.name}

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs) -> list[tuple[float, bool]]:
        scores = score_requests(self.lm.model, [(ctx, cont) for _, ctx, cont in requests], self.batch_size)
        answers = [(s.logprob, s.greedy) for s in scores]
        for (key, _, _), answer in zip(requests, answers):
            if key is not None:  # rolling windows have no key: their sums are cached per document
                self.cache_hook.add_partial("loglikelihood", key, answer)
        return answers

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        """Each document's whole log-likelihood: disjoint windows of at most `block_size` predicted
        tokens, each after as much of the document as fits (lm-eval's own windows), all windows of
        all documents batched together."""
        windows, owners = [], []
        for n, (text,) in enumerate(req.args for req in requests):
            for window in get_rolling_token_windows(self.tok_encode(text), self.prefix_token_id, self.max_length, 1):
                windows.append((None, *make_disjoint_window(window)))
                owners.append(n)
        totals = [0.0] * len(requests)
        for n, (logprob, _) in zip(owners, self._loglikelihood_tokens(windows)):
            totals[n] += logprob
        for req, total in zip(requests, totals):
            self.cache_hook.add_partial("loglikelihood_rolling", req.args, total)
        return totals

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """Greedy (or sampled, as a task's gen_kwargs say) continuations, batched by identical
        gen_kwargs and by prompt length, each cut at its `until` strings and at end-of-text."""
        prompts = [self.tok_encode(context) or [self.eot_token_id] for context, _ in (r.args for r in requests)]
        groups: dict[str, list[int]] = {}
        for n, (_, gen_kwargs) in enumerate(r.args for r in requests):
            groups.setdefault(json.dumps(gen_kwargs, sort_keys=True, default=str), []).append(n)
        replies: list[str] = [""] * len(requests)
        for members in groups.values():
            settings = self.generation_settings(requests[members[0]].args[1])
            order = [members[i] for i in by_length_descending([len(prompts[m]) for m in members])]
            for start in range(0, len(order), self.batch_size):
                chunk = order[start : start + self.batch_size]
                for n, text in zip(chunk, generate_until(self.lm.model, self.lm.tokenizer,
                                                         [prompts[n] for n in chunk], settings)):
                    replies[n] = text
                    self.cache_hook.add_partial("generate_until", requests[n].args, text)
        return replies

    def generation_settings(self, gen_kwargs: dict) -> GenerationSettings:
        kwargs = normalize_gen_kwargs(dict(gen_kwargs or {}), self.max_gen_toks)
        ignored = sorted(set(kwargs) - set(SAMPLING))
        if ignored:
            log.warning("microgpt: generation settings %s are not supported and are ignored", ignored)
        temperature = float(kwargs.get("temperature") or 0.0) if kwargs.get("do_sample") else 0.0
        return GenerationSettings(
            max_new_tokens=int(kwargs["max_gen_toks"]),
            stops=tuple(handle_stop_sequences(kwargs.get("until"), eos=None)),
            temperature=temperature,
            top_k=kwargs.get("top_k") if temperature else None,
            top_p=kwargs.get("top_p") if temperature else None,
        )
