"""The README's shell examples, run as a user pastes them: every ```bash / ```sh / ```console block.

Each command runs through `bash -c` in one workspace shared by the whole README, in the README's
order, so a later example finds what an earlier one wrote (`outputs/<date>/<time>/...`). The
workspace holds the files a user's examples name (`corpus/*.txt`, `notes.txt`, `input.txt`, ...).
What changes before a command runs, and nothing else:
- training is shortened: `max_steps=4`, a 1-layer 32-wide model, tiny batches (SHORT_TRAIN);
- placeholders that name earlier outputs are filled in: `outputs/<date>/<time>` (the newest run),
  `<ckpt>`, `<dir>`, `outputs/multirun/<date>/<time>` (the newest sweep), `a.ckpt,b.ckpt,c.ckpt`
  (its jobs' checkpoints), and a `stepNNNNNN.ckpt` that the short run did not reach.

A command that cannot run offline on a CPU in seconds is skipped with its reason, never silently:
either its block is marked in the README, on the line right before the block,

    <!-- readme-test: skip (needs a GPU) -->

or a rule of NEEDS below matches it (the skip message names the rule). `<!-- readme-test: run -->`
runs a block whatever the rules say. New blocks are picked up as they are added.

Each command still runs with a shell's meaning, but not each in a new interpreter: bash expands the
line, and a plain `python -m microgpt.<command> ...` (or `python -c`) runs in a child forked from one
server process that has imported torch, Lightning and Hydra once (tests/readme_runner.py); any other
line (`&&`, redirections, DDP) runs as a real `bash -c`; README_TEST_FORK=0 runs every line that way.
Either way its exit status must be 0.
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import OFFLINE_ENV, fixture_file, fixture_text
from readme_runner import ForkServer, plan, run_command

pytestmark = pytest.mark.heavy  # long real-process runs: handed to a worker first (conftest.py)

README = Path(__file__).resolve().parents[1] / "README.md"
SHELLS = ("bash", "sh", "shell", "console")
MARKER = re.compile(r"<!--\s*readme-test:\s*(?P<verb>skip|run)\s*(?:\((?P<reason>[^)]*)\))?\s*-->")
TIMEOUT = 300

# (pattern searched in the command, why it cannot run here). Checked in order; the first match wins.
NEEDS = [
    (r"^make (test|lint)\b", "runs the test suite / linters themselves (CI runs them)"),
    (r"^make install\b|\bpip install\b", "installs packages"),
    (r"^make bench\b|\bbench/", "a benchmark: minutes, and the data in ../shared"),
    (r"\btrainer=(gpu|8xh200|fsdp)\b(?!.*\bdry_run=true)", "needs a GPU"),
    (r"\btrainer=slurm\b|\bhydra\.launcher\.", "needs a SLURM cluster"),
    (r"^torchrun\b", "needs a multi-node launcher"),
    (r"^wandb (login|sync)\b", "needs the network (W&B)"),
    (r"\b(ckpt|init_from)=gpt2(-\w+)?\b", "downloads GPT-2's weights (network)"),
    (r"\bdata=(url|shakespeare|fineweb_edu|stage2_hq)\b", "downloads its data (network)"),
    (r"\bdata\.path=/data/saved_dataset\b", "needs a dataset saved with `Dataset.save_to_disk`"),
    (r"\bdata=hf\b(?!.*\bdata\.path=json\b)", "streams a Hugging Face dataset (network)"),
    (r"(callbacks=hellaswag|tasks=\[[^]]*hellaswag)(?!.*hellaswag\.source=)", "downloads HellaSwag (network)"),
    (r"\bdata\.shards_dir=data/fineweb_edu\b", "reads FineWeb-Edu shards (prepared from the network)"),
]

# What makes a training command take seconds: appended, replacing the command's own values.
SHORT_TRAIN = {
    "max_steps": "4", "eval_every": "2", "eval_batches": "1", "checkpoint_every": "2",
    "schedule.warmup_steps": "1", "data.batch_size": "4", "model.n_layer": "1", "model.n_head": "2",
    "model.n_embd": "32", "model.block_size": "32", "data.block_size": "32",
    "callbacks.text_samples.max_new_tokens": "8",
}


@dataclass(frozen=True)
class Command:
    block: int  # 1-based, in README order
    line: int  # the README line the command starts on
    text: str
    marker: tuple[str, str] | None  # (verb, reason) from the README, or None

    @property
    def id(self) -> str:
        return f"block{self.block:02d}-L{self.line}"


def readme_commands(text: str) -> list[Command]:
    """Every command of every shell block: `\\` continuations joined, comments and, in console
    blocks (or lines with a `$ ` prompt), the printed output left out."""
    lines, commands, block = text.splitlines(), [], 0
    i = 0
    while i < len(lines):
        fence = re.match(r"^```(\w*)\s*$", lines[i])
        if not fence:
            i += 1
            continue
        end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
        if fence.group(1) in SHELLS:
            block += 1
            marker = block_marker(lines, i)
            commands += [Command(block, i + 2 + n, cmd, marker) for n, cmd in split_commands(lines[i + 1: end])]
        i = end + 1
    return commands


def block_marker(lines: list[str], fence: int) -> tuple[str, str] | None:
    before = next((line for line in reversed(lines[:fence]) if line.strip()), "")
    m = MARKER.search(before)
    return (m.group("verb"), (m.group("reason") or "").strip()) if m else None


def split_commands(body: list[str]) -> list[tuple[int, str]]:
    """(offset of the first line, command) for each command of a block's lines."""
    prompted = any(line.startswith("$ ") for line in body)
    out, current, start = [], "", 0
    for n, line in enumerate(body):
        if not current:
            if prompted and not line.startswith("$ "):
                continue  # printed output
            line = line.removeprefix("$ ")
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            start = n
        current += line.rstrip()
        if current.endswith("\\"):
            current = current[:-1] + " "
            continue
        out.append((start, strip_comment(current).strip()))
        current = ""
    return out


def strip_comment(command: str) -> str:
    """The command without its trailing `# ...` comment (a `#` outside quotes, after a space)."""
    quote, prev = None, " "
    for i, ch in enumerate(command):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and prev.isspace():
            return command[:i]
        prev = ch
    return command


COMMANDS = readme_commands(README.read_text())


def skip_reason(command: Command) -> str | None:
    if command.marker:
        verb, reason = command.marker
        return None if verb == "run" else f"README marks block {command.block}: {reason or 'skip'}"
    for pattern, reason in NEEDS:
        if re.search(pattern, command.text):
            return f"{reason} (rule {pattern!r} in tests/test_readme.py)"
    return None


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    """A user's directory: the files the README's examples name."""
    root = tmp_path_factory.mktemp("readme")
    text = fixture_text("tinyshakespeare.txt")
    for name, part in (("corpus/a.txt", text[:40_000]), ("corpus/b.txt", text[40_000:80_000]),
                       ("my_corpus/a.txt", text[:40_000]), ("notes.txt", text[80_000:100_000]),
                       ("input.txt", text[:100_000]), ("heldout.txt", text[-30_000:])):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(part)
    paragraphs = [p for p in text[:60_000].split("\n\n") if p.strip()]
    for name in ("extra/a.jsonl", "local/a.jsonl"):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text("".join(json.dumps({"text": p}) + "\n" for p in paragraphs))
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": paragraphs}), root / "more.parquet")
    hellaswag = fixture_file("hellaswag_val.jsonl").read_bytes()
    for name in ("hellaswag_val.jsonl", "data/hellaswag_val.jsonl"):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(hellaswag)
    return root


def newest(paths: list[Path]) -> Path | None:
    return max(paths, key=lambda p: p.stat().st_mtime, default=None)


def fill_in(command: str, root: Path) -> str:
    """The command with the placeholders for earlier outputs filled in (see the module doc)."""
    run = newest([p.parents[1] for p in root.glob("outputs/*/*/checkpoints/last.ckpt")
                  if "multirun" not in p.parts])
    sweep = newest([p for p in root.glob("outputs/multirun/*/*") if p.is_dir()])
    if run is not None:
        rel = str(run.relative_to(root))
        command = command.replace("outputs/<date>/<time>", rel).replace("<dir>", rel)
        command = command.replace("<ckpt>", f"{rel}/checkpoints/last.ckpt")
    if sweep is not None:
        command = re.sub(r"outputs/multirun/<date>/<time>", str(sweep.relative_to(root)), command)
        ckpts = sorted(str(p.relative_to(root)) for p in sweep.glob("*/checkpoints/last.ckpt"))
        command = command.replace("a.ckpt,b.ckpt,c.ckpt", ",".join(ckpts))
    for named in re.findall(r"[^\s='\"\[,]*/checkpoints/step\d{6}\.ckpt", command):
        steps = sorted((root / named).parent.glob("step*.ckpt"))
        if not (root / named).exists() and steps:
            command = command.replace(named, str(steps[-1].relative_to(root)))
    return command


def shortened(command: str) -> str:
    """A training command with SHORT_TRAIN appended: Hydra takes the last value given for a key,
    so these replace the command's own step counts and model size."""
    if not re.match(r"^(\w+=\S+ )*python -m microgpt\.train\b", command) or re.search(r"--cfg|dry_run=true", command):
        return command
    extra = [f"{k}={v}" for k, v in SHORT_TRAIN.items()]
    if "callbacks=hellaswag" in command:
        extra.append("callbacks.hellaswag.limit=8")
    return " ".join([command, *extra])


def command_env() -> dict[str, str]:
    """The environment a user's shell gives the commands: offline, no debug switches, and `python`
    is the interpreter running the tests."""
    env = {k: v for k, v in os.environ.items() if k not in ("HYDRA_FULL_ERROR", "MICROGPT_DEBUG")}
    env.update(OFFLINE_ENV)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


class Runner:
    """The fork server (None with README_TEST_FORK=0: every line as `bash -c`) and how each line ran."""

    def __init__(self, server: ForkServer | None):
        self.server, self.ways = server, Counter()

    def run(self, text: str, cwd: Path):
        result = run_command(self.server, text, cwd, command_env(), TIMEOUT)
        self.ways[result.how] += 1
        return result


@pytest.fixture(scope="module")
def runner(tmp_path_factory, request):
    """The fork server the README's `python -m microgpt.<command>` lines run in (readme_runner.py),
    started once; at the end, how many commands ran in it and how many as `bash -c`, and why."""
    fork = os.environ.get("README_TEST_FORK", "1") != "0"
    server = ForkServer(command_env(), tmp_path_factory.mktemp("runner") / "server.log") if fork else None
    runner = Runner(server)
    yield runner
    if server is not None:
        server.close()
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter is not None and capture is not None and runner.ways:
        with capture.global_and_fixture_disabled():
            reporter.write_line(f"\ntests/test_readme.py: {sum(runner.ways.values())} command(s) run: "
                                + "; ".join(f"{n} {how}" for how, n in runner.ways.most_common()))


@pytest.mark.parametrize("command", COMMANDS, ids=[c.id for c in COMMANDS])
def test_readme_command_runs(command: Command, workspace: Path, runner: Runner):
    reason = skip_reason(command)
    if reason:
        pytest.skip(reason)
    text = shortened(fill_in(command.text, workspace))
    left = re.findall(r"<[^<>\s][^<>]*>|\ba\.ckpt,b\.ckpt,c\.ckpt\b", text)
    if left:
        pytest.skip(f"a template: fill in {', '.join(left)} (no earlier block wrote what it names)")
    result = runner.run(text, workspace)
    assert result.returncode == 0, (
        f"README line {command.line} (block {command.block}) failed with exit status {result.returncode}\n"
        f"  as written: {command.text}\n  as run:     {text}\n  ran by:     {result.how}\n{result.stderr[-2000:]}")


def test_a_broken_command_fails(runner: Runner, tmp_path: Path):
    """The runner can fail: a bad README line exits non-zero with its one-line error, whichever way it ran."""
    forked = runner.run("python -m microgpt.train model=banana", tmp_path)
    assert forked.how == ("fork server" if runner.server else "bash -c: no fork server")
    assert forked.returncode == 2, forked.stderr
    assert forked.stderr.strip().splitlines()[-1].startswith("error: unknown model 'banana'"), forked.stderr
    raised = runner.run("python -c \"import sys; print(sys.argv); raise SystemExit('boom')\" x", tmp_path)
    assert (raised.returncode, raised.stderr.strip(), raised.stdout.strip()) == (1, "boom", "['-c', 'x']")
    shell = runner.run("ls no-such-file && echo listed", tmp_path)
    assert shell.how.startswith("bash -c") and shell.returncode != 0 and "listed" not in shell.stdout


def test_only_plain_python_lines_go_to_the_fork_server(tmp_path: Path):
    env = command_env()
    one = plan("WANDB_MODE=offline python -m microgpt.train -m 'data.paths=[a b]' x=\"$(echo 1 2)\"", tmp_path, env)
    assert (one.module, one.args, one.env["WANDB_MODE"]) == ("microgpt.train", ["-m", "data.paths=[a b]", "x=1 2"],
                                                             "offline")
    piped = plan("printf 'a b' | python -m microgpt.generate prompt=-", tmp_path, env)
    assert (piped.module, piped.args, piped.stdin) == ("microgpt.generate", ["prompt=-"], b"a b")
    assert plan("python -c 'import microgpt' 1", tmp_path, env).code == "import microgpt"
    for line in ("python -m microgpt.train --cfg job | head", "python -m microgpt.export out=x && ls x",
                 "python -m microgpt.train < input.txt", "echo python",
                 "python -m microgpt.train x=$(python -m microgpt.generate)",
                 "python -m microgpt.train -m seed=1,2 hydra/launcher=joblib", "python -m pip list"):
        assert plan(line, tmp_path, env).module is None, line
    # DDP's rank 0 runs forked; Lightning starts the other ranks as new interpreters.
    ddp = plan("python -m microgpt.train trainer=ddp_cpu", tmp_path, env)
    assert (ddp.module, ddp.args) == ("microgpt.train", ["trainer=ddp_cpu"])


def test_the_readme_has_runnable_examples():
    """The harness reads the README: its blocks are found and most of them run."""
    assert len({c.block for c in COMMANDS}) >= 10
    runnable = [c for c in COMMANDS if skip_reason(c) is None]
    assert any(re.search(r"microgpt\.train\b", c.text) for c in runnable)
    assert any(re.search(r"microgpt\.generate\b", c.text) for c in runnable)


def test_commands_are_split_as_a_shell_would():
    body = ["$ python -m a x=1 \\", "    y=2   # a comment", "output line", "# only a comment", "",
            "$ echo 'a # not a comment'"]
    assert split_commands(body) == [(0, "python -m a x=1      y=2"), (5, "echo 'a # not a comment'")]
    assert shortened("python -m microgpt.train max_steps=5000").split() == [
        "python", "-m", "microgpt.train", "max_steps=5000", *[f"{k}={v}" for k, v in SHORT_TRAIN.items()]]
    assert shortened("python -m microgpt.train --cfg job") == "python -m microgpt.train --cfg job"
    assert skip_reason(Command(1, 1, "python -m microgpt.train trainer=gpu", None)).startswith("needs a GPU")
    assert skip_reason(Command(1, 1, "python -m microgpt.train trainer=gpu", ("run", ""))) is None
    assert "W&B" in skip_reason(Command(1, 1, "wandb login", None))
