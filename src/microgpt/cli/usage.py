"""The configs' own comments as documentation: `--help`, and what a required setting is for.

The YAML files already say what each setting means (the comment after it) and how the command is
run (the first `python -m microgpt...` comment line); this reads them instead of repeating them.
"""

from __future__ import annotations

import re
from pathlib import Path

from microgpt.cli.overrides import CONFIG_DIR, FREE_TEXT_KEYS, available_options

_SETTING = re.compile(r"^(?P<indent> *)(?P<key>[A-Za-z_]\w*):(?P<value>[^#]*?)\s*(?:#\s*(?P<doc>.*))?$")
_DEFAULT = re.compile(r"^\s*-\s*(?:override\s+)?(?P<group>[\w/]+)(?:@[\w.]+)?:\s*(?P<option>[^\s#]+)\s*(?:#\s*(?P<doc>.*))?$")
# Groups whose default option's settings --help lists as well (group.key); the rest: their options.
_DOCUMENTED_GROUPS = ("model", "tokenizer", "data", "optim", "schedule")


def config_file(name: str) -> Path:
    return Path(CONFIG_DIR) / f"{name}.yaml"


def usage_line(path: Path, command: str | None = None) -> str | None:
    """The first `python -m microgpt...` comment of a config file, for `command` if given."""
    if not path.is_file():
        return None
    for line in path.read_text().splitlines():
        if line.lstrip().startswith("#") and "python -m microgpt" in line:
            usage = line[line.index("python -m microgpt"):].strip()
            return re.sub(r"microgpt\.\w+", f"microgpt.{command}", usage, count=1) if command else usage
    return None


def settings(path: Path, prefix: str = "") -> list[tuple[str, str, str]]:
    """(key, default, comment) of the settings of a config file, nested ones as `parent.key`; the
    defaults list and the `hydra` section left out."""
    out, parents = [], []
    skip = None
    for line in path.read_text().splitlines() if path.is_file() else []:
        m = _SETTING.match(line)
        if not m:
            continue
        depth = len(m["indent"]) // 2
        parents[depth:] = [m["key"]]
        if depth == 0:
            skip = m["key"] in ("defaults", "hydra")
        if skip or (not m["value"].strip() and not m["doc"]):
            continue
        out.append((prefix + ".".join(parents), m["value"].strip(), (m["doc"] or "").strip()))
    return out


def defaults_list(path: Path) -> list[tuple[str, str, str]]:
    """(group, default option, comment) of a config file's defaults list (not hydra's own groups)."""
    out = []
    for line in path.read_text().splitlines():
        m = _DEFAULT.match(line)
        if m and not m["group"].startswith("hydra") and m["group"] != "_self_" and "/" not in m["group"]:
            out.append((m["group"], m["option"], (m["doc"] or "").strip()))
    return out


def help_text(command: str) -> str:
    """`python -m microgpt.<command> --help`: usage, config groups and their options, settings."""
    path = config_file(command)
    lines = [_header(path, command)]
    groups = [(g, o, d) for g, o, d in defaults_list(path) if g != "paths"]
    if groups:
        lines += ["", "Config groups (group=option; * marks the default):"]
    for group, default, doc in groups:
        options = ", ".join(f"{o}*" if o == default else o for o in available_options(group))
        lines.append(f"  {group + '=':<12} {options}" + (f"  ({doc})" if doc else ""))
    rows = [(k, v, d) for k, v, d in settings(path) if d or "." not in k]
    for group, option, _ in groups:
        if group in _DOCUMENTED_GROUPS and option != "null":
            rows += [r for r in _option_settings(group, option) if r[2]]
    lines += ["", "Settings (key=value; the default, then what it does):"]
    width = min(34, max((len(k) for k, _, _ in rows), default=10))
    lines += [f"  {k:<{width}} {v:<14} {d}".rstrip() for k, v, d in rows]
    roots = {g for g, _, _ in groups} | {k for k, _, _ in rows}
    free = ", ".join(k for k in FREE_TEXT_KEYS if k.split(".")[0] in roots) or "none in this command"
    lines += ["", *_GRAMMAR.format(free=free).splitlines()]
    return "\n".join(lines)


def _header(path: Path, command: str) -> str:
    head = []
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        head.append(line.lstrip("# ").rstrip())
    return "\n".join(head) or f"python -m microgpt.{command} [key=value ...]"


def _option_settings(group: str, option: str) -> list[tuple[str, str, str]]:
    path = Path(CONFIG_DIR) / group / f"{option}.yaml"
    rows = []
    if path.is_file() and "- _base" in path.read_text():
        rows += settings(path.with_name("_base.yaml"), prefix=f"{group}.")
    return rows + [r for r in settings(path, prefix=f"{group}.") if not r[0].startswith(f"{group}._")]


_GRAMMAR = """\
Command line (Hydra's override syntax):
  key=value  set a setting      +key=value  add one the config lacks   ~key  remove one
  group=option  choose a config file;  a value with spaces or commas: 'key="a, b"'
  Taken literally, whatever they hold (quotes, commas, newlines, ${{...}}): {free}
    e.g. data.text="$(cat notes.txt)"
  -m sweeps, one job per value: -m seed=1,2,3   -m seed=range(1,4)   -m model=choice(nano,micro)
    -m model=glob(*)   (interval(...) needs a sampling sweeper, e.g. hydra/sweeper=optuna)
  --cfg job prints the composed config and exits; --hydra-help: Hydra's own options."""


def required_message(command: str, key: str, choices: dict) -> str:
    """`ckpt= is required (<its comment>): <how the command is run>`, from the file that asks for it."""
    leaf = key.rsplit(".", 1)[-1]
    required = re.compile(rf"^\s*{re.escape(leaf)}:\s*\?\?\?\s*(?:#\s*(?P<doc>.*))?$", re.M)
    files = [Path(CONFIG_DIR) / g / f"{o}.yaml" for g, o in choices.items() if o and not g.startswith("hydra")]
    # Hydra lists the choices last-applied first (experiment= before data=): the first file that asks wins.
    candidates = [(path, True) for path in files
                  if key.startswith(f"{path.parent.name}.") or "." not in key or _global_package(path)]
    for path, in_group in [*candidates, (config_file(command), False)]:
        text = path.read_text() if path.is_file() else ""
        m = required.search(text)
        if m:
            doc = f" ({m['doc'].strip()})" if m["doc"] else ""
            usage = usage_line(path, command if in_group else None) or f"python -m microgpt.{command} {key}=..."
            return f"{key}= is required{doc}: {usage}"
    return f"{key}= is required: python -m microgpt.{command} {key}=<value> (see --help)"


def _global_package(path: Path) -> bool:
    return path.is_file() and "@package _global_" in path.read_text()
