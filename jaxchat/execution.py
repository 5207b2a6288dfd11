"""Sandboxed Python for HumanEval, and the chat model's calculator tool.

Two quite different jobs live here.

1. `run_code(code)` runs untrusted, model-written Python (HumanEval completions) in a separate,
   fresh process and returns an `ExecResult`. `check_humaneval` / `check_humaneval_batch` build and
   run HumanEval programs the way nanochat does.
2. `calculator(expr)` evaluates the tool calls the chat model emits between `<|python_start|>` and
   `<|python_end|>`. It never runs code: it parses the expression with `ast` and walks a tiny, closed
   subset of the tree itself (see "Calculator" below).

How `run_code` isolates the code (Linux; every layer is best-effort and falls back silently)
------------------------------------------------------------------------------------------
The parent starts `python -I -S -c <bootstrap>` (isolated mode, no site-packages: the child sees the
standard library only) with stdin on /dev/null, a scrubbed environment (PATH, locale, HOME/TMPDIR = the
sandbox directory) and its own session / process group, in a fresh `mkdtemp` directory that is deleted
afterwards. The bootstrap, before any user code exists in the interpreter, then sets up:

* **network**: `unshare(CLONE_NEWNET)` (root) or `unshare(CLONE_NEWUSER|CLONE_NEWNET|CLONE_NEWPID)`
  (unprivileged, where user namespaces are allowed): an empty network namespace, with no loopback that
  reaches the host's 127.0.0.1.
* **filesystem** (root only): a private mount namespace where the sandbox directory is bind-mounted over
  /tmp, /var/tmp and /dev/shm and every other ordinary mount (/, /home, ...; not /proc, /sys, /dev) is
  remounted read-only; cwd/HOME/TMPDIR are that /tmp. The interpreter's stdlib is bind-mounted read-only
  at /tmp/.stdlib (it may live where the sandbox uid cannot read, e.g. /root/.pyenv). Nothing is mounted
  unless the namespace is verified new and made private, so the host's mounts are never touched.
* **limits** (`setrlimit`, soft = hard): address space and data segment (`memory_mb`), CPU seconds
  (`ceil(timeout) + 1`), file size (`max_file_mb`), processes/threads (`max_procs`), 64 open files, no core.
* **privileges and process tree**: as root (CI) `RLIMIT_NPROC` is not enforced and file permissions do
  not apply, so the user code runs in a forked child that drops to an unprivileged uid/gid (supplementary
  groups cleared) and refuses to start as root. Each concurrent sandbox gets its own unused uid
  (`0x70000000 + slot`; slots are claimed with `flock`, so parallel runs in this or other processes never
  share one): `RLIMIT_NPROC` then counts exactly this sandbox, and the parent can kill *every* process of
  the sandbox with one `kill(-1, SIGKILL)` issued as that uid (a single sweep in the kernel that a fork
  bomb cannot outrun), setsid() escapees included. The bootstrap stays behind as a root supervisor that
  runs no user code: the child is pid 1 of a new pid namespace (when it exits the kernel kills and reaps
  everything inside), or, without pid namespaces, the supervisor is a child subreaper that kills the uid's
  leftovers and reaps them, so no zombie stays behind to count against the uid's `RLIMIT_NPROC`. If those
  uids are not mapped in this user namespace, uid 65534 (nobody) is used and cleanup is by process group.
  Unprivileged, the user code runs as the caller's uid: in a pid namespace when available, else directly
  in the bootstrap process (cleanup by process group). `PR_SET_NO_NEW_PRIVS` (no setuid binaries) and
  `PR_SET_PDEATHSIG` (die with the parent) are set.
* **Python-level guards** (defence in depth, like nanochat's `reliability_guard`): fork/exec/spawn/system/
  kill/setsid/chdir/chown and `subprocess` are replaced by functions raising `PermissionError`; socket
  creation fails at the `_socket` layer (`import socket` still works); opening files for writing and the
  path-mutating `os` functions (remove, rename, mkdir, chmod, symlink, ...) are refused outside the
  sandbox directory; `ctypes`, `multiprocessing`, `resource`, `psutil`, `pty` cannot be imported;
  `os._exit(n)` becomes `SystemExit(n)`. When the stdlib could not be exposed (no mount namespace) and
  the uid drop makes it unreadable, a fixed list of common modules (math, re, collections, itertools,
  functools, typing, random, hashlib, string, heapq, bisect, json, ...) is imported before the drop;
  other imports then fail with ModuleNotFoundError.

The parent enforces the wall-clock `timeout` itself (then kills the sandbox uid's processes and the
process group), reads stdout/stderr with a byte cap (the run is killed as soon as either stream passes
`max_output_bytes`, so it cannot flood the parent's memory), and reports one `status`: "ok", "error",
"timeout" (wall clock or CPU limit), "memory" (MemoryError, reported by the bootstrap through its exit
code or seen in stderr), "output_limit", or "rejected" (not run: code too large or with NUL bytes).
User exit codes are remapped (0 stays ok, anything else is "error"), so code cannot fake a status.
A run costs roughly 0.05-0.1 s (interpreter start, namespaces, one `kill` helper process).

What this does NOT protect against (it is not a security boundary against a determined attacker):
the kernel itself (no seccomp filter: every syscall is reachable by code that recovers ctypes-like
primitives, e.g. via `gc` on objects the bootstrap left behind, or by `del sys.modules[...]` where the
stdlib is readable); reading world-readable files; CPU and memory pressure on the host within the limits
(no cgroups: `memory_mb` is per process, up to `max_procs` processes); side channels. Without root there
is no mount namespace and no uid change, so only the Python guards keep writes inside the sandbox
directory, and without user namespaces neither network nor pid isolation exists (then only the socket
guard blocks the network, `RLIMIT_NPROC` counts all of the caller's processes, and a process that calls
setsid() can outlive the run). Processes that survive a crash of the parent itself are bounded only by
their rlimits. The Python guards stop the accidents a language model makes (`os.remove`,
`shutil.rmtree`, `subprocess.run`), not code written to get around them. For untrusted code at scale,
add a VM or container around the whole evaluation.

Calculator
----------
nanochat's `use_calculator` strips commas, accepts pure arithmetic (digits, `+ - * / . ( )` and space,
no `**`) or a string `.count(...)` over a restricted charset with a blacklist, and `eval`s it (empty
builtins, 3 s SIGALRM). Here the accepted language is the same, but nothing goes through `eval`:
`ast.parse(mode="eval")` (parsing runs no code) and a walker that knows exactly these nodes -- numeric
constants, unary +/-, binary + - * / //, and `'literal'.count('literal')`. Anything else is rejected
before evaluation, with a reason from `check_calculator_expr`. Differences from nanochat, all on the
string path: commas are stripped for arithmetic only (`'a,b'.count(',')` is 1, not nanochat's 3), the
literals may also contain `,` and `-`, and the blacklist (`__`, import, exec, eval, open, getattr, ...) is
applied to the code outside the string literals (so `'directory'.count('r')` is accepted; `__` is refused
everywhere). Limits are enforced in-process: at most 256 characters, integers of at most 4096 bits
(multiplication is checked *before* it happens), non-finite floats rejected. With no power operator and
no loops the cost is bounded by the input length, so no timeout or worker process is needed: a call takes
~15-30 microseconds on one CPU core (the RL stage calls it thousands of times). Arbitrary code cannot run
because no node that could call, import, index or name anything is ever evaluated (the one call allowed,
`str.count`, is performed by the walker itself on two literal strings).

Result formatting (nanochat prints `str(eval(expr))`): ints print as ints; whole floats with magnitude
below 1e15 print as ints ("408", not "408.0"); other floats print with 15 significant digits
(`format(x, ".15g")`), which removes binary noise ("0.3", not "0.30000000000000004") but keeps real
digits ("3.5", "14.2857142857143"); inf/nan, division by zero, overflow -> None (nothing injected).
"""
from __future__ import annotations

import ast
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
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Iterable

__all__ = [
    "ExecResult",
    "run_code",
    "check_humaneval",
    "check_humaneval_batch",
    "humaneval_program",
    "extract_code",
    "calculator",
    "check_calculator_expr",
    "SANDBOX_MARKER",
]

STATUSES = ("ok", "error", "timeout", "memory", "output_limit", "rejected")
SANDBOX_MARKER = "jaxchat-sandbox"  # argv[1] of every sandbox process (and of anything it forks)
MAX_CODE_BYTES = 1_000_000

_EXIT_ERROR = 1  # the code raised (traceback on stderr)
_EXIT_MEMORY = 3  # MemoryError (only the bootstrap uses these codes; user exits are remapped)
_EXIT_SETUP = 4  # the sandbox could not be set up; user code did not run

_UID_BASE = 0x70000000  # private uids for root runs: far above any real or subordinate uid range
_UID_SLOTS = 256
_NOBODY = 65534


@dataclass
class ExecResult:
    """Outcome of one sandboxed run. `status` is one of STATUSES; `error` is a short human message."""

    status: str
    stdout: str = ""
    stderr: str = ""
    error: str = ""
    returncode: int | None = None
    duration_s: float = 0.0

    @property
    def ok(self) -> bool:
        return self.status == "ok"


# ---------------------------------------------------------------------------------------------------
# The child: runs as `python -I -S -c _CHILD_MAIN jaxchat-sandbox <config json>`
# ---------------------------------------------------------------------------------------------------
_CHILD_MAIN = r'''
import os, sys

STDLIB_ALIASED = False  # True once the stdlib is reachable inside the mount namespace
GUARD_MODULES = ("_socket", "_posixsubprocess")  # cheap C modules the guards patch
PRELOAD = ("math", "cmath", "re", "string", "collections", "collections.abc", "itertools", "functools",
           "operator", "heapq", "bisect", "typing", "random", "statistics", "fractions", "decimal",
           "hashlib", "json", "copy", "datetime", "time", "array", "enum", "textwrap", "unicodedata",
           "numbers", "struct", "traceback", "linecache", "tempfile", "socket", "subprocess")
BLOCKED = ("ctypes", "_ctypes", "multiprocessing", "_multiprocessing", "resource", "psutil", "pty")
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = (
    1, 2, 4, 8, 32, 4096, 16384, 1 << 18)
KEEP_FLAGS = {"nosuid": MS_NOSUID, "nodev": MS_NODEV, "noexec": MS_NOEXEC, "noatime": 1024,
              "nodiratime": 2048, "relatime": 1 << 21, "strictatime": 1 << 24}


def _unescape(s):
    import re
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), s)


def _private_mounts(libc, box):
    """New private mount namespace: box over /tmp (+ /var/tmp, /dev/shm), the rest read-only.
    Returns the sandbox directory as seen from inside, or None (then nothing was mounted)."""
    try:
        before = os.readlink("/proc/self/ns/mnt")
        if libc.unshare(0x00020000) != 0 or os.readlink("/proc/self/ns/mnt") == before:
            return None
        if libc.mount(None, b"/", None, MS_REC | MS_PRIVATE, None) != 0:
            return None
        with open("/proc/self/mountinfo") as f:
            mounts = []
            for line in f:
                p = line.split()
                mounts.append((_unescape(p[4]), p[5].split(",")))
        if not (os.path.isdir("/tmp") and not os.path.islink("/tmp")):
            return None
        if libc.mount(box.encode(), b"/tmp", None, MS_BIND, None) != 0:
            return None
    except Exception:
        return None
    try:  # from here on the sandbox directory is /tmp, whatever else succeeds
        bound = ["/tmp"]
        for t in ("/var/tmp", "/dev/shm"):
            if os.path.isdir(t) and not os.path.islink(t) and libc.mount(b"/tmp", t.encode(), None, MS_BIND, None) == 0:
                bound.append(t)
        for mp, opts in mounts:
            if any(mp == b or mp.startswith(b + "/") for b in bound):
                continue
            if mp in ("/dev", "/dev/pts") or mp.startswith(("/proc", "/sys", "/dev/pts/")):
                continue
            flags = MS_REMOUNT | MS_BIND | MS_RDONLY
            for o in opts:
                flags |= KEEP_FLAGS.get(o, 0)
            libc.mount(None, mp.encode(), None, flags, None)  # best effort
        # The interpreter's stdlib may sit in a directory the sandbox uid cannot traverse (/root/.pyenv):
        # expose it read-only inside the sandbox and point sys.path at it.
        stdlib = os.path.dirname(os.__file__)
        alias = "/tmp/.stdlib"
        try:
            os.mkdir(alias, 0o555)
            if libc.mount(stdlib.encode(), alias.encode(), None, MS_BIND | MS_REC, None) == 0:
                libc.mount(None, alias.encode(), None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV, None)
                global STDLIB_ALIASED
                STDLIB_ALIASED = True
                def moved(paths):
                    return [alias + p[len(stdlib):] if p == stdlib or p.startswith(stdlib + "/") else p
                            for p in paths]
                sys.path[:] = moved(sys.path)
                for mod in list(sys.modules.values()):  # packages imported so far (encodings, collections)
                    path = getattr(mod, "__path__", None)
                    if isinstance(path, list):
                        path[:] = moved(path)
                sys.path_importer_cache.clear()
        except OSError:
            pass
    except Exception:
        pass
    return "/tmp"


def _install_guards(root):
    import builtins, io
    real_realpath, fspath, fsdecode = os.path.realpath, os.fspath, os.fsdecode

    def deny(what):
        def denied(*args, **kwargs):
            raise PermissionError(f"{what} is disabled in the jaxchat sandbox")
        denied.__name__ = what
        return denied

    def inside(path):
        try:
            p = real_realpath(fsdecode(fspath(path)))
        except TypeError:
            return False
        return p == root or p.startswith(root + os.sep)

    def check(name, path, dir_fd=None):
        if dir_fd is not None or isinstance(path, int) or not inside(path):
            raise PermissionError(f"{name}: writing outside the sandbox directory is not allowed: {path!r}")

    real_open = builtins.open

    def open(file, mode="r", *args, **kwargs):
        if not isinstance(file, int) and any(c in mode for c in "wax+"):
            check("open", file)
        return real_open(file, mode, *args, **kwargs)

    real_os_open = os.open
    write_flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND

    def os_open(path, flags, mode=0o777, *, dir_fd=None):
        if flags & write_flags:
            check("os.open", path, dir_fd)
        return real_os_open(path, flags, mode, dir_fd=dir_fd)

    builtins.open = io.open = open
    patches = {"open": os_open}

    def path_checked(name, npaths):
        real = getattr(os, name)

        def guarded(*args, **kwargs):
            for p in args[:npaths]:
                if not (name == "truncate" and isinstance(p, int)):
                    check("os." + name, p, kwargs.get("dir_fd") or kwargs.get("src_dir_fd") or kwargs.get("dst_dir_fd"))
            return real(*args, **kwargs)
        guarded.__name__ = name
        return guarded

    for name, n in (("remove", 1), ("unlink", 1), ("rmdir", 1), ("mkdir", 1), ("rename", 2), ("replace", 2),
                    ("truncate", 1), ("chmod", 1), ("utime", 1), ("mkfifo", 1), ("link", 2)):
        if hasattr(os, name):
            patches[name] = path_checked(name, n)
    if hasattr(os, "symlink"):
        real_symlink = os.symlink

        def symlink(src, dst, *args, **kwargs):
            check("os.symlink", dst, kwargs.get("dir_fd"))
            return real_symlink(src, dst, *args, **kwargs)
        patches["symlink"] = symlink
    for name in ("fork", "forkpty", "system", "popen", "execv", "execve", "execl", "execle", "execlp", "execlpe",
                 "execvp", "execvpe", "spawnl", "spawnle", "spawnlp", "spawnlpe", "spawnv", "spawnve", "spawnvp",
                 "spawnvpe", "posix_spawn", "posix_spawnp", "kill", "killpg", "setsid", "setpgid", "setpgrp",
                 "chdir", "fchdir", "chroot", "chown", "lchown", "fchown", "fchmod", "lchmod", "mknod",
                 "setuid", "setgid", "setreuid", "setregid", "setresuid", "setresgid", "setgroups",
                 "pidfd_open", "removedirs", "renames"):
        if hasattr(os, name):
            patches[name] = deny("os." + name)

    def _exit(code=0):
        raise SystemExit(code)
    patches["_exit"] = _exit
    posix = sys.modules.get("posix")
    for name, fn in patches.items():
        setattr(os, name, fn)
        if posix is not None and hasattr(posix, name):
            setattr(posix, name, fn)
    # Sockets and subprocesses are cut at their C layer, so `import socket` / `import subprocess` still
    # work (cheaply, and whenever the user code imports them) but creating either raises.
    for mod_name in ("socket", "_socket"):
        mod = sys.modules.get(mod_name)
        if mod is None:
            continue
        base = mod.socket

        class DeniedSocket(base):
            __slots__ = ()

            def __init__(self, *args, **kwargs):
                raise PermissionError("socket creation is disabled in the jaxchat sandbox")
        DeniedSocket.__name__ = DeniedSocket.__qualname__ = "socket"
        mod.socket = mod.SocketType = DeniedSocket
        for name in ("socketpair", "create_connection", "create_server", "fromfd"):
            if hasattr(mod, name):
                setattr(mod, name, deny(f"{mod_name}.{name}"))
    psp = sys.modules.get("_posixsubprocess")
    if psp is not None:
        psp.fork_exec = deny("_posixsubprocess.fork_exec (subprocess)")
    sp = sys.modules.get("subprocess")
    if sp is not None:
        for name in ("Popen", "run", "call", "check_call", "check_output", "getoutput", "getstatusoutput"):
            setattr(sp, name, deny("subprocess." + name))
    for name in BLOCKED:
        sys.modules[name] = None


def _main():
    import json
    _exit, _write = os._exit, os.write
    cfg = json.loads(sys.argv[2])
    setup_code = cfg["exit_setup"]

    def die(msg):
        try:
            _write(2, ("sandbox setup failed: " + msg + "\n").encode("utf-8", "replace"))
        finally:
            _exit(setup_code)

    box = cfg["dir"]
    try:
        with open(os.path.join(box, "program.py"), "rb") as f:
            source = f.read().decode("utf-8")
    except Exception as e:
        die(f"cannot read the program: {e}")
    is_root = os.geteuid() == 0
    uid, gid = cfg["uid"], cfg["gid"]
    if is_root and (uid is None or uid == 0 or gid is None or gid == 0):
        die("refusing to run user code as root")

    libc = None
    try:
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_void_p]
        libc.unshare.argtypes = [ctypes.c_int]
        libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
        del ctypes
    except Exception:
        libc = None
    net = userpid = False
    if libc is not None and cfg["isolate"]:
        if is_root:
            net = libc.unshare(0x40000000) == 0
            inner = _private_mounts(libc, box)
            if inner is not None:
                box = inner
        else:
            myuid, mygid = os.getuid(), os.getgid()
            if libc.unshare(0x10000000 | 0x40000000 | 0x20000000) == 0:  # user + net + pid namespaces
                net = userpid = True
            elif libc.unshare(0x10000000 | 0x40000000) == 0:
                net = True
            if net:
                for path, text in (("/proc/self/setgroups", "deny"), ("/proc/self/uid_map", f"{myuid} {myuid} 1"),
                                   ("/proc/self/gid_map", f"{mygid} {mygid} 1")):
                    try:
                        with open(path, "w") as f:
                            f.write(text)
                    except OSError:
                        pass
    try:
        os.chdir(box)
    except OSError as e:
        die(f"cannot enter the sandbox directory: {e}")
    box = os.path.realpath(box)
    env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", "HOME": box, "TMPDIR": box}
    os.environ.clear()
    os.environ.update(env)

    import importlib
    # If the stdlib stays readable after the privilege drop, import only what the guards patch; else
    # preload the common modules now (while still allowed to read them).
    for name in (GUARD_MODULES if STDLIB_ALIASED or not is_root else GUARD_MODULES + PRELOAD):
        try:
            importlib.import_module(name)
        except Exception:
            pass

    if libc is not None and os.getppid() == cfg["ppid"]:
        libc.prctl(1, 9, 0, 0, 0)  # PR_SET_PDEATHSIG = SIGKILL: die with the parent
    if os.getppid() != cfg["ppid"]:
        _exit(setup_code)  # the parent is gone already
    if not is_root and not userpid:
        holder, libc = [libc], None  # no reference to libc stays in this frame for the user code to find
        _run_user(cfg, source, box, holder, False, die)  # no pid namespace: run right here
    # This process becomes a supervisor that runs no user code; the user code runs in a forked child (as
    # root: under the private uid). The child is pid 1 of a new pid namespace when possible (when it dies
    # the kernel kills and reaps everything inside), and this process is a child subreaper otherwise, so
    # no orphan of the sandbox is left as a zombie under the host's init (it would count against
    # RLIMIT_NPROC of the uid slot).
    pidns = userpid
    if libc is not None and is_root:
        libc.prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
        pidns = cfg["isolate"] and libc.unshare(0x20000000) == 0  # CLONE_NEWPID: applies to our children
    try:
        child = os.fork()
    except OSError as e:
        die(f"fork: {e}")
    if child == 0:
        holder, libc = [libc], None
        try:
            _run_user(cfg, source, box, holder, is_root, die)
        except BaseException as e:
            die(f"{type(e).__name__}: {e}")
        finally:
            _exit(setup_code)
    del libc
    for fd in (0, 1, 2):
        try:
            os.close(fd)  # only the user code writes to the pipes
        except OSError:
            pass
    child_status = None
    while True:
        try:
            pid, st = os.waitpid(-1, 0)
        except ChildProcessError:
            break
        except InterruptedError:
            continue
        if pid == child:
            child_status = st
            if not pidns and is_root:  # subreaper mode: kill whatever the sandbox uid still runs, then reap it
                try:
                    if os.fork() == 0:
                        try:
                            os.setgroups([])
                            os.setgid(cfg["gid"])
                            os.setuid(cfg["uid"])
                            os.kill(-1, 9)
                        finally:
                            _exit(0)
                except OSError:
                    pass
    if child_status is None:
        _exit(setup_code)
    if os.WIFSIGNALED(child_status):
        _exit(128 + os.WTERMSIG(child_status))
    _exit(os.WEXITSTATUS(child_status))


def _run_user(cfg, source, box, holder, drop, die):
    """Limits, privilege drop, guards, then the user code. Never returns."""
    _exit = os._exit
    libc = holder.pop()
    import resource
    is_root = os.geteuid() == 0

    def limit(res, value):
        soft, hard = resource.getrlimit(res)
        if hard != resource.RLIM_INFINITY and not is_root:
            value = min(value, hard)
        resource.setrlimit(res, (value, value))
    try:
        if cfg["mem_bytes"]:
            limit(resource.RLIMIT_AS, cfg["mem_bytes"])
            limit(resource.RLIMIT_DATA, cfg["mem_bytes"])
        limit(resource.RLIMIT_CPU, cfg["cpu_s"])
        limit(resource.RLIMIT_FSIZE, cfg["fsize_bytes"])
        limit(resource.RLIMIT_NPROC, cfg["nproc"])
        limit(resource.RLIMIT_NOFILE, 64)
        limit(resource.RLIMIT_CORE, 0)
    except (OSError, ValueError) as e:
        die(f"setrlimit: {e}")
    if drop:
        uid, gid = cfg["uid"], cfg["gid"]
        try:
            os.setgroups([])
            os.setgid(gid)
            os.setuid(uid)
        except OSError as e:
            die(f"cannot drop privileges: {e}")
        if os.getresuid() != (uid, uid, uid) or os.getresgid() != (gid, gid, gid) or os.getgroups():
            die("privilege drop did not take")
    if os.geteuid() == 0:
        die("refusing to run user code as root")
    if libc is not None:
        libc.prctl(38, 1, 0, 0, 0)  # PR_SET_NO_NEW_PRIVS
        if drop:
            libc.prctl(1, 9, 0, 0, 0)  # PR_SET_PDEATHSIG again: the uid change cleared it
    del libc
    for name in list(sys.modules):
        if name in ("ctypes", "_ctypes") or name.startswith("ctypes."):
            sys.modules[name] = None

    prog = os.path.join(box, "program.py")
    if cfg["guards"]:
        _install_guards(box)
    for s in (sys.stdout, sys.stderr):
        try:
            s.reconfigure(encoding="utf-8", errors="backslashreplace")
        except Exception:
            pass
    sys.argv = [prog]
    g = {"__name__": "__main__", "__file__": prog, "__builtins__": __builtins__}
    rc = 0
    try:
        exec(compile(source, prog, "exec"), g)
    except SystemExit as e:
        if e.code is None or e.code == 0:
            rc = 0
        else:
            sys.stderr.write(f"SystemExit: {e.code}\n")
            rc = 1
    except MemoryError:
        g = None
        sys.stderr.write("MemoryError: the sandbox memory limit was exceeded\n")
        rc = cfg["exit_memory"]
    except BaseException as e:
        try:
            import traceback
            traceback.print_exception(type(e), e, e.__traceback__.tb_next)
        except MemoryError:
            rc = cfg["exit_memory"]
        else:
            rc = 1
    for s in (sys.stdout, sys.stderr):
        try:
            s.flush()
        except BaseException:
            pass
    _exit(rc)


_main()
'''


# ---------------------------------------------------------------------------------------------------
# Parent side
# ---------------------------------------------------------------------------------------------------
def _mapped(path: str, lo: int, hi: int) -> bool:
    """Whether ids [lo, hi) are all mapped in this process's user namespace (`/proc/self/{uid,gid}_map`)."""
    try:
        with open(path) as f:
            for line in f:
                inside, _outside, count = (int(x) for x in line.split())
                if inside <= lo and hi <= inside + count:
                    return True
    except (OSError, ValueError):
        return True  # no user namespaces: every id is valid
    return False


class _UidSlot:
    """A private uid/gid for one root-run sandbox, claimed with flock so no two live sandboxes share it."""

    _lock = threading.Lock()
    _seen: set[int] = set()  # uids this process already swept once
    _private: bool | None = None

    def __init__(self):
        cls = type(self)
        with cls._lock:
            if cls._private is None:
                hi = _UID_BASE + _UID_SLOTS
                cls._private = (_mapped("/proc/self/uid_map", _UID_BASE, hi)
                                and _mapped("/proc/self/gid_map", _UID_BASE, hi))
        self.fd = None
        if not cls._private:
            self.uid = self.gid = _NOBODY
            self.private = False
            return
        lock_dir = os.path.join(tempfile.gettempdir(), "jaxchat-sandbox-slots")
        os.makedirs(lock_dir, mode=0o700, exist_ok=True)
        st = os.lstat(lock_dir)
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o022:
            raise RuntimeError(f"{lock_dir} is not a private directory of this user; remove it")
        for slot in range(_UID_SLOTS):
            fd = os.open(os.path.join(lock_dir, f"{slot}.lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                continue
            self.fd, self.uid, self.gid, self.private = fd, _UID_BASE + slot, _UID_BASE + slot, True
            with cls._lock:
                first = self.uid not in cls._seen
                cls._seen.add(self.uid)
            if first:  # strays from a crashed earlier run would count against RLIMIT_NPROC
                self.kill_all()
            return
        raise RuntimeError(f"all {_UID_SLOTS} sandbox uid slots are busy")

    def kill_all(self) -> None:
        """SIGKILL every process of this uid: `kill(-1)` run as the uid itself (one atomic kernel sweep)."""
        if not self.private:
            return
        exe = shutil.which("kill", path="/usr/bin:/bin")
        if exe is not None:
            try:
                subprocess.run([exe, "-9", "--", "-1"], user=self.uid, group=self.gid, extra_groups=[],
                               stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               env={}, timeout=10, check=False)
                return
            except (OSError, subprocess.SubprocessError):
                pass
        try:  # no kill(1) binary: scan /proc (racy against a live fork bomb, but RLIMIT_NPROC bounds it)
            import psutil

            for _ in range(3):
                for p in psutil.process_iter(["uids"]):
                    if p.info["uids"] and p.info["uids"].real == self.uid:
                        try:
                            p.kill()
                        except psutil.Error:
                            pass
        except ImportError:
            pass

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def _rmtree(path: str) -> None:
    """Remove a sandbox directory even if the code made parts of it unwritable (non-root runs)."""

    def retry(func, p, _exc):
        try:
            os.chmod(os.path.dirname(p), 0o700)
            if os.path.isdir(p) and not os.path.islink(p):
                os.chmod(p, 0o700)
            func(p)
        except OSError:
            pass

    if sys.version_info >= (3, 12):
        shutil.rmtree(path, onexc=retry)
    else:
        shutil.rmtree(path, onerror=retry)


def _python() -> str:
    exe = sys.executable or getattr(sys, "_base_executable", "") or shutil.which("python3") or "python3"
    return exe


_EXC_LINE = re.compile(r"^[A-Za-z_][\w.]*(?:Error|Exception|Exit|Interrupt|Warning|Iteration)\b")


def _last_line(text: str, limit: int = 200) -> str:
    """The exception line of a traceback (the last line naming an exception), else the last line."""
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    for ln in reversed(lines):
        if _EXC_LINE.match(ln):
            return ln[:limit]
    return lines[-1][:limit] if lines else ""


def run_code(
    code: str,
    *,
    timeout: float = 5.0,
    memory_mb: int = 512,
    max_output_bytes: int = 64_000,
    max_procs: int = 16,
    max_file_mb: int = 16,
    isolate: bool = True,
    python_guards: bool = True,
) -> ExecResult:
    """Run `code` in a fresh sandboxed Python process (see the module docstring) and return the result.

    timeout: wall-clock seconds (the CPU limit is ceil(timeout) + 1 s per process).
    memory_mb: address-space limit per process (0 disables it).
    max_output_bytes: cap on each of stdout and stderr; passing it kills the run ("output_limit").
    max_procs: RLIMIT_NPROC (with a private uid: all processes and threads of this sandbox, itself included).
    max_file_mb: RLIMIT_FSIZE, the largest file the code may write.
    isolate: try network/mount namespaces. python_guards: install the Python-level guards. Turn these off
    only to test the other layers or to run trusted code.
    """
    if not isinstance(code, str):
        raise TypeError(f"code must be str, not {type(code).__name__}")
    t0 = time.monotonic()
    data = code.encode("utf-8", "surrogatepass")
    if "\x00" in code or len(data) > MAX_CODE_BYTES:
        why = "code contains NUL bytes" if "\x00" in code else f"code longer than {MAX_CODE_BYTES} bytes"
        return ExecResult("rejected", error=why, duration_s=time.monotonic() - t0)
    slot = proc = box = None
    try:
        if os.geteuid() == 0:
            slot = _UidSlot()
        box = tempfile.mkdtemp(prefix="jaxchat-sbx-")
        with open(os.path.join(box, "program.py"), "wb") as f:
            f.write(data)
        os.chmod(os.path.join(box, "program.py"), 0o644)
        if slot is not None:
            os.chown(box, slot.uid, slot.gid)
        os.chmod(box, 0o700)
        cfg = {
            "dir": box,
            "uid": slot.uid if slot else None,
            "gid": slot.gid if slot else None,
            "ppid": os.getpid(),
            "mem_bytes": int(memory_mb) * 2**20,
            "cpu_s": int(math.ceil(timeout)) + 1,
            "fsize_bytes": int(max_file_mb) * 2**20,
            "nproc": max(1, int(max_procs)),
            "isolate": bool(isolate),
            "guards": bool(python_guards),
            "exit_memory": _EXIT_MEMORY,
            "exit_setup": _EXIT_SETUP,
        }
        env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", "HOME": box, "TMPDIR": box}
        proc = subprocess.Popen(
            [_python(), "-I", "-S", "-c", _CHILD_MAIN, SANDBOX_MARKER, json.dumps(cfg)],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            cwd=box, env=env, close_fds=True, start_new_session=True,
        )
        status, out, err = _collect(proc, t0 + timeout, max_output_bytes)
    finally:
        if slot is not None:
            # Kill the user code (every process of the private uid; the root supervisor is not one of
            # them), then let the supervisor reap it and exit by itself. The process group is the fallback.
            slot.kill_all()
            if proc is not None:
                try:
                    proc.wait(timeout=2.0)
                except subprocess.TimeoutExpired:
                    pass
        if proc is not None:
            _kill_group(proc)
        if slot is not None:
            slot.release()
        if proc is not None:
            for s in (proc.stdout, proc.stderr):
                if s is not None:
                    s.close()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        if box is not None:
            _rmtree(box)
    rc = proc.returncode
    if rc is not None and rc > 128:
        rc = -(rc - 128)  # the supervisor reports "child killed by signal N" as 128 + N
    stdout = bytes(out[:max_output_bytes]).decode("utf-8", "replace")
    stderr = bytes(err[:max_output_bytes]).decode("utf-8", "replace")
    dt = time.monotonic() - t0
    if status == "timeout":
        msg = f"timed out after {timeout:g} s"
    elif status == "output_limit":
        msg = f"output exceeded {max_output_bytes} bytes"
    elif rc == _EXIT_MEMORY or (rc != 0 and "MemoryError" in stderr):
        status, msg = "memory", f"memory limit ({memory_mb} MB) exceeded"
    elif rc == 0:
        status, msg = "ok", ""
    elif rc == _EXIT_SETUP:
        status, msg = "error", _last_line(stderr) or "sandbox setup failed"
    elif rc == -signal.SIGXCPU:
        status, msg = "timeout", f"CPU time limit ({cfg['cpu_s']} s) exceeded"
    elif rc is not None and rc < 0:
        try:
            name = signal.Signals(-rc).name
        except ValueError:
            name = str(-rc)
        status, msg = "error", f"killed by {name}"
    else:
        status, msg = "error", _last_line(stderr) or f"exit status {rc}"
    return ExecResult(status, stdout, stderr, msg, rc, dt)


def _collect(proc: subprocess.Popen, deadline: float, cap: int) -> tuple[str | None, bytearray, bytearray]:
    """Read both pipes until EOF/exit, the deadline, or either stream passing `cap` bytes."""
    bufs = {proc.stdout.fileno(): bytearray(), proc.stderr.fileno(): bytearray()}
    sel = selectors.DefaultSelector()
    for fd in bufs:
        os.set_blocking(fd, False)
        sel.register(fd, selectors.EVENT_READ)
    status = None
    exited_at = None
    try:
        while True:
            now = time.monotonic()
            if now >= deadline:
                status = "timeout"
                break
            if exited_at is None and proc.poll() is not None:
                exited_at = now
            if exited_at is not None and (not sel.get_map() or now - exited_at > 0.25):
                break  # main process gone; descendants holding the pipes get killed by the caller
            if not sel.get_map():
                try:
                    proc.wait(timeout=min(deadline - now, 0.1))
                except subprocess.TimeoutExpired:
                    pass
                continue
            for key, _ in sel.select(timeout=min(deadline - now, 0.1)):
                try:
                    chunk = os.read(key.fd, 65536)
                except BlockingIOError:
                    continue
                if not chunk:
                    sel.unregister(key.fd)
                    continue
                buf = bufs[key.fd]
                buf += chunk[: cap + 1 - len(buf)] if len(buf) <= cap else b""
                if len(buf) > cap:
                    status = "output_limit"
                    return status, bufs[proc.stdout.fileno()], bufs[proc.stderr.fileno()]
    finally:
        sel.close()
    return status, bufs[proc.stdout.fileno()], bufs[proc.stderr.fileno()]


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    if proc.returncode is None:
        try:
            proc.kill()
        except (ProcessLookupError, PermissionError):
            pass


# ---------------------------------------------------------------------------------------------------
# HumanEval
# ---------------------------------------------------------------------------------------------------
_FENCE = re.compile(r"```[ \t]*(?:python3?|py)?[ \t]*\n(.*?)```", re.DOTALL | re.IGNORECASE)


def extract_code(completion: str) -> str:
    """The first fenced ```python (or bare ```) block of `completion`, else the whole completion.

    Leading indentation is kept (a completion may be just the indented body of the prompt's function)."""
    m = _FENCE.search(completion)
    code = m.group(1) if m else completion
    return code.strip("\n").rstrip()


def _prompt_imports(prompt: str) -> str:
    """The import lines at the top of a HumanEval prompt (nanochat: stop at the first other code line)."""
    out = []
    for line in prompt.splitlines():
        s = line.strip()
        if s.startswith(("import ", "from ")):
            out.append(s)
        elif s and not s.startswith("#"):
            break
    return "\n".join(out)


def humaneval_program(problem: dict, completion: str) -> str:
    """nanochat's program: prompt imports + code (+ the prompt first when the code lacks the entry point
    definition) + the problem's `test` + `check(<entry_point>)`."""
    entry = problem["entry_point"]
    code = extract_code(completion)
    if not re.search(rf"^[ \t]*(?:async[ \t]+)?def[ \t]+{re.escape(entry)}[ \t]*\(", code, re.MULTILINE):
        code = problem["prompt"] + code
    return f"{_prompt_imports(problem['prompt'])}\n\n{code}\n\n{problem['test']}\n\ncheck({entry})\n"


def check_humaneval(problem: dict, completion: str, timeout: float = 5.0, **run_kwargs) -> ExecResult:
    """Run one HumanEval completion against its tests in the sandbox; `.ok` means it passed."""
    return run_code(humaneval_program(problem, completion), timeout=timeout, **run_kwargs)


def check_humaneval_batch(pairs: Iterable[tuple[dict, str]], workers: int = 2, timeout: float = 5.0,
                          **run_kwargs) -> list[ExecResult]:
    """`check_humaneval` over (problem, completion) pairs with a thread pool; results in input order."""
    pairs = list(pairs)
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        return list(pool.map(lambda pc: check_humaneval(pc[0], pc[1], timeout=timeout, **run_kwargs), pairs))


# ---------------------------------------------------------------------------------------------------
# Calculator
# ---------------------------------------------------------------------------------------------------
CALC_MAX_LEN = 256
CALC_MAX_INT_BITS = 4096
_ARITH_CHARS = frozenset("0123456789+-*/.() ")
_STR_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789'\"()._ ,-")
_FORBIDDEN = ("import", "exec", "eval", "compile", "open", "file", "input", "globals", "locals", "vars", "dir",
              "getattr", "setattr", "delattr", "hasattr", "lambda", "builtins", "os", "sys")
_LITERAL = re.compile(r"'[^'\\]*'|\"[^\"\\]*\"")
_BINOPS = (ast.Add, ast.Sub, ast.Mult, ast.Div, ast.FloorDiv)


class _CalcError(Exception):
    pass


def _arith_ok(node: ast.AST) -> bool:
    if isinstance(node, ast.Constant):
        return type(node.value) in (int, float)
    if isinstance(node, ast.UnaryOp):
        return isinstance(node.op, (ast.UAdd, ast.USub)) and _arith_ok(node.operand)
    if isinstance(node, ast.BinOp):
        return isinstance(node.op, _BINOPS) and _arith_ok(node.left) and _arith_ok(node.right)
    return False


def _count_ok(node: ast.AST) -> bool:
    return (isinstance(node, ast.Call) and not node.keywords and len(node.args) == 1
            and isinstance(node.func, ast.Attribute) and node.func.attr == "count"
            and isinstance(node.func.value, ast.Constant) and type(node.func.value.value) is str
            and isinstance(node.args[0], ast.Constant) and type(node.args[0].value) is str)


def _analyze(expr) -> tuple[bool, str, ast.AST | None]:
    if not isinstance(expr, str):
        return False, "not a string", None
    if len(expr) > CALC_MAX_LEN:
        return False, f"expression longer than {CALC_MAX_LEN} characters", None
    arith = expr.replace(",", "")
    if not arith.strip():
        return False, "empty expression", None
    if all(c in _ARITH_CHARS for c in arith):
        if "**" in arith:
            return False, "the power operator ** is not allowed", None
        try:
            tree = ast.parse(arith.strip(), mode="eval").body
        except (SyntaxError, ValueError, MemoryError, RecursionError):
            return False, "not a valid arithmetic expression", None
        if not _arith_ok(tree):
            return False, "only + - * / // on numbers are allowed", None
        return True, "arithmetic", tree
    bad = sorted({c for c in expr if c not in _STR_CHARS})
    if bad:
        return False, f"characters not allowed: {''.join(bad)!r}", None
    if "__" in expr:
        return False, "dunder names are not allowed", None
    code_part = _LITERAL.sub("''", expr).lower()
    for word in _FORBIDDEN:
        if word in code_part:
            return False, f"forbidden name {word!r}", None
    if ".count(" not in code_part:
        return False, "only arithmetic or 'text'.count('x') is supported", None
    try:
        tree = ast.parse(expr.strip(), mode="eval").body
    except (SyntaxError, ValueError, MemoryError, RecursionError):
        return False, "not a valid expression", None
    if not _count_ok(tree):
        return False, "only a string literal's .count(string literal) is supported", None
    return True, "string count", tree


def check_calculator_expr(expr: str) -> tuple[bool, str]:
    """Whether the calculator would evaluate `expr`: (True, "arithmetic" | "string count") or (False, reason).

    Nothing is evaluated here."""
    ok, reason, _ = _analyze(expr)
    return ok, reason


def _eval_arith(node: ast.AST):
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.UnaryOp):
        v = _eval_arith(node.operand)
        return -v if isinstance(node.op, ast.USub) else +v
    a, b = _eval_arith(node.left), _eval_arith(node.right)
    op = node.op
    if isinstance(op, ast.Add):
        r = a + b
    elif isinstance(op, ast.Sub):
        r = a - b
    elif isinstance(op, ast.Mult):
        if type(a) is int and type(b) is int and a.bit_length() + b.bit_length() > CALC_MAX_INT_BITS:
            raise _CalcError("integer too large")
        r = a * b
    elif isinstance(op, ast.Div):
        r = a / b
    else:
        r = a // b
    if type(r) is int and r.bit_length() > CALC_MAX_INT_BITS:
        raise _CalcError("integer too large")
    return r


def _format_number(v) -> str | None:
    if type(v) is int:
        return str(v)
    if not math.isfinite(v):
        return None
    if v.is_integer() and abs(v) < 1e15:
        return str(int(v))
    return format(v, ".15g")


def calculator(expr: str) -> str | None:
    """The calculator tool: the text to inject as the tool's output, or None (rejected or failed).

    `calculator("12*34") == "408"`, `calculator("1,234 + 1") == "1235"`, `calculator("7/2") == "3.5"`,
    `calculator("'strawberry'.count('r')") == "3"`, `calculator("1/0") is None`, `calculator("2**10") is None`.
    """
    ok, _reason, tree = _analyze(expr)
    if not ok:
        return None
    try:
        if isinstance(tree, ast.Call):
            return str(tree.func.value.value.count(tree.args[0].value))
        return _format_number(_eval_arith(tree))
    except (ArithmeticError, _CalcError, RecursionError, ValueError, TypeError):
        return None
