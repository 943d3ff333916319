"""The command line's words before Hydra reads them: where the configs live, free text taken
literally, numeric config-group choices, and Hydra's own override grammar with one-line errors.

Hydra owns the grammar (`key=value`, `+key`, `++key`, `~key`, `group@package=option`, sweeps such as
`a,b`, `choice(..)`, `range(..)`, `glob(..)`, `interval(..)`); this module only rewrites the two
kinds of words Hydra would misread, into Hydra syntax that means what the user typed.
"""

from __future__ import annotations

import re
from pathlib import Path

# Settings that hold text people paste (prompts, documents, regexes): `key=<anything>` is taken
# literally, commas, quotes, brackets, `=`, `${`, newlines and trailing spaces included. A sweep over
# them is therefore not possible (`-m prompt=a,b` is the one prompt "a,b"; use `prompts=[a,b]`).
FREE_TEXT_KEYS = ("prompt", "system", "data.text", "tokenizer.pattern", "logger.wandb.notes")


def _config_dir() -> str:
    package = Path(__file__).resolve().parents[1]  # src/microgpt
    packaged = package / "conf"  # wheels carry conf/ inside the package
    if packaged.is_dir():
        return str(packaged)
    return str(package.parents[1] / "conf")  # editable install / source tree


CONFIG_DIR = _config_dir()


def available_options(group: str) -> list[str]:
    """Names of the configs in a config group folder (model, data, trainer, ...); [] if not a group."""
    folder = Path(CONFIG_DIR) / group
    if not group or not folder.is_dir():
        return []
    return sorted(p.stem for p in folder.glob("*.yaml") if not p.stem.startswith("_"))  # _base: shared parts


def split_word(arg: str) -> tuple[str, str, str, str]:
    """`++data.text=a=b` -> ("++", "data.text", "=", "a=b"): prefix, key (with any @package), separator, value."""
    key, sep, value = arg.partition("=")
    prefix = key[: len(key) - len(key.lstrip("+~"))]
    return prefix, key[len(prefix):], sep, value


def is_free_text(arg: str) -> bool:
    prefix, key, sep, _ = split_word(arg)
    return bool(sep) and "~" not in prefix and key in FREE_TEXT_KEYS and not arg.startswith("-")


def hydra_string(text: str) -> str:
    """A quoted Hydra value whose composed config value is exactly `text`, never interpolated.

    Two layers read the value: OmegaConf, where `\\${` is a literal `${` and a run of n backslashes
    before `${` must be 2n; then Hydra's quoted strings, where a run of n backslashes before a quote
    (an escaped one or the closing one) must be 2n."""
    text = re.sub(r"(\\*)\$\{", lambda m: m.group(1) * 2 + "\\${", text)
    text = re.sub(r"(\\*)'", lambda m: m.group(1) * 2 + "\\'", text)
    text = re.sub(r"(\\+)$", lambda m: m.group(1) * 2, text)
    return f"'{text}'"


def literal_text(argv: list[str]) -> list[str]:
    """Free-text overrides rewritten as Hydra strings (`prompt=Hi, I'm` -> `prompt='Hi, I\\'m'`)."""
    out = []
    for arg in argv:
        if is_free_text(arg):
            prefix, key, _, value = split_word(arg)
            arg = f"{prefix}{key}={hydra_string(value)}"
        out.append(arg)
    return out


def typed_text(arg: str) -> str:
    """The inverse of `literal_text` for one override: what the user typed. DDP child ranks are
    started with the words the user typed, so their own `literal_text` quotes them once, not twice."""
    if not is_free_text(arg):
        return arg
    from omegaconf import OmegaConf

    prefix, key, _, _ = split_word(arg)
    try:
        quoted = parse([arg])[0].value()
        return f"{prefix}{key}={OmegaConf.create({'v': quoted}).v}"
    except Exception:  # not one of ours: leave it as it was
        return arg


def parse(overrides: list[str], config_loader=None) -> list:
    """Hydra's own parse of the overrides; a word it cannot read is one ConfigError line."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    from microgpt.core.errors import ConfigError

    parser = OverridesParser.create(config_loader=config_loader)
    parsed = []
    for word in overrides:
        try:
            parsed.extend(parser.parse_overrides([word]))
        except OverrideParseException as e:
            reason = " ".join(str(e).split("\n")[-1].split()) or "Hydra cannot read it"
            raise ConfigError(
                f"cannot read the override {word!r}: {reason}; quote a value that holds commas, spaces, "
                f"brackets or quotes, e.g. 'key=\"a, b\"' (see --help)"
            ) from e
    return parsed


def _choice_words(override) -> list[str] | None:
    """The choices of a config-group override as strings, or None when none is a number."""
    from hydra.core.override_parser.types import ChoiceSweep, RangeSweep

    value = override._value  # the parsed value before any sweep is expanded
    if isinstance(value, RangeSweep):
        return [str(v) for v in override.sweep_string_iterator()]
    if isinstance(value, ChoiceSweep):
        items = value.list
    elif isinstance(value, int) and not isinstance(value, bool):
        items = [value]
    else:
        return None
    if not any(isinstance(v, int) and not isinstance(v, bool) for v in items):
        return None
    return [str(v) if not hasattr(v, "text") else v.text for v in items]


def quote_numeric_choices(argv: list[str]) -> list[str]:
    """`stage=2` -> `stage='2'`: Hydra reads a bare 2 as an int, which cannot name a config file.
    Sweeps too: `stage=1,2`, `stage=choice(1,2)` and `stage=range(1,3)` -> `stage='1','2'`, the
    form whose jobs' overrides Hydra's sweepers write back quoted."""
    out = []
    for arg in argv:
        prefix, key, sep, _ = split_word(arg)
        if sep and "~" not in prefix and not arg.startswith("-") and available_options(key.split("@")[0]):
            try:
                words = _choice_words(parse([arg])[0])
            except Exception:  # unreadable: check_command_line reports it
                words = None
            if words:
                arg = f"{prefix}{key}=" + ",".join(hydra_string(w) for w in words)
        out.append(arg)
    return out
