"""The engine service: one batched `DecodeState` owned by one thread, many concurrent chats. Continuous batching:
each iteration frees the rows of cancelled requests, admits waiting ones into free rows with ONE `engine.prefill`
(prompts padded to a length bucket, rows to a row bucket: few compiled shapes), decodes every active row for
`steps_per_iter` steps and sends each row's new tokens to its request (whose seed alone decides its sample)."""
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
from jaxchat import sharding as shd
from jaxchat.common import bucket
from jaxchat.web.limits import SEED_LIMIT

_keys = jax.jit(jax.vmap(jax.random.key))  # seeds → per-request PRNG keys
WINDOW_S = 10.0  # /stats' tokens/s: over this many recent seconds


class ApiError(Exception):
    """A request refused, with its HTTP answer: status, message, the field at fault, headers (Retry-After)."""

    def __init__(self, status: int, message: str, field: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.field, self.headers = status, message, field, headers or {}


@dataclass
class Request:
    """One completion in flight. Iterate it (any thread) for its events: ("tokens", [ids...]) ..., then ("done",
    {...}) or ("error", message); `cancelled.set()` (the client left; any thread, any number of times) frees its row."""

    prompt: list[int]
    max_tokens: int
    temperature: float
    top_k: int
    seed: int
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    events: queue.SimpleQueue = field(default_factory=queue.SimpleQueue, repr=False)
    cancelled: threading.Event = field(default_factory=threading.Event, repr=False)
    submitted: float = field(default_factory=time.perf_counter)
    sent: int = 0  # this and below: written by the service thread
    ttft: float | None = None  # seconds to the first token
    finished: bool = False

    def __iter__(self):
        while (event := self.events.get())[0] not in ("done", "error"):
            yield event
        yield event


class EngineService:
    """`max_batch` rows of `cache_len` KV positions (default: max_seq_len); `max_queue` requests may wait for a row;
    `steps_per_iter` decode steps between admissions; `pace_s`: minimum seconds per iteration (slows demos and browser
    tests down); `info`: extra facts for /health; `prefill_rows` / `prompt_buckets`: the prefill's row and length
    buckets (default powers of two / engine.PROMPT_BUCKETS), every shape compiled while idle, short prompts first."""

    def __init__(self, params, model_cfg, tokenizer, *, max_batch: int = 8, max_queue: int = 64,
                 cache_len: int | None = None, steps_per_iter: int = 2, mesh=None, info: dict | None = None,
                 pace_s: float = 0.0, prefill_rows=None, prompt_buckets=None, log=None):
        if max_batch < 1 or max_queue < 0 or not 1 <= steps_per_iter <= 64:
            raise ValueError("need max_batch >= 1, max_queue >= 0 and 1 <= steps_per_iter <= 64")
        self.engine = E.Engine(params, model_cfg, tokenizer, mesh=mesh)
        self.tokenizer, self.cfg, self.mesh, self.stops = tokenizer, model_cfg, mesh, self.engine.stops(True)
        div = shd.batch_divisor(mesh) if mesh is not None else 1
        self.max_batch, self.max_queue = -(-max_batch // div) * div, max_queue
        self.cache_len = int(cache_len or model_cfg.max_seq_len)
        self.steps_per_iter, self.pace_s = steps_per_iter, pace_s
        clip = lambda xs, top: tuple(sorted({min(int(x), top) for x in xs} | {top}))  # noqa: E731
        self.prefill_rows = clip(prefill_rows or [2**i for i in range(self.max_batch.bit_length())], self.max_batch)
        self.prompt_buckets = clip(prompt_buckets or E.PROMPT_BUCKETS, self.cache_len)
        # (rows, prompt length) prefill shapes still to compile while idle; shortest prompts (most common) first
        self._to_compile = [(R, T) for T in self.prompt_buckets for R in self.prefill_rows]
        self.log, c = log or (lambda msg: None), model_cfg
        self.info = {"depth": c.depth, "width": c.n_embd, "layers": c.n_layer, "heads": c.n_head,
                     "vocab_size": c.vocab_size, "params": int(sum(x.size for x in jax.tree.leaves(params))),
                     "context": self.cache_len, "max_batch": self.max_batch, "max_queue": max_queue, **(info or {})}
        self._cv, self._waiting, self._rows = threading.Condition(), collections.deque(), [None] * self.max_batch
        self._thread, self._stopping, self._error, self._ready, self._st = None, False, None, threading.Event(), None
        # statistics (written by the service thread, read under the lock): (time, new tokens), counts, TTFTs
        self._started_at, self._counts = time.time(), collections.Counter()
        self._recent, self._ttfts = collections.deque(maxlen=4096), collections.deque(maxlen=256)

    @property
    def ready(self) -> bool:
        return self._ready.is_set() and not self._error and not self._stopping

    def start(self) -> EngineService:
        self._thread = threading.Thread(target=self._loop, name="jaxchat-engine", daemon=True)
        self._thread.start()
        return self

    def wait_ready(self, timeout: float | None = None) -> bool:
        return self._ready.wait(timeout) and self.ready

    def stop(self, timeout: float = 10.0) -> None:
        with self._cv:
            self._stopping = True
            self._cv.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)

    def submit(self, prompt: list[int], *, max_tokens: int, temperature: float, top_k: int,
               seed: int | None = None) -> Request:
        """Queue a completion (seed None: a random one). Raises ApiError: 413 (does not fit), 503 (busy, down)."""
        if len(prompt) + max_tokens + 1 > self.cache_len:
            raise ApiError(413, f"the conversation is {len(prompt)} tokens and max_tokens is {max_tokens}: together "
                           f"they exceed the model's context of {self.cache_len} tokens (prompt + max_tokens + 1 <= "
                           f"{self.cache_len}); shorten the conversation or lower max_tokens", "messages")
        seed = secrets.randbelow(SEED_LIMIT) if seed is None else seed
        req = Request(list(map(int, prompt)), int(max_tokens), float(temperature), int(top_k), int(seed))
        with self._cv:
            if self._error or self._stopping:
                raise ApiError(503, f"model not available: {self._error or 'the engine service is stopping'}",
                               headers={"Retry-After": "5"})
            self._drop_cancelled()
            if len(self._waiting) >= self.max_queue + self._rows.count(None):  # those about to get a row don't queue
                self._counts["rejected"] += 1
                raise ApiError(503, f"server busy: {len(self._waiting)} requests are already waiting for "
                               f"{self.max_batch} rows; retry shortly", headers={"Retry-After": "2"})
            self._waiting.append(req)
            self._counts["submitted"] += 1
            self._cv.notify_all()
        return req

    def warmup(self, prompt: list[int]) -> None:
        """Push one short request through (compiles prefill and decode before the first user waits)."""
        for kind, payload in self.submit(prompt, max_tokens=2, temperature=0.0, top_k=1, seed=0):
            if kind == "error":
                raise RuntimeError(payload)

    def stats(self) -> dict:
        now = time.perf_counter()
        with self._cv:
            recent = [(t, n) for t, n in self._recent if now - t <= WINDOW_S]
            toks, span = sum(n for _, n in recent), min(WINDOW_S, max(now - recent[0][0], 1e-3)) if recent else 1.0
            return {"ready": self.ready, "queue_length": len(self._waiting), "max_queue": self.max_queue,
                    "active_rows": self.max_batch - self._rows.count(None), "max_batch": self.max_batch,
                    "tokens_per_second": round(toks / span, 2) if toks else 0.0, "window_s": WINDOW_S,
                    **{f"requests_{k}": self._counts[k] for k in ("served", "cancelled", "rejected", "submitted")},
                    "tokens_generated": self._counts["tokens"],
                    "ttft_p50_s": round(sorted(self._ttfts)[len(self._ttfts) // 2], 4) if self._ttfts else None,
                    "prefill_shapes_pending": len(self._to_compile),
                    "uptime_s": round(time.time() - self._started_at, 1), "error": self._error}

    def _loop(self) -> None:
        try:
            with shd.scope(self.mesh):  # every jitted call traces under the model's mesh (thread-local)
                self._st = self.engine.new_state(self.max_batch, self.cache_len, self.cache_len)
                self._ready.set()
                while self._iterate():
                    pass
        except BaseException as e:  # noqa: BLE001 — report and fail every request, keep the web app up
            self._error = f"engine failed: {type(e).__name__}: {e}"
            self.log(self._error + "\n" + traceback.format_exc())
        finally:
            self._ready.set()
            with self._cv:
                for r in [r for r in [*self._waiting, *self._rows] if r is not None and not r.finished]:
                    r.finished = True
                    r.events.put(("error", self._error or "the engine service stopped"))
                self._waiting.clear()
                self._rows = [None] * self.max_batch

    def _iterate(self) -> bool:  # False once stopping
        t0 = time.perf_counter()
        with self._cv:
            self._cv.wait_for(lambda: self._stopping or self._waiting or any(self._rows) or self._to_compile)
            if self._stopping:
                return False
            self._drop_cancelled()
            gone = [b for b, r in enumerate(self._rows) if r is not None and r.cancelled.is_set()]
            for b in gone:
                self._finish(self._rows[b], "cancelled")
                self._rows[b] = None
            free = [b for b, r in enumerate(self._rows) if r is None]
            admit = [(b, self._waiting.popleft()) for b in free[: len(self._waiting)]]  # waiting requests → free rows
            for b, r in admit:
                self._rows[b] = r
        if gone:
            self._st = self._st.replace(active=self._st.active.at[jnp.asarray(gone)].set(False))
        if admit:
            padded = admit + [admit[-1]] * (bucket(len(admit), self.prefill_rows) - len(admit))  # same row, values
            T = bucket(max(len(r.prompt) for _, r in admit), self.prompt_buckets)
            self._st = E.prefill(self.engine.params, self._st, *self._prefill_args(padded, T), cfg=self.cfg,
                                 stops=self.stops)
            self._harvest()
        if any(self._rows):
            self._st = self.engine.step(self._st, self.stops, self.steps_per_iter)
            self._harvest()
        elif self._to_compile:
            self._precompile_next()
        if self.pace_s:
            time.sleep(max(0.0, self.pace_s - (time.perf_counter() - t0)))
        return True

    def _drop_cancelled(self) -> None:
        """Under the lock: finish the waiting requests whose clients left."""
        for r in [r for r in self._waiting if r.cancelled.is_set()]:
            self._waiting.remove(r)
            self._finish(r, "cancelled")

    def _prefill_args(self, padded: list[tuple[int, Request]], T: int):
        """`engine.prefill`'s arrays for these (row, request) pairs, prompts right-padded to T."""
        rows, reqs = zip(*padded)
        a = lambda xs, dt=np.int32: jnp.asarray(np.asarray(xs, dt))  # noqa: E731
        return (a(rows), a([r.prompt + [0] * (T - len(r.prompt)) for r in reqs]), a([len(r.prompt) for r in reqs]),
                a([r.max_tokens for r in reqs]), a([r.temperature for r in reqs], np.float32),
                a([r.top_k for r in reqs]), _keys(a([r.seed for r in reqs], np.uint32)))

    def _precompile_next(self) -> None:
        """Compile the next pending prefill shape, from arguments built as for an admission (so those hit it)."""
        R, T = self._to_compile[0]
        args = self._prefill_args([(0, Request([0], 0, 0.0, 0, 0))] * R, T)
        E.prefill.lower(self.engine.params, self._st, *args, cfg=self.cfg, stops=self.stops).compile()
        with self._cv:
            self._to_compile.pop(0)
        if not self._to_compile:
            self.log(f"engine: all {len(self.prefill_rows)} x {len(self.prompt_buckets)} prefill shapes compiled")

    def _harvest(self) -> None:
        """Send every row's new tokens to its request; retire the finished rows."""
        out, n, active = jax.device_get((self._st.out, self._st.n, self._st.active))
        now, new = time.perf_counter(), 0
        with self._cv:
            for b, r in [(b, r) for b, r in enumerate(self._rows) if r is not None]:
                k = int(n[b])
                if k > r.sent:
                    if r.ttft is None:
                        r.ttft = now - r.submitted
                        self._ttfts.append(r.ttft)
                    r.events.put(("tokens", out[b, r.sent:k].tolist()))
                    new, r.sent = new + k - r.sent, k
                if not active[b]:
                    self._finish(r, "stop" if k and int(out[b, k - 1]) in self.engine.ends else "length")
                    self._rows[b] = None
            self._recent.append((now, new))
            self._counts["tokens"] += new

    def _finish(self, req: Request, reason: str) -> None:
        """Under the lock (or on the service thread): send the final event."""
        if req.finished:
            return
        req.finished = True
        self._counts["served" if reason in ("stop", "length") else "cancelled"] += 1
        req.events.put(("done", {"finish_reason": reason,
                                 "usage": {"prompt_tokens": len(req.prompt), "completion_tokens": req.sent},
                                 "id": req.id, "seed": req.seed,
                                 "time_to_first_token_s": None if req.ttft is None else round(req.ttft, 4),
                                 "total_time_s": round(time.perf_counter() - req.submitted, 4)}))
