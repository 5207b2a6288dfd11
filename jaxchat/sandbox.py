"""Run untrusted, model-written Python (HumanEval completions) in a new temp dir, through `_sandbox_child.py`.

Guarantees (tested): wall-clock, CPU, memory, process and output limits; stdin /dev/null, a scrubbed environment; no
network (a netns where allowed, a socket guard); no writes outside the temp dir (a private uid as root, Python guards);
no process left behind (a pid namespace, or killing all the private uid runs). For accidents, not attackers (use a VM).
"""
from __future__ import annotations

import contextlib
import itertools
import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

from jaxchat import _sandbox_child as child

SANDBOX_MARKER = "jaxchat-sandbox"  # argv[1] of every sandbox process (and of anything it forks)
MAX_CODE_BYTES = 1_000_000
_UID_BASE, _UID_SLOTS, _NOBODY = 0x70000000, 256, 65534  # private uids for root runs: one per live sandbox
_EXC_LINE = re.compile(r"^[A-Za-z_][\w.]*(?:Error|Exception|Exit|Interrupt|Warning|Iteration)\b")  # names the error


@dataclass
class ExecResult:
    """status: ok, error, timeout, memory, output_limit or rejected (not run); error: a short human message."""

    status: str
    stdout: str = ""
    stderr: str = ""
    error: str = ""
    returncode: int | None = None
    duration_s: float = 0.0

    @property
    def ok(self) -> bool:
        return self.status == "ok"


def _claim_uid() -> tuple[int, socket.socket | None]:
    """A private uid (= gid) for a root run and the socket that holds it; nobody where the ids are not mapped."""
    for kind in ("uid", "gid"):
        with contextlib.suppress(OSError), open(f"/proc/self/{kind}_map") as f:
            if not any(lo <= _UID_BASE and _UID_BASE + _UID_SLOTS <= lo + n for lo, _, n in
                       (map(int, line.split()) for line in f)):
                return _NOBODY, None
    for uid in range(_UID_BASE, _UID_BASE + _UID_SLOTS):
        lock = socket.socket(socket.AF_UNIX)
        try:  # an abstract socket name: one holder at a time, released when it closes or its process dies
            lock.bind(f"\0jaxchat-sandbox-uid-{uid}")
        except OSError:
            lock.close()
            continue
        _kill_uid(uid)  # strays of a crashed earlier holder would count against RLIMIT_NPROC
        return uid, lock
    raise RuntimeError(f"all {_UID_SLOTS} sandbox uid slots are busy")


def _kill_uid(uid: int) -> None:
    """SIGKILL every process of `uid`: `kill -9 -1` run as the uid, one sweep a fork bomb cannot outrun."""
    with contextlib.suppress(OSError, subprocess.SubprocessError):  # no kill(1): the pid namespace still cleans up
        subprocess.run(["kill", "-9", "--", "-1"], user=uid, group=uid, extra_groups=[], env={"PATH": "/usr/bin:/bin"},
                       stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=10)


def run_code(code: str, *, timeout: float = 5.0, memory_mb: int = 512, max_output_bytes: int = 64_000,
             max_procs: int = 16, max_file_mb: int = 16, isolate: bool = True, python_guards: bool = True,
             ) -> ExecResult:
    """Limits: `timeout` wall-clock seconds (CPU: ceil(timeout) + 1 s), address space and file size in MB, output bytes
    per stream, processes. isolate=False (no namespaces) and python_guards=False test the other layers."""
    t0 = time.monotonic()
    data = code.encode("utf-8", "surrogatepass")
    if "\x00" in code or len(data) > MAX_CODE_BYTES:
        why = "code contains NUL bytes" if "\x00" in code else f"code longer than {MAX_CODE_BYTES} bytes"
        return ExecResult("rejected", error=why, duration_s=time.monotonic() - t0)
    uid = lock = proc = box = None
    cfg = {"mem": memory_mb * 2**20, "cpu_s": math.ceil(timeout) + 1, "nproc": max(1, max_procs), "isolate": isolate,
           "fsize": max(max_file_mb * 2**20, max_output_bytes + 1), "guards": python_guards}  # output goes to files
    try:
        if os.geteuid() == 0:
            uid, lock = _claim_uid()
        box = cfg["dir"] = tempfile.mkdtemp(prefix="jaxchat-sbx-")
        with open(os.path.join(box, "program.py"), "wb") as f:
            f.write(data)
        os.chmod(os.path.join(box, "program.py"), 0o644)
        if uid is not None:
            os.chown(box, uid, uid)
        env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", "HOME": box, "TMPDIR": box}
        with open(os.path.join(box, ".stdout"), "w+b") as fout, open(os.path.join(box, ".stderr"), "w+b") as ferr:
            proc = subprocess.Popen([sys.executable, "-I", "-S", child.__file__, SANDBOX_MARKER,
                                     json.dumps({**cfg, "uid": uid})], cwd=box, env=env, stdin=subprocess.DEVNULL,
                                    stdout=fout, stderr=ferr, start_new_session=True)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=max(0.0, t0 + timeout - time.monotonic()))
            out, err = (os.pread(f.fileno(), max_output_bytes + 1, 0) for f in (fout, ferr))
        status = ("output_limit" if max(len(out), len(err)) > max_output_bytes
                  else "timeout" if proc.poll() is None else None)
    finally:
        if lock is not None:  # the program first (the root supervisor is not the uid's), so the supervisor can exit
            _kill_uid(uid)
        if proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=2.0 if lock is not None else 0.0)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        if lock is not None:
            lock.close()
        if box is not None:
            shutil.rmtree(box, ignore_errors=True)
    rc = 128 - proc.returncode if proc.returncode > 128 else proc.returncode  # the supervisor's "killed by signal N"
    stdout, stderr = (b[:max_output_bytes].decode("utf-8", "replace") for b in (out, err))
    if status == "timeout":
        msg = f"timed out after {timeout:g} s"
    elif status == "output_limit":
        msg = f"output exceeded {max_output_bytes} bytes"
    elif rc == child.EXIT_MEMORY or (rc != 0 and "MemoryError" in stderr):
        status, msg = "memory", f"memory limit ({memory_mb} MB) exceeded"
    elif rc == -signal.SIGXCPU:
        status, msg = "timeout", f"CPU time limit ({cfg['cpu_s']} s) exceeded"
    elif rc != 0:
        lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
        last = next((ln for ln in reversed(lines) if _EXC_LINE.match(ln)), lines[-1] if lines else "")[:200]
        status, msg = "error", f"killed by {signal.Signals(-rc).name}" if rc < 0 else last or f"exit status {rc}"
    return ExecResult(status or "ok", stdout, stderr, msg if status else "", rc, time.monotonic() - t0)


# ------------------------------------------------------------------------------------------------- HumanEval
_FENCE = re.compile(r"```[ \t]*(?:python3?|py)?[ \t]*\n(.*?)```", re.DOTALL | re.IGNORECASE)


def humaneval_program(problem: dict, completion: str) -> str:
    """nanochat's program: the prompt's import lines + the code (the completion's first ```python block, else all
    of it; after the prompt when it does not define the entry point) + the problem's tests + `check(<entry_point>)`."""
    entry, prompt = problem["entry_point"], problem["prompt"]
    m = _FENCE.search(completion)
    code = (m.group(1) if m else completion).strip("\n").rstrip()  # indentation kept: it may be just the body
    if not re.search(rf"^[ \t]*(?:async[ \t]+)?def[ \t]+{re.escape(entry)}[ \t]*\(", code, re.MULTILINE):
        code = prompt + code
    top = itertools.takewhile(lambda ln: not ln or ln.startswith(("import ", "from ", "#")),
                              map(str.strip, prompt.splitlines()))  # the prompt's head, up to its first other code
    imports = [ln for ln in top if ln.startswith(("import ", "from "))]
    return "\n".join(imports) + f"\n\n{code}\n\n{problem['test']}\n\ncheck({entry})\n"


def check_humaneval(problem: dict, completion: str, timeout: float = 5.0, **run_kwargs) -> ExecResult:
    """Run one HumanEval completion against its tests in the sandbox; `.ok` means it passed."""
    return run_code(humaneval_program(problem, completion), timeout=timeout, **run_kwargs)
