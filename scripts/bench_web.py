"""Load-test the chat server from client processes: TTFT and throughput, all at once vs one by one.

    python -m scripts.bench_web --clients=16 --max_tokens=64 --max_batch=8 --source=sft   # the defaults
    python -m scripts.bench_web --url=http://10.0.0.5:8000    # a server that is already running

Unless --url is given it starts `scripts.chat_web` on a free port. Once the server has compiled every prefill shape
(`--wait_compiled=false`: a cold server), the same requests (per-request seeds) go out all at once, each from its own
process (no JAX here), then one by one: the replies must match. The last line of output is JSON."""
import contextlib
import json
import multiprocessing as mp
import socket
import subprocess
import sys
import time
import urllib.error
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
    """The JSON events of a server-sent-event stream (one `data:` line each), up to the one marked done."""
    for line in resp:
        if line.startswith(b"data:"):
            yield (ev := json.loads(line[5:]))
            if ev.get("done"):
                return


def stream_chat(addr: str, body: dict, timeout: float, start_at: float = 0.0) -> dict:
    """POST /chat/completions (at `start_at`, epoch seconds) and read the stream: status, seconds to the first
    token and to the end, the completion's token count and text."""
    time.sleep(max(0.0, start_at - time.time()))
    req = urllib.request.Request(f"http://{addr}/chat/completions", json.dumps(body).encode(),
                                 {"Content-Type": "application/json"})
    t0, first, text, last = time.perf_counter(), None, [], {}
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            for ev in sse_events(resp):
                if "token" in ev:
                    first = first if first is not None else time.perf_counter() - t0
                    text.append(ev["token"])
                last = ev if ev.get("done") else last
    except urllib.error.HTTPError as e:
        return {"status": e.code, "error": e.read().decode("utf-8", "replace")[:300]}
    except OSError as e:
        return {"status": 0, "error": f"{type(e).__name__}: {e}"}
    return {"status": 200 if last and "error" not in last else 500, "ttft_s": first, "text": "".join(text),
            "total_s": time.perf_counter() - t0, "tokens": last.get("usage", {}).get("completion_tokens", 0),
            "error": last.get("error")}


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
    print(f"[bench_web] starting scripts.chat_web ({x.source} model); log: {log_path}", file=sys.stderr)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    args = [sys.executable, "-m", "scripts.chat_web", f"--port={port}", f"--source={x.source}",
            f"--max_batch={x.max_batch}", f"--max_queue={x.max_queue}", f"--max_tokens={x.max_tokens}",
            f"--cache_len={x.cache_len}"] + ([f"--model_tag={x.model_tag}"] if x.model_tag else [])
    with open(log_path, "wb") as out:  # run from the repository root: `-m` finds scripts/ and jaxchat/ there
        proc = subprocess.Popen(args, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    addr, deadline = f"127.0.0.1:{port}", time.time() + x.start_timeout
    while proc.poll() is None and time.time() < deadline:
        with contextlib.suppress(OSError):
            if get_json(addr, "/health").get("ready"):
                return proc, addr
        time.sleep(1.0)
    why = f"exited ({proc.returncode})" if proc.poll() is not None else f"was not ready after {x.start_timeout:.0f} s"
    proc.kill()
    raise SystemExit(f"the server {why}; log: {log_path}\n{log_path.read_text()[-3000:]}")


def main(argv=None):
    x = C.load([], argv, extra=dict(EXTRA)).extra
    if x.clients < 1 or x.max_tokens < 1:
        raise C.ConfigError("--clients and --max_tokens must be at least 1")
    proc, addr = start_server(x) if not x.url else (None, x.url.split("://", 1)[-1].rstrip("/"))
    bodies = [{"messages": [{"role": "user", "content": QUESTIONS[i % 5].format(a=17 + 3 * i, b=4 + i % 9,
                                                                                 w=WORDS[i % 5])}],
               "max_tokens": x.max_tokens, "temperature": x.temperature, "seed": i} for i in range(x.clients)]
    try:
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
        wall_alone, stats, health = time.perf_counter() - t0, get_json(addr, "/stats"), get_json(addr, "/health")
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(60)
    a, b = summarise(together, wall_together), summarise(alone, wall_alone)
    same = [r.get("text") for r in together] == [r.get("text") for r in alone]
    for name, s in (("all at once", a), ("one by one", b)):
        print(f"[bench_web] {name:>11}: {s['ok']}/{s['requests']} ok | TTFT p50 {s['ttft_p50_s'] * 1e3:,.0f} ms "
              f"p95 {s['ttft_p95_s'] * 1e3:,.0f} ms | latency p50 {s['latency_p50_s']:.2f} s | "
              f"{s['tokens_per_s']:,.1f} tokens/s | wall {s['wall_s']:.1f} s", file=sys.stderr)
    print(f"[bench_web] throughput all at once / one by one: {a['tokens_per_s'] / b['tokens_per_s']:.2f}x; "
          f"same replies both ways: {same}", file=sys.stderr)
    out = {"bench": "web", "server": "started" if proc is not None else addr, "server_exit": proc and proc.returncode,
           "waited_for_compilation_s": waited, "model": health.get("model"), "clients": x.clients,
           "max_tokens": x.max_tokens, "max_batch": x.max_batch if proc is not None else None, "concurrent": a,
           "sequential": b, "speedup": a["tokens_per_s"] / b["tokens_per_s"], "same_replies": same,
           "server_stats": stats}
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    cli(main)
