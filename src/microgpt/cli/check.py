"""Checking a command line against the configs before Hydra runs it: one clear line for a mistake,
before any work is done or any directory is made.

Hydra parses the words (overrides.parse); this module checks what they name: config-group choices
(each one of a sweep, without composing every job), then composes the config (every job of a
small sweep, one job per choice of a large one) and checks its settings (cli.schema).
"""

from __future__ import annotations

import itertools

from microgpt.cli.overrides import CONFIG_DIR, parse
from microgpt.cli.schema import check_settings, require_values, unknown_setting
from microgpt.core.errors import ConfigError

# Hydra flags that print or run something other than the job: left to Hydra.
_HYDRA_ONLY = ("hydra_help", "info", "shell_completion", "experimental_rerun", "version")
ALL_JOBS_UP_TO = 8  # a sweep this small has each of its jobs composed; a larger one, each choice once


def hydra_flags(argv: list[str]):
    """Hydra's own reading of its flags (-m, --cfg, --config-name, ...); None when it cannot read them."""
    from hydra._internal.utils import get_args_parser

    try:
        args, unknown = get_args_parser().parse_known_intermixed_args(argv)
    except (SystemExit, TypeError):
        return None
    return None if unknown else args


def flags_first(argv: list[str]) -> list[str]:
    """Hydra's flags before the overrides (`a=1 -m b=2,3` -> `-m a=1 b=2,3`): Hydra's parser takes
    the overrides as one run of words and refuses a flag between them."""
    args = hydra_flags(argv)
    if args is None:
        return argv
    pending, flags, words = list(args.overrides), [], []
    for token in argv:
        if pending and token == pending[0]:
            words.append(pending.pop(0))
        else:
            flags.append(token)
    return flags + words


def check_command_line(config_name: str, argv: list[str]):
    """Compose the config before Hydra runs, so a bad override is one clear error line; returns
    the composed config of the (first) job, with its `hydra` part, or None when not composed."""
    args = hydra_flags(argv)
    if args is None or args.help or any(getattr(args, flag, None) for flag in _HYDRA_ONLY):
        return None  # Hydra reports and prints these itself
    overrides = parse(args.overrides)
    if args.config_path or args.config_dir:
        return None  # another config directory: Hydra checks it
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        loader = GlobalHydra.instance().config_loader()
        name = args.config_name or config_name
        overrides = parse(args.overrides, config_loader=loader)  # again, with the loader globs need
        groups = {o.key_or_group: loader.get_group_options(o.key_or_group) for o in overrides}
        groups = {k: v for k, v in groups.items() if v}
        for override in overrides:
            if override.key_or_group in groups:
                check_choices(override, groups[override.key_or_group])
        check_sweeps(overrides, multirun=args.multirun)
        composed = None
        swept = {o.get_key_element() for o in overrides if o.is_sweep_override()}
        for job in jobs(overrides, groups):
            config = compose_job(name, job, groups, printing=bool(args.cfg), swept=swept)
            composed = composed if composed is not None else config
        return composed


def group_choices(override, options: list[str]) -> list:
    """The config names a group override asks for: one, a list (`logger=[csv,wandb]`) or a sweep."""
    from hydra.core.override_parser.types import Glob

    if override.is_delete():
        return []
    value = override._value
    if isinstance(value, Glob):
        chosen = value.filter(options)
        if not chosen:
            raise ConfigError(f"{override.input_line} matches no {override.key_or_group} option; "
                              f"choose from: {', '.join(options)}")
        return chosen
    if override.is_discrete_sweep():
        return list(override.sweep_iterator())
    return [override.value()]


def check_choices(override, options: list[str]) -> None:
    group = override.key_or_group
    for choice in group_choices(override, options):
        for name in choice if isinstance(choice, list) else [choice]:
            name = getattr(name, "text", name)
            if name is None or (isinstance(name, str) and ("/" in name or name in options)):
                continue
            raise ConfigError(f"unknown {group} {name!r}; choose one of: {', '.join(options)} ({group}=<name>)")


def check_sweeps(overrides: list, multirun: bool) -> None:
    """A sweep needs -m; the basic sweeper takes only lists and ranges (interval() is for samplers)."""
    sweeper = next((o.value() for o in overrides if o.key_or_group == "hydra/sweeper"), "basic")
    for override in overrides:
        if not override.is_sweep_override():
            continue
        if not multirun:
            raise ConfigError(f"{override.input_line} is a sweep: add -m to run one job per value, or "
                              f"quote a single value that holds commas ('{override.get_key_element()}=\"a,b\"')")
        if not override.is_discrete_sweep() and sweeper == "basic":
            raise ConfigError(f"{override.input_line}: Hydra's basic sweeper does not sample "
                              f"{override.value_type.name.lower().replace('_', ' ')}s; give a list "
                              f"({override.get_key_element()}=1e-3,3e-4), range(...), or a sampling sweeper "
                              f"(hydra/sweeper=optuna)")


def jobs(overrides: list, groups: dict[str, list[str]]) -> list[list[str]]:
    """The override lists of the jobs to compose: every job of a small sweep, else enough jobs that
    each value of each sweep is in one of them. A sampled (interval) setting is left to its sweeper."""
    axes = []
    for o in overrides:
        key = o.get_key_element()
        if o.is_sweep_override() and not o.is_discrete_sweep():
            continue
        if o.is_sweep_override():
            axes.append([f"{key}={v}" for v in sweep_strings(o, groups.get(o.key_or_group))])
        else:
            axes.append([o.input_line])
    combos = 1
    for axis in axes:
        combos *= len(axis)
    if combos <= ALL_JOBS_UP_TO:
        return [list(job) for job in itertools.product(*axes)]
    return [[axis[i % len(axis)] for axis in axes] for i in range(max(len(a) for a in axes))]


def sweep_strings(override, options: list[str] | None) -> list[str]:
    from hydra.core.override_parser.types import Glob

    if isinstance(override._value, Glob):
        return override._value.filter(options or [])
    return list(override.sweep_string_iterator())


def compose_job(config_name: str, job: list[str], groups: dict, printing: bool, swept: set[str] = frozenset()):
    """One job's config, checked: its group choices alone first (the settings' defaults and
    types), then with every override; Hydra's errors become one line. A swept value out of its
    range is left to its job, which fails alone while the sweep goes on (and the soup uses the rest)."""
    from hydra import compose

    group_words = [w for w in job if w.lstrip("+~").split("=")[0].split("@")[0] in groups]
    baseline = _compose(compose, config_name, group_words, None)
    values = parse([w for w in job if w not in group_words])
    for o in values:
        unknown_setting(baseline, o)
    composed = _compose(compose, config_name, job, baseline)
    check_settings(composed, baseline, values, ranges_of=lambda o: o.get_key_element() not in swept)
    if not printing:  # --cfg job prints a config that still lacks its required values
        require_values(config_name, composed)
    return composed


def _compose(compose, config_name: str, overrides: list[str], baseline):
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    try:
        return compose(config_name=config_name, overrides=overrides, return_hydra_config=True)
    except (HydraException, OmegaConfBaseException, ValueError) as e:
        message = " ".join(str(e).split())
        raise ConfigError(f"{message} (see --help for the config groups and settings)") from e
