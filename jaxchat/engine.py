"""Inference engine: an explicit KV-cache pytree, jitted prefill and decode loops, sampling, and nanochat's
calculator tool — batched.

Everything the device runs is a pure jitted function over one `DecodeState` pytree (donated, so the cache
is updated in place):

    cache        {"k", "v": L arrays [B, K, S, Dh], "pos": [B]}   (sharded: batch over the data axes)
    token        [B]      last emitted token (fed at the next step)
    active       [B]      row still generating
    n, max_new   [B]      tokens generated so far / allowed
    out, sampled [B, N]   generated tokens; True where sampled, False where forced (RL needs this mask)
    forced, forced_len, forced_pos   [B, F], [B], [B]   tokens the host wants emitted next (tool output)
    needs_host   [B]      row emitted <|python_end|> and waits for the calculator
    key          [B]      per-row PRNG keys; temperature [B]; top_k [B] (0 = no top-k)

`prefill` runs right-padded prompts (length buckets: a new prompt length compiles only when it falls
into a new bucket) and samples each row's first token; `run` is one `lax.while_loop` that decodes until
every row is done, `max_steps` have run, or a row needs the host. Tool-free batch generation (evals, RL
rollouts without tools) is a single `run` call; with tools the host only steps in when a row emits
`<|python_end|>`: it evaluates the expression (jaxchat.execution.calculator) and queues
`<|output_start|> result <|output_end|>` as forced tokens, then calls `run` again — still one batch.
Streaming (CLI, web) calls `run` with a small `max_steps`.

One prefill → N samples: prompts are prefilled once and the cache rows broadcast to N rows.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial
from typing import Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxchat import model as gpt
from jaxchat import sharding as shd
from jaxchat.config import ModelConfig

PROMPT_BUCKETS = (32, 64, 128, 256, 512, 1024, 2048, 4096, 8192)
KMAX = 200  # largest top-k a request may ask for (web limit, nanochat's)
TOPK_WIDTHS = (50, KMAX)  # static widths of the sampler's top-k (see topk_width)
FORCED_CAP = 64  # longest forced tool output (tokens)
# Cache lengths a batch allocates, in steps of 1.5x: a decode step's widest key window is the whole cache, so a
# tighter cache is less to read (prompt 64 + 256 new tokens: 384 slots instead of 512, batch-8 decode ~4%
# faster, paired runs on the 2-core CPU).
CACHE_BUCKETS = (256, 384, 512, 768, 1024, 1536, 2048, 3072, 4096, 6144, 8192, 12288, 16384)


# ----------------------------------------------------------------------------------------------------
# Sampling


def topk_width(top_k: int) -> int:
    """The static top-k width a batch whose rows ask for at most `top_k` compiles with (0 = whole vocabulary,
    which needs only the argmax from the top-k). Few widths, so few compilations; a narrow one is cheaper:
    XLA:CPU's top-k over 8 rows × 8,192 logits takes ~0.5 ms at width 50 and ~1.4 ms at 200."""
    return next(w for w in TOPK_WIDTHS if top_k <= w) if 0 <= top_k <= KMAX else KMAX


def sample(logits_BxV, key_B, temperature_B, top_k_B, kmax: int = KMAX):
    """Per-row sampling: temperature 0 → argmax; else softmax(logits / T) restricted to the row's top-k
    (0 = whole vocabulary; a top-k above the static width `kmax` is cut to it). Keys are per row, so a row's
    output does not depend on its neighbours. The whole-vocabulary path (random numbers for every token)
    only runs when some row asks for it."""
    logits = logits_BxV.astype(jnp.float32)
    V = logits.shape[-1]
    kmax = min(kmax, V)
    t = jnp.maximum(temperature_B, 1e-6)[:, None]
    top_vals, top_idx = jax.lax.top_k(logits, kmax)
    k = jnp.where(top_k_B > 0, jnp.minimum(top_k_B, kmax), kmax)[:, None]
    masked = jnp.where(jnp.arange(kmax)[None] < k, top_vals / t, -jnp.inf)
    pick_k = jax.vmap(jax.random.categorical)(key_B, masked)
    sampled = jnp.take_along_axis(top_idx, pick_k[:, None], axis=-1)[:, 0]
    if V > kmax:
        full = lambda: jax.vmap(jax.random.categorical)(key_B, logits / t)  # noqa: E731
        needs_full = jnp.any((top_k_B <= 0) & (temperature_B > 0))
        sampled = jax.lax.cond(needs_full, lambda: jnp.where(top_k_B > 0, sampled, full()), lambda: sampled)
    # a separate argmax, not top_idx[:, 0]: reading top_k's indices directly makes XLA:CPU lower it to a full
    # sort of the vocabulary (measured: decode 4x slower). It runs only when some row is greedy (batch 8 ×
    # 8,192 logits: ~150 µs of a ~4 ms CPU step, wasted on a sampled batch).
    greedy = jax.lax.cond(jnp.any(temperature_B <= 0), lambda: jnp.argmax(logits, axis=-1).astype(jnp.int32),
                          lambda: jnp.zeros(logits.shape[:1], jnp.int32))
    return jnp.where(temperature_B <= 0, greedy, sampled.astype(jnp.int32))


# ----------------------------------------------------------------------------------------------------
# State


def new_state(cfg: ModelConfig, batch: int, cache_len: int, max_new: int, *, dtype=None) -> dict:
    z = lambda *s, d=jnp.int32: jnp.zeros(s, d)  # noqa: E731
    return {
        "cache": gpt.init_cache(cfg, batch, cache_len, dtype),
        "token": z(batch), "active": z(batch, d=bool), "n": z(batch), "max_new": z(batch),
        "out": z(batch, max_new), "sampled": z(batch, max_new, d=bool),
        "forced": z(batch, FORCED_CAP), "forced_len": z(batch), "forced_pos": z(batch),
        "needs_host": z(batch, d=bool),
        "key": jax.random.split(jax.random.key(0), batch),
        "temperature": z(batch, d=jnp.float32), "top_k": z(batch),
    }


@partial(jax.jit, static_argnums=(0, 1, 2, 3, 4))
def _new_state_jit(cfg, batch, cache_len, max_new, dtype):
    return new_state(cfg, batch, cache_len, max_new, dtype=dtype)


@dataclass(frozen=True)
class Stops:
    """A batch's static decode settings: token ids that end a row (assistant_end, bos), the tool trigger
    (python_end; -1 = no tools), and `kmax`, the widest top-k a row of the batch may use (`topk_width`)."""

    ends: tuple[int, ...]
    python_end: int = -1
    kmax: int = KMAX


def _emit(st, sampled_B, stops: Stops):
    """Choose forced-or-sampled for every active row, record it, update done/needs_host."""
    B = sampled_B.shape[0]
    has_forced = st["forced_pos"] < st["forced_len"]
    forced_tok = jnp.take_along_axis(st["forced"], jnp.minimum(st["forced_pos"], FORCED_CAP - 1)[:, None], 1)[:, 0]
    tok = jnp.where(has_forced, forced_tok, sampled_B)
    act = st["active"]
    N = st["out"].shape[1]
    idx = jnp.minimum(st["n"], N - 1)
    rows = jnp.arange(B)
    out = st["out"].at[rows, idx].set(jnp.where(act, tok, st["out"][rows, idx]))
    smp = st["sampled"].at[rows, idx].set(jnp.where(act, ~has_forced, st["sampled"][rows, idx]))
    n = st["n"] + act
    ended = jnp.zeros_like(act)
    for e in stops.ends:
        ended |= tok == e
    cache_full = st["cache"]["pos"] + 1 >= st["cache"]["k"][0].shape[2]
    done = act & (ended | (n >= st["max_new"]) | cache_full)
    needs = act & ~done & (tok == stops.python_end) if stops.python_end >= 0 else jnp.zeros_like(act)
    return {**st, "token": jnp.where(act, tok, st["token"]), "out": out, "sampled": smp, "n": n,
            "forced_pos": st["forced_pos"] + (act & has_forced), "active": act & ~done, "needs_host": needs}


def _step_keys(st):
    return jax.vmap(jax.random.fold_in)(st["key"], st["n"])


@partial(jax.jit, static_argnames=("cfg", "stops", "fresh"), donate_argnames=("st",))
def prefill(params, st, rows_R, tokens_RxT, lengths_R, max_new_R, temperature_R, top_k_R, keys_R, *,
            cfg: ModelConfig, stops: Stops, fresh: bool = True):
    """Prefill right-padded prompts into rows `rows_R` of the state and emit each row's first token.

    Rows are reset (pos 0). `fresh=True` runs attention over the prompt chunk alone (the rows are empty)."""
    cache = st["cache"]
    R, T = tokens_RxT.shape
    sub = {"k": [c[rows_R] for c in cache["k"]], "v": [c[rows_R] for c in cache["v"]],
           "pos": jnp.zeros((R,), jnp.int32)}
    logits, sub = gpt.forward(params, tokens_RxT, cfg, cache=sub, lengths_B=lengths_R, fresh=fresh)
    last = jnp.take_along_axis(logits, (lengths_R - 1)[:, None, None], axis=1)[:, 0]
    cache = {"k": [c.at[rows_R].set(n) for c, n in zip(cache["k"], sub["k"])],
             "v": [c.at[rows_R].set(n) for c, n in zip(cache["v"], sub["v"])],
             "pos": cache["pos"].at[rows_R].set(sub["pos"])}
    st = {**st, "cache": cache}
    reset = {"active": True, "n": 0, "forced_len": 0, "forced_pos": 0, "needs_host": False, "token": 0}
    for name, val in reset.items():
        st[name] = st[name].at[rows_R].set(val)
    st["max_new"] = st["max_new"].at[rows_R].set(max_new_R)
    st["temperature"] = st["temperature"].at[rows_R].set(temperature_R)
    st["top_k"] = st["top_k"].at[rows_R].set(top_k_R)
    st["key"] = st["key"].at[rows_R].set(keys_R)
    st["out"] = st["out"].at[rows_R].set(0)
    st["sampled"] = st["sampled"].at[rows_R].set(False)
    # first token: only these rows are active for this emit
    others_active = st["active"].at[rows_R].set(False)
    only = {**st, "active": jnp.zeros_like(st["active"]).at[rows_R].set(True)}
    first = jnp.zeros_like(st["token"]).at[rows_R].set(
        sample(last, jax.vmap(jax.random.fold_in)(keys_R, jnp.zeros((R,), jnp.int32)), temperature_R, top_k_R,
               stops.kmax))
    only = _emit(only, first, stops)
    return {**only, "active": only["active"] | others_active}


def _decode_once(params, st, cfg: ModelConfig, stops: Stops):
    # attend over the smallest key window that holds every active row's keys (its position + 1)
    S = st["cache"]["k"][0].shape[2]
    need = jnp.max(jnp.where(st["active"], st["cache"]["pos"] + 1, 1))
    logits, cache = gpt.forward(params, st["token"][:, None], cfg, cache=st["cache"],
                                window_idx=gpt.window_index(need, S))
    # rows that are not active must not advance their cache position
    cache = {**cache, "pos": jnp.where(st["active"], cache["pos"], st["cache"]["pos"])}
    st = {**st, "cache": cache}
    sampled = sample(logits[:, 0], _step_keys(st), st["temperature"], st["top_k"], stops.kmax)
    return _emit(st, sampled, stops)


@jax.jit
def decode_params(params):
    """The weights as the decode loop reads them (`model.decode_layers`: layers unstacked, q/k/v joined).
    `Engine` prepares them once; `run` does it itself, per call, when handed the stacked params."""
    return {**params, "blocks": gpt.decode_layers(params["blocks"])}


@partial(jax.jit, static_argnames=("cfg", "stops"), donate_argnames=("st",))
def run(params, st, max_steps, *, cfg: ModelConfig, stops: Stops):
    """Decode until no row is active, a row needs the host (tool call), or `max_steps` steps ran."""

    def cond(carry):
        st, i = carry
        return jnp.any(st["active"]) & ~jnp.any(st["needs_host"]) & (i < max_steps)

    if not cfg.scan_layers and not isinstance(params["blocks"], list):  # once, outside the loop
        params = decode_params(params)

    def body(carry):
        st, i = carry
        return _decode_once(params, st, cfg, stops), i + 1

    st, _ = jax.lax.while_loop(cond, body, (st, jnp.asarray(0, jnp.int32)))
    return st


@partial(jax.jit, donate_argnames=("st",))
def set_forced(st, row, tokens_F, length):
    return {**st, "forced": st["forced"].at[row].set(tokens_F), "forced_len": st["forced_len"].at[row].set(length),
            "forced_pos": st["forced_pos"].at[row].set(0), "needs_host": st["needs_host"].at[row].set(False)}


@partial(jax.jit, donate_argnames=("st",))
def clear_host_flags(st, rows_mask):
    return {**st, "needs_host": st["needs_host"] & ~rows_mask}


@partial(jax.jit, donate_argnames=("st",))
def deactivate(st, rows_mask):
    return {**st, "active": st["active"] & ~rows_mask}


# ----------------------------------------------------------------------------------------------------
# Host-side driver


def bucket(n: int, buckets: Sequence[int] = PROMPT_BUCKETS) -> int:
    for b in buckets:
        if n <= b:
            return b
    return int(2 ** math.ceil(math.log2(n)))


def _in_mesh(method):
    import functools

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        with self.mesh_context():
            return method(self, *args, **kwargs)

    return wrapper


def _in_mesh_gen(method):
    import functools

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        gen = method(self, *args, **kwargs)
        while True:
            with self.mesh_context():
                try:
                    item = next(gen)
                except StopIteration:
                    return
            yield item

    return wrapper


class Engine:
    """Batched generation with a model, a tokenizer and (optionally) the calculator tool.

    >>> eng = Engine(params, model_cfg, tokenizer)
    >>> for tokens, sampled in eng.generate(prompt_ids, num_samples=4, max_tokens=64, temperature=1.0): ...
    >>> seqs, masks = eng.generate_batch(prompt_ids, num_samples=4, max_tokens=64)
    """

    def __init__(self, params, model_cfg: ModelConfig, tokenizer, *, mesh=None, cache_dtype=None):
        self.params, self.cfg, self.tok = params, model_cfg, tokenizer
        self.mesh = mesh
        # prepared once: `run` on the stacked params re-slices every layer's weights at each call, which cost
        # ~2 ms a call on the CPU (a web iteration or a streamed token decodes only 1-2 steps per call)
        with self.mesh_context():
            self.decode_params = params if model_cfg.scan_layers else decode_params(params)
        self.cache_dtype = cache_dtype
        sp = tokenizer.encode_special
        self.ends = (sp("<|assistant_end|>"), sp("<|bos|>"))
        self.python_start, self.python_end = sp("<|python_start|>"), sp("<|python_end|>")
        self.output_start, self.output_end = sp("<|output_start|>"), sp("<|output_end|>")

    # -- state placement
    def _new_state(self, batch: int, cache_len: int, max_new: int):
        st = _new_state_jit(self.cfg, batch, cache_len, max_new, self.cache_dtype)
        if self.mesh is not None:
            st = jax.device_put(st, state_shardings(st, self.mesh))
        return st

    def mesh_context(self):
        """Calls into the jitted engine functions run under the mesh (the model pins activation layouts)."""
        import contextlib

        return jax.set_mesh(self.mesh) if self.mesh is not None else contextlib.nullcontext()

    def stops(self, use_tools: bool, top_k: int | None = None) -> Stops:
        """Static settings for a batch; `top_k` = the largest any of its rows uses (None: up to KMAX)."""
        return Stops(self.ends, self.python_end if use_tools else -1, KMAX if top_k is None else topk_width(top_k))

    @_in_mesh
    def start(self, prompts: Sequence[Sequence[int]], *, num_samples: int = 1, max_tokens: int = 256,
              temperature: float = 1.0, top_k: int = 50, seed: int = 42, use_tools: bool = True,
              batch: int | None = None, cache_len: int | None = None):
        """Prefill prompts (each repeated num_samples times) into a fresh state. Returns (state, stops)."""
        prompts = [list(p) for p in prompts]
        if not prompts or any(len(p) == 0 for p in prompts):
            raise ValueError("every prompt needs at least one token")
        R = len(prompts) * num_samples
        B = batch or R
        div = shd.batch_divisor(self.mesh) if self.mesh is not None else 1
        B = -(-B // div) * div
        longest = max(len(p) for p in prompts)
        Tb = bucket(longest)
        S = cache_len or bucket(Tb + max_tokens + 1, CACHE_BUCKETS)
        if longest + max_tokens + 1 > S:
            raise ValueError(f"prompt ({longest}) + max_tokens ({max_tokens}) exceeds the cache length {S}")
        st = self._new_state(B, S, max_tokens)
        toks = np.zeros((len(prompts), Tb), np.int32)
        for i, p in enumerate(prompts):
            toks[i, : len(p)] = p
        lengths = np.asarray([len(p) for p in prompts], np.int32)
        # prefill each distinct prompt once, then broadcast cache rows to its samples
        stops = self.stops(use_tools, top_k)
        base_key = jax.random.key(seed)
        keys = jax.random.split(base_key, R)
        if num_samples == 1:
            return prefill(self.params, st, jnp.arange(R), jnp.asarray(toks), jnp.asarray(lengths),
                           jnp.full((R,), max_tokens, jnp.int32), jnp.full((R,), temperature, jnp.float32),
                           jnp.full((R,), top_k, jnp.int32), keys, cfg=self.cfg, stops=stops), stops
        st = prefill_broadcast(self.params, st, jnp.asarray(toks), jnp.asarray(lengths), num_samples,
                               max_tokens, temperature, top_k, keys, cfg=self.cfg, stops=stops)
        return st, stops

    @_in_mesh
    def handle_tools(self, st, stops: Stops):
        """For rows waiting on the calculator: evaluate and queue the forced output. Returns the new state."""
        from jaxchat.execution import calculator

        needs = np.asarray(st["needs_host"])
        if not needs.any():
            return st
        out, n = np.asarray(st["out"]), np.asarray(st["n"])
        for b in np.nonzero(needs)[0]:
            toks = out[b, : n[b]].tolist()
            expr_ids = _since_last(toks, self.python_start, self.python_end)
            result = calculator(self.tok.decode(expr_ids)) if expr_ids is not None else None
            if result is None:
                st = clear_host_flags(st, jnp.zeros(needs.shape, bool).at[b].set(True))
                continue
            forced = [self.output_start, *self.tok.encode(result), self.output_end][:FORCED_CAP]
            buf = np.zeros((FORCED_CAP,), np.int32)
            buf[: len(forced)] = forced
            st = set_forced(st, int(b), jnp.asarray(buf), len(forced))
        return st

    @_in_mesh_gen
    def generate(self, prompt, *, num_samples: int = 1, max_tokens: int = 256, temperature: float = 1.0,
                 top_k: int = 50, seed: int = 42, use_tools: bool = True, chunk: int = 1
                 ) -> Iterator[tuple[list[int], list[int]]]:
        """Stream one prompt's samples: yields (token per row, 1 if sampled / 0 if forced per row) each step.
        Finished rows are not yielded again (nanochat yields a column per step; rows end independently)."""
        st, stops = self.start([prompt], num_samples=num_samples, max_tokens=max_tokens, temperature=temperature,
                               top_k=top_k, seed=seed, use_tools=use_tools)
        R = num_samples
        seen = np.zeros(R, np.int64)
        while True:
            out, smp, n = (np.asarray(x) for x in (st["out"], st["sampled"], st["n"]))
            while True:
                ready = [b for b in range(R) if n[b] > seen[b]]
                if not ready:
                    break
                cols_t, cols_m = [], []
                for b in range(R):
                    if n[b] > seen[b]:
                        cols_t.append(int(out[b, seen[b]]))
                        cols_m.append(int(smp[b, seen[b]]))
                        seen[b] += 1
                    else:
                        cols_t.append(-1)
                        cols_m.append(0)
                yield cols_t, cols_m
            if not bool(np.asarray(st["active"])[:R].any()):
                return
            st = self.handle_tools(st, stops)
            st = run(self.decode_params, st, chunk, cfg=self.cfg, stops=stops)

    @_in_mesh
    def generate_batch(self, prompts, *, num_samples: int = 1, max_tokens: int = 256, temperature: float = 1.0,
                       top_k: int = 50, seed: int = 42, use_tools: bool = True, max_steps: int = 1 << 30,
                       keep_terminal: bool = False) -> tuple[list[list[int]], list[list[int]]]:
        """Full completions for one prompt (list of ids) or several (list of lists), num_samples each (rows
        ordered prompt by prompt), with terminal tokens (<|assistant_end|>, <|bos|>) removed unless
        `keep_terminal`. Returns (sequences, sampled-masks)."""
        many = len(prompts) > 0 and isinstance(prompts[0], (list, tuple, np.ndarray))
        plist = prompts if many else [prompts]
        st, stops = self.start(plist, num_samples=num_samples, max_tokens=max_tokens, temperature=temperature,
                               top_k=top_k, seed=seed, use_tools=use_tools)
        while bool(np.asarray(st["active"]).any()):
            st = run(self.decode_params, st, max_steps, cfg=self.cfg, stops=stops)
            st = self.handle_tools(st, stops)
        R = len(plist) * num_samples
        out, smp, n = (np.asarray(x) for x in (st["out"], st["sampled"], st["n"]))
        seqs, masks = [], []
        for b in range(R):
            toks, m = out[b, : n[b]].tolist(), smp[b, : n[b]].astype(int).tolist()
            if toks and toks[-1] in self.ends and not keep_terminal:
                toks, m = toks[:-1], m[:-1]
            seqs.append(toks)
            masks.append(m)
        return seqs, masks


def _since_last(toks: list[int], start: int, end: int):
    """Ids strictly between the last `start` and the final `end` token, or None if there is no open call."""
    if not toks or toks[-1] != end:
        return None
    for i in range(len(toks) - 2, -1, -1):
        if toks[i] == start:
            return toks[i + 1:-1]
        if toks[i] == end:
            return None
    return None


@partial(jax.jit, static_argnames=("cfg", "stops", "num_samples"), donate_argnames=("st",))
def prefill_broadcast(params, st, tokens_PxT, lengths_P, num_samples, max_new, temperature, top_k, keys_R, *,
                      cfg: ModelConfig, stops: Stops):
    """Prefill P prompts once and copy each prompt's cache row to its num_samples rows; every row samples its
    own first token from the shared last-position logits."""
    P, T = tokens_PxT.shape
    R = P * num_samples
    cache = st["cache"]
    sub = {"k": [c[:P] for c in cache["k"]], "v": [c[:P] for c in cache["v"]], "pos": jnp.zeros((P,), jnp.int32)}
    logits, sub = gpt.forward(params, tokens_PxT, cfg, cache=sub, lengths_B=lengths_P, fresh=True)
    last_P = jnp.take_along_axis(logits, (lengths_P - 1)[:, None, None], axis=1)[:, 0]
    rep = lambda a, ax: jnp.repeat(a, num_samples, axis=ax)  # noqa: E731
    cache = {"k": [c.at[:R].set(rep(n, 0)) for c, n in zip(cache["k"], sub["k"])],
             "v": [c.at[:R].set(rep(n, 0)) for c, n in zip(cache["v"], sub["v"])],
             "pos": cache["pos"].at[:R].set(rep(sub["pos"], 0))}
    rows = jnp.arange(R)
    st = {**st, "cache": cache}
    for name, val in {"n": 0, "forced_len": 0, "forced_pos": 0, "needs_host": False, "token": 0}.items():
        st[name] = st[name].at[rows].set(val)
    st["max_new"] = st["max_new"].at[rows].set(max_new)
    st["temperature"] = st["temperature"].at[rows].set(temperature)
    st["top_k"] = st["top_k"].at[rows].set(top_k)
    st["key"] = st["key"].at[rows].set(keys_R)
    st["active"] = jnp.zeros_like(st["active"]).at[rows].set(True)
    first = sample(rep(last_P, 0), jax.vmap(jax.random.fold_in)(keys_R, jnp.zeros((R,), jnp.int32)),
                   jnp.full((R,), temperature, jnp.float32), jnp.full((R,), top_k, jnp.int32), stops.kmax)
    full_first = jnp.zeros_like(st["token"]).at[rows].set(first)
    return _emit(st, full_first, stops)


def state_shardings(st, mesh):
    """Batch axis of every state leaf over the data axes (rules table); the cache via its logical axes."""
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    batch_axes = shd.RULES["batch"]

    def spec(x):
        if x.ndim == 0 or x.shape[0] % shd.batch_divisor(mesh):
            return NamedSharding(mesh, P())
        return NamedSharding(mesh, P(batch_axes, *([None] * (x.ndim - 1))))

    out = {k: jax.tree.map(spec, v) for k, v in st.items() if k != "cache"}
    out["cache"] = shd.cache_shardings(st["cache"], mesh)
    return out
