"""Web chat: the streaming API and its limits, continuous batching in the engine service, client disconnects,
a load test (64 concurrent streams vs the same requests one at a time), and a real headless Chromium driving
the page over WebDriver.

The model is tiny and random (no checkpoint): its lm_head never favours special tokens, so replies run to
max_tokens and never call the calculator (tool events are checked on the decoder directly). One engine
service is shared by the module, with one prompt bucket and one row bucket, so prefill and run compile once.
"""
from __future__ import annotations

import base64
import http.client
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

from helpers import tiny_model, tiny_tokenizer
from jaxchat import model as gpt
from jaxchat.common import bucket
from jaxchat.web.app import StreamDecoder, create_app
from jaxchat.web.service import EngineService
from scripts.bench_web import sse_events

CACHE = 256
ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "test-artifacts"
HELLO = [{"role": "user", "content": "Hello there!"}]


def chatty_params(cfg, tok, seed: int = 0):
    """Random params made with numpy (no init compile). Output projections are random too, so every layer
    matters; the lm_head columns of special tokens are zero, so the model never ends a reply or calls a tool."""
    rng = np.random.default_rng(seed)
    shapes = gpt.param_shapes(cfg)

    def leaf(path, s):
        name = path[-1].key
        if name == "wte":
            return rng.standard_normal(s.shape)
        if name == "lm_head":
            w = rng.standard_normal(s.shape)
            w[:, sorted(tok.special_ids.values())] = 0.0
            return w
        return rng.standard_normal(s.shape) / np.sqrt(s.shape[-2])

    import jax

    return jax.tree_util.tree_map_with_path(lambda p, s: jnp.asarray(leaf(p, s), jnp.float32), shapes)


def make_service(tok, cfg, params, **kw):
    opts = dict(max_batch=8, max_queue=64, cache_len=CACHE, steps_per_iter=2, prefill_rows=(8,),
                prompt_buckets=(128,))
    opts.update(kw)
    return EngineService(params, cfg, tok, **opts)


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


@pytest.fixture(scope="module")
def model(tok):
    cfg = tiny_model(tok.vocab_size, max_seq_len=CACHE)
    return cfg, chatty_params(cfg, tok)


@pytest.fixture(scope="module")
def svc(tok, model):
    s = make_service(tok, *model).start()
    assert s.wait_ready(120)
    yield s
    s.stop()


@pytest.fixture(scope="module")
def client(svc):
    return create_app(svc).test_client()


@pytest.fixture(scope="module")
def parked(tok, model):
    """A service whose engine thread never starts: requests stay queued (admission, limits, 503s)."""
    return make_service(tok, *model, max_batch=1, max_queue=1)  # room for 2: one per free row + one waiting


@pytest.fixture(scope="module")
def parked_client(parked):
    return create_app(parked).test_client()


@pytest.fixture(scope="module")
def server(svc):
    """The app on a real threaded HTTP server on loopback."""
    from werkzeug.serving import make_server

    srv = make_server("127.0.0.1", 0, create_app(svc), threaded=True)
    th = threading.Thread(target=srv.serve_forever, daemon=True)
    th.start()
    yield f"127.0.0.1:{srv.server_port}"
    srv.shutdown()


def parse_sse(text: str) -> list[dict]:
    events = []
    for block in text.split("\n\n"):
        data = [ln[5:].strip() for ln in block.split("\n") if ln.startswith("data:")]
        if data:
            events.append(json.loads("\n".join(data)))
    return events


def stream_chat(addr: str, body: dict, timeout: float = 120.0):
    """POST over a real socket and read the SSE stream: (status, events, seconds to first token, total seconds)."""
    host, port = addr.split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    t0 = time.perf_counter()
    conn.request("POST", "/chat/completions", json.dumps(body), {"Content-Type": "application/json"})
    resp = conn.getresponse()
    if resp.status != 200:
        out = resp.status, [json.loads(resp.read())], None, time.perf_counter() - t0
        conn.close()
        return out
    events, first = [], None
    for ev in sse_events(resp):
        events.append(ev)
        if first is None and "token" in ev:
            first = time.perf_counter() - t0
    conn.close()
    return 200, events, first, time.perf_counter() - t0


def get_json(addr: str, path: str) -> dict:
    with urllib.request.urlopen(f"http://{addr}{path}", timeout=10) as r:
        return json.loads(r.read())


def text_ids(tok, ids):
    special = set(tok.special_ids.values())
    return [i for i in ids if i not in special]


def run_direct(svc, prompt, **kw):
    """Submit straight to the service and collect the raw ids (bypassing HTTP and the decoder)."""
    req = svc.submit(prompt, **kw)
    ids, done = [], None
    for kind, payload in req:
        if kind == "tokens":
            ids += payload
        else:
            done = payload
    assert done and "finish_reason" in done, done
    return ids, done


# ----------------------------------------------------------------------------------------------------
# Streaming format


def test_stream_format_tokens_concatenate_to_the_completion(client, svc, tok):
    body = {"messages": HELLO, "temperature": 0.0, "max_tokens": 24, "seed": 7}
    r = client.post("/chat/completions", json=body)
    assert r.status_code == 200 and r.mimetype == "text/event-stream"
    assert r.headers["Cache-Control"] == "no-cache" and r.headers["X-Request-Id"]
    raw = r.get_data(as_text=True)
    assert raw.startswith(": ")  # a comment opens the stream (headers go out at once)
    events = parse_sse(raw)
    *tokens, done = events
    assert tokens and all(set(e) == {"token"} and e["token"] for e in tokens)
    prompt = tok.render_for_completion({"messages": HELLO})
    assert done["done"] is True and done["finish_reason"] == "length" and done["seed"] == 7
    assert done["usage"] == {"prompt_tokens": len(prompt), "completion_tokens": 24}
    assert done["time_to_first_token_s"] >= 0 and done["total_time_s"] >= done["time_to_first_token_s"]
    # the same request straight through the service: its ids decode to exactly the streamed text
    ids, _ = run_direct(svc, prompt, max_tokens=24, temperature=0.0, top_k=50, seed=7)
    assert len(ids) == 24
    assert "".join(e["token"] for e in tokens) == tok.decode(text_ids(tok, ids))


def test_decoder_never_splits_utf8_and_marks_tool_calls(tok):
    text = "héllo wörld — 😀 ok ✓"
    ids = tok.encode(text)
    assert len(ids) > len(text.split())  # byte-fallback pieces: multi-byte characters span several tokens
    dec = StreamDecoder(tok)
    events = []
    for t in ids:  # one id at a time, as the stream delivers them
        events += dec.feed([t])
    events += dec.flush()
    assert all("\ufffd" not in e["token"] for e in events)
    assert "".join(e["token"] for e in events) == text
    sp = tok.encode_special
    seq = (tok.encode("Let me compute.") + [sp("<|python_start|>")] + tok.encode("12*34") + [sp("<|python_end|>"),
           sp("<|output_start|>")] + tok.encode("408") + [sp("<|output_end|>")] + tok.encode(" So 408.")
           + [sp("<|assistant_end|>")])
    ev = StreamDecoder(tok).feed(seq)
    kinds = [next(iter(e)) if "part" not in e else "token:" + e["part"] for e in ev]
    assert kinds.index("part_start") < kinds.index("token:python") < kinds.index("part_end")
    assert {"part_start": "python"} in ev and {"part_end": "python"} in ev
    assert {"part_start": "python_output"} in ev and {"part_end": "python_output"} in ev
    assert "".join(e["token"] for e in ev if e.get("part") == "python") == "12*34"
    assert "".join(e["token"] for e in ev if e.get("part") == "python_output") == "408"
    assert "".join(e["token"] for e in ev if "token" in e and "part" not in e) == "Let me compute. So 408."


def test_batched_rows_match_solo_runs_and_seeds(svc, tok):
    """Continuous batching keeps rows independent: a request gives the same tokens alone or next to others
    (greedy, and sampled with the same seed), whatever row it lands in."""
    prompts = [tok.render_for_completion({"messages": [{"role": "user", "content": c}]})
               for c in ("Hi", "What is 12 * 34?", "import json\ndef load(path):", "How are you today?", "x = 1")]
    kws = [dict(max_tokens=12 + 3 * i, temperature=0.0 if i % 2 else 1.0, top_k=50 - i, seed=100 + i)
           for i in range(len(prompts))]
    alone = [run_direct(svc, p, **kw)[0] for p, kw in zip(prompts, kws)]
    reqs = [svc.submit(p, **kw) for p, kw in zip(prompts, kws)]  # queued together: one padded prefill
    together = [[t for k, pl in r if k == "tokens" for t in pl] for r in reqs]
    assert together == alone
    assert [len(x) for x in alone] == [kw["max_tokens"] for kw in kws]
    other, _ = run_direct(svc, prompts[0], **{**kws[0], "seed": 999})
    assert other != alone[0]  # a different seed samples differently


def test_buckets():
    assert bucket(1, (1, 2, 4, 8)) == 1 and bucket(3, (1, 2, 4, 8)) == 4 and bucket(8, (8,)) == 8
    with pytest.raises(ValueError):
        bucket(9, (1, 2, 4, 8))


# ----------------------------------------------------------------------------------------------------
# Limits and malformed input


def msgs(*contents):
    return [{"role": "user" if i % 2 == 0 else "assistant", "content": c} for i, c in enumerate(contents)]


BAD = [
    # (raw body or JSON, status, words the error must contain, field)
    (b"{not json", 400, "not valid JSON", None),
    (b"", 400, "body is empty", None),
    (b"\xff\xfe{}", 400, "not valid UTF-8", None),
    (b"[1, 2]", 400, "must be a JSON object, got array", None),
    (b'{"messages": [{"role": "user", "content": "hi"}], "temperature": NaN}', 400, "NaN is not valid JSON", None),
    ({}, 400, "missing field 'messages'", "messages"),
    ({"messages": "hi"}, 400, "'messages' must be a list, got string", "messages"),
    ({"messages": {"role": "user"}}, 400, "'messages' must be a list, got object", "messages"),
    ({"messages": []}, 400, "'messages' is empty", "messages"),
    ({"messages": msgs(*["hi"] * 501)}, 413, "too many messages: 501 (at most 500)", "messages"),
    ({"messages": ["hi"]}, 400, "messages[0] must be an object", "messages[0]"),
    ({"messages": [{"content": "hi"}]}, 400, "messages[0] is missing 'role'", "messages[0].role"),
    ({"messages": [{"role": "user"}]}, 400, "messages[0] is missing 'content'", "messages[0].content"),
    ({"messages": [{"role": "system", "content": "hi"}]}, 400, "role must be 'user' or 'assistant', got 'system'",
     "messages[0].role"),
    ({"messages": [{"role": 3, "content": "hi"}]}, 400, "role must be 'user' or 'assistant', got integer",
     "messages[0].role"),
    ({"messages": [{"role": "user", "content": 5}]}, 400, "messages[0].content must be a string, got integer",
     "messages[0].content"),
    ({"messages": [{"role": "user", "content": ["a"]}]}, 400, "must be a string, got array", "messages[0].content"),
    ({"messages": [{"role": "user", "content": ""}]}, 400, "messages[0].content is empty", "messages[0].content"),
    ({"messages": msgs("hi", " \n\t ", "again")}, 400, "messages[1].content is empty", "messages[1].content"),
    ({"messages": [{"role": "user", "content": "hi", "name": "bob"}]}, 400, "unknown field 'name'",
     "messages[0].name"),
    ({"messages": msgs("x" * 8001)}, 413, "8001 characters (at most 8000)", "messages[0].content"),
    ({"messages": msgs(*["y" * 7000] * 5)}, 413, "35000 characters in total (at most 32000)", "messages"),
    ({"messages": msgs("hi", "hello")}, 400, "must end with a user message", "messages[1].role"),
    ({"messages": [{"role": "assistant", "content": "hi"}]}, 400, "'user' was expected", "messages[0].role"),
    ({"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]}, 400,
     "messages[1].role is 'user' but 'assistant' was expected", "messages[1].role"),
    ({"messages": msgs("hi", [{"type": "bash", "text": "ls"}], "ok")}, 400, "messages[1].content[0] must be",
     "messages[1].content[0]"),
    ({"messages": msgs("hi", [], "ok")}, 400, "empty list of parts", "messages[1].content"),
    ({"messages": HELLO, "foo": 1}, 400, "unknown field 'foo'", "foo"),
    ({"messages": HELLO, "temperature": "hot"}, 400, "'temperature' must be a number between 0 and 2, got string",
     "temperature"),
    ({"messages": HELLO, "temperature": True}, 400, "got boolean", "temperature"),
    ({"messages": HELLO, "temperature": 2.5}, 400, "between 0 and 2, got 2.5", "temperature"),
    ({"messages": HELLO, "temperature": -0.1}, 400, "between 0 and 2, got -0.1", "temperature"),
    ({"messages": HELLO, "top_k": 0}, 400, "'top_k' must be between 1 and 200, got 0", "top_k"),
    ({"messages": HELLO, "top_k": 201}, 400, "between 1 and 200, got 201", "top_k"),
    ({"messages": HELLO, "top_k": 1.5}, 400, "'top_k' must be an integer", "top_k"),
    ({"messages": HELLO, "top_k": "5"}, 400, "'top_k' must be an integer between 1 and 200, got string", "top_k"),
    ({"messages": HELLO, "max_tokens": 0}, 400, "'max_tokens' must be between 1 and 4096, got 0", "max_tokens"),
    ({"messages": HELLO, "max_tokens": 4097}, 400, "between 1 and 4096, got 4097", "max_tokens"),
    ({"messages": HELLO, "max_tokens": []}, 400, "'max_tokens' must be an integer", "max_tokens"),
    ({"messages": HELLO, "seed": -1}, 400, "'seed' must be between 0", "seed"),
    ({"messages": HELLO, "stream": False}, 400, "only streaming is supported", "stream"),
]


@pytest.mark.parametrize("body,status,words,field", BAD, ids=[f"bad{i}" for i in range(len(BAD))])
def test_bad_requests_say_what_is_wrong(parked_client, body, status, words, field):
    kw = {"data": body, "content_type": "application/json"} if isinstance(body, bytes) else {"json": body}
    r = parked_client.post("/chat/completions", **kw)
    assert r.status_code == status, r.get_json()
    err = r.get_json()
    assert words in err["error"], err
    assert err["field"] == field
    assert parked_client.get("/health").status_code == 200  # still up


def test_http_errors_are_json(parked_client):
    r = parked_client.post("/chat/completions", data=b"x" * ((1 << 20) + 10), content_type="application/json")
    assert r.status_code == 413 and "too large" in r.get_json()["error"]
    r = parked_client.get("/chat/completions")
    assert r.status_code == 405 and "Method Not Allowed" in r.get_json()["error"]
    r = parked_client.get("/nope")
    assert r.status_code == 404 and "Not Found" in r.get_json()["error"]


def test_prompt_must_fit_the_context(parked_client, parked):
    r = parked_client.post("/chat/completions", json={"messages": HELLO, "max_tokens": 250})
    assert r.status_code == 413
    err = r.get_json()
    assert "exceed the model's context of 256 tokens" in err["error"] and err["field"] == "max_tokens"
    long = " ".join(f"word{i}" for i in range(1200))[:7999]
    r = parked_client.post("/chat/completions", json={"messages": msgs(long)})
    assert r.status_code == 413 and "context of 256" in r.get_json()["error"] and r.get_json()["field"] == "messages"
    # the default max_tokens (512) is lowered to what fits; the request is accepted (and queued here)
    r = parked_client.post("/chat/completions", json={"messages": HELLO})
    assert r.status_code == 200
    assert parked.stats()["queue_length"] == 1
    r.close()  # the client leaves before its stream started: the request is cancelled
    assert parked.submit([1, 2, 3], max_tokens=4, temperature=0, top_k=1).cancelled.is_set() is False
    assert parked.stats()["queue_length"] == 1  # the cancelled one was dropped from the queue
    with parked._cv:
        parked._waiting.clear()


def test_full_queue_answers_503_with_retry_after(parked_client, parked):
    held = [parked_client.post("/chat/completions", json={"messages": HELLO, "max_tokens": 8}) for _ in range(2)]
    assert [r.status_code for r in held] == [200, 200]
    r = parked_client.post("/chat/completions", json={"messages": HELLO, "max_tokens": 8})
    assert r.status_code == 503 and int(r.headers["Retry-After"]) >= 1
    assert "busy" in r.get_json()["error"]
    st = parked_client.get("/stats").get_json()
    assert st["queue_length"] == 2 and st["max_queue"] == 1 and st["requests_rejected"] >= 1
    for h in held:
        h.close()
    r = parked_client.post("/chat/completions", json={"messages": HELLO, "max_tokens": 8})
    assert r.status_code == 200  # the queue had room again once those clients left
    r.close()
    with parked._cv:
        parked._waiting.clear()


def test_engine_failure_is_reported_and_the_app_stays_up(tok, model):
    cfg, params = model
    broken = make_service(tok, cfg, {k: v for k, v in params.items() if k != "lm_head"}).start()
    c = create_app(broken).test_client()
    try:
        r = c.post("/chat/completions", json={"messages": HELLO, "max_tokens": 4})
        assert r.status_code == 200
        (ev,) = parse_sse(r.get_data(as_text=True))
        assert ev["done"] is True and "engine failed: KeyError" in ev["error"]
        h = c.get("/health").get_json()
        assert h["status"] == "error" and not h["ready"] and "KeyError" in h["error"]
        r = c.post("/chat/completions", json={"messages": HELLO})
        assert r.status_code == 503 and "model not available" in r.get_json()["error"]
    finally:
        broken.stop()


def test_health_and_stats(client, parked_client, svc):
    h = client.get("/health").get_json()
    assert h["status"] == "ok" and h["ready"] is True
    assert h["model"]["context"] == CACHE and h["model"]["max_batch"] == 8 and h["model"]["params"] > 0
    assert h["limits"]["max_messages"] == 500 and h["limits"]["max_tokens_limit"] == CACHE - 2
    assert parked_client.get("/health").get_json()["status"] == "loading"
    s = client.get("/stats").get_json()
    for k in ("queue_length", "active_rows", "max_batch", "tokens_per_second", "requests_served"):
        assert k in s
    assert s["requests_served"] >= 1 and s["tokens_per_second"] > 0 and s["max_batch"] == 8


def test_page_is_self_contained(client):
    r = client.get("/")
    assert r.status_code == 200 and r.mimetype == "text/html"
    html = r.get_data(as_text=True)
    assert "chat.js" in html and "chat.css" in html and 'name="viewport"' in html
    for name in ("chat.js", "chat.css", "favicon.svg"):
        a = client.get(f"/static/{name}")
        assert a.status_code == 200
        text = a.get_data(as_text=True)
        assert "http://" not in text.replace("http://www.w3.org/2000/svg", "") and "https://" not in text
        a.close()
    assert "https://" not in html and "http://" not in html  # nothing from a CDN: works offline


# ----------------------------------------------------------------------------------------------------
# Real sockets: disconnects and load


def test_client_disconnect_frees_its_row(server, svc):
    svc.pace_s = 0.02  # slow the streams down (2 tokens / 20 ms) so the timeline below is unambiguous
    try:
        served0 = svc.stats()["requests_cancelled"]
        other = {}
        t = threading.Thread(target=lambda: other.update(
            r=stream_chat(server, {"messages": HELLO, "max_tokens": 200, "temperature": 1.0})))
        t.start()
        host, port = server.split(":")
        body = json.dumps({"messages": msgs("Tell me a long story."), "max_tokens": 200}).encode()
        s = socket.create_connection((host, int(port)))
        s.sendall(b"POST /chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        got = b""
        while got.count(b"data:") < 5:
            chunk = s.recv(4096)
            assert chunk, got
            got += chunk
        deadline = time.time() + 5
        while svc.stats()["active_rows"] < 2 and time.time() < deadline:
            time.sleep(0.01)
        assert svc.stats()["active_rows"] == 2
        s.close()  # the client drops mid-stream
        deadline = time.time() + 10
        while svc.stats()["active_rows"] != 1 and time.time() < deadline:
            time.sleep(0.01)
        st = svc.stats()
        assert st["active_rows"] == 1 and st["requests_cancelled"] == served0 + 1
        t.join(60)
        status, events, _, _ = other["r"]
        assert status == 200 and events[-1]["done"] and events[-1]["usage"]["completion_tokens"] == 200
        assert svc.stats()["active_rows"] == 0
    finally:
        svc.pace_s = 0.0
    # the freed row serves the next request
    status, events, _, _ = stream_chat(server, {"messages": HELLO, "max_tokens": 5})
    assert status == 200 and events[-1]["finish_reason"] == "length"


def _run_load(server, bodies, concurrent: bool):
    results = [None] * len(bodies)

    def one(i):
        results[i] = stream_chat(server, bodies[i])

    t0 = time.perf_counter()
    if concurrent:
        threads = [threading.Thread(target=one, args=(i,)) for i in range(len(bodies))]
        for th in threads:
            th.start()
        for th in threads:
            th.join(300)
    else:
        for i in range(len(bodies)):
            one(i)
    wall = time.perf_counter() - t0
    return results, wall


def test_load_64_concurrent_streams(server, svc, tok):
    n, max_tokens = 64, 32
    bodies = [{"messages": msgs(f"Question number {i}: " + "tell me more " * (i % 5)), "max_tokens": max_tokens,
               "temperature": 0.8, "seed": i} for i in range(n)]
    figures = {}
    outputs = {}
    for mode in ("concurrent", "sequential"):
        results, wall = _run_load(server, bodies, mode == "concurrent")
        for status, events, first, _ in results:
            assert status == 200, events
            assert events[-1].get("done") and "error" not in events[-1], events[-1]
            assert events[-1]["usage"]["completion_tokens"] == max_tokens
            assert first is not None
        ttft = np.array([r[2] for r in results])
        toks = sum(r[1][-1]["usage"]["completion_tokens"] for r in results)
        figures[mode] = (np.percentile(ttft, 50), np.percentile(ttft, 95), toks / wall, wall)
        outputs[mode] = ["".join(e.get("token", "") for e in r[1]) for r in results]
    # per-request seeds: the same replies either way
    assert outputs["concurrent"] == outputs["sequential"]
    lines = [f"web load test: {n} streaming clients x {max_tokens} tokens, max_batch {svc.max_batch}, tiny model, CPU"]
    for mode, (p50, p95, tps, wall) in figures.items():
        lines.append(f"  {mode:>10}: TTFT p50 {p50 * 1e3:7.1f} ms  p95 {p95 * 1e3:7.1f} ms  "
                     f"{tps:7.1f} tokens/s  wall {wall:5.2f} s")
    lines.append(f"  batched / sequential throughput: {figures['concurrent'][2] / figures['sequential'][2]:.2f}x")
    print("\n" + "\n".join(lines))
    assert svc.stats()["active_rows"] == 0 and svc.stats()["queue_length"] == 0


def test_service_compiles_every_prefill_shape_while_idle(tok, model):
    """A fresh service compiles each (rows, prompt length) prefill shape while it has nothing to do, so later
    admissions of any shape meet no XLA compilation (counted with jax.monitoring's backend-compile event);
    without it, the first burst of users waits on the compiler (see scripts/bench_web.py)."""
    from jax import monitoring

    cfg, params = model
    s = make_service(tok, cfg, params, max_batch=2, prefill_rows=(1, 2), prompt_buckets=(32, 64)).start()
    compiles = []

    def listener(name, secs, **kw):
        if name == "/jax/core/compile/backend_compile_duration":
            compiles.append(secs)

    def finish(req):
        for kind, payload in req:
            assert kind != "error", payload
        return req

    try:
        assert s.wait_ready(120)
        assert s.stats()["prefill_shapes_pending"] > 0  # nothing compiled before ready: startup stays fast
        finish(s.submit([tok.bos_id] * 5, max_tokens=4, temperature=0.0, top_k=1))  # compiles the decode loop
        until(lambda: s.stats()["prefill_shapes_pending"] == 0, timeout=300, what="every prefill shape to compile")
        monitoring.register_event_duration_secs_listener(listener)
        short, long = [tok.bos_id] * 20, [tok.bos_id] * 50  # prompt buckets 32 and 64
        finish(s.submit(long, max_tokens=4, temperature=0.8, top_k=50))  # 1 row x 64
        with s._cv:  # both wait before the engine thread looks: admitted together, 2 rows x 64 then 2 x 32
            pair = [s.submit(p, max_tokens=4, temperature=0.8, top_k=50) for p in (short, long)]
        [finish(r) for r in pair]
        with s._cv:
            pair = [s.submit(short, max_tokens=4, temperature=0.8, top_k=50) for _ in range(2)]
        [finish(r) for r in pair]
        assert s.stats()["requests_served"] == 6
    finally:
        monitoring.unregister_event_duration_listener(listener)
        s.stop()
    assert compiles == [], f"{len(compiles)} compilations after the service had compiled every prefill shape"


def _sft_checkpoint(tok, model, tmp_path, monkeypatch) -> Path:
    """The module's model saved as SFT step 5 (tag d2) with its tokenizer under a fresh $JAXCHAT_BASE_DIR."""
    import dataclasses

    from jaxchat.checkpoint import Checkpoints, stage_dir

    cfg, params = model
    base = tmp_path / "base"
    monkeypatch.setenv("JAXCHAT_BASE_DIR", str(base))
    tok.save(base / "tokenizer" / "tokenizer.model")
    ck = Checkpoints(stage_dir("sft", "d2"), async_save=False)
    ck.save(5, params=params, meta={"model": dataclasses.asdict(cfg)})
    ck.close()
    return base


def test_chat_web_script_serves_a_checkpoint_with_gunicorn(tok, model, tmp_path, monkeypatch):
    """scripts/chat_web.py end to end: a checkpoint on disk, gunicorn with one gthread worker that loads the
    model after the fork, a streamed completion over HTTP, a clean shutdown."""
    import signal

    base = _sft_checkpoint(tok, model, tmp_path, monkeypatch)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "JAXCHAT_BASE_DIR": str(base), "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "",
           "PYTHONPATH": str(ROOT)}
    log = tmp_path / "chat_web.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "scripts.chat_web", f"--port={port}", "--max_batch=2",
                                 "--max_queue=4", "--max_tokens=12", "--cache_len=128"],
                                cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    addr = f"127.0.0.1:{port}"
    try:
        def ready():
            assert proc.poll() is None, log.read_text()[-3000:]
            try:
                return get_json(addr, "/health")["ready"]
            except OSError:
                return False

        until(ready, timeout=150, what="chat_web to load the checkpoint")
        h = get_json(addr, "/health")
        assert h["model"]["source"] == "sft" and h["model"]["step"] == 5 and h["model"]["context"] == 128
        status, events, first, _ = stream_chat(addr, {"messages": HELLO})
        assert status == 200 and first is not None
        assert events[-1]["done"] and events[-1]["usage"]["completion_tokens"] == 12  # the --max_tokens default
        text = log.read_text()
        assert "http://127.0.0.1:%d/" % port in text and "gthread" in text and text.count("Booting worker") == 1
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, log.read_text()[-3000:]


def test_bench_web_loads_the_server_from_client_processes(tok, model, tmp_path, monkeypatch):
    """scripts/bench_web.py (CI size): starts chat_web on a checkpoint, waits for its prefill shapes, sends the
    same requests from 3 client processes at once and then one by one; every reply arrives, the same both ways."""
    base = _sft_checkpoint(tok, model, tmp_path, monkeypatch)
    env = {**os.environ, "JAXCHAT_BASE_DIR": str(base), "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "",
           "PYTHONPATH": str(ROOT)}
    p = subprocess.run([sys.executable, "-m", "scripts.bench_web", "--clients=3", "--max_tokens=6", "--max_batch=2",
                        "--cache_len=64"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-3000:]
    r = json.loads(p.stdout.strip().splitlines()[-1])
    assert r["bench"] == "web" and r["server_exit"] == 0 and r["model"]["step"] == 5
    for mode in ("concurrent", "sequential"):
        assert r[mode]["ok"] == 3 and r[mode]["tokens"] == 18 and r[mode]["tokens_per_s"] > 0, r[mode]
    assert r["same_replies"] and r["server_stats"]["prefill_shapes_pending"] == 0
    assert r["server_stats"]["requests_served"] == 8  # chat_web's warm-up, the bench's, 3 at once, 3 one by one


# ----------------------------------------------------------------------------------------------------
# A real browser


CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", shutil.which("chromedriver") or "/usr/bin/chromedriver"
CHROME_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
               "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
               "--window-size=1100,900"]


class WebDriver:
    """The few W3C WebDriver calls the test needs, as plain JSON over HTTP to chromedriver."""

    def __init__(self, port: int):
        self.base = f"http://127.0.0.1:{port}"
        self.sid = None

    def call(self, method: str, path: str, body=None):
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                return json.loads(r.read())["value"]
        except urllib.error.HTTPError as e:
            raise AssertionError(f"WebDriver {method} {path}: {e.read().decode()[:500]}") from None

    def s(self, method, path, body=None):
        return self.call(method, f"/session/{self.sid}{path}", body)

    def start(self, user_data_dir: str):
        caps = {"browserName": "chrome", "goog:chromeOptions": {
            "binary": CHROMIUM, "args": CHROME_ARGS + [f"--user-data-dir={user_data_dir}"]}}
        self.sid = self.call("POST", "/session", {"capabilities": {"alwaysMatch": caps}})["sessionId"]

    def find(self, css: str):
        return next(iter(self.s("POST", "/element", {"using": "css selector", "value": css}).values()))

    def click(self, css: str):
        self.s("POST", f"/element/{self.find(css)}/click", {})

    def type(self, css: str, text: str, clear: bool = False):
        eid = self.find(css)
        if clear:
            self.s("POST", f"/element/{eid}/clear", {})
        self.s("POST", f"/element/{eid}/value", {"text": text})

    def js(self, script: str, *args):
        return self.s("POST", "/execute/sync", {"script": script, "args": list(args)})

    def wait(self, script: str, timeout: float = 30.0, what: str = ""):
        deadline = time.time() + timeout
        while time.time() < deadline:
            v = self.js(script)
            if v:
                return v
            time.sleep(0.05)
        raise AssertionError(f"timed out waiting for {what or script}")

    def screenshot(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(self.s("GET", "/screenshot")))
        return path


@pytest.fixture
def browser():
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"{CHROMIUM} is absent: install Debian's chromium and chromium-driver to run the browser test")
    if not os.path.exists(CHROMEDRIVER):
        pytest.skip("chromedriver is absent: install Debian's chromium-driver to run the browser test")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([CHROMEDRIVER, f"--port={port}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    profile = tempfile.mkdtemp(prefix="jaxchat-chromium-")
    wd = WebDriver(port)
    try:
        deadline = time.time() + 20
        while True:
            try:
                if wd.call("GET", "/status").get("ready"):
                    break
            except (OSError, AssertionError):
                pass
            if time.time() > deadline:
                raise AssertionError("chromedriver did not start")
            time.sleep(0.1)
        wd.start(profile)
        yield wd
    finally:
        if wd.sid:
            try:
                wd.call("DELETE", f"/session/{wd.sid}")
            except Exception:  # noqa: BLE001
                pass
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        shutil.rmtree(profile, ignore_errors=True)


def until(fn, timeout: float = 30.0, what: str = ""):
    deadline = time.time() + timeout
    while time.time() < deadline:
        v = fn()
        if v:
            return v
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


REPLIES = ("return [...document.querySelectorAll('.msg.assistant')].map(x => ({state: x.dataset.state,"
           " text: x.querySelector('.body').textContent, all: x.textContent}));")


def test_browser_chat_streams_stops_edits_and_restarts(browser, server, svc):
    wd = browser
    replies = lambda: wd.js(REPLIES)  # noqa: E731
    streaming = lambda: wd.js("return document.querySelector('#app').dataset.streaming === 'true';")  # noqa: E731
    wd.s("POST", "/url", {"url": f"http://{server}/"})
    until(lambda: wd.js("return document.getElementById('status').dataset.state === 'ok';"), what="health check")
    wd.js("window.__errors = []; window.addEventListener('error', e => window.__errors.push(String(e.message)));"
          "window.__snaps = [];"
          "new MutationObserver(() => { const m = document.querySelectorAll('.msg.assistant .body');"
          "  const c = window.jaxchat.state.conv, last = c[c.length - 1];"
          "  if (m.length && last.role === 'assistant')"
          "    window.__snaps.push([last.parts.map(p => p.text).join(''), m[m.length - 1].textContent]); })"
          ".observe(document.getElementById('messages'), {childList: true, subtree: true, characterData: true});")
    svc.pace_s = 0.02  # ~2 tokens per 20 ms: a reply visibly streams
    try:
        # 1. type a message, watch the reply stream in
        wd.click("#settings-toggle")
        wd.type("#max-tokens", "16", clear=True)  # short: its junk re-encodes into several tokens per token
        wd.type("#input", "Hello! What is 12 * 34?\ue007")  # Enter sends
        until(lambda: (r := replies()) and r[-1]["state"] == "done", what="the first reply")
        snaps = wd.js("return window.__snaps;")
        shown = list(dict.fromkeys(dom for _, dom in snaps if dom))
        assert len(shown) >= 4, shown  # several intermediate DOM states, not one final paint
        raw = list(dict.fromkeys(text for text, _ in snaps if text))
        assert len(raw) >= 4 and all(b.startswith(a) for a, b in zip(raw, raw[1:]))  # each extends the last
        first = replies()[-1]["text"]
        assert len(first) > 5 and first == shown[-1]

        # 2. a long reply, stopped mid-stream: the row is freed on the server
        wd.type("#max-tokens", "110", clear=True)
        svc.pace_s = 0.05
        cancelled0 = svc.stats()["requests_cancelled"]
        wd.type("#input", "Tell me a very long story.\ue007")
        until(lambda: len(r := replies()) == 2 and len(r[1]["text"]) > 20, what="the second reply to stream")
        assert streaming() and svc.stats()["active_rows"] == 1
        wd.click("#send")  # now the Stop button
        until(lambda: not streaming(), what="Stop to take effect")
        stopped = replies()[1]
        assert stopped["state"] == "stopped" and "stopped" in stopped["all"]
        until(lambda: svc.stats()["active_rows"] == 0, timeout=10, what="the row to be freed")
        assert svc.stats()["requests_cancelled"] == cancelled0 + 1
        time.sleep(0.3)
        assert replies()[1]["text"] == stopped["text"]  # nothing arrives after Stop

        # 3. edit the last message: the conversation is cut there and a new reply streams
        svc.pace_s = 0.0
        wd.type("#max-tokens", "20", clear=True)
        wd.click(".msg.user .edit")  # only the last user message has one
        wd.type(".msg.editing textarea", " Make it short.")
        wd.click(".msg.editing .save")
        until(lambda: not wd.js("return !!document.querySelector('.msg.editing');")
              and len(r := replies()) == 2 and r[1]["state"] == "done" and not streaming(), what="the edited turn")
        users = wd.js("return [...document.querySelectorAll('.msg.user .body')].map(x => x.textContent);")
        assert users == ["Hello! What is 12 * 34?", "Tell me a very long story. Make it short."]
        # ... and regenerate its reply
        before = replies()[1]["text"]
        wd.click(".msg.assistant .regenerate")
        until(lambda: len(r := replies()) == 2 and r[1]["state"] == "done" and not streaming(),
              what="the regenerated reply")
        assert replies()[1]["text"] not in ("", before)  # a fresh random seed per request

        # 4. calculator calls and code blocks render distinctly (the page's own renderer, fed stream events)
        rendered = wd.js("""
            const m = {parts: []};
            const evs = [{token: 'Sure. '}, {part_start: 'python'}, {token: '12*34', part: 'python'},
                         {part_end: 'python'}, {part_start: 'python_output'}, {token: '408', part: 'python_output'},
                         {part_end: 'python_output'}, {token: ' so:\\n```python\\nprint(408)\\n```\\nand `x`.'}];
            evs.forEach(e => window.jaxchat.applyEvent(m, e));
            const div = document.createElement('div');
            window.jaxchat.renderParts(div, m.parts);
            return [div.querySelector('.tool-call .tool-expr').textContent,
                    div.querySelector('.tool-call .tool-result').textContent,
                    div.querySelector('pre.code').dataset.lang, div.querySelector('pre.code code').textContent,
                    div.querySelector('code.inline').textContent];""")
        assert rendered == ["12*34", "408", "python", "print(408)", "x"]

        shot = wd.screenshot(ARTIFACTS / "web_chat.png")
        # 5. phone-sized screen: nothing overflows sideways
        wd.s("POST", "/window/rect", {"width": 390, "height": 844})
        wide = wd.js("return [document.documentElement.scrollWidth, window.innerWidth];")
        assert wide[0] <= wide[1], wide
        phone = wd.screenshot(ARTIFACTS / "web_chat_phone.png")

        # 6. new chat
        wd.click("#new-chat")
        assert wd.js("return document.querySelectorAll('.msg').length;") == 0
        assert wd.js("return !!document.querySelector('#messages #empty');")
        assert wd.js("return window.__errors;") == []
        print(f"\nbrowser screenshots: {shot} {phone}")
    except Exception:
        failed = wd.screenshot(ARTIFACTS / "web_chat_failure.png")
        page_error = wd.js("return document.getElementById('error').textContent;")
        print(f"\nbrowser test failed; page error: {page_error!r}; screenshot: {failed}")
        raise
    finally:
        svc.pace_s = 0.0
