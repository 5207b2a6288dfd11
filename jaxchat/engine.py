"""Inference engine: an explicit KV-cache pytree, jitted prefill and decode loops, sampling, and nanochat's
calculator tool, batched.

Everything the device runs is a pure jitted function over one `DecodeState` pytree (donated, so the cache is
updated in place). `prefill` runs right-padded prompts (length buckets: a new length compiles only in a new
bucket), prefilling each prompt once for all its samples, and emits each row's first token; `run` is one
`lax.while_loop` that decodes until every row is done, `max_steps` have run, or a row needs the host. The host
steps in only when a row emits `<|python_end|>`: it evaluates the expression (jaxchat.calculator), queues
`<|output_start|> result <|output_end|>` as forced tokens and calls `run` again, still one batch. Streaming
(CLI, web) calls `run` with a small `max_steps`.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from jaxchat import model as gpt
from jaxchat import sharding as shd
from jaxchat.calculator import calculator
from jaxchat.common import bucket
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
# State and the jitted device functions


@struct.dataclass
class DecodeState:
    """What the decode loop carries, one row per sequence (B rows, N = max new tokens, F = FORCED_CAP)."""

    cache: dict  # the KV cache (model.init_cache): {"k", "v": L arrays [B, K, S, Dh], "pos": [B]}
    token: jax.Array  # [B] last emitted token, fed at the next step
    active: jax.Array  # [B] row still generating
    n: jax.Array  # [B] tokens generated so far
    max_new: jax.Array  # [B] tokens the row may generate
    out: jax.Array  # [B, N] generated tokens
    sampled: jax.Array  # [B, N] True where sampled, False where forced (RL needs this mask)
    forced: jax.Array  # [B, F] tokens the host wants emitted next (tool output) ...
    forced_len: jax.Array  # [B] ... how many of them
    forced_pos: jax.Array  # [B] ... and how many are already emitted
    needs_host: jax.Array  # [B] row emitted <|python_end|> and waits for the calculator
    key: jax.Array  # [B] per-row PRNG keys
    temperature: jax.Array  # [B]
    top_k: jax.Array  # [B] (0 = no top-k)


def new_state(cfg: ModelConfig, batch: int, cache_len: int, max_new: int, dtype=None) -> DecodeState:
    z = lambda *s, d=jnp.int32: jnp.zeros(s, d)  # noqa: E731
    return DecodeState(
        cache=gpt.init_cache(cfg, batch, cache_len, dtype), token=z(batch), active=z(batch, d=bool), n=z(batch),
        max_new=z(batch), out=z(batch, max_new), sampled=z(batch, max_new, d=bool), forced=z(batch, FORCED_CAP),
        forced_len=z(batch), forced_pos=z(batch), needs_host=z(batch, d=bool),
        key=jax.random.split(jax.random.key(0), batch), temperature=z(batch, d=jnp.float32), top_k=z(batch))


_new_state_jit = jax.jit(new_state, static_argnums=(0, 1, 2, 3, 4))


def state_shardings(st: DecodeState, mesh):
    """Batch axis of every state leaf over the data axes (rules table); the cache via its logical axes."""

    def spec(x):
        if x.ndim == 0 or x.shape[0] % shd.batch_divisor(mesh):
            return NamedSharding(mesh, P())
        return NamedSharding(mesh, P(shd.RULES["batch"], *([None] * (x.ndim - 1))))

    return jax.tree.map(spec, st.replace(cache=None)).replace(cache=shd.cache_shardings(st.cache, mesh))


@dataclass(frozen=True)
class Stops:
    """A batch's static decode settings: token ids that end a row (assistant_end, bos), the tool trigger
    (python_end; -1 = no tools), and `kmax`, the widest top-k a row of the batch may use (`topk_width`)."""

    ends: tuple[int, ...]
    python_end: int = -1
    kmax: int = KMAX


def _emit(st: DecodeState, sampled_B, stops: Stops) -> DecodeState:
    """Choose forced-or-sampled for every active row, record it, update done/needs_host."""
    has_forced = st.forced_pos < st.forced_len
    forced_tok = jnp.take_along_axis(st.forced, jnp.minimum(st.forced_pos, FORCED_CAP - 1)[:, None], 1)[:, 0]
    tok = jnp.where(has_forced, forced_tok, sampled_B)
    act, rows = st.active, jnp.arange(tok.shape[0])
    idx = jnp.minimum(st.n, st.out.shape[1] - 1)
    out = st.out.at[rows, idx].set(jnp.where(act, tok, st.out[rows, idx]))
    smp = st.sampled.at[rows, idx].set(jnp.where(act, ~has_forced, st.sampled[rows, idx]))
    n = st.n + act
    ended = jnp.isin(tok, jnp.asarray(stops.ends, jnp.int32))
    cache_full = st.cache["pos"] + 1 >= st.cache["k"][0].shape[2]
    done = act & (ended | (n >= st.max_new) | cache_full)
    return st.replace(token=jnp.where(act, tok, st.token), out=out, sampled=smp, n=n, active=act & ~done,
                      forced_pos=st.forced_pos + (act & has_forced), needs_host=act & ~done & (tok == stops.python_end))


@partial(jax.jit, static_argnames=("cfg", "stops", "fresh", "num_samples"), donate_argnames=("st",))
def prefill(params, st: DecodeState, rows_R, tokens_PxT, lengths_P, max_new_R, temperature_R, top_k_R, keys_R, *,
            cfg: ModelConfig, stops: Stops, fresh: bool = True, num_samples: int = 1) -> DecodeState:
    """Prefill P right-padded prompts once each, copy each one's cache row to its `num_samples` rows of `rows_R`
    (R = P × num_samples, prompt by prompt), reset those rows and emit each row's first token (sampled with the
    row's own key). The other rows are untouched. `fresh=True`: attention over the prompt chunk alone."""
    c = st.cache
    src = rows_R[::num_samples]
    sub = {"k": [x[src] for x in c["k"]], "v": [x[src] for x in c["v"]], "pos": jnp.zeros(src.shape, jnp.int32)}
    logits, sub = gpt.forward(params, tokens_PxT, cfg, cache=sub, lengths_B=lengths_P, fresh=fresh)
    last = jnp.take_along_axis(logits, (lengths_P - 1)[:, None, None], axis=1)[:, 0]
    rep = lambda a: jnp.repeat(a, num_samples, axis=0)  # noqa: E731
    put = lambda a, v: a.at[rows_R].set(v)  # noqa: E731
    cache = {"k": [put(x, rep(y)) for x, y in zip(c["k"], sub["k"])],
             "v": [put(x, rep(y)) for x, y in zip(c["v"], sub["v"])], "pos": put(c["pos"], rep(sub["pos"]))}
    st = st.replace(cache=cache, token=put(st.token, 0), n=put(st.n, 0), max_new=put(st.max_new, max_new_R),
                    out=put(st.out, 0), sampled=put(st.sampled, False), forced_len=put(st.forced_len, 0),
                    forced_pos=put(st.forced_pos, 0), needs_host=put(st.needs_host, False), key=put(st.key, keys_R),
                    temperature=put(st.temperature, temperature_R), top_k=put(st.top_k, top_k_R))
    # the first token: only these rows emit; the others (the web service's running rows) keep going after
    others = put(st.active, False)
    keys0 = jax.vmap(jax.random.fold_in)(keys_R, jnp.zeros(rows_R.shape, jnp.int32))
    first = put(jnp.zeros_like(st.token), sample(rep(last), keys0, temperature_R, top_k_R, stops.kmax))
    st = _emit(st.replace(active=put(jnp.zeros_like(st.active), True)), first, stops)
    return st.replace(active=st.active | others)


@jax.jit
def decode_params(params):
    """The weights as the decode loop reads them (`model.decode_layers`: layers unstacked, q/k/v joined).
    `Engine` prepares them once; `run` does it itself, per call, when handed the stacked params."""
    return {**params, "blocks": gpt.decode_layers(params["blocks"])}


@partial(jax.jit, static_argnames=("cfg", "stops"), donate_argnames=("st",))
def run(params, st: DecodeState, max_steps, *, cfg: ModelConfig, stops: Stops) -> DecodeState:
    """Decode until no row is active, a row needs the host (tool call), or `max_steps` steps ran."""
    if not cfg.scan_layers and not isinstance(params["blocks"], list):  # once, outside the loop
        params = decode_params(params)

    def cond(carry):
        st, i = carry
        return jnp.any(st.active) & ~jnp.any(st.needs_host) & (i < max_steps)

    def body(carry):
        st, i = carry
        # attend over the smallest key window that holds every active row's keys (its position + 1)
        need = jnp.max(jnp.where(st.active, st.cache["pos"] + 1, 1))
        logits, cache = gpt.forward(params, st.token[:, None], cfg, cache=st.cache,
                                    window_idx=gpt.window_index(need, st.cache["k"][0].shape[2]))
        # rows that are not active must not advance their cache position
        st = st.replace(cache={**cache, "pos": jnp.where(st.active, cache["pos"], st.cache["pos"])})
        keys = jax.vmap(jax.random.fold_in)(st.key, st.n)
        return _emit(st, sample(logits[:, 0], keys, st.temperature, st.top_k, stops.kmax), stops), i + 1

    return jax.lax.while_loop(cond, body, (st, jnp.asarray(0, jnp.int32)))[0]


@partial(jax.jit, donate_argnames=("st",))
def set_forced(st: DecodeState, row, tokens_F, length) -> DecodeState:
    """Queue `tokens_F[:length]` as `row`'s next tokens and release it from the host (length 0: nothing forced)."""
    return st.replace(forced=st.forced.at[row].set(tokens_F), forced_len=st.forced_len.at[row].set(length),
                      forced_pos=st.forced_pos.at[row].set(0), needs_host=st.needs_host.at[row].set(False))


@partial(jax.jit, donate_argnames=("st",))
def deactivate(st: DecodeState, rows_mask) -> DecodeState:
    return st.replace(active=st.active & ~rows_mask)


# ----------------------------------------------------------------------------------------------------
# Host-side driver


class Engine:
    """Batched generation with a model, a tokenizer and (optionally) the calculator tool.

    >>> eng = Engine(params, model_cfg, tokenizer)
    >>> for tokens, sampled in eng.generate(prompt_ids, num_samples=4, max_tokens=64, temperature=1.0): ...
    >>> seqs, masks = eng.generate_batch(prompt_ids, num_samples=4, max_tokens=64)
    """

    def __init__(self, params, model_cfg: ModelConfig, tokenizer, *, mesh=None, cache_dtype=None):
        self.params, self.cfg, self.tok, self.mesh, self.cache_dtype = params, model_cfg, tokenizer, mesh, cache_dtype
        # prepared once: `run` on the stacked params re-slices every layer's weights at each call, which cost
        # ~2 ms a call on the CPU (a web iteration or a streamed token decodes only 1-2 steps per call)
        with shd.scope(mesh):
            self.decode_params = params if model_cfg.scan_layers else decode_params(params)
        sp = tokenizer.encode_special
        self.ends = (sp("<|assistant_end|>"), sp("<|bos|>"))
        self.python_start, self.python_end = sp("<|python_start|>"), sp("<|python_end|>")
        self.output_start, self.output_end = sp("<|output_start|>"), sp("<|output_end|>")

    def new_state(self, batch: int, cache_len: int, max_new: int) -> DecodeState:
        """An empty state, placed on the mesh (call under `sharding.scope(self.mesh)`)."""
        st = _new_state_jit(self.cfg, batch, cache_len, max_new, self.cache_dtype)
        return st if self.mesh is None else jax.device_put(st, state_shardings(st, self.mesh))

    def stops(self, use_tools: bool, top_k: int | None = None) -> Stops:
        """Static settings for a batch; `top_k` = the largest any of its rows uses (None: up to KMAX)."""
        return Stops(self.ends, self.python_end if use_tools else -1, KMAX if top_k is None else topk_width(top_k))

    def start(self, prompts: Sequence[Sequence[int]], *, num_samples: int = 1, max_tokens: int = 256,
              temperature: float = 1.0, top_k: int = 50, seed: int = 42, use_tools: bool = True,
              batch: int | None = None, cache_len: int | None = None) -> tuple[DecodeState, Stops]:
        """Prefill prompts (each repeated num_samples times) into a fresh state. Returns (state, stops)."""
        prompts = [list(p) for p in prompts]
        if not prompts or not all(prompts):
            raise ValueError("every prompt needs at least one token")
        longest = max(map(len, prompts))
        if longest > PROMPT_BUCKETS[-1]:
            raise ValueError(f"a prompt of {longest} tokens: the engine takes at most {PROMPT_BUCKETS[-1]}")
        T = bucket(longest, PROMPT_BUCKETS)
        S = cache_len or bucket(min(T + max_tokens + 1, CACHE_BUCKETS[-1]), CACHE_BUCKETS)
        if longest + max_tokens + 1 > S:
            raise ValueError(f"prompt ({longest}) + max_tokens ({max_tokens}) exceeds the cache length {S}")
        R = len(prompts) * num_samples
        div = shd.batch_divisor(self.mesh) if self.mesh is not None else 1
        toks = np.zeros((len(prompts), T), np.int32)
        for i, p in enumerate(prompts):
            toks[i, : len(p)] = p
        stops = self.stops(use_tools, top_k)
        full = lambda v, dt: jnp.full((R,), v, dt)  # noqa: E731
        with shd.scope(self.mesh):
            st = self.new_state(-(-(batch or R) // div) * div, S, max_tokens)
            st = prefill(self.params, st, jnp.arange(R), jnp.asarray(toks), jnp.asarray(list(map(len, prompts)),
                         jnp.int32), full(max_tokens, jnp.int32), full(temperature, jnp.float32),
                         full(top_k, jnp.int32), jax.random.split(jax.random.key(seed), R), cfg=self.cfg,
                         stops=stops, num_samples=num_samples)
        return st, stops

    def handle_tools(self, st: DecodeState, stops: Stops) -> DecodeState:
        """For rows waiting on the calculator: evaluate and queue the forced output. Returns the new state."""
        needs = np.asarray(st.needs_host)
        if not needs.any():
            return st
        out, n = jax.device_get((st.out, st.n))
        for b in np.nonzero(needs)[0]:
            expr_ids = _since_last(out[b, : n[b]].tolist(), self.python_start, self.python_end)
            result = calculator(self.tok.decode(expr_ids)) if expr_ids is not None else None
            forced = [] if result is None else [self.output_start, *self.tok.encode(result), self.output_end]
            forced = forced[:FORCED_CAP]
            buf = np.zeros((FORCED_CAP,), np.int32)
            buf[: len(forced)] = forced
            st = set_forced(st, int(b), jnp.asarray(buf), len(forced))
        return st

    def _step(self, st: DecodeState, stops: Stops, max_steps: int) -> DecodeState:
        with shd.scope(self.mesh):
            return run(self.decode_params, self.handle_tools(st, stops), max_steps, cfg=self.cfg, stops=stops)

    def generate(self, prompt, *, num_samples: int = 1, max_tokens: int = 256, temperature: float = 1.0,
                 top_k: int = 50, seed: int = 42, use_tools: bool = True, chunk: int = 1
                 ) -> Iterator[tuple[list[int], list[int]]]:
        """Stream one prompt's samples: yields (token per row, 1 if sampled / 0 if forced per row) each step.
        Finished rows are not yielded again (nanochat yields a column per step; rows end independently)."""
        st, stops = self.start([prompt], num_samples=num_samples, max_tokens=max_tokens, temperature=temperature,
                               top_k=top_k, seed=seed, use_tools=use_tools)
        R, seen = num_samples, np.zeros(num_samples, np.int64)
        while True:
            out, smp, n, active = jax.device_get((st.out, st.sampled, st.n, st.active))
            while (ready := seen < n[:R]).any():
                yield ([int(out[b, seen[b]]) if ready[b] else -1 for b in range(R)],
                       [int(smp[b, seen[b]]) if ready[b] else 0 for b in range(R)])
                seen += ready
            if not active[:R].any():
                return
            st = self._step(st, stops, chunk)

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
        while np.asarray(st.active).any():
            st = self._step(st, stops, max_steps)
        out, smp, n = jax.device_get((st.out, st.sampled, st.n))
        seqs, masks = [], []
        for b in range(len(plist) * num_samples):
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
