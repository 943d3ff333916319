"""The shape of the package: the public API, the deprecated seed import, one-way layers, sizes."""

from __future__ import annotations

import ast
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "microgpt"


def test_the_public_api_is_importable_from_the_package():
    from microgpt import GPT, GPTConfig, PretrainedModelConfig, load_model, load_tokenizer
    from microgpt.core.model import GPT as CoreGPT
    from microgpt.io.loading import load_model as io_load_model

    assert GPT is CoreGPT and load_model is io_load_model
    assert GPTConfig(n_layer=1, n_head=1, n_embd=8, block_size=8, vocab_size=16).n_layer == 1
    assert PretrainedModelConfig().name == "gpt2" and callable(load_tokenizer)
    with pytest.raises(AttributeError):
        import microgpt

        microgpt.no_such_name  # noqa: B018


def test_importing_the_package_loads_no_torch():
    """Commands import `microgpt` before Hydra parses the command line: the API is loaded on use."""
    code = "import sys, microgpt; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_the_seed_import_still_works_and_says_it_is_deprecated():
    sys.modules.pop("microgpt.model", None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        from microgpt.model import load_model
    from microgpt import load_model as current

    assert load_model is current
    assert any(issubclass(w.category, DeprecationWarning) and "microgpt.model" in str(w.message) for w in caught)


def test_imports_point_down_the_layers_with_no_cycles():
    result = subprocess.run(["lint-imports"], cwd=SRC.parents[1], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:]
    assert "2 kept, 0 broken" in result.stdout


def test_no_module_over_400_lines_and_no_function_over_60():
    too_long = []
    for path in sorted(SRC.rglob("*.py")):
        text = path.read_text()
        if len(text.splitlines()) > 400:
            too_long.append(f"{path.relative_to(SRC)}: {len(text.splitlines())} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno >= 60:
                too_long.append(f"{path.relative_to(SRC)}:{node.lineno} {node.name}: {node.end_lineno - node.lineno + 1} lines")
    assert not too_long, too_long


def test_top_level_holds_only_commands_the_api_and_the_shim():
    top = sorted(p.stem for p in SRC.glob("*.py"))
    assert top == sorted(["__init__", "chat", "eval", "export", "generate", "lm_eval_cli", "model", "plot", "prepare",
                          "soup", "train", "train_tokenizer"])
