"""The command line's grammar: Hydra's override syntax in full, free text taken literally, sweeps,
numeric group choices, flags anywhere; checked in-process (check_command_line, composition) and
through the real entry points."""

from __future__ import annotations

import pytest
import yaml
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from conftest import TINY, assert_clean_error, run_cli
from microgpt.cli.check import check_command_line, flags_first
from microgpt.cli.overrides import CONFIG_DIR, literal_text, quote_numeric_choices, typed_text
from microgpt.core.errors import ConfigError

PASTED = [
    "Hi, I'm a language model,", "The ", "123", "", "null", "true", "'quoted'", '"double" and \'single\'',
    "a\\", "a\\'b", "\\", "a\\\\", "${oc.env:HOME}", "\\${x}", "\\\\${x}", "x=[1,2]{a:b}", "line 1\nline 2\n",
    "~tilde", "+plus", "tab\there", "choice(a,b)", "glob(*)",
]


def words(*args: str) -> list[str]:
    """The command line as the entry point hands it to Hydra."""
    return quote_numeric_choices(flags_first(literal_text(list(args))))


@pytest.mark.parametrize("text", PASTED)
def test_free_text_composes_to_exactly_what_was_typed(text):
    argv = words(f"prompt={text}")
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("generate", argv)
    assert cfg.prompt == text and isinstance(cfg.prompt, str)
    assert typed_text(argv[0]) == f"prompt={text}"  # what a DDP child rank is started with


def test_data_text_is_literal_through_its_interpolations():
    text = "notes, with ${not.an.interpolation} and 'quotes'\n"
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("train", words("data=text", f"data.text={text}"))
    plain = OmegaConf.to_container(cfg.data, resolve=True)
    assert plain["text"] == text and plain["sources"][0]["text"] == text


@pytest.mark.parametrize("argv", [
    ["-m", "model=choice(nano,micro)"], ["-m", "model=glob(n*)"], ["-m", "model=glob(*)"],
    ["-m", "seed=range(1,4)"], ["-m", "seed=1,2,3"], ["stage=2", "init_from=x.ckpt"],
    ["-m", "stage=1,2", "init_from=x.ckpt"], ["-m", "stage=choice(1,2)", "init_from=x.ckpt"],
    ["-m", "stage=range(1,3)", "init_from=x.ckpt"], ["~compile"], ["++compile=true"],
    ["+trainer.gradient_clip_algorithm=value"], ["++trainer.gradient_clip_val=0.5"],
    ["+model@extra=micro"], ["logger=[csv,tensorboard]"], ["callbacks.progress_bar=null"],
    ["optim.lr=1"], ["trainer.devices=auto"], ["-m", "hydra/launcher=joblib", "seed=1,2"],
    ["hydra.run.dir=outputs/here"], ["seed=3", "--cfg", "job"], ["-m", "optim=adamw,sgd", "optim.lr=0.01,0.1"],
    ["-m", "hydra/sweeper=basic", "optim.lr=0.001,0.002"], ["model.dropout=0"], ["schedule=wsd", "schedule.cooldown_fraction=0.1"],
])
def test_valid_hydra_syntax_is_accepted(argv):
    assert check_command_line("train", words(*argv)) is not None


@pytest.mark.parametrize("argv, message", [
    (["model=banana"], "unknown model 'banana'; choose one of: gpt2_124m"),
    (["-m", "model=choice(nano,banana)"], "unknown model 'banana'"),
    (["-m", "model=nano,banana"], "unknown model 'banana'"),
    (["-m", "model=glob(x*)"], "matches no model option"),
    (["-m", "stage=choice(1,3)"], "unknown stage '3'; choose one of: 1, 2"),
    (["-m", "optim.lr=interval(0.001,0.01)"], "basic sweeper does not sample interval"),
    (["seed=1,2"], "is a sweep: add -m"),
    (["model=[nano"], "cannot read the override 'model=[nano'"),
])
def test_bad_grammar_or_choices_are_one_line(argv, message):
    with pytest.raises(ConfigError) as error:
        check_command_line("train", words(*argv))
    assert message in str(error.value)


def test_a_swept_value_out_of_range_is_left_to_its_job():
    """Its job fails alone (FAILED marker) while the sweep goes on; the same value unswept is refused."""
    assert check_command_line("train", words("-m", "optim.lr=1e-3,-1")) is not None
    with pytest.raises(ConfigError, match="optim.lr must be a number > 0"):
        check_command_line("train", words("optim.lr=-1"))
    with pytest.raises(ConfigError, match="optim.lr must be a number"):
        check_command_line("train", words("-m", "optim.lr=1e-3,abc"))


def test_numeric_group_choices_are_quoted_for_hydra():
    assert quote_numeric_choices(["stage=2", "+stage=1", "seed=2"]) == ["stage='2'", "+stage='1'", "seed=2"]
    assert quote_numeric_choices(["stage=1,2"]) == ["stage='1','2'"]
    assert quote_numeric_choices(["stage=choice(1,2)"]) == ["stage='1','2'"]


def test_flags_may_come_after_the_overrides():
    assert flags_first(["a=1", "-m", "b=2,3", "--cfg", "job"]) == ["-m", "--cfg", "job", "a=1", "b=2,3"]


def test_pasted_text_reaches_generate_unchanged(tmp_path):
    prompt = "Hi, I'm a language model, [v1] a=b ${x}\nsecond line "
    result = run_cli("generate", f"prompt={prompt}", "--cfg", "job", cwd=tmp_path, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert yaml.safe_load(result.stdout)["prompt"].replace("\\${", "${") == prompt


def test_a_sweep_with_glob_range_and_flags_after_the_overrides_runs(tmp_path):
    result = run_cli("train", *TINY, "dry_run=true", "model=glob(n*)", "seed=range(1,3)", "-m",
                     f"hydra.sweep.dir={tmp_path / 'sweep'}", cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(p.name for p in (tmp_path / "sweep").iterdir() if p.is_dir()) == ["0", "1"]


def test_unknown_choice_in_a_sweep_is_one_line_before_any_job(tmp_path):
    result = run_cli("train", "-m", "model=choice(nano,banana)", f"hydra.sweep.dir={tmp_path / 'sweep'}",
                     cwd=tmp_path, timeout=120)
    assert_clean_error(result, "unknown model 'banana'", "nano")
    assert not (tmp_path / "sweep").exists()


def test_hydra_interpolations_in_overrides_resolve_inside_the_job(tmp_path):
    """${hydra:...} exists only inside a running job: the checks before it must leave it unresolved."""
    result = run_cli("train", "dry_run=true", f"hydra.run.dir={tmp_path}/runs/${{hydra:job.name}}", cwd=tmp_path, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert (tmp_path / "runs" / "train" / ".hydra" / "config.yaml").is_file()
    # a setting whose default is ${hydra:...} takes a plain value
    result = run_cli("train", "dry_run=true", f"paths.output_dir={tmp_path}/out", cwd=tmp_path, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
