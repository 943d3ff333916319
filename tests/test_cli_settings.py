"""Settings a user types: unknown names (with the closest valid one), wrong types, ranges, required
values, every shipped config composing clean under the schema, the warmup cap, and --help."""

from __future__ import annotations

import pytest

from conftest import TINY, assert_clean_error, run_cli
from microgpt.cli.check import check_command_line
from microgpt.cli.overrides import available_options, literal_text, quote_numeric_choices
from microgpt.cli.usage import help_text
from microgpt.core.errors import ConfigError
from microgpt.core.schedule import WarmupCosine, WarmupStableDecay

# What each command needs before it composes to a runnable config (no file is opened here).
REQUIRED = {
    "train": [], "generate": ["ckpt=x.ckpt"], "eval": ["ckpt=x.ckpt"], "export": ["ckpt=x.ckpt", "out=o"],
    "soup": ["ckpts=[a.ckpt,b.ckpt]"], "prepare": ["out=o"], "train_tokenizer": [],
}
# What a data option needs (its ??? settings).
DATA_NEEDS = {"files": ["data.paths=[x.txt]"], "text": ["data.text=some text"], "url": ["data.url=https://x/y.txt"],
              "hf": ["data.path=x"], "shards": ["data.shards_dir=x"], "chat": ["data.path=x.jsonl"],
              "preferences": ["data.path=x.jsonl"]}
# The post-training stages read records: their data option's required path.
STAGE_NEEDS = {"sft": ["data.path=x.jsonl"], "dpo": ["data.path=x.jsonl"]}


def check(command: str, *argv: str):
    return check_command_line(command, quote_numeric_choices(literal_text(list(argv))))


def refused(command: str, *argv: str) -> str:
    with pytest.raises(ConfigError) as error:
        check(command, *argv)
    return str(error.value)


@pytest.mark.parametrize("command, argv, message", [
    ("train", ["+optim.learning_rate=1"], "unknown setting optim.learning_rate; did you mean optim.lr?"),
    ("train", ["optim.learnig_rate=1"], "did you mean optim.lr"),
    ("train", ["+optim.wd=1"], "did you mean optim.weight_decay?"),
    ("train", ["+optimizer.lr=1"], "unknown setting optimizer; did you mean optim?"),
    ("train", ["no_such_key=1"], "unknown setting no_such_key"),
    ("train", ["+data.batchsize=4"], "did you mean data.batch_size?"),
    ("train", ["model.n_layers=4"], "did you mean model.n_layer?"),
    ("train", ["+trainer.max_step=3"], "did you mean trainer.max_steps?"),
    ("train", ["optim=sgd", "optim.dampening=0.1"], "add it with +optim.dampening=0.1"),
    ("train", ["+callbacks.timer._target_=lightning.pytorch.callbacks.Timer", "+callbacks.timer.durashun=1"],
     "did you mean callbacks.timer.duration?"),  # a new callback entry is checked against its target
    ("train", ["+optim.extra.lr=1"], "unknown setting optim.extra"),
    ("train", ["compile=maybe"], "compile must be true or false, got 'maybe'"),
    ("train", ["optim.weight_decay=-1"], "optim.weight_decay must be a number >= 0, got -1"),
    ("train", ["optim.betas=[0.9]"], "optim.betas must be two numbers in [0, 1)"),
    ("train", ["optim.betas=[0.9,1.5]"], "optim.betas must be two numbers in [0, 1)"),
    ("train", ["optim.lr=abc"], "optim.lr must be a number"),
    ("train", ["seed=abc"], "seed must be an integer, got 'abc'"),
    ("train", ["max_steps=1.5"], "max_steps must be an integer"),
    ("train", ["+trainer.detect_anomaly=sometimes"], "trainer.detect_anomaly must be true or false"),
    ("train", ["stage=1", "optim=sgd"], "optim.betas"),  # stage 1 sets AdamW's betas, which SGD does not take
    ("train", ["data=text"], "data.text= is required: python -m microgpt.train data=text"),
    ("train", ["stage=2"], "init_from= is required (the stage-1 checkpoint"),  # a group option's ???
    ("train", ["-m", "stage=2", "seed=1,2"], "init_from= is required"),
    ("train", ["tokenizer=bpe", "tokenizer.pattern=gpt5"], "unknown tokenizer.pattern 'gpt5'; known: gpt2, gpt4, o200k"),
    ("train", ["tokenizer=bpe", "tokenizer.pattern=(unclosed"], "not a valid regex"),
    ("train_tokenizer", ["tokenizer.pattern=cl100k"], "unknown tokenizer.pattern 'cl100k'"),
    ("generate", [], "ckpt= is required"),
    ("generate", ["ckpt=x.ckpt", "max_new_tokens=abc"], "max_new_tokens must be an integer, got 'abc'"),
    ("generate", ["ckpt=x.ckpt", "num_samples=1.5"], "num_samples must be an integer, got '1.5'"),
    ("generate", ["ckpt=x.ckpt", "temperature=hot"], "temperature must be a number"),
    ("eval", [], "ckpt= is required (a microgpt checkpoint (.ckpt)): python -m microgpt.eval ckpt="),
    ("export", ["ckpt=x.ckpt"], "out= is required"),
    ("soup", [], "ckpts= is required: python -m microgpt.soup ckpts=["),
    ("prepare", [], "out= is required: python -m microgpt.prepare"),
])
def test_bad_settings_are_refused_with_the_fix(command, argv, message):
    assert message in refused(command, *argv)


@pytest.mark.parametrize("argv", [
    ["optim.lr=1"], ["optim.lr=3e-4"], ["optim.weight_decay=0"], ["optim.betas=[0.9,0.95]"], ["compile=true"],
    ["seed=0"], ["global_batch_tokens=4096"], ["global_batch_tokens=null"], ["init_from=gpt2"],
    ["+optim.amsgrad=true"], ["optim=sgd", "+optim.dampening=0.1"], ["+trainer.gradient_clip_algorithm=value"],
    ["++trainer.accumulate_grad_batches=2"], ["trainer.gradient_clip_val=null"], ["trainer.precision=16"],
    ["trainer.devices=[0]"], ["+trainer.max_time=00:00:10:00"], ["model.dropout=0"], ["model.rope_base=500"],
    ["tokenizer=bpe", "tokenizer.pattern=gpt2"], ["tokenizer=bpe", r"tokenizer.pattern= ?\p{L}+| ?\p{N}+|\s+"],
    ["callbacks.throughput.peak_flops=2e11"], ["callbacks.nan_guard=null"], ["logger=wandb", "logger.wandb.tags=[a,b]"],
    ["logger=wandb", "logger.wandb.notes=a note, with commas"], ["schedule.end_lr=0"], ["data.val_fraction=0"],
    ["interrupt.requeue_signal=SIGUSR1"], ["+callbacks.extra={_target_:lightning.pytorch.callbacks.Timer}"],
    ["+callbacks.timer._target_=lightning.pytorch.callbacks.Timer", "+callbacks.timer.duration=00:00:01:00"],
    ["stage=2", "init_from=stage1/last.ckpt"], ["-m", "stage=2", "init_from=a.ckpt", "seed=1,2"],
])
def test_valid_settings_are_accepted(argv):
    assert check("train", *argv) is not None


def command_options():
    """Every option of every group of train, and each data option of the commands that read data."""
    groups = ["model", "tokenizer", "data", "optim", "schedule", "stage", "trainer", "callbacks", "logger",
              "experiment", "debug"]
    for group in groups:
        for option in available_options(group):
            yield "train", group, option
    for command in ("eval", "soup", "prepare", "train_tokenizer"):
        for option in available_options("data"):
            yield command, "data", option
    for command in REQUIRED:
        yield command, None, None


@pytest.mark.parametrize("command, group, option", list(command_options()))
def test_every_shipped_config_composes_clean_under_the_schema(command, group, option):
    argv = [*REQUIRED[command]]
    if group:
        argv.append(f"{group}={option}")
    argv += DATA_NEEDS.get(option, []) if group == "data" else []
    argv += {"experiment": ["data.paths=[x.txt]"], "stage": ["init_from=x.ckpt"]}.get(group, [])
    argv += STAGE_NEEDS.get(option, []) if group == "stage" else []
    assert check(command, *argv) is not None


def test_mistakes_are_one_line_through_the_entry_points(tmp_path):
    for command, argv, words in [
        ("train", ["+optim.learning_rate=1"], ["did you mean optim.lr"]),
        ("train", ["compile=maybe"], ["compile", "true or false"]),
        ("generate", ["max_new_tokens=10"], ["ckpt= is required", "python -m microgpt.generate ckpt="]),
    ]:
        result = run_cli(command, *argv, f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path, timeout=120)
        assert result.returncode == 2
        assert_clean_error(result, *words)
        assert not (tmp_path / "run").exists()  # refused before Hydra made the run directory


def test_warmup_longer_than_the_run_is_cut_to_a_tenth():
    settings, warning = WarmupCosine.fit_warmup({"warmup_steps": 100, "decay_steps": 20, "end_lr": 0.0})
    assert settings["warmup_steps"] == 2 and "schedule.warmup_steps=100" in warning
    WarmupCosine(peak_lr=1e-3, **settings)  # fits now
    assert WarmupCosine.fit_warmup({"warmup_steps": 20, "decay_steps": 20}) == ({"warmup_steps": 20, "decay_steps": 20}, None)
    settings, warning = WarmupStableDecay.fit_warmup({"warmup_steps": 100, "total_steps": 50, "cooldown_fraction": 0.2})
    assert settings["warmup_steps"] == 5 and warning
    WarmupStableDecay(peak_lr=1e-3, **settings)
    unchanged = {"warmup_steps": 30, "total_steps": 50, "cooldown_fraction": 0.2}
    assert WarmupStableDecay.fit_warmup(unchanged) == (unchanged, None)


def test_changing_max_steps_alone_trains(tmp_path, small_corpus):
    """The default 100-step warmup in a 12-step run: cut to 1 step, with one warning line."""
    tiny = [a for a in TINY if not a.startswith("schedule.warmup_steps")]
    result = run_cli("train", *tiny, "data=files", f"data.paths=[{small_corpus}]",
                     f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (result.stdout + result.stderr).count("schedule.warmup_steps=100 does not fit") == 1
    assert (tmp_path / "run" / "checkpoints" / "last.ckpt").is_file()


@pytest.mark.parametrize("command", list(REQUIRED))
def test_help_lists_groups_options_and_settings(command):
    text = help_text(command)
    assert f"python -m microgpt.{command}" in text and "Command line" in text
    if command in ("train", "eval", "soup", "prepare", "train_tokenizer"):
        assert "data=" in text and "fineweb_edu" in text


def test_help_through_the_entry_point(tmp_path):
    result = run_cli("train", "--help", cwd=tmp_path, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    for words in ["model=", "nano*", "gpt2_124m", "trainer=", "8xh200", "stage=", "max_steps", "optimizer steps",
                  "optim.lr", "peak learning rate", "-m seed=1,2,3", "data.text"]:
        assert words in result.stdout, words
    generate = run_cli("generate", "--help", cwd=tmp_path, timeout=120)
    assert generate.returncode == 0 and "max_new_tokens" in generate.stdout and "0: greedy" in generate.stdout
