"""Export a GPT as a Hugging Face directory that `transformers.AutoModelForCausalLM` loads.

The family is the first of io/hf's registry that expresses the model exactly (GPT-2 for learned
positions, GPT-NeoX for the default RoPE GPT, then Llama, Qwen3, OLMo 2, the MoE and MLA families).
The directory holds config.json + model.safetensors + generation_config.json, the tokenizer as
`transformers` reads it (tokenizer.json ...), and, for a tokenizer other than GPT-2's, our own
microgpt_tokenizer.json so `load_model` reads back exactly the tokenizer the model was trained with.
"""

from __future__ import annotations

import os
from pathlib import Path

from microgpt.core.model import GPT
from microgpt.core.tokenizer import TiktokenTokenizer, Tokenizer
from microgpt.io.hf.families import MODEL_FILES, family_for_config, write_hf_model
from microgpt.io.pretrained import MICROGPT_CONFIG_FILE, TOKENIZER_FILE

OLD_FORMAT_FILES = (MICROGPT_CONFIG_FILE,)  # exports of RoPE models before the GPT-NeoX family


def export(model: GPT, tokenizer: Tokenizer, out: str | os.PathLike) -> list[Path]:
    """Write `out/` for the Hugging Face ecosystem; returns the files written.

    Files an earlier microgpt export left in `out` that this one does not write (either format) are
    removed, so the directory holds one export; other files are left alone. A model no family
    expresses, or a tokenizer `transformers` cannot express, is refused before anything is written.
    """
    from microgpt.io.hf_tokenizer import write_hf_tokenizer

    out = Path(out)
    planned = planned_names(model, tokenizer)
    out.mkdir(parents=True, exist_ok=True)
    written = write_hf_model(model, tokenizer, out)
    written += [Path(p) for p in write_hf_tokenizer(tokenizer, out, model_max_length=model.config.block_size)]
    if TOKENIZER_FILE in planned:
        tokenizer.save(out / TOKENIZER_FILE)
        written.append(out / TOKENIZER_FILE)
    for stale in stale_files(out, {p.name for p in written}):
        stale.unlink()
    return written


def export_files(model: GPT, tokenizer: Tokenizer, out: str | os.PathLike) -> list[Path]:
    """The files `export` would write into `out`, then those of an earlier export it would remove (to
    check them before writing). Raises the ConfigError `export` would, before anything is written."""
    out = Path(out)
    names = planned_names(model, tokenizer)
    return [out / name for name in names] + stale_files(out, set(names))


def planned_names(model: GPT, tokenizer: Tokenizer) -> list[str]:
    from microgpt.io.hf_tokenizer import check_hf_tokenizer

    family_for_config(model.config)  # the ConfigError naming the part no family has
    check_hf_tokenizer(tokenizer)
    names = [*MODEL_FILES, *tokenizer_names()]
    if tokenizer.state() != TiktokenTokenizer("gpt2").state():
        names.append(TOKENIZER_FILE)
    return names


def stale_files(out: Path, keep: set[str]) -> list[Path]:
    """Files of a microgpt export (any format) in `out` that are not among `keep`."""
    ours = [*MODEL_FILES, *tokenizer_names(), TOKENIZER_FILE, *OLD_FORMAT_FILES]
    return [out / name for name in dict.fromkeys(ours) if name not in keep and (out / name).is_file()]


def tokenizer_names() -> list[str]:
    """The names of the files `transformers` reads a tokenizer from, as an export writes them."""
    from microgpt.io.hf_tokenizer import hf_tokenizer_files

    return list(hf_tokenizer_files())
