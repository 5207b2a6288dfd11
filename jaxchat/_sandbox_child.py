"""The supervisor of jaxchat.sandbox.run_code, run by path (`python -I -S _sandbox_child.py jaxchat-sandbox <cfg>`):
namespaces, then the program in a forked child (limits, private uid, guards). It imports nothing of jaxchat."""
import _posixsubprocess
import _socket
import builtins
import contextlib
import ctypes
import io
import json
import os
import posix
import resource
import signal
import sys
import traceback

EXIT_MEMORY, EXIT_SETUP = 3, 4  # our own exit codes (a user exit status becomes 0 or 1); see sandbox.run_code
_NEWUSER, _NEWPID, _NEWNET = 0x10000000, 0x20000000, 0x40000000  # unshare(2) flags
_PDEATHSIG, _SUBREAPER, _NO_NEW_PRIVS = 1, 36, 38  # prctl(2) options
# os.py's exec*, spawn*, popen, removedirs and renames go through these (or subprocess)
_DENIED = ("fork forkpty system execv execve posix_spawn posix_spawnp kill killpg setsid setpgid setpgrp chdir fchdir "
           "chroot chown lchown fchown fchmod lchmod mknod setuid setgid setreuid setregid setresuid setresgid "
           "setgroups pidfd_open").split()
_PATHS = {"remove": (0, 1), "unlink": (0, 1), "rmdir": (0, 1), "mkdir": (0, 1), "rename": (0, 2), "replace": (0, 2),
          "truncate": (0, 1), "chmod": (0, 1), "utime": (0, 1), "mkfifo": (0, 1), "link": (0, 2), "symlink": (1, 2)}
_BLOCKED = ("ctypes", "_ctypes", "multiprocessing", "_multiprocessing", "resource", "psutil", "pty")


def _expose_stdlib() -> None:
    """The private uid may not read the stdlib's directory (/root/.pyenv): import it through a dir fd opened as root."""
    stdlib = os.path.dirname(os.__file__)
    alias = f"/proc/self/fd/{os.open(stdlib, os.O_RDONLY | os.O_DIRECTORY)}"  # no permission check above it

    def moved(paths):
        return [alias + p[len(stdlib):] if p == stdlib or p.startswith(stdlib + "/") else p for p in paths]
    sys.path[:] = moved(sys.path)
    for mod in list(sys.modules.values()):  # packages imported so far (encodings, collections, ...)
        if isinstance(getattr(mod, "__path__", None), list):
            mod.__path__[:] = moved(mod.__path__)
    sys.path_importer_cache.clear()


def main(cfg: dict) -> None:
    """Namespaces, then the program in a forked child; exits with its status (128 + N if killed by signal N)."""
    libc, root, pidns = ctypes.CDLL(None, use_errno=True), os.geteuid() == 0, False
    libc.prctl.argtypes = [ctypes.c_int] + [ctypes.c_ulong] * 4
    if root:
        _expose_stdlib()
        libc.prctl(_SUBREAPER, 1, 0, 0, 0)  # orphans come to us, not to the host's init, and get reaped
        if cfg["isolate"]:
            libc.unshare(_NEWNET)
            pidns = libc.unshare(_NEWPID) == 0  # applies to our children: the program is pid 1 there
    elif cfg["isolate"]:
        uid, gid = os.getuid(), os.getgid()
        pidns = libc.unshare(_NEWUSER | _NEWNET | _NEWPID) == 0
        if pidns or libc.unshare(_NEWUSER | _NEWNET) == 0:
            for name, text in (("setgroups", "deny"), ("uid_map", f"{uid} {uid} 1"), ("gid_map", f"{gid} {gid} 1")):
                with contextlib.suppress(OSError), open(f"/proc/self/{name}", "w") as f:
                    f.write(text)
    libc.prctl(_PDEATHSIG, signal.SIGKILL, 0, 0, 0)  # die with the parent
    child = os.fork()
    if child == 0:
        try:
            _run_user(cfg, root, libc)
        except BaseException as e:
            os.write(2, f"sandbox setup failed: {type(e).__name__}: {e}\n".encode("utf-8", "replace"))
        os._exit(EXIT_SETUP)
    status = os.waitpid(child, 0)[1]
    if root and not pidns and os.fork() == 0:  # kill all the private uid still runs, as that uid: one kernel sweep
        try:  # (in a pid namespace the kernel killed the rest with the program, its pid 1)
            os.setgroups([])
            os.setgid(cfg["uid"])
            os.setuid(cfg["uid"])
            os.kill(-1, signal.SIGKILL)
        finally:
            os._exit(0)
    with contextlib.suppress(ChildProcessError):
        while True:
            os.waitpid(-1, 0)  # the killer and what it killed: we are their subreaper
    os._exit(128 + os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status))


def _run_user(cfg: dict, drop: bool, libc) -> None:
    """Limits, privilege drop, guards, then the program. Never returns."""
    box, _exit = cfg["dir"], os._exit
    prog = os.path.join(box, "program.py")
    with open(prog, "rb") as f:
        source = f.read().decode("utf-8", "surrogatepass")
    for res, value in [(resource.RLIMIT_CPU, cfg["cpu_s"]), (resource.RLIMIT_FSIZE, cfg["fsize"]),
                       (resource.RLIMIT_CORE, 0), (resource.RLIMIT_NPROC, cfg["nproc"]), (resource.RLIMIT_NOFILE, 64),
                       (resource.RLIMIT_AS, cfg["mem"]), (resource.RLIMIT_DATA, cfg["mem"])]:
        hard = resource.getrlimit(res)[1]
        resource.setrlimit(res, (value, value) if drop or hard == resource.RLIM_INFINITY else (min(value, hard),) * 2)
    if drop:  # as root RLIMIT_NPROC and file permissions do not apply: become the sandbox's private uid (= gid)
        os.setgroups([])
        os.setgid(cfg["uid"])
        os.setuid(cfg["uid"])
    if os.geteuid() == 0:
        raise PermissionError("refusing to run user code as root")
    libc.prctl(_NO_NEW_PRIVS, 1, 0, 0, 0)
    libc.prctl(_PDEATHSIG, signal.SIGKILL, 0, 0, 0)  # again: the uid change cleared it
    blocked = _BLOCKED if cfg["guards"] else ("ctypes", "_ctypes")
    for name in [*blocked, *(n for n in sys.modules if n.split(".")[0] in blocked)]:
        sys.modules[name] = None
    if cfg["guards"]:
        _install_guards(box)
    sys.stdout.reconfigure(errors="backslashreplace")
    sys.argv, rc = [prog], 0
    try:
        exec(compile(source, prog, "exec"), {"__name__": "__main__", "__file__": prog, "__builtins__": builtins})
    except SystemExit as e:
        if e.code not in (None, 0):
            sys.stderr.write(f"SystemExit: {e.code}\n")
            rc = 1
    except BaseException as e:
        rc = EXIT_MEMORY if isinstance(e, MemoryError) else 1
        try:
            traceback.print_exception(type(e), e, e.__traceback__.tb_next)  # without this file's frame
        except MemoryError:
            rc = EXIT_MEMORY
    with contextlib.suppress(BaseException):
        sys.stdout.flush()
        sys.stderr.flush()
    _exit(rc)


def _install_guards(box: str) -> None:
    """Python-level guards, like nanochat's reliability_guard: process, kill, chdir and socket functions raise
    PermissionError, writes outside `box` are refused, and os._exit(n) becomes SystemExit(n)."""
    realpath, real_open, real_os_open = os.path.realpath, builtins.open, os.open

    def deny(what):
        def denied(*args, **kwargs):
            raise PermissionError(f"{what} is disabled in the jaxchat sandbox")
        return denied

    def check(name, path, dir_fd=None):
        p = realpath(os.fsdecode(path)) if dir_fd is None and isinstance(path, (str, bytes, os.PathLike)) else ""
        if not (p == box or p.startswith(box + os.sep)):
            raise PermissionError(f"{name}: writing outside the sandbox directory is not allowed: {path!r}")

    def guarded_open(file, mode="r", *args, **kwargs):
        if not isinstance(file, int) and any(c in mode for c in "wax+"):
            check("open", file)
        return real_open(file, mode, *args, **kwargs)

    def guarded_os_open(path, flags, mode=0o777, *, dir_fd=None):
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND):
            check("os.open", path, dir_fd)
        return real_os_open(path, flags, mode, dir_fd=dir_fd)

    def path_checked(name, first, end):
        real = getattr(os, name)

        def guarded(*args, **kwargs):
            dir_fd = next((v for k, v in kwargs.items() if k.endswith("dir_fd") and v is not None), None)
            for p in args[first:end]:
                if not (name == "truncate" and isinstance(p, int)):  # os.truncate(fd) changes an open file
                    check("os." + name, p, dir_fd)
            return real(*args, **kwargs)
        return guarded

    patches = {"open": guarded_os_open, "_exit": sys.exit}
    patches.update((name, path_checked(name, *span)) for name, span in _PATHS.items() if hasattr(os, name))
    patches.update((name, deny("os." + name)) for name in _DENIED if hasattr(os, name))
    for name, fn in patches.items():
        setattr(os, name, fn)
        if hasattr(posix, name):
            setattr(posix, name, fn)
    builtins.open = io.open = guarded_open
    _posixsubprocess.fork_exec = deny("subprocess")  # subprocess is not imported yet; it binds this at import
    _socket.socketpair = deny("socketpair")
    sys.modules.pop("socket", None)  # so `import socket` builds on the class below: it still imports

    class DeniedSocket(_socket.socket):
        __slots__ = ()  # socket.py's subclass adds __weakref__

        def __init__(self, *args, **kwargs):
            raise PermissionError("socket creation is disabled in the jaxchat sandbox")
    _socket.socket = _socket.SocketType = DeniedSocket


if __name__ == "__main__":
    main(json.loads(sys.argv[2]))
