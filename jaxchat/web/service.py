"""The engine service: one model, one batched `DecodeState`, one background thread, many concurrent chats.

    svc = EngineService(params, model_cfg, tokenizer, max_batch=8, max_queue=64).start()
    req = svc.submit(prompt_ids, max_tokens=256, temperature=0.8, top_k=50)   # QueueFull → HTTP 503
    for kind, payload in req:          # ("tokens", [ids...]) ... then ("done", {...}) or ("error", "...")
        ...
    req.cancel()                       # the client went away: its row stops and is freed

Continuous batching. The service thread owns the state (`max_batch` rows, a KV cache of `cache_len`
positions per row) and every JAX call. Each iteration it

1. deactivates rows whose requests were cancelled (`engine.deactivate`) and frees them;
2. admits waiting requests into the free rows with ONE `engine.prefill` call: prompts are right-padded to a
   length bucket (capped at the cache length) and the number of rows is padded to a power of two by
   repeating the last admission (same row, same inputs — an idempotent duplicate), so the compiled prefill
   shapes stay few: {1, 2, 4, ..., max_batch} × length buckets;
3. decodes every active row for up to `steps_per_iter` steps (`engine.run`), runs the calculator for rows
   that emitted `<|python_end|>` (`Engine.handle_tools`);
4. copies the new tokens of every row to its request's event queue, and retires finished rows.

Requests are plain token ids here: the web app renders conversations and decodes the streamed ids in its
own (request) threads, so the service thread only ever runs the device loop. Each request has its own PRNG
key (`jax.random.key(seed)`, a random seed unless given), so its sample does not depend on its neighbours.
"""
from __future__ import annotations

import collections
import queue
import secrets
import threading
import time
import traceback
import uuid
from dataclasses import dataclass, field

import jax
import jax.numpy as jnp
import numpy as np

from jaxchat import engine as E
from jaxchat.web.limits import SEED_LIMIT


class QueueFull(Exception):
    """The waiting queue is at `max_queue`: answer 503 with Retry-After."""

    def __init__(self, message: str, retry_after: int = 1):
        super().__init__(message)
        self.retry_after = retry_after


class Unavailable(Exception):
    """The service is not running (still loading, stopped, or failed)."""


class ContextTooLong(ValueError):
    """Prompt + max_tokens does not fit the engine's cache (answer 413)."""


@dataclass
class Request:
    """One chat completion in flight. Iterate it (from any thread) to receive its events."""

    prompt: list[int]
    max_tokens: int
    temperature: float
    top_k: int
    seed: int
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    events: "queue.SimpleQueue" = field(default_factory=queue.SimpleQueue, repr=False)
    cancelled: threading.Event = field(default_factory=threading.Event, repr=False)
    submitted: float = field(default_factory=time.perf_counter)
    # written by the service thread
    row: int | None = None
    sent: int = 0
    admitted: float | None = None
    first_token: float | None = None
    finished: bool = False

    def cancel(self) -> None:
        """Stop generating (the client disconnected). Safe to call from any thread, any number of times."""
        self.cancelled.set()

    def get(self, timeout: float | None = None):
        """The next event, or raises queue.Empty after `timeout` seconds."""
        return self.events.get(timeout=timeout)

    def __iter__(self):
        while True:
            kind, payload = self.events.get()
            yield kind, payload
            if kind in ("done", "error"):
                return


def _pow2_upto(n: int) -> list[int]:
    out, p = [], 1
    while p < n:
        out.append(p)
        p *= 2
    return out + [n]


def pick_bucket(n: int, buckets) -> int:
    """The smallest bucket >= n (buckets sorted ascending, the last one is the maximum)."""
    for b in buckets:
        if n <= b:
            return b
    raise ValueError(f"{n} exceeds the largest bucket {buckets[-1]}")


class EngineService:
    """Owns the model and one DecodeState of `max_batch` rows; serves requests with continuous batching.

    params / model_cfg / tokenizer: the model (params may be sharded on `mesh`); `cache_len`: KV positions per
    row (default: the model's `max_seq_len`) — a request needs len(prompt) + max_tokens + 1 <= cache_len;
    `max_queue`: requests allowed to wait for a row (more → QueueFull); `steps_per_iter`: decode steps between
    admissions/stream flushes (1–4: lower = smoother streams and faster admission, higher = less host work);
    `pace_s`: minimum seconds per loop iteration (0 = as fast as possible; demos and browser tests use it to
    slow streaming down); `info`: extra model facts for /health (source, step, ...).

    Compiled shapes: one `run`, and one `prefill` per (row bucket, prompt bucket). `prefill_rows` are the
    row-count buckets an admission batch is padded to (default: powers of two up to max_batch, the last one
    max_batch); `prompt_buckets` the prompt-length buckets (default engine.PROMPT_BUCKETS, capped at cache_len).
    Fewer buckets = fewer compilations, more padding. With `precompile` (default), the service thread compiles
    every prefill shape ahead of time, one whenever it is idle, shortest prompts first: otherwise the first burst
    of users pays for XLA compiling each new (rows, length) shape it meets — measured with the tiny model on
    2 CPU cores, 16 clients at once waited 3–6 s for their first token on a fresh server and ~0.3 s on a
    compiled one (`scripts/bench_web.py`). A request that arrives meanwhile waits for at most one compilation."""

    def __init__(self, params, model_cfg, tokenizer, *, max_batch: int = 8, max_queue: int = 64,
                 cache_len: int | None = None, steps_per_iter: int = 2, mesh=None, info: dict | None = None,
                 pace_s: float = 0.0, use_tools: bool = True, prefill_rows=None, prompt_buckets=None,
                 precompile: bool = True, stats_window_s: float = 10.0, log=None):
        if max_batch < 1 or max_queue < 0 or not 1 <= steps_per_iter <= 64:
            raise ValueError("need max_batch >= 1, max_queue >= 0 and 1 <= steps_per_iter <= 64")
        self.engine = E.Engine(params, model_cfg, tokenizer, mesh=mesh)
        self.tokenizer, self.cfg = tokenizer, model_cfg
        if mesh is not None:
            from jaxchat import sharding as shd

            div = shd.batch_divisor(mesh)
            max_batch = -(-max_batch // div) * div
        self.max_batch, self.max_queue = max_batch, max_queue
        self.cache_len = int(cache_len or model_cfg.max_seq_len)
        if self.cache_len < 8:
            raise ValueError(f"cache_len {self.cache_len} is too small")
        self.steps_per_iter, self.pace_s = steps_per_iter, pace_s
        self.prefill_rows = tuple(sorted({min(int(r), max_batch) for r in (prefill_rows or _pow2_upto(max_batch))}))
        if self.prefill_rows[-1] != max_batch:
            self.prefill_rows += (max_batch,)
        self.prompt_buckets = tuple(sorted({min(int(t), self.cache_len) for t in (prompt_buckets or E.PROMPT_BUCKETS)}
                                           | {self.cache_len}))
        self.stops = self.engine.stops(use_tools)
        # (rows, prompt length) prefill shapes still to compile while idle; shortest prompts (most common) first
        self._to_compile = [(R, T) for T in self.prompt_buckets for R in self.prefill_rows] if precompile else []
        self._compile_s = 0.0
        self.extra_info = dict(info or {})
        self.n_params = int(sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params)))
        self.log = log or (lambda msg: None)
        self._cv = threading.Condition()
        self._waiting: collections.deque[Request] = collections.deque()
        self._rows: list[Request | None] = [None] * max_batch
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._ready = threading.Event()
        self._error: str | None = None
        self._st = None
        self._keys_fn = None
        # statistics (written by the service thread, read under the lock)
        self._window = stats_window_s
        self._recent: collections.deque[tuple[float, int]] = collections.deque()
        self._counts = collections.Counter()
        self._started_at = time.time()
        self._ttfts: collections.deque[float] = collections.deque(maxlen=256)

    # ------------------------------------------------------------------------------------------------
    # Public API (any thread)

    @property
    def max_tokens_limit(self) -> int:
        """The most new tokens any request can get (an empty prompt is impossible: at least BOS + turn)."""
        return self.cache_len - 2

    def start(self) -> "EngineService":
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="jaxchat-engine", daemon=True)
            self._thread.start()
        return self

    def wait_ready(self, timeout: float | None = None) -> bool:
        ok = self._ready.wait(timeout)
        if self._error:
            raise Unavailable(self._error)
        return ok

    def stop(self, timeout: float = 10.0) -> None:
        with self._cv:
            self._stopping = True
            self._cv.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def ready(self) -> bool:
        return self._ready.is_set() and not self._error and not self._stopping

    def check_fits(self, prompt_len: int, max_tokens: int) -> None:
        if prompt_len + max_tokens + 1 > self.cache_len:
            raise ContextTooLong(
                f"the conversation is {prompt_len} tokens and max_tokens is {max_tokens}: together they exceed the "
                f"model's context of {self.cache_len} tokens (prompt + max_tokens + 1 <= {self.cache_len}); "
                "shorten the conversation or lower max_tokens")

    def submit(self, prompt: list[int], *, max_tokens: int, temperature: float, top_k: int,
               seed: int | None = None) -> Request:
        """Queue a completion. Raises ContextTooLong, QueueFull or Unavailable; never blocks."""
        if not prompt:
            raise ValueError("empty prompt")
        self.check_fits(len(prompt), max_tokens)
        if seed is None:
            seed = secrets.randbelow(SEED_LIMIT)
        req = Request(list(map(int, prompt)), int(max_tokens), float(temperature), int(top_k), int(seed))
        with self._cv:
            if self._error or self._stopping:
                raise Unavailable(self._error or "the engine service is stopping")
            if any(r.cancelled.is_set() for r in self._waiting):  # clients that left while waiting
                for r in [r for r in self._waiting if r.cancelled.is_set()]:
                    self._waiting.remove(r)
                    self._finish(r, "cancelled")
            free = sum(r is None for r in self._rows)  # waiting requests about to get a row do not queue
            if len(self._waiting) >= self.max_queue + free:
                self._counts["rejected"] += 1
                raise QueueFull(f"server busy: {len(self._waiting)} requests are already waiting for "
                                f"{self.max_batch} rows; retry shortly", retry_after=self._retry_after())
            self._waiting.append(req)
            self._counts["submitted"] += 1
            self._cv.notify_all()
        return req

    def warmup(self, prompt: list[int], timeout: float | None = None) -> None:
        """Push one short request through (compiles prefill and decode before the first user waits)."""
        req = self.submit(prompt, max_tokens=2, temperature=0.0, top_k=1, seed=0)
        try:
            while True:
                kind, payload = req.get(timeout)
                if kind == "error":
                    raise Unavailable(payload)
                if kind == "done":
                    return
        finally:
            req.cancel()

    def info(self) -> dict:
        c = self.cfg
        return {"depth": c.depth, "width": c.n_embd, "layers": c.n_layer, "heads": c.n_head,
                "vocab_size": c.vocab_size, "params": self.n_params, "context": self.cache_len,
                "max_batch": self.max_batch, "max_queue": self.max_queue, **self.extra_info}

    def stats(self) -> dict:
        now = time.perf_counter()
        with self._cv:
            self._trim(now)
            toks = sum(n for _, n in self._recent)
            span = min(self._window, max(now - self._recent[0][0], 1e-3)) if self._recent else self._window
            ttfts = sorted(self._ttfts)
            return {
                "ready": self.ready,
                "queue_length": len(self._waiting),
                "max_queue": self.max_queue,
                "active_rows": sum(r is not None for r in self._rows),
                "max_batch": self.max_batch,
                "tokens_per_second": round(toks / span, 2) if toks else 0.0,
                "window_s": self._window,
                "requests_served": self._counts["served"],
                "requests_cancelled": self._counts["cancelled"],
                "requests_rejected": self._counts["rejected"],
                "requests_submitted": self._counts["submitted"],
                "tokens_generated": self._counts["tokens"],
                "ttft_p50_s": round(ttfts[len(ttfts) // 2], 4) if ttfts else None,
                "prefill_shapes_pending": len(self._to_compile),
                "uptime_s": round(time.time() - self._started_at, 1),
                "error": self._error,
            }

    # ------------------------------------------------------------------------------------------------
    # Service thread

    def _retry_after(self) -> int:
        return 1 if not self._recent else 2

    def _trim(self, now: float) -> None:
        while self._recent and now - self._recent[0][0] > self._window:
            self._recent.popleft()

    def _loop(self) -> None:
        # every jitted call traces under the model's mesh (thread-local), so activation layouts are pinned
        with self.engine.mesh_context():
            self._serve()

    def _serve(self) -> None:
        try:
            self._st = self.engine._new_state(self.max_batch, self.cache_len, self.cache_len)
            self._keys_fn = jax.jit(jax.vmap(jax.random.key))
            self._ready.set()
            while True:
                t0 = time.perf_counter()
                with self._cv:
                    while (not self._stopping and not self._waiting and all(r is None for r in self._rows)
                           and not self._to_compile):
                        self._cv.wait(0.5)
                    if self._stopping:
                        break
                    admit = self._take_admissions()
                    idle = not admit and all(r is None for r in self._rows)
                if idle and self._to_compile:
                    self._precompile_next()
                    continue
                self._retire_cancelled()
                if admit:
                    self._prefill(admit)
                    self._harvest()
                if any(r is not None for r in self._rows):
                    self._decode()
                    self._harvest()
                if self.pace_s:
                    time.sleep(max(0.0, self.pace_s - (time.perf_counter() - t0)))
        except BaseException as e:  # noqa: BLE001 — report and fail every request, keep the web app up
            self._error = f"engine failed: {type(e).__name__}: {e}"
            self.log(self._error + "\n" + traceback.format_exc())
            self._ready.set()
        finally:
            self._fail_all(self._error or "the engine service stopped")

    def _precompile_next(self) -> None:
        """Compile the prefill for the next pending (rows, prompt length) shape (ahead-of-time: the arguments
        are built exactly as `_prefill` builds them, so its calls hit the compiled executable)."""
        R, T = self._to_compile[0]
        t0 = time.perf_counter()
        z = lambda dt: jnp.asarray(np.zeros(R, dt))  # noqa: E731
        E.prefill.lower(self.engine.params, self._st, z(np.int32), jnp.asarray(np.zeros((R, T), np.int32)),
                        z(np.int32), z(np.int32), z(np.float32), z(np.int32), self._keys_fn(z(np.uint32)),
                        cfg=self.cfg, stops=self.stops, fresh=True).compile()
        self._compile_s += time.perf_counter() - t0
        with self._cv:
            self._to_compile.pop(0)
            if not self._to_compile:
                self.log(f"engine: every prefill shape compiled ({len(self.prefill_rows)} row buckets x "
                         f"{len(self.prompt_buckets)} prompt lengths, {self._compile_s:.1f} s while idle)")

    def _take_admissions(self) -> list[tuple[int, Request]]:
        """Under the lock: pair waiting requests (skipping cancelled ones) with free rows."""
        free = [b for b, r in enumerate(self._rows) if r is None]
        admit = []
        while self._waiting and len(admit) < len(free):
            req = self._waiting.popleft()
            if req.cancelled.is_set():
                self._finish(req, "cancelled")
                continue
            row = free[len(admit)]
            req.row = row
            self._rows[row] = req
            admit.append((row, req))
        return admit

    def _retire_cancelled(self) -> None:
        gone = [b for b, r in enumerate(self._rows) if r is not None and r.cancelled.is_set()]
        if not gone:
            return
        mask = np.zeros(self.max_batch, bool)
        mask[gone] = True
        self._st = E.deactivate(self._st, jnp.asarray(mask))
        with self._cv:
            for b in gone:
                self._finish(self._rows[b], "cancelled")
                self._rows[b] = None

    def _prefill(self, admit: list[tuple[int, Request]]) -> None:
        R = len(admit)
        Rb = pick_bucket(R, self.prefill_rows)
        padded = admit + [admit[-1]] * (Rb - R)  # duplicates of the last admission: same row, same values
        T = pick_bucket(max(len(r.prompt) for _, r in admit), self.prompt_buckets)
        toks = np.zeros((Rb, T), np.int32)
        for i, (_, r) in enumerate(padded):
            toks[i, : len(r.prompt)] = r.prompt
        col = lambda f, dt: jnp.asarray(np.asarray([f(b, r) for b, r in padded], dt))  # noqa: E731
        keys = self._keys_fn(col(lambda b, r: r.seed, np.uint32))
        now = time.perf_counter()
        for _, r in admit:
            r.admitted = now
        self._st = E.prefill(self.engine.params, self._st, col(lambda b, r: b, np.int32), jnp.asarray(toks),
                             col(lambda b, r: len(r.prompt), np.int32), col(lambda b, r: r.max_tokens, np.int32),
                             col(lambda b, r: r.temperature, np.float32), col(lambda b, r: r.top_k, np.int32),
                             keys, cfg=self.cfg, stops=self.stops, fresh=True)

    def _decode(self) -> None:
        self._st = E.run(self.engine.decode_params, self._st, self.steps_per_iter, cfg=self.cfg, stops=self.stops)
        self._st = self.engine.handle_tools(self._st, self.stops)

    def _harvest(self) -> None:
        out, n, active = jax.device_get((self._st["out"], self._st["n"], self._st["active"]))
        now = time.perf_counter()
        new_total = 0
        done = []
        for b, r in enumerate(self._rows):
            if r is None:
                continue
            k = int(n[b])
            if k > r.sent:
                ids = out[b, r.sent:k].tolist()
                new_total += k - r.sent
                r.sent = k
                if r.first_token is None:
                    r.first_token = now
                    self._ttfts.append(now - r.submitted)
                r.events.put(("tokens", ids))
            if not active[b]:
                last = int(out[b, k - 1]) if k else -1
                done.append((b, "stop" if last in self.engine.ends else "length"))
        with self._cv:
            if new_total:
                self._recent.append((now, new_total))
                self._counts["tokens"] += new_total
                self._trim(now)
            for b, reason in done:
                self._finish(self._rows[b], reason)
                self._rows[b] = None

    def _finish(self, req: Request, reason: str) -> None:
        """Under the lock (or on the service thread): send the final event."""
        if req.finished:
            return
        req.finished = True
        self._counts["served" if reason in ("stop", "length") else "cancelled"] += 1
        now = time.perf_counter()
        req.events.put(("done", {
            "finish_reason": reason,
            "usage": {"prompt_tokens": len(req.prompt), "completion_tokens": req.sent},
            "id": req.id, "seed": req.seed,
            "time_to_first_token_s": round(req.first_token - req.submitted, 4) if req.first_token else None,
            "total_time_s": round(now - req.submitted, 4),
        }))

    def _fail_all(self, message: str) -> None:
        with self._cv:
            pending = list(self._waiting) + [r for r in self._rows if r is not None]
            self._waiting.clear()
            self._rows = [None] * self.max_batch
            for r in pending:
                if not r.finished:
                    r.finished = True
                    r.events.put(("error", message))
