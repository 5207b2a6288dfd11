"""Load-test the chat server from client processes: TTFT and throughput, all at once vs one by one.

    python -m scripts.bench_web                               # the SFT checkpoint: 16 clients x 64 tokens
    python -m scripts.bench_web --clients=64 --max_tokens=32 --max_batch=16 --source=rl
    python -m scripts.bench_web --url=http://10.0.0.5:8000    # a server that is already running

Unless --url is given it starts `scripts.chat_web` on a free port. The same requests (per-request seeds) go out all
at once, each from its own process (no JAX here), then one by one: the replies must match. It first waits for the
server to compile every prefill shape (`--wait_compiled=false`: a cold server). The last line of output is JSON.
"""
import http.client
import json
import multiprocessing as mp
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from jaxchat import config as C
from jaxchat.common import base_dir, cli

ROOT = Path(__file__).resolve().parent.parent
EXTRA = {"url": "", "source": "sft", "model_tag": "", "clients": 16, "max_tokens": 64, "temperature": 0.8,
         "max_batch": 8, "max_queue": 64, "cache_len": 0, "start_timeout": 300.0, "request_timeout": 600.0,
         "wait_compiled": True}
QUESTIONS = ["What is {a} * {b}?", "Tell me about the sea.", "Who are you?", "Spell the word: {w}",
             "How many {w}s fit in a box of {a}?"]
WORDS = ["apple", "orange", "pencil", "river", "cloud"]


def sse_events(resp):
    """The JSON events of a server-sent-event stream (an http.client response), up to the one marked done."""
    data = []
    while line := resp.readline():
        line = line.decode("utf-8").rstrip("\r\n")
        if line.startswith("data:"):
            data.append(line[5:].strip())
        elif not line and data:
            ev, data = json.loads("\n".join(data)), []
            yield ev
            if ev.get("done"):
                return


def stream_chat(addr: str, body: dict, timeout: float, start_at: float = 0.0) -> dict:
    """POST /chat/completions (at `start_at`, epoch seconds) and read the stream: status, seconds to the first
    token and to the end, the completion's token count and text."""
    time.sleep(max(0.0, start_at - time.time()))
    host, port = addr.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    t0, first, text, last = time.perf_counter(), None, [], {}
    try:
        conn.request("POST", "/chat/completions", json.dumps(body), {"Content-Type": "application/json"})
        if (resp := conn.getresponse()).status != 200:
            return {"status": resp.status, "error": resp.read().decode("utf-8", "replace")[:300]}
        for ev in sse_events(resp):
            if "token" in ev:
                first = first if first is not None else time.perf_counter() - t0
                text.append(ev["token"])
            last = ev if ev.get("done") else last
        return {"status": 200 if last and "error" not in last else 500, "ttft_s": first,
                "total_s": time.perf_counter() - t0, "tokens": last.get("usage", {}).get("completion_tokens", 0),
                "text": "".join(text), "error": last.get("error")}
    except OSError as e:
        return {"status": 0, "error": f"{type(e).__name__}: {e}"}
    finally:
        conn.close()


def summarise(results: list[dict], wall_s: float) -> dict:
    ok = [r for r in results if r["status"] == 200]
    pct = lambda xs, q: sorted(xs)[round(q * (len(xs) - 1))] if xs else float("nan")  # noqa: E731
    ttft, tokens = [r["ttft_s"] for r in ok if r["ttft_s"] is not None], sum(r["tokens"] for r in ok)
    return {"requests": len(results), "ok": len(ok),
            "errors": sorted({str(r.get("error")) for r in results if r["status"] != 200})[:3],
            "ttft_p50_s": pct(ttft, 0.5), "ttft_p95_s": pct(ttft, 0.95),
            "latency_p50_s": pct([r["total_s"] for r in ok], 0.5), "tokens": tokens, "wall_s": wall_s,
            "tokens_per_s": tokens / wall_s if wall_s > 0 else float("nan")}


def get_json(addr: str, path: str) -> dict:
    with urllib.request.urlopen(f"http://{addr}{path}", timeout=10) as r:
        return json.loads(r.read())


def start_server(x):
    log_path = base_dir() / "report" / "logs" / "bench_web_server.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    print(f"[bench_web] starting scripts.chat_web (source {x.source}, max_batch {x.max_batch}); log: {log_path}",
          file=sys.stderr)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    args = [sys.executable, "-m", "scripts.chat_web", f"--port={port}", f"--source={x.source}",
            f"--max_batch={x.max_batch}", f"--max_queue={x.max_queue}", f"--max_tokens={x.max_tokens}",
            f"--cache_len={x.cache_len}"] + ([f"--model_tag={x.model_tag}"] if x.model_tag else [])
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    with open(log_path, "wb") as out:
        proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    addr, deadline = f"127.0.0.1:{port}", time.time() + x.start_timeout
    while proc.poll() is None and time.time() < deadline:
        try:
            if get_json(addr, "/health").get("ready"):
                return proc, addr
        except OSError:
            pass
        time.sleep(1.0)
    if proc.poll() is not None:
        raise SystemExit(f"the server exited ({proc.returncode}):\n{log_path.read_text()[-3000:]}")
    stop_server(proc)
    raise SystemExit(f"the server was not ready after {x.start_timeout:.0f} s; log: {log_path}")


def stop_server(proc) -> int:
    proc.terminate()
    try:
        return proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()


def main(argv=None):
    x = C.load([], argv, extra=dict(EXTRA)).extra
    if x.clients < 1 or x.max_tokens < 1:
        raise C.ConfigError("--clients and --max_tokens must be at least 1")
    proc, addr = start_server(x) if not x.url else (None, x.url.split("://", 1)[-1].rstrip("/"))
    bodies = [{"messages": [{"role": "user", "content": QUESTIONS[i % 5].format(a=17 + 3 * i, b=4 + i % 9,
                                                                                 w=WORDS[i % 5])}],
               "max_tokens": x.max_tokens, "temperature": x.temperature, "seed": i} for i in range(x.clients)]
    try:
        health = get_json(addr, "/health")
        stream_chat(addr, bodies[0], x.request_timeout)  # one warm request: compilation is not load
        t0 = time.perf_counter()
        while x.wait_compiled and get_json(addr, "/stats").get("prefill_shapes_pending", 0) > 0:
            time.sleep(0.5)  # the server compiles every prefill shape while idle; a cold burst measures XLA
        waited, t0 = time.perf_counter() - t0, time.perf_counter()
        with mp.get_context("fork").Pool(x.clients) as pool:
            start_at = time.time() + 1.0  # every client process sends at the same moment
            together = pool.starmap(stream_chat, [(addr, b, x.request_timeout, start_at) for b in bodies])
        wall_together, t0 = time.perf_counter() - t0 - 1.0, time.perf_counter()
        alone = [stream_chat(addr, b, x.request_timeout) for b in bodies]
        wall_alone, stats = time.perf_counter() - t0, get_json(addr, "/stats")
    finally:
        code = stop_server(proc) if proc is not None else None
    a, b = summarise(together, wall_together), summarise(alone, wall_alone)
    same = [r.get("text") for r in together] == [r.get("text") for r in alone]
    for name, s in (("all at once", a), ("one by one", b)):
        print(f"[bench_web] {name:>11}: {s['ok']}/{s['requests']} ok | TTFT p50 {s['ttft_p50_s'] * 1e3:,.0f} ms "
              f"p95 {s['ttft_p95_s'] * 1e3:,.0f} ms | latency p50 {s['latency_p50_s']:.2f} s | "
              f"{s['tokens_per_s']:,.1f} tokens/s | wall {s['wall_s']:.1f} s", file=sys.stderr)
    print(f"[bench_web] throughput all at once / one by one: {a['tokens_per_s'] / b['tokens_per_s']:.2f}x; "
          f"same replies both ways: {same}", file=sys.stderr)
    out = {"bench": "web", "server": "started" if proc is not None else addr, "server_exit": code,
           "waited_for_compilation_s": waited, "model": health.get("model"), "clients": x.clients,
           "max_tokens": x.max_tokens, "max_batch": x.max_batch if proc is not None else None, "concurrent": a,
           "sequential": b, "speedup": a["tokens_per_s"] / b["tokens_per_s"], "same_replies": same,
           "server_stats": stats}
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    cli(main)
