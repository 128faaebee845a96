"""Running model-written code: only ever in a child process that cannot reach out of its box.

Layers of isolation, outermost first (each is recorded in :attr:`SandboxResult.layers`):

1. ``netns``: on Linux, when unprivileged user namespaces are allowed, the child starts under
   ``unshare --user --map-root-user --net``: a network namespace with no interfaces but a
   downed loopback, so no packet leaves whatever the code does. Absent elsewhere (macOS,
   locked-down containers); then only layer 3 guards the network.
2. ``rlimits`` (POSIX): ``RLIMIT_CPU`` (CPU seconds), ``RLIMIT_AS`` (address space),
   ``RLIMIT_FSIZE`` (largest file it may write), ``RLIMIT_CORE`` 0; plus a wall-clock limit
   enforced by the parent, which kills the child's whole process group.
3. ``audit``: a Python audit hook (:pep:`578`) installed in the child before the code runs:
   opening a file outside the child's own temporary folder (reading the standard library
   excepted), any socket, subprocess, ``exec``, ``fork``, ``os.system`` or ``ctypes`` ends the
   child at once with :data:`BLOCKED_EXIT` (``os._exit``, which the code cannot catch).
   Audit hooks guard well-behaved Python, not a determined attacker (C extensions and
   interpreter internals can get around them), which is why layers 1 and 2 come first.

The child runs ``python -I -S`` (no site-packages, no user site, no ``PYTHON*`` variables)
with its temporary folder as working directory and a near-empty environment, so code under
test has the standard library only. The folder is deleted afterwards.
"""

from __future__ import annotations

import functools
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

#: Exit status of a child that the audit hook stopped.
BLOCKED_EXIT = 97

#: The child's preamble: installs the audit hook, then runs the candidate and the checks.
_RUNNER = r"""
import json, os, sys
_nonce = sys.stdin.readline().strip()
_root = os.path.realpath(os.getcwd())
_allowed_read = tuple(os.path.realpath(p) for p in json.loads(sys.argv[1]))
_write = os.write
_exit = os._exit
_realpath = os.path.realpath
_blocked_events = (
    "socket.", "subprocess.", "os.system", "os.exec", "os.posix_spawn", "os.spawn",
    "os.fork", "os.forkpty", "ctypes.", "os.kill", "os.killpg", "signal.pthread_kill",
    "pty.", "webbrowser.", "urllib.Request", "ftplib.", "http.client.", "smtplib.",
    "os.chdir", "os.chroot", "os.symlink", "os.link",
)
_path_events = ("os.remove", "os.rename", "os.rmdir", "os.mkdir", "os.chmod", "os.chown",
                "os.truncate", "os.utime", "shutil.")
_list_events = ("os.listdir", "os.scandir")

def _stop(event, detail):
    _write(2, ("SANDBOX-BLOCKED " + event + " " + detail[:200] + "\n").encode())
    _exit(%(blocked)d)

def _inside(path, roots):
    try:
        real = _realpath(path if isinstance(path, (str, bytes)) else str(path))
    except Exception:
        return False
    if isinstance(real, bytes):
        real = real.decode(errors="replace")
    return any(real == r or real.startswith(r.rstrip("/") + "/") for r in roots)

def _audit(event, args):
    if event == "open":
        path, mode, flags = args[0], args[1], args[2]
        if isinstance(path, int):
            return
        if mode is None:
            writing = bool(flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND))
        else:
            writing = any(c in str(mode) for c in "wax+")
        roots = (_root,) if writing else (_root,) + _allowed_read
        if not _inside(path, roots):
            _stop(event, repr(path))
    elif event.startswith(_blocked_events):
        _stop(event, repr(args)[:200])
    elif event.startswith(_list_events):
        path = args[0] if args else "."
        if not isinstance(path, int) and not _inside(path, (_root,) + _allowed_read):
            _stop(event, repr(path))
    elif event.startswith(_path_events):
        path = args[0] if args else None
        if isinstance(path, int) or path is None:
            return
        if not _inside(path, (_root,)):
            _stop(event, repr(path))

sys.addaudithook(_audit)
del sys.argv[1:]
_spec = json.loads(open("spec.json").read())
_namespace = {"__name__": "__candidate__"}
_results = []
_error = None
try:
    exec(compile(open("candidate.py").read(), "candidate.py", "exec"), _namespace)
except BaseException as exc:
    _error = type(exc).__name__ + ": " + str(exc)[:300]
if _error is None:
    for _check in _spec["checks"]:
        try:
            _ok = bool(eval(_check["expr"], _namespace))
            _results.append({"name": _check["name"], "passed": _ok})
        except BaseException as exc:
            _results.append({"name": _check["name"], "passed": False,
                             "error": type(exc).__name__ + ": " + str(exc)[:200]})
_write(1, ("\n" + _nonce + json.dumps({"error": _error, "results": _results}) + "\n").encode())
_exit(0)
"""


@dataclass
class Check:
    """One Python expression that must be true of the candidate's namespace."""

    name: str
    expr: str


@dataclass
class SandboxResult:
    """What happened to one run: ``status`` is ok | error | timeout | blocked | memory | crashed.

    ``ok``: the code ran and every check was evaluated (``results`` says which passed);
    ``error``: the code raised at import (``error``); ``timeout``: it ran past the wall or CPU
    limit; ``blocked``: the audit hook stopped a forbidden action (``blocked`` names it);
    ``memory``: it hit the memory limit; ``crashed``: it died some other way.
    """

    status: str
    results: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None
    blocked: str | None = None
    returncode: int | None = None
    seconds: float = 0.0
    stdout: str = ""
    stderr: str = ""
    layers: list[str] = field(default_factory=list)

    def passed(self, name: str) -> bool:
        return any(r["name"] == name and r["passed"] for r in self.results)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@functools.cache
def network_namespace_available() -> bool:
    """Whether ``unshare --user --map-root-user --net`` works here (probed once)."""
    unshare = shutil.which("unshare")
    if unshare is None or not sys.platform.startswith("linux"):
        return False
    try:
        probe = subprocess.run(
            [unshare, "--user", "--map-root-user", "--net", "true"],
            capture_output=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return False
    return probe.returncode == 0


def _limits(cpu_seconds: int, memory_mb: int, file_mb: int):
    def apply() -> None:
        import resource

        os.setsid()
        resource.setrlimit(resource.RLIMIT_CPU, (cpu_seconds, cpu_seconds + 1))
        resource.setrlimit(resource.RLIMIT_AS, (memory_mb << 20, memory_mb << 20))
        resource.setrlimit(resource.RLIMIT_FSIZE, (file_mb << 20, file_mb << 20))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))

    return apply


def _stdlib_paths() -> list[str]:
    paths = {sysconfig.get_paths()[k] for k in ("stdlib", "platstdlib")}
    paths |= {p for p in sys.path if p and "lib-dynload" in p}
    return sorted(str(Path(p)) for p in paths if p)


def run_code(
    code: str,
    checks: Sequence[Check],
    wall_seconds: float = 10.0,
    cpu_seconds: int = 5,
    memory_mb: int = 512,
    file_mb: int = 8,
    network_namespace: bool | None = None,
) -> SandboxResult:
    """Run ``code`` in a sandboxed child, then evaluate each check in its namespace.

    ``network_namespace=None`` uses one when available; ``True`` insists (raises if not).
    """
    use_netns = network_namespace_available() if network_namespace is None else network_namespace
    if use_netns and not network_namespace_available():
        raise RuntimeError("no network namespace here: unshare --user --net is not permitted")
    layers = ["rlimits", "audit", "wall-clock"] + (["netns"] if use_netns else [])
    nonce = "RESULT-" + secrets.token_hex(12) + ":"
    folder = Path(tempfile.mkdtemp(prefix="emovec-sandbox-"))
    try:
        (folder / "candidate.py").write_text(code, "utf-8")
        spec = {"checks": [asdict(c) for c in checks]}
        (folder / "spec.json").write_text(json.dumps(spec), "utf-8")
        (folder / "runner.py").write_text(_RUNNER % {"blocked": BLOCKED_EXIT}, "utf-8")
        argv = [sys.executable, "-I", "-S", "runner.py", json.dumps(_stdlib_paths())]
        if use_netns:
            argv = [shutil.which("unshare") or "unshare", "--user", "--map-root-user", "--net"]
            argv += [sys.executable, "-I", "-S", "runner.py", json.dumps(_stdlib_paths())]
        env = {"PATH": "/usr/bin:/bin", "HOME": str(folder), "LANG": "C.UTF-8"}
        start = time.monotonic()
        proc = subprocess.Popen(
            argv,
            cwd=folder,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            preexec_fn=_limits(cpu_seconds, memory_mb, file_mb),
        )
        try:
            stdout, stderr = proc.communicate((nonce + "\n").encode(), timeout=wall_seconds)
            timed_out = False
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            stdout, stderr = proc.communicate()
            timed_out = True
        seconds = time.monotonic() - start
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    out = stdout.decode("utf-8", "replace")
    err = stderr.decode("utf-8", "replace")
    result = SandboxResult(
        status="crashed",
        returncode=proc.returncode,
        seconds=round(seconds, 3),
        stdout=out[-2000:],
        stderr=err[-2000:],
        layers=layers,
    )
    report = [line for line in out.splitlines() if line.startswith(nonce)]
    if timed_out or proc.returncode in (-signal.SIGXCPU, -signal.SIGKILL, 128 + signal.SIGXCPU):
        result.status = "timeout"
    elif proc.returncode == BLOCKED_EXIT:
        result.status = "blocked"
        blocked = [line for line in err.splitlines() if line.startswith("SANDBOX-BLOCKED ")]
        result.blocked = blocked[-1].removeprefix("SANDBOX-BLOCKED ") if blocked else "unknown"
    elif report:
        data = json.loads(report[-1][len(nonce) :])
        result.results = data["results"]
        result.error = data["error"]
        memory = result.error is not None and result.error.startswith("MemoryError")
        result.status = "memory" if memory else "error" if result.error else "ok"
    elif "MemoryError" in err:
        result.status = "memory"
    return result
