"""Where the Hydra configs live, and checking a command line against them before Hydra runs."""

from __future__ import annotations

from pathlib import Path


def _config_dir() -> str:
    package = Path(__file__).resolve().parents[1]  # src/microgpt
    packaged = package / "conf"  # wheels carry conf/ inside the package
    if packaged.is_dir():
        return str(packaged)
    return str(package.parents[1] / "conf")  # editable install / source tree


CONFIG_DIR = _config_dir()


def check_command_line(config_name: str, argv: list[str]):
    """Compose the config once before Hydra runs, so a bad override is one clear error line;
    returns the composed config (with its `hydra` part), or None when it was not composed.

    Hydra's own report of these mistakes spans many lines; this raises ConfigError instead.
    Multirun sweeps get the group-name check only; Hydra's informational flags are left to Hydra.
    """
    multirun = any(a in ("-m", "--multirun") for a in argv)
    overrides = [a for a in argv if a not in ("-m", "--multirun")]
    if any(a.startswith("-") for a in overrides):
        return None
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from microgpt.core.errors import ConfigError

    for arg in overrides:
        key, sep, value = arg.partition("=")
        group = key.lstrip("+~")
        options = available_options(group)
        if value.startswith("["):  # a list of options (logger=[csv,wandb]): Hydra checks each itself
            continue
        for choice in (value.split(",") if multirun else [value]):
            choice = choice.strip("'\"")
            if sep and options and choice not in options and choice != "null" and "/" not in choice:
                raise ConfigError(f"unknown {group} {choice!r}; choose one of: {', '.join(options)} ({group}=<name>)")
    if multirun:
        return None
    try:
        with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
            return compose(config_name=config_name, overrides=overrides, return_hydra_config=True)
    except (HydraException, OmegaConfBaseException) as e:
        message = " ".join(str(e).split())
        raise ConfigError(f"{message} (see --help for the config groups)") from e


def quote_numeric_choices(argv: list[str]) -> list[str]:
    """`stage=2` -> `stage='2'`: Hydra reads a bare 2 as an int, which cannot name a config file."""
    out = []
    for arg in argv:
        key, sep, value = arg.partition("=")
        if sep and available_options(key.lstrip("+~")):
            choices = value.split(",")
            if any(c.isdigit() for c in choices):
                arg = f"{key}=" + ",".join(f"'{c}'" if c.isdigit() else c for c in choices)
        out.append(arg)
    return out


def available_options(group: str) -> list[str]:
    """Names of the configs in a config group folder (model, data, trainer, ...); [] if not a group."""
    folder = Path(CONFIG_DIR) / group
    if not group or not folder.is_dir():
        return []
    return sorted(p.stem for p in folder.glob("*.yaml") if not p.stem.startswith("_"))  # _base: shared parts
