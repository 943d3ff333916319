"""Runs README commands as a user's shell would, with the heavy imports paid once (tests/test_readme.py).

A plain `python -m microgpt.<command> ...` spends 5-15 s importing torch, Lightning and Hydra before it
does anything. Here one long-lived process, the fork server, imports them once (and no more: no torch
computation, so no thread pools exist yet), and runs each command in a child forked from it: the child
chdirs to the command's directory, takes its environment and argv, and runs the module as `__main__`
with `runpy`, exactly as `python -m` does, then exits with the command's exit status. The server never
composes a config, so each child starts with Hydra's global state as a new process does.

The shell's part stays the shell's: bash expands the command line (quotes, `$(cat notes.txt)`, globs,
`VAR=value` prefixes) with `python` defined as a function that writes down its argv and environment
instead of running (and its stdin, so `cat notes.txt | python ...` works too). A line that calls
python once, as `python -m microgpt.<command> ...` or `python -c CODE`, runs in the server; anything
else (`&&` chains, redirections, python's output piped on, several python calls, a multirun launcher
that starts its jobs as new processes) runs as a real `bash -c` subprocess, as before: see `plan`.
DDP runs forked: rank 0 is the child, and Lightning starts the other ranks as new interpreters, as it
does for a user. A command can also be started without waiting (`ForkServer.start`), for the tests that
signal a run while it trains.

Run as a script, this file is the server: requests are JSON lines on stdin, replies JSON lines on stdout.
"""

from __future__ import annotations

import io
import json
import os
import re
import select
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

COMMANDS = ("train", "generate", "eval", "soup", "export", "prepare", "train_tokenizer", "plot", "chat")
# Imported by the server before it forks: everything the commands import, at module level or inside
# their functions. Lazily imported modules that are not here are imported by each child (correct, slower).
# Not wandb: importing it makes one `wandb-media` temporary directory that the first child's exit deletes
# (atexit) under all the later ones. A module here must not make per-process state at import.
PRELOAD = [
    "torch", "lightning", "lightning.pytorch", "hydra", "omegaconf", "numpy",
    "hydra._internal.utils", "hydra._internal.hydra", "hydra.core.hydra_config", "hydra.experimental.callback",
    *[f"microgpt.{c}" for c in COMMANDS],
    "microgpt.cli.check", "microgpt.cli.usage", "microgpt.cli.ddp",
    "microgpt.lightning.training", "microgpt.io.loading", "microgpt.io.outputs", "microgpt.io.export",
    "microgpt.io.config", "microgpt.io.init_from", "microgpt.core.sampling", "microgpt.core.bpe",
    "microgpt.evals.suite", "microgpt.evals.plots", "microgpt.data.prepare", "microgpt.data.sources",
]
OPTIONAL_PRELOAD = ["datasets", "tiktoken", "safetensors.torch", "pyarrow", "pyarrow.parquet",
                    "matplotlib", "matplotlib.figure", "yaml"]
READY = "fork-server ready"


# ---------------------------------------------------------------- the server (a separate process)

def serve() -> None:
    import importlib

    replies = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # whatever an import prints goes to the server's log, not into the replies
    for name in PRELOAD:
        importlib.import_module(name)
    for name in OPTIONAL_PRELOAD:
        try:
            importlib.import_module(name)
        except Exception:  # noqa: BLE001 - a child that needs it imports it (and fails) itself
            pass
    threads = len(os.listdir("/proc/self/task")) if os.path.isdir("/proc/self/task") else 1
    sys.stdout.flush()
    sys.stderr.flush()
    replies.write(json.dumps({"ready": READY, "threads": threads, "pid": os.getpid()}) + "\n")
    for line in sys.stdin:
        if not line.strip():
            continue
        request = json.loads(line)
        sys.stdout.flush()
        sys.stderr.flush()
        replies.write(json.dumps(handle(request)) + "\n")


def handle(request: dict) -> dict:
    """One request: run a command to its end (the default), `start` one and answer with its pid at
    once, or `wait` up to a timeout for one started earlier (timeout 0: a poll)."""
    op = request.get("op", "run")
    if op == "wait":
        return wait_child(request["pid"], request["timeout"], kill=False)
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            code = child(request)
        finally:
            os._exit(code)
    return {"pid": pid} if op == "start" else wait_child(pid, request["timeout"], kill=True)


def wait_child(pid: int, timeout: float, kill: bool) -> dict:
    """The child's exit status once it ends; past the timeout its process group is killed (`kill`) or
    the answer is that it still runs (returncode None). A started child stays a zombie until waited
    for, so its pid is never reused while a test may still signal it."""
    started, deadline = time.monotonic(), time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return {"returncode": os.waitstatus_to_exitcode(status), "seconds": time.monotonic() - started}
        if time.monotonic() >= deadline:
            if not kill:
                return {"returncode": None, "timed_out": True}
            with _suppress():
                os.killpg(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return {"returncode": -9, "timed_out": True, "seconds": time.monotonic() - started}
        time.sleep(0.02)


class _suppress:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return exc[0] is not None and issubclass(exc[0], OSError)


def child(request: dict) -> int:
    """What `cd <cwd> && env -i <env> python -m microgpt.<command> <args> </dev/null >out 2>err` does."""
    import atexit
    import runpy
    import threading
    import traceback

    os.setpgid(0, 0)  # a timeout kills the command with whatever it started (DataLoader workers, W&B)
    stdin = os.open(request.get("stdin") or os.devnull, os.O_RDONLY)
    out = os.open(request["stdout"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    err = os.open(request["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    for fd, target in ((stdin, 0), (out, 1), (err, 2)):
        os.dup2(fd, target)
        os.close(fd)
    sys.stdin = io.TextIOWrapper(io.FileIO(0, "r", closefd=False))
    sys.stdout = io.TextIOWrapper(io.FileIO(1, "w", closefd=False), write_through=False)
    sys.stderr = io.TextIOWrapper(io.FileIO(2, "w", closefd=False), write_through=True, errors="backslashreplace")
    sys.__stdin__, sys.__stdout__, sys.__stderr__ = sys.stdin, sys.stdout, sys.stderr
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    module, source = request.get("module"), request.get("code")
    sys.path[0] = os.getcwd() if module else ""  # `python -m` puts the current directory first, `-c` ""
    start_up_settings(request["env"])
    code = 0
    try:
        if module:
            sys.modules.pop(module, None)  # run the module's code afresh as __main__, as `python -m` does
            sys.argv = [module, *request["args"]]  # runpy sets argv[0] to the module's file
            runpy.run_module(module, run_name="__main__", alter_sys=True)
        else:  # `python -c CODE args`
            import builtins
            import types

            sys.argv = ["-c", *request["args"]]
            main = types.ModuleType("__main__")
            main.__builtins__ = builtins
            sys.modules["__main__"] = main
            exec(compile(source, "<string>", "exec"), main.__dict__)
    except SystemExit as e:
        if e.code is None:
            code = 0
        elif isinstance(e.code, int):
            code = e.code
        else:
            print(e.code, file=sys.stderr)
            code = 1
    except BaseException:  # noqa: BLE001 - the interpreter's own behaviour: traceback, exit status 1
        traceback.print_exc()
        code = 1
    # The interpreter's shutdown: join non-daemon threads, run atexit handlers (logging, W&B), flush.
    try:
        threading._shutdown()
        atexit._run_exitfuncs()
    except BaseException:  # noqa: BLE001
        traceback.print_exc()
    for stream in (sys.stdout, sys.stderr):
        with _suppress():
            stream.flush()
    return code & 0xFF


def start_up_settings(env: dict[str, str]) -> None:
    """What a new interpreter takes from its environment at start-up, which the server read already:
    PYTHONPATH's folders on sys.path, and the thread count OpenMP reads when torch is imported."""
    sys.path[1:1] = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]  # after sys.path[0], as at start-up
    if env.get("OMP_NUM_THREADS", "").isdigit():
        import torch

        torch.set_num_threads(int(env["OMP_NUM_THREADS"]))


# ---------------------------------------------------------------- the client (the test's process)

@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str
    how: str  # "fork server" or "bash -c: <why>"
    seconds: float


class ForkServer:
    def __init__(self, env: dict[str, str], log: Path, startup_timeout: float = 300):
        self.log = log
        self.tmp = Path(tempfile.mkdtemp(prefix="readme-runner-"))
        self.proc = subprocess.Popen([sys.executable, __file__], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=open(log, "wb"), env=env, text=True, bufsize=1)
        hello = self._reply(startup_timeout)
        if hello.get("ready") != READY:
            raise RuntimeError(f"the fork server did not start: {hello}\n{self.log_tail()}")
        self.threads = hello["threads"]
        self.count = 0

    def log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""

    def _reply(self, timeout: float) -> dict:
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        line = self.proc.stdout.readline() if ready else ""
        if not line:
            raise RuntimeError(f"no reply from the fork server (exit status {self.proc.poll()})\n{self.log_tail()}")
        return json.loads(line)

    def ask(self, request: dict, timeout: float) -> dict:
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        return self._reply(timeout + 60)

    def _request(self, op: str, how: Plan, cwd: Path, timeout: float) -> tuple[dict, Path, Path]:
        self.count += 1
        out, err, inp = (self.tmp / f"{self.count}.{s}" for s in ("out", "err", "in"))
        inp.write_bytes(how.stdin)
        out.touch()  # readable at once: a started child may not have opened them yet
        err.touch()
        request = {"op": op, "module": how.module, "code": how.code, "args": how.args, "env": how.env,
                   "cwd": str(cwd), "timeout": timeout, "stdin": str(inp), "stdout": str(out), "stderr": str(err)}
        return self.ask(request, timeout), out, err

    def run(self, how: Plan, cwd: Path, timeout: float) -> Result:
        reply, out, err = self._request("run", how, cwd, timeout)
        stderr = _text(err)
        if reply.get("timed_out"):
            stderr += f"\n[killed after {timeout} s]"
        return Result(reply["returncode"], _text(out), stderr, "fork server", reply["seconds"])

    def start(self, how: Plan, cwd: Path) -> ForkedProcess:
        """The command started in a child of the server, without waiting for it."""
        reply, out, err = self._request("start", how, cwd, 0)
        return ForkedProcess(self, reply["pid"], ["python", "-m", how.module, *how.args], out, err)

    def close(self) -> None:
        with _suppress():
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def _text(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else ""


class ForkedProcess:
    """A command running in a child of the fork server, with the part of `subprocess.Popen` the tests
    use: `pid` (also its process group), `args`, `poll`, `communicate`, `returncode`, `stderr.read()`.
    Its output goes to files, so `communicate` returns everything it wrote."""

    def __init__(self, server: ForkServer, pid: int, args: list[str], out: Path, err: Path):
        self.server, self.pid, self.args, self.out, self.err = server, pid, args, out, err
        self.returncode: int | None = None

    @property
    def stderr(self) -> io.StringIO:
        """What the command has written to stderr so far (`proc.stderr.read()`, as with a pipe)."""
        return io.StringIO(_text(self.err))

    def wait(self, timeout: float | None = None) -> int:
        if self.returncode is None:
            limit = 1e9 if timeout is None else timeout
            reply = self.server.ask({"op": "wait", "pid": self.pid, "timeout": limit}, limit)
            if reply["returncode"] is None:
                raise subprocess.TimeoutExpired(f"forked microgpt command (pid {self.pid})", timeout)
            self.returncode = reply["returncode"]
        return self.returncode

    def poll(self) -> int | None:
        try:
            return self.wait(0)
        except subprocess.TimeoutExpired:
            return None

    def communicate(self, timeout: float | None = None) -> tuple[str, str]:
        self.wait(timeout)
        return _text(self.out), _text(self.err)


# The function bash calls instead of python: argv NUL-separated, the environment python would get.
_CAPTURE = r"""python() {
  printf x >> "$__RR_CALLS"; printf '%s\0' "$@" > "$__RR_ARGV"; env -0 > "$__RR_ENV"; cat > "$__RR_STDIN"
}
"""
_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")


@dataclass
class Plan:
    module: str | None  # the microgpt module to run in the fork server (`python -m`), or
    code: str | None  # the code of a `python -c`; both None: a real `bash -c`
    args: list[str]
    env: dict[str, str]
    why: str  # why it falls back to `bash -c` (empty for the fork server)
    stdin: bytes = b""

    @property
    def forked(self) -> bool:
        return self.module is not None or self.code is not None


def plan(command: str, cwd: Path, env: dict[str, str]) -> Plan:
    """How to run `command`: in the fork server when bash, expanding it, calls `python -m microgpt.X`
    or `python -c` exactly once, at the end of the line (`cat notes.txt | python ...` is fine: bash runs
    the left side here and python's stdin is what it wrote); otherwise as `bash -c` (the reason says why)."""
    def fallback(why: str) -> Plan:
        return Plan(None, None, [], env, why)

    try:
        lexer = shlex.shlex(command, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        words = list(lexer)
    except ValueError as e:
        return fallback(f"the line does not split ({e})")
    operators = [i for i, w in enumerate(words) if w and all(c in "();<>|&" for c in w)]
    if operators and (len(operators) > 1 or words[operators[0]] != "|"):
        return fallback(f"shell operators {' '.join(dict.fromkeys(words[i] for i in operators))}")
    last = words[operators[0] + 1:] if operators else words  # the command python's stdin comes from runs here
    program = next((w for w in last if not _ASSIGNMENT.match(w)), "")
    if program != "python":
        return fallback(f"runs {program or 'nothing'!r}, not python")
    with tempfile.TemporaryDirectory(prefix="readme-argv-") as tmp:
        files = {k: str(Path(tmp) / k) for k in ("calls", "argv", "env", "stdin")}
        capture_env = {**env, **{f"__RR_{k.upper()}": v for k, v in files.items()}}
        result = subprocess.run(["bash", "-c", _CAPTURE + command], cwd=cwd, env=capture_env, capture_output=True,
                                text=True, timeout=60, stdin=subprocess.DEVNULL)
        calls = Path(files["calls"]).read_text() if Path(files["calls"]).exists() else ""
        if result.returncode != 0 or len(calls) != 1:
            return fallback(f"bash called python {len(calls)} time(s), exit status {result.returncode}")
        argv = Path(files["argv"]).read_bytes().decode().split("\0")[:-1]
        entries = Path(files["env"]).read_bytes().decode().split("\0")
        stdin = Path(files["stdin"]).read_bytes()
    new_env = dict(e.split("=", 1) for e in entries if "=" in e)
    for key in (*capture_env.keys() - env.keys(), "_", "SHLVL", "OLDPWD"):
        new_env.pop(key, None)
    if len(argv) >= 2 and argv[0] == "-c":
        return Plan(None, argv[1], argv[2:], new_env, "", stdin)
    if len(argv) < 2 or argv[0] != "-m" or argv[1] not in {f"microgpt.{c}" for c in COMMANDS}:
        shown = "python -c" if argv[:1] == ["-c"] else f"python {' '.join(argv[:2])}"
        return fallback(f"{shown} is not `python -m microgpt.<command>`")
    why = own_process_reason(argv[2:])
    if why:
        return fallback(why)
    return Plan(argv[1], None, argv[2:], new_env, "", stdin)


def own_process_reason(args: list[str]) -> str:
    """Why a command with these arguments needs a process of its own (empty: it can run forked)."""
    if any(re.match(r"^\+*(hydra/launcher=(?!basic$)|trainer=slurm)", a) for a in args):
        return "this multirun's launcher starts its jobs as new processes"
    return ""


def run_command(server: ForkServer | None, command: str, cwd: Path, env: dict[str, str], timeout: float) -> Result:
    """Run one README command line: through the fork server when `plan` allows, else as `bash -c`."""
    how = plan(command, cwd, env) if server is not None else Plan(None, None, [], env, "no fork server")
    if how.forked:
        return server.run(how, cwd, timeout)
    started = time.monotonic()
    result = subprocess.run(["bash", "-c", command], cwd=cwd, env=env, capture_output=True, text=True,
                            timeout=timeout, stdin=subprocess.DEVNULL)
    return Result(result.returncode, result.stdout, result.stderr, f"bash -c: {how.why}", time.monotonic() - started)


if __name__ == "__main__":
    serve()
