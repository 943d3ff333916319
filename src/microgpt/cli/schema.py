"""What a setting may be: its name and type, derived rather than written down twice.

- A section with a `_target_` (optim, schedule, trainer, each callback and logger) takes the
  parameters of its target's signature (`**kwargs`: any name), typed by the annotations.
- `model` takes GPTConfig's fields.
- Any other setting is the one its command's config defines, typed by its default value
  (bool, int, float, list, dict; a string or null default takes anything).

An int is fine where a float is expected, `null` always is (the commands say where it is not),
and a value that interpolates (`${...}`) is left to OmegaConf. A few settings also have a range
(CONSTRAINTS). Nothing here imports a target unless a config names it.
"""

from __future__ import annotations

import difflib
import functools
import inspect
import types
import typing
from pathlib import Path

from omegaconf import DictConfig, ListConfig, OmegaConf

from microgpt.cli.usage import required_message
from microgpt.core.errors import ConfigError

_ABSENT = object()
_HYDRA_KEYS = {"_target_", "_partial_", "_args_", "_recursive_", "_convert_"}
_KIND = {bool: "true or false", int: "an integer", float: "a number", str: "text", list: "a list [..]",
         dict: "a mapping {..}", type(None): "null"}


def _non_negative(v) -> str | None:
    return None if _is_number(v) and v >= 0 else "must be a number >= 0"


def _positive(v) -> str | None:
    return None if _is_number(v) and v > 0 else "must be a number > 0"


def _betas(v) -> str | None:
    ok = isinstance(v, list) and len(v) == 2 and all(_is_number(b) and 0 <= b < 1 for b in v)
    return None if ok else "must be two numbers in [0, 1), e.g. [0.9,0.95]"


def _pattern(v) -> str | None:
    from microgpt.core.bpe import resolve_pattern

    resolve_pattern(v)  # raises its own one-line ConfigError
    return None


# Ranges the types alone do not say; checked on the values typed on the command line.
CONSTRAINTS = {
    "optim.lr": _positive, "optim.weight_decay": _non_negative, "optim.momentum": _non_negative,
    "optim.eps": _non_negative, "optim.betas": _betas, "tokenizer.pattern": _pattern,
}


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


@functools.cache
def target_signature(target: str) -> tuple[frozenset[str], bool, dict]:
    """(parameter names, takes **kwargs, type hints) of a `_target_`; open if it cannot be read."""
    from hydra.utils import get_object

    try:
        obj = get_object(target)
        params = inspect.signature(obj).parameters
    except Exception:  # an import error or a C function: Hydra reports it when it instantiates
        return frozenset(), True, {}
    try:
        hints = typing.get_type_hints(obj.__init__ if inspect.isclass(obj) else obj)
    except Exception:
        hints = {}
    names = frozenset(n for n, p in params.items() if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD))
    return names, any(p.kind is p.VAR_KEYWORD for p in params.values()), hints


def model_fields() -> tuple[frozenset[str], dict]:
    from microgpt.core.model import GPTConfig

    hints = typing.get_type_hints(GPTConfig)
    return frozenset(hints), hints


def section_schema(path: str, node) -> tuple[frozenset[str] | None, bool, dict]:
    """(names, open, type hints) of the settings a section takes; names None: a plain section,
    which takes the settings its config defines."""
    if path == "model":
        names, hints = model_fields()
        return names, False, hints
    target = node.get("_target_") if isinstance(node, DictConfig) else None
    if isinstance(target, str):
        return target_signature(target)
    return None, False, {}


def known_names(path: str, node) -> frozenset[str]:
    """What a section has or takes: its own settings and its schema's."""
    keys = frozenset(k for k in node.keys() if k not in _HYDRA_KEYS) if isinstance(node, DictConfig) else frozenset()
    return keys | (section_schema(path, node)[0] or frozenset())


def _parent(cfg, key: str):
    path, _, name = key.rpartition(".")
    node = OmegaConf.select(cfg, path, default=_ABSENT) if path else cfg
    return path, name, node


def unknown_setting(baseline, override) -> None:
    """A value override of a setting the command's config does not have (before Hydra's own,
    many-line refusal): the closest valid name, or how to add a setting the section takes."""
    key = override.key_or_group
    if override.is_delete() or key.startswith("hydra.") or key == "hydra":
        return
    path, name, parent = _parent(baseline, key)
    if isinstance(parent, DictConfig) and name in parent.keys():  # `in` alone misses ??? values
        return
    if not isinstance(parent, DictConfig):
        if path and parent is _ABSENT:
            _parent_unknown(baseline, path, adding=override.is_add() or override.is_force_add())
        return  # inside a list or a value: Hydra says what it says
    names, is_open = known_names(path, parent), section_schema(path, parent)[1]
    value = override.value()
    takes_it = is_open or name in names or (isinstance(value, dict) and "_target_" in value)
    if takes_it and (override.is_add() or override.is_force_add()):
        return
    if takes_it:
        raise ConfigError(f"{key} is not set by this config; add it with +{key}={override.get_value_element_as_str()}")
    raise ConfigError(_unknown_message(key, path, name, names))


def _parent_unknown(baseline, path: str, adding: bool = False) -> None:
    """`+optimizer.lr=1`: the first missing part of the path is the unknown setting, unless it is
    a new named entry added to a collection of objects (`+callbacks.probe._target_=my.Probe`)."""
    parts = path.split(".")
    for i in range(len(parts)):
        head = ".".join(parts[: i + 1])
        up, name, node = _parent(baseline, head)
        if not isinstance(node, DictConfig):
            return  # inside a list or a value: Hydra says what it says
        if name not in node.keys():
            if adding and _is_collection(node):
                return  # check_targets checks the new entry against its _target_ once composed
            raise ConfigError(_unknown_message(head, up, name, known_names(up, node)))


def _is_collection(node) -> bool:
    """A section of named objects (callbacks, logger): every entry that is set is a `_target_` mapping."""
    if "_target_" in node:
        return False
    entries = [node._get_node(k) for k in node.keys()]
    entries = [e for e in entries if not e._is_none()]  # a switched-off entry (progress_bar: null)
    return bool(entries) and all(isinstance(e, DictConfig) and "_target_" in e for e in entries)


def _unknown_message(key: str, path: str, name: str, names) -> str:
    prefix = f"{path}." if path else ""
    close = closest(name, names)
    if close:
        return f"unknown setting {key}; did you mean {prefix}{close}?"
    where = f"under {path}" if path else "at the top level"
    return f"unknown setting {key}; the settings {where} are: {', '.join(sorted(names))} (see --help)"


def closest(name: str, names) -> str | None:
    """The valid name a mistyped one most likely meant: a near spelling, or the same initials
    (learning_rate -> lr, wd -> weight_decay)."""
    close = difflib.get_close_matches(name, sorted(names), n=1, cutoff=0.6)
    if close:
        return close[0]
    initials = [n for n in sorted(names) if _initials(n) == name or _initials(name) == n]
    return initials[0] if initials else None


def _initials(name: str) -> str:
    parts = [p for p in name.split("_") if p]
    return "".join(p[0] for p in parts) if len(parts) > 1 else name


def check_settings(composed, baseline, overrides: list, ranges_of=lambda override: True) -> None:
    """The type and range of each value the command line sets, then every `_target_` section's
    names (a group switch such as optim=sgd can leave a setting its target does not take)."""
    for override in overrides:
        key = override.key_or_group
        if override.is_delete() or key == "hydra" or key.startswith("hydra.") or override.is_sweep_override():
            continue
        value = override.value()
        if value is None or (isinstance(value, str) and "${" in value):
            continue
        accepted = expected_types(composed, baseline, key)
        if accepted is not None and not _fits(value, accepted):
            kinds = " or ".join(dict.fromkeys(_KIND[t] for t in accepted if t is not type(None)))
            raise ConfigError(f"{key} must be {kinds}, got {override.get_value_element_as_str()!r}")
        problem = CONSTRAINTS[key](value) if key in CONSTRAINTS and ranges_of(override) else None
        if problem:
            raise ConfigError(f"{key} {problem}, got {override.get_value_element_as_str()}")
    check_targets(composed)


def _fits(value, accepted: set) -> bool:
    if isinstance(value, bool):
        return bool in accepted
    if isinstance(value, int) and float in accepted:
        return True
    return any(isinstance(value, t) for t in accepted if t is not bool)


def expected_types(composed, baseline, key: str) -> set | None:
    """The Python types a setting takes; None: anything."""
    path, name, parent = _parent(composed, key)
    if isinstance(parent, DictConfig):
        hint = section_schema(path, parent)[2].get(name)
        if hint is not None:
            return types_of(hint)
    default = OmegaConf.select(baseline, key, default=_ABSENT, throw_on_missing=False,
                               throw_on_resolution_failure=False)  # ${hydra:...} resolves only in the job
    if isinstance(default, (ListConfig, DictConfig)):
        return {list} if isinstance(default, ListConfig) else {dict}
    if isinstance(default, str) and "${" in default:
        return None
    return {bool: {bool}, int: {int}, float: {float}}.get(type(default))


def types_of(hint) -> set | None:
    """`float | None` -> {float, NoneType}; None where a hint allows what a command line cannot type."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        parts = [types_of(h) for h in typing.get_args(hint) if not _is_tensor(h)]
        return None if any(p is None for p in parts) else set().union(*parts)
    if origin is typing.Literal:
        return {type(v) for v in typing.get_args(hint)}
    base = origin or hint
    if base in (bool, int, float, str, type(None)):
        return {base}
    if base in (list, tuple) or (inspect.isclass(base) and issubclass(base, (list, tuple))):
        return {list}
    if base is dict:
        return {dict}
    return None


def _is_tensor(hint) -> bool:
    return getattr(hint, "__module__", "") == "torch" and getattr(hint, "__name__", "") == "Tensor"


def check_targets(cfg, path: str = "") -> None:
    """Every `_target_` section (outside `hydra`) names only parameters its target takes; `model`
    only GPTConfig's fields."""
    if isinstance(cfg, DictConfig):
        names, is_open, _ = section_schema(path, cfg)
        for name in cfg.keys() if names is not None and not is_open else ():
            if name not in _HYDRA_KEYS and name not in names:
                key = f"{path}.{name}" if path else str(name)
                raise ConfigError(f"{_unknown_message(key, path, str(name), names)} ({_what(path, cfg)} takes no {name})")
        items = [(k, cfg._get_node(k)) for k in cfg.keys() if path or k != "hydra"]
    elif isinstance(cfg, ListConfig):
        items = [(str(i), cfg._get_node(i)) for i in range(len(cfg))]
    else:
        return
    for key, node in items:
        if isinstance(node, (DictConfig, ListConfig)) and not node._is_missing() and not node._is_interpolation():
            check_targets(node, f"{path}.{key}" if path else str(key))


def _what(path: str, cfg) -> str:
    return "GPTConfig" if path == "model" else str(cfg._target_)


def require_values(config_name: str, composed) -> None:
    """A `???` setting the command line left out: `ckpt= is required: python -m ...`."""
    choices = dict(composed.hydra.runtime.choices) if "hydra" in composed else {}
    missing = _first_missing(composed) or _missing_in_chosen_options(composed, choices)
    if missing is not None:
        raise ConfigError(required_message(config_name, missing, choices))


def _missing_in_chosen_options(composed, choices: dict) -> str | None:
    """A group option's `???` the command line did not set (`stage=2` asks for `init_from`).

    OmegaConf keeps the primary config's value when a `???` is merged over it, so the composed
    config alone cannot tell that `stage/2.yaml` asks for `init_from`: read the chosen files."""
    from microgpt.cli.overrides import CONFIG_DIR

    # Unresolved: an override's text may hold ${hydra:...}, which only resolves inside a running job.
    task = OmegaConf.to_container(composed.hydra.overrides, resolve=False)["task"] if "hydra" in composed else []
    typed = {o.split("=", 1)[0].lstrip("+~") for o in task}
    for group, option in choices.items():
        path = Path(CONFIG_DIR) / group / f"{option}.yaml"
        if group.startswith("hydra") or not option or not path.is_file():
            continue
        text = path.read_text()
        prefix = "" if "@package _global_" in text else f"{group.replace('/', '.')}."
        raw = OmegaConf.create(text)
        raw.pop("defaults", None)
        raw.pop("hydra", None)
        found = _first_missing(raw)
        if found is not None and prefix + found not in typed:
            return prefix + found
    return None


def _first_missing(cfg, path: str = "") -> str | None:
    if not isinstance(cfg, DictConfig):
        return None
    for key in cfg.keys():
        if not path and key == "hydra":
            continue
        full = f"{path}.{key}" if path else str(key)
        if OmegaConf.is_missing(cfg, key):
            return full
        node = cfg._get_node(key)
        if isinstance(node, DictConfig) and not node._is_interpolation():
            found = _first_missing(node, full)
            if found:
                return found
    return None
