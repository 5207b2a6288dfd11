"""The engine service: one batched `DecodeState` owned by one thread, many concurrent chats. Continuous batching:
each iteration frees the rows of cancelled requests, admits waiting ones into free rows with ONE `engine.prefill`
(prompts padded to a length bucket, rows to a row bucket: few compiled shapes), decodes every active row for
`steps_per_iter` steps (`engine.run`, then the calculator) and sends each row's new tokens to its request. Each
request has its own PRNG key (its seed): its sample does not depend on its neighbours."""
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
    """One completion in flight. Iterate it (any thread) for its events: ("tokens", [ids...]) ..., then ("done",
    {...}) or ("error", message); `cancel()` (the client left, any thread, any number of times) frees its row."""

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
    first_token: float | None = None
    finished: bool = False

    def cancel(self) -> None:
        self.cancelled.set()

    def __iter__(self):
        while (event := self.events.get())[0] not in ("done", "error"):
            yield event
        yield event


class EngineService:
    """`max_batch` rows of `cache_len` KV positions (default: the model's max_seq_len); `max_queue` requests may
    wait for a row; `steps_per_iter` decode steps between admissions; `pace_s`: minimum seconds per iteration
    (demos and browser tests slow streams down); `info`: extra facts for /health; `prefill_rows` / `prompt_buckets`:
    the prefill's row and length buckets (default powers of two / engine.PROMPT_BUCKETS). With `precompile` the
    idle thread compiles every prefill shape, shortest prompts first; else the first burst of users waits on XLA
    (tiny model, 2 CPU cores: 16 clients waited 3-6 s for a first token on a fresh server, ~0.3 s on a compiled one)."""

    def __init__(self, params, model_cfg, tokenizer, *, max_batch: int = 8, max_queue: int = 64,
                 cache_len: int | None = None, steps_per_iter: int = 2, mesh=None, info: dict | None = None,
                 pace_s: float = 0.0, use_tools: bool = True, prefill_rows=None, prompt_buckets=None,
                 precompile: bool = True, stats_window_s: float = 10.0, log=None):
        if max_batch < 1 or max_queue < 0 or not 1 <= steps_per_iter <= 64:
            raise ValueError("need max_batch >= 1, max_queue >= 0 and 1 <= steps_per_iter <= 64")
        self.engine = E.Engine(params, model_cfg, tokenizer, mesh=mesh)
        self.tokenizer, self.cfg, self.mesh, self.stops = tokenizer, model_cfg, mesh, self.engine.stops(use_tools)
        div = shd.batch_divisor(mesh) if mesh is not None else 1
        self.max_batch, self.max_queue = -(-max_batch // div) * div, max_queue
        self.cache_len = int(cache_len or model_cfg.max_seq_len)
        if self.cache_len < 8:
            raise ValueError(f"cache_len {self.cache_len} is too small")
        self.steps_per_iter, self.pace_s = steps_per_iter, pace_s
        rows = prefill_rows or [2**i for i in range(self.max_batch.bit_length())]
        self.prefill_rows = tuple(sorted({min(int(r), self.max_batch) for r in rows} | {self.max_batch}))
        self.prompt_buckets = tuple(sorted({min(int(t), self.cache_len) for t in prompt_buckets or E.PROMPT_BUCKETS}
                                           | {self.cache_len}))
        # (rows, prompt length) prefill shapes still to compile while idle; shortest prompts (most common) first
        self._to_compile = [(R, T) for T in self.prompt_buckets for R in self.prefill_rows] if precompile else []
        self._compile_s = 0.0
        self.extra_info, self.log = dict(info or {}), log or (lambda msg: None)
        self.n_params = int(sum(x.size for x in jax.tree.leaves(params)))
        self._cv, self._waiting, self._rows = threading.Condition(), collections.deque(), [None] * self.max_batch
        self._thread, self._stopping, self._error, self._ready, self._st = None, False, None, threading.Event(), None
        # statistics (written by the service thread, read under the lock): (time, new tokens) pairs, counts, TTFTs
        self._window, self._started_at, self._counts = stats_window_s, time.time(), collections.Counter()
        self._recent, self._ttfts = collections.deque(), collections.deque(maxlen=256)

    @property
    def ready(self) -> bool:
        return self._ready.is_set() and not self._error and not self._stopping

    def start(self) -> EngineService:
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

    def submit(self, prompt: list[int], *, max_tokens: int, temperature: float, top_k: int,
               seed: int | None = None) -> Request:
        """Queue a completion (seed None: a random one). Raises ContextTooLong, QueueFull or Unavailable."""
        if not prompt:
            raise ValueError("empty prompt")
        if len(prompt) + max_tokens + 1 > self.cache_len:
            raise ContextTooLong(
                f"the conversation is {len(prompt)} tokens and max_tokens is {max_tokens}: together they exceed the "
                f"model's context of {self.cache_len} tokens (prompt + max_tokens + 1 <= {self.cache_len}); "
                "shorten the conversation or lower max_tokens")
        seed = secrets.randbelow(SEED_LIMIT) if seed is None else seed
        req = Request(list(map(int, prompt)), int(max_tokens), float(temperature), int(top_k), int(seed))
        with self._cv:
            if self._error or self._stopping:
                raise Unavailable(self._error or "the engine service is stopping")
            for r in [r for r in self._waiting if r.cancelled.is_set()]:  # clients that left while waiting
                self._waiting.remove(r)
                self._finish(r, "cancelled")
            free = sum(r is None for r in self._rows)  # waiting requests about to get a row do not queue
            if len(self._waiting) >= self.max_queue + free:
                self._counts["rejected"] += 1
                raise QueueFull(f"server busy: {len(self._waiting)} requests are already waiting for "
                                f"{self.max_batch} rows; retry shortly", retry_after=2 if self._recent else 1)
            self._waiting.append(req)
            self._counts["submitted"] += 1
            self._cv.notify_all()
        return req

    def warmup(self, prompt: list[int], timeout: float | None = None) -> None:
        """Push one short request through (compiles prefill and decode before the first user waits)."""
        req = self.submit(prompt, max_tokens=2, temperature=0.0, top_k=1, seed=0)
        try:
            while (event := req.events.get(timeout=timeout))[0] != "done":
                if event[0] == "error":
                    raise Unavailable(event[1])
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
            while self._recent and now - self._recent[0][0] > self._window:
                self._recent.popleft()
            toks = sum(n for _, n in self._recent)
            span = min(self._window, max(now - self._recent[0][0], 1e-3)) if self._recent else self._window
            ttfts = sorted(self._ttfts)
            return {"ready": self.ready, "queue_length": len(self._waiting), "max_queue": self.max_queue,
                    "active_rows": sum(r is not None for r in self._rows), "max_batch": self.max_batch,
                    "tokens_per_second": round(toks / span, 2) if toks else 0.0, "window_s": self._window,
                    **{f"requests_{k}": self._counts[k] for k in ("served", "cancelled", "rejected", "submitted")},
                    "tokens_generated": self._counts["tokens"],
                    "ttft_p50_s": round(ttfts[len(ttfts) // 2], 4) if ttfts else None,
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
            self._ready.set()
        finally:
            with self._cv:
                for r in [r for r in list(self._waiting) + self._rows if r is not None and not r.finished]:
                    r.finished = True
                    r.events.put(("error", self._error or "the engine service stopped"))
                self._waiting.clear()
                self._rows = [None] * self.max_batch

    def _iterate(self) -> bool:  # False once stopping
        t0 = time.perf_counter()
        with self._cv:
            while not (self._stopping or self._waiting or any(self._rows) or self._to_compile):
                self._cv.wait(0.5)
            if self._stopping:
                return False
            free, admit = [b for b, r in enumerate(self._rows) if r is None], []
            while self._waiting and len(admit) < len(free):  # pair waiting requests with free rows
                req = self._waiting.popleft()
                if req.cancelled.is_set():
                    self._finish(req, "cancelled")
                else:
                    self._rows[free[len(admit)]] = req
                    admit.append((free[len(admit)], req))
        if not admit and not any(self._rows) and self._to_compile:
            self._precompile_next()
            return True
        gone = [b for b, r in enumerate(self._rows) if r is not None and r.cancelled.is_set()]
        if gone:
            self._st = E.deactivate(self._st, jnp.asarray(np.isin(np.arange(self.max_batch), gone)))
            with self._cv:
                for b in gone:
                    self._finish(self._rows[b], "cancelled")
                    self._rows[b] = None
        if admit:
            padded = admit + [admit[-1]] * (bucket(len(admit), self.prefill_rows) - len(admit))  # same row, values
            T = bucket(max(len(r.prompt) for _, r in admit), self.prompt_buckets)
            self._st = E.prefill(self.engine.params, self._st, *self._prefill_args(padded, T), cfg=self.cfg,
                                 stops=self.stops)
            self._harvest()
        if any(self._rows):
            self._st = E.run(self.engine.decode_params, self._st, self.steps_per_iter, cfg=self.cfg, stops=self.stops)
            self._st = self.engine.handle_tools(self._st, self.stops)
            self._harvest()
        if self.pace_s:
            time.sleep(max(0.0, self.pace_s - (time.perf_counter() - t0)))
        return True

    def _prefill_args(self, padded: list[tuple[int, Request]], T: int):
        """`engine.prefill`'s arrays for these (row, request) pairs, prompts right-padded to T."""
        toks = np.zeros((len(padded), T), np.int32)
        for i, (_, r) in enumerate(padded):
            toks[i, : len(r.prompt)] = r.prompt
        col = lambda f, dt: jnp.asarray(np.asarray([f(b, r) for b, r in padded], dt))  # noqa: E731
        return (col(lambda b, r: b, np.int32), jnp.asarray(toks), col(lambda b, r: len(r.prompt), np.int32),
                col(lambda b, r: r.max_tokens, np.int32), col(lambda b, r: r.temperature, np.float32),
                col(lambda b, r: r.top_k, np.int32), _keys(col(lambda b, r: r.seed, np.uint32)))

    def _precompile_next(self) -> None:
        """Compile the next pending prefill shape, from arguments built as for an admission (so those hit it)."""
        R, T = self._to_compile[0]
        t0 = time.perf_counter()
        args = self._prefill_args([(0, Request([0], 0, 0.0, 0, 0))] * R, T)
        E.prefill.lower(self.engine.params, self._st, *args, cfg=self.cfg, stops=self.stops).compile()
        self._compile_s += time.perf_counter() - t0
        with self._cv:
            self._to_compile.pop(0)
            if not self._to_compile:
                self.log(f"engine: every prefill shape compiled ({len(self.prefill_rows)} row buckets x "
                         f"{len(self.prompt_buckets)} prompt lengths, {self._compile_s:.1f} s while idle)")

    def _harvest(self) -> None:
        """Send every row's new tokens to its request; retire the finished rows."""
        out, n, active = jax.device_get((self._st.out, self._st.n, self._st.active))
        now, new_total, done = time.perf_counter(), 0, []
        for b, r in enumerate(self._rows):
            if r is None:
                continue
            k = int(n[b])
            if k > r.sent:
                ids, new_total, r.sent = out[b, r.sent:k].tolist(), new_total + k - r.sent, k
                if r.first_token is None:
                    r.first_token = now
                    self._ttfts.append(now - r.submitted)
                r.events.put(("tokens", ids))
            if not active[b]:
                done.append((b, "stop" if k and int(out[b, k - 1]) in self.engine.ends else "length"))
        with self._cv:
            if new_total:
                self._recent.append((now, new_total))
                self._counts["tokens"] += new_total
                while now - self._recent[0][0] > self._window:
                    self._recent.popleft()
            for b, reason in done:
                self._finish(self._rows[b], reason)
                self._rows[b] = None

    def _finish(self, req: Request, reason: str) -> None:
        """Under the lock (or on the service thread): send the final event."""
        if req.finished:
            return
        req.finished = True
        self._counts["served" if reason in ("stop", "length") else "cancelled"] += 1
        ttft = round(req.first_token - req.submitted, 4) if req.first_token else None
        req.events.put(("done", {"finish_reason": reason,
                                 "usage": {"prompt_tokens": len(req.prompt), "completion_tokens": req.sent},
                                 "id": req.id, "seed": req.seed, "time_to_first_token_s": ttft,
                                 "total_time_s": round(time.perf_counter() - req.submitted, 4)}))
