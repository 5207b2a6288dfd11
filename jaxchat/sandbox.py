"""Run untrusted, model-written Python (HumanEval completions): `run_code` runs `_sandbox_child.py` in a new temp dir.

Guarantees (tested): wall-clock and CPU time limits, a memory (address-space) limit, a process limit, capped output,
stdin /dev/null and a scrubbed environment, no network (an empty network namespace where allowed, and a socket guard),
no writes outside the temp dir (a private unprivileged uid when run as root, and Python guards on open/os.*), and no
process left behind (a pid namespace, or killing all the private uid runs). It stops a model's accidents, not a
determined attacker: put a VM or container around untrusted code at scale.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import re
import selectors
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

SANDBOX_MARKER = "jaxchat-sandbox"  # argv[1] of every sandbox process (and of anything it forks)
MAX_CODE_BYTES = 1_000_000
_CHILD = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_sandbox_child.py")
_EXIT_MEMORY = 3  # as in _sandbox_child (which imports nothing of jaxchat)
_UID_BASE, _UID_SLOTS, _NOBODY = 0x70000000, 256, 65534  # private uids for root runs: one per live sandbox
_SWEPT: set[int] = set()  # private uids this process has cleaned once


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


def _claim_uid() -> tuple[int, int | None]:
    """A private uid (= gid) for a root run and the fd of its flock, so no two live sandboxes share one; or
    (nobody, None) where this user namespace does not map the private ids (a rootless container may map a few)."""
    for kind in ("uid", "gid"):
        with contextlib.suppress(OSError), open(f"/proc/self/{kind}_map") as f:
            if not any(lo <= _UID_BASE and _UID_BASE + _UID_SLOTS <= lo + n for lo, _, n in
                       (map(int, line.split()) for line in f)):
                return _NOBODY, None
    lock_dir = os.path.join(tempfile.gettempdir(), "jaxchat-sandbox-slots")
    os.makedirs(lock_dir, mode=0o700, exist_ok=True)
    st = os.lstat(lock_dir)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o022:
        raise RuntimeError(f"{lock_dir} is not a private directory of this user; remove it")
    for uid in range(_UID_BASE, _UID_BASE + _UID_SLOTS):
        fd = os.open(os.path.join(lock_dir, f"{uid - _UID_BASE}.lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            continue
        if uid not in _SWEPT:  # strays of a crashed earlier process would count against RLIMIT_NPROC
            _SWEPT.add(uid)
            _kill_uid(uid)
        return uid, fd
    raise RuntimeError(f"all {_UID_SLOTS} sandbox uid slots are busy")


def _kill_uid(uid: int) -> None:
    """SIGKILL every process of `uid`: `kill -9 -1` run as the uid, one sweep a fork bomb cannot outrun."""
    with contextlib.suppress(OSError, subprocess.SubprocessError):  # no kill(1): the pid namespace still cleans up
        subprocess.run(["kill", "-9", "--", "-1"], user=uid, group=uid, extra_groups=[], env={"PATH": "/usr/bin:/bin"},
                       stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=10)


def _collect(proc: subprocess.Popen, deadline: float, cap: int) -> tuple[str | None, bytes, bytes]:
    """Read both pipes until the process is gone, the deadline ("timeout"), or a stream passes `cap` bytes."""
    bufs = {proc.stdout.fileno(): bytearray(), proc.stderr.fileno(): bytearray()}
    status, exited = None, None
    with selectors.DefaultSelector() as sel:
        for fd in bufs:
            os.set_blocking(fd, False)
            sel.register(fd, selectors.EVENT_READ)
        while sel.get_map() and status is None:
            now = time.monotonic()
            if exited is None and proc.poll() is not None:
                exited = now
            if now >= deadline:
                status = "timeout"
                break
            if exited is not None and now > exited + 0.25:
                break  # what still holds the pipes after the exit is killed by the caller
            for key, _ in sel.select(timeout=min(deadline - now, 0.1)):
                chunk = os.read(key.fd, 65536)
                bufs[key.fd] += chunk
                if not chunk:
                    sel.unregister(key.fd)
                elif len(bufs[key.fd]) > cap:
                    status = "output_limit"
    if status is None:
        try:
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            status = "timeout"
    return status, *(bytes(b[:cap]) for b in bufs.values())


_EXC_LINE = re.compile(r"^[A-Za-z_][\w.]*(?:Error|Exception|Exit|Interrupt|Warning|Iteration)\b")  # names the error


def run_code(code: str, *, timeout: float = 5.0, memory_mb: int = 512, max_output_bytes: int = 64_000,
             max_procs: int = 16, max_file_mb: int = 16, isolate: bool = True, python_guards: bool = True,
             ) -> ExecResult:
    """Run `code` in a fresh sandbox. Limits: `timeout` wall-clock seconds (CPU: ceil(timeout) + 1 s), address space
    and file size in MB, output bytes per stream, processes. `isolate=False` (no namespaces) and
    `python_guards=False` are for testing the other layers, or for trusted code."""
    t0 = time.monotonic()
    data = code.encode("utf-8", "surrogatepass")
    if "\x00" in code or len(data) > MAX_CODE_BYTES:
        why = "code contains NUL bytes" if "\x00" in code else f"code longer than {MAX_CODE_BYTES} bytes"
        return ExecResult("rejected", error=why, duration_s=time.monotonic() - t0)
    uid = lock = proc = box = None
    cfg = {"mem": memory_mb * 2**20, "cpu_s": math.ceil(timeout) + 1, "fsize": max_file_mb * 2**20,
           "nproc": max(1, max_procs), "isolate": isolate, "guards": python_guards}
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
        proc = subprocess.Popen([sys.executable, "-I", "-S", _CHILD, SANDBOX_MARKER, json.dumps({**cfg, "uid": uid})],
                                cwd=box, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, start_new_session=True)
        status, out, err = _collect(proc, t0 + timeout, max_output_bytes)
    finally:
        if lock is not None:  # the program first (the root supervisor is not the uid's), so the supervisor can exit
            _kill_uid(uid)
        if proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=2.0 if lock is not None else 0.0)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.stdout.close()
            proc.stderr.close()
            proc.wait()
        if lock is not None:
            os.close(lock)
        if box is not None:
            shutil.rmtree(box, ignore_errors=True)
    rc = proc.returncode
    rc = 128 - rc if rc > 128 else rc  # the supervisor reports "killed by signal N" as 128 + N
    stdout, stderr = out.decode("utf-8", "replace"), err.decode("utf-8", "replace")
    if status == "timeout":
        msg = f"timed out after {timeout:g} s"
    elif status == "output_limit":
        msg = f"output exceeded {max_output_bytes} bytes"
    elif rc == _EXIT_MEMORY or (rc != 0 and "MemoryError" in stderr):
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
    imports = []
    for line in map(str.strip, prompt.splitlines()):  # the import lines at the top, up to the first other code
        if line.startswith(("import ", "from ")):
            imports.append(line)
        elif line and not line.startswith("#"):
            break
    return "\n".join(imports) + f"\n\n{code}\n\n{problem['test']}\n\ncheck({entry})\n"


def check_humaneval(problem: dict, completion: str, timeout: float = 5.0, **run_kwargs) -> ExecResult:
    """Run one HumanEval completion against its tests in the sandbox; `.ok` means it passed."""
    return run_code(humaneval_program(problem, completion), timeout=timeout, **run_kwargs)
