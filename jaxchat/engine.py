"""Inference engine: an explicit KV-cache pytree, jitted prefill and decode loops, sampling, and nanochat's
calculator tool, batched.

Everything the device runs is a pure jitted function over one `DecodeState` (donated: the cache is updated in
place). `prefill` fills rows from right-padded prompts (length buckets: few compilations) and emits their first
token; `run` is one `lax.while_loop` that decodes until every row is done, `max_steps` have run, or a row emitted
`<|python_end|>`: then the host evaluates the expression (jaxchat.calculator), queues `<|output_start|> result
<|output_end|>` as forced tokens and calls `run` again, still one batch. Streaming calls `run` with a small `max_steps`.
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
# Cache lengths in steps of 1.5x: a decode step's widest key window is the whole cache, so a tighter cache is less
# to read (prompt 64 + 256 new tokens: 384 slots instead of 512, batch-8 decode ~4% faster on the 2-core CPU).
CACHE_BUCKETS = (256, 384, 512, 768, 1024, 1536, 2048, 3072, 4096, 6144, 8192, 12288, 16384)


# ----------------------------------------------------------------------------------------------------
# Sampling


def topk_width(top_k: int) -> int:
    """The static top-k width for a batch whose rows ask for at most `top_k` (0 = whole vocabulary: only the argmax
    needs the top-k). Narrow is cheaper: XLA:CPU's top-k of 8 x 8,192 logits takes ~0.5 ms at 50, ~1.4 ms at 200."""
    return next(w for w in TOPK_WIDTHS if top_k <= w) if 0 <= top_k <= KMAX else KMAX


def sample(logits_BxV, key_B, temperature_B, top_k_B, kmax: int = KMAX):
    """Per-row sampling: temperature 0 → argmax; else softmax(logits / T) over the row's top-k (0 = whole
    vocabulary, which runs only when some row asks for it; cut to the static width `kmax`). Keys are per row."""
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
    # a separate argmax, not top_idx[:, 0]: reading top_k's indices makes XLA:CPU lower it to a full sort of the
    # vocabulary (decode 4x slower). Only when some row is greedy (~150 µs of a ~4 ms batch-8 CPU step).
    greedy = jax.lax.cond(jnp.any(temperature_B <= 0), lambda: jnp.argmax(logits, axis=-1).astype(jnp.int32),
                          lambda: jnp.zeros(logits.shape[:1], jnp.int32))
    return jnp.where(temperature_B <= 0, greedy, sampled.astype(jnp.int32))


# ----------------------------------------------------------------------------------------------------
# State and the jitted device functions


@struct.dataclass
class DecodeState:
    """What the decode loop carries, one row per sequence (B rows, N = max new tokens, F = FORCED_CAP)."""

    cache: dict  # the KV cache (model.init_cache): {"k", "v": L arrays [B, K, S, Dh], "pos": [B], smear: "prev"}
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


def new_state(cfg: ModelConfig, batch: int, cache_len: int, max_new: int) -> DecodeState:
    z = lambda *s, d=jnp.int32: jnp.zeros(s, d)  # noqa: E731
    return DecodeState(
        cache=gpt.init_cache(cfg, batch, cache_len), token=z(batch), active=z(batch, d=bool), n=z(batch),
        max_new=z(batch), out=z(batch, max_new), sampled=z(batch, max_new, d=bool), forced=z(batch, FORCED_CAP),
        forced_len=z(batch), forced_pos=z(batch), needs_host=z(batch, d=bool),
        key=jax.random.split(jax.random.key(0), batch), temperature=z(batch, d=jnp.float32), top_k=z(batch))


_new_state_jit = jax.jit(new_state, static_argnums=(0, 1, 2, 3))


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


@partial(jax.jit, static_argnames=("cfg", "stops", "num_samples"), donate_argnames=("st",))
def prefill(params, st: DecodeState, rows_R, tokens_PxT, lengths_P, max_new_R, temperature_R, top_k_R, keys_R, *,
            cfg: ModelConfig, stops: Stops, num_samples: int = 1) -> DecodeState:
    """Prefill P right-padded prompts once each into their `num_samples` rows of `rows_R` each (R = P x num_samples,
    prompt by prompt), reset those rows and emit their first token. The other rows are untouched."""
    c, src, R = st.cache, rows_R[::num_samples], rows_R.shape[0]
    sub = {**jax.tree.map(lambda x: x[src], c), "pos": jnp.zeros(src.shape, jnp.int32)}
    logits, sub = gpt.forward(params, tokens_PxT, cfg, cache=sub, lengths_B=lengths_P, fresh=True)
    rep = lambda a: jnp.repeat(a, num_samples, axis=0)  # noqa: E731
    last = rep(jnp.take_along_axis(logits, (lengths_P - 1)[:, None, None], axis=1)[:, 0])
    # the rows' new values (zero but for the prompt's cache and the settings), scattered into place
    new = jax.tree.map(lambda a: jnp.zeros((R, *a.shape[1:]), a.dtype), st.replace(cache=None, key=None)).replace(
        cache=jax.tree.map(rep, sub), max_new=max_new_R, key=keys_R, temperature=temperature_R, top_k=top_k_R)
    st = jax.tree.map(lambda a, v: a.at[rows_R].set(v), st, new)
    # the first token: only these rows emit; the others (the web service's running rows) keep going after
    others, only = st.active, jnp.zeros_like(st.active).at[rows_R].set(True)
    keys0 = jax.vmap(jax.random.fold_in)(keys_R, jnp.zeros(rows_R.shape, jnp.int32))
    first = jnp.zeros_like(st.token).at[rows_R].set(sample(last, keys0, temperature_R, top_k_R, stops.kmax))
    st = _emit(st.replace(active=only), first, stops)
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
        keep = lambda new, old: jnp.where(st.active.reshape(-1, *[1] * (old.ndim - 1)), new, old)  # noqa: E731
        st = st.replace(cache={**cache, **{k: keep(cache[k], st.cache[k]) for k in ("pos", "prev") if k in cache}})
        keys = jax.vmap(jax.random.fold_in)(st.key, st.n)
        return _emit(st, sample(logits[:, 0], keys, st.temperature, st.top_k, stops.kmax), stops), i + 1

    return jax.lax.while_loop(cond, body, (st, jnp.asarray(0, jnp.int32)))[0]


@partial(jax.jit, donate_argnames=("st",))
def set_forced(st: DecodeState, row, tokens_F, length) -> DecodeState:
    """Queue `tokens_F[:length]` as `row`'s next tokens and release it from the host (length 0: nothing forced)."""
    return st.replace(forced=st.forced.at[row].set(tokens_F), forced_len=st.forced_len.at[row].set(length),
                      forced_pos=st.forced_pos.at[row].set(0), needs_host=st.needs_host.at[row].set(False))


# ----------------------------------------------------------------------------------------------------
# Host-side driver


class Engine:
    """Batched generation with a model, a tokenizer and the calculator tool: `generate` streams one prompt's
    samples, `generate_batch` returns whole completions (keywords of both as for `start`)."""

    def __init__(self, params, model_cfg: ModelConfig, tokenizer, *, mesh=None):
        self.params, self.cfg, self.tok, self.mesh = params, model_cfg, tokenizer, mesh
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
        st = _new_state_jit(self.cfg, batch, cache_len, max_new)
        return st if self.mesh is None else jax.device_put(st, state_shardings(st, self.mesh))

    def stops(self, use_tools: bool, top_k: int | None = None) -> Stops:
        """Static settings for a batch; `top_k` = the largest any of its rows uses (None: up to KMAX)."""
        return Stops(self.ends, self.python_end if use_tools else -1, KMAX if top_k is None else topk_width(top_k))

    def start(self, prompts: Sequence[Sequence[int]], *, num_samples: int = 1, max_tokens: int = 256,
              temperature: float = 1.0, top_k: int = 50, seed: int = 42, use_tools: bool = True
              ) -> tuple[DecodeState, Stops]:
        """Prefill prompts (each repeated num_samples times) into a fresh state. Returns (state, stops)."""
        prompts = [list(p) for p in prompts]
        if not prompts or not all(prompts):
            raise ValueError("every prompt needs at least one token")
        longest = max(map(len, prompts))
        if longest > PROMPT_BUCKETS[-1]:
            raise ValueError(f"a prompt of {longest} tokens: the engine takes at most {PROMPT_BUCKETS[-1]}")
        T, R = bucket(longest, PROMPT_BUCKETS), len(prompts) * num_samples
        S = bucket(min(T + max_tokens + 1, CACHE_BUCKETS[-1]), CACHE_BUCKETS)
        if longest + max_tokens + 1 > S:
            raise ValueError(f"prompt ({longest}) + max_tokens ({max_tokens}) exceeds the cache length {S}")
        div = shd.batch_divisor(self.mesh) if self.mesh is not None else 1
        stops, full = self.stops(use_tools, top_k), lambda v, dt: jnp.full((R,), v, dt)  # noqa: E731
        with shd.scope(self.mesh):
            st = prefill(self.params, self.new_state(-(-R // div) * div, S, max_tokens), jnp.arange(R),
                         jnp.asarray([p + [0] * (T - len(p)) for p in prompts], jnp.int32),
                         jnp.asarray(list(map(len, prompts)), jnp.int32), full(max_tokens, jnp.int32),
                         full(temperature, jnp.float32), full(top_k, jnp.int32),
                         jax.random.split(jax.random.key(seed), R), cfg=self.cfg, stops=stops, num_samples=num_samples)
        return st, stops

    def handle_tools(self, st: DecodeState) -> DecodeState:
        """Evaluate the calculator call of every row waiting on the host; queue its result as forced tokens."""
        needs = np.asarray(st.needs_host)
        if not needs.any():  # most calls: no host round trip for the outputs
            return st
        out, n = jax.device_get((st.out, st.n))  # one copy: indexing device arrays compiles a slice per length
        for b in np.flatnonzero(needs):
            expr = _since_last(out[b, : n[b]].tolist(), self.python_start, self.python_end)
            result = calculator(self.tok.decode(expr)) if expr is not None else None
            forced = [] if result is None else [self.output_start, *self.tok.encode(result), self.output_end]
            st = set_forced(st, int(b), jnp.asarray((forced + [0] * FORCED_CAP)[:FORCED_CAP], jnp.int32),
                            min(len(forced), FORCED_CAP))
        return st

    def step(self, st: DecodeState, stops: Stops, max_steps: int = 1 << 30) -> DecodeState:
        """Serve waiting tool calls, then decode up to `max_steps` steps."""
        with shd.scope(self.mesh):
            return run(self.decode_params, self.handle_tools(st), max_steps, cfg=self.cfg, stops=stops)

    def generate(self, prompt, *, chunk: int = 1, **kw) -> Iterator[tuple[list[int], list[int]]]:
        """Stream one prompt's samples, `chunk` decode steps per device call: yields (token per row, 1 if sampled /
        0 if forced per row) per step; a row that has finished gives -1 (nanochat: rows end independently)."""
        st, stops = self.start([prompt], **kw)
        R = kw.get("num_samples", 1)
        seen = np.zeros(R, np.int64)
        while True:
            out, smp, n, active = jax.device_get((st.out, st.sampled, st.n, st.active))
            while (ready := seen < n[:R]).any():
                yield ([int(out[b, seen[b]]) if ready[b] else -1 for b in range(R)],
                       [int(smp[b, seen[b]]) if ready[b] else 0 for b in range(R)])
                seen += ready
            if not active[:R].any():
                return
            st = self.step(st, stops, chunk)

    def generate_batch(self, prompts, *, keep_terminal: bool = False, **kw) -> tuple[list[list[int]], list[list[int]]]:
        """Whole completions of one prompt (a list of ids) or several (a list of lists), `num_samples` rows each,
        prompt by prompt, the end token cut unless `keep_terminal`. Returns (sequences, sampled-masks)."""
        plist = prompts if len(prompts) and isinstance(prompts[0], (list, tuple, np.ndarray)) else [prompts]
        st, stops = self.start(plist, **kw)
        while np.asarray(st.active).any():
            st = self.step(st, stops)
        out, smp, n = jax.device_get((st.out, st.sampled, st.n))
        n = n[: len(plist) * kw.get("num_samples", 1)]
        cut = [int(k) - (not keep_terminal and k > 0 and int(o[k - 1]) in self.ends) for o, k in zip(out, n)]
        return [o[:k].tolist() for o, k in zip(out, cut)], [m[:k].astype(int).tolist() for m, k in zip(smp, cut)]


def _since_last(toks: list[int], start: int, end: int):
    """Ids strictly between the last `start` and the final `end` token, or None if there is no open call."""
    opened = max((i for i, t in enumerate(toks[:-1]) if t in (start, end)), default=-1)
    return toks[opened + 1:-1] if toks[-1:] == [end] and opened >= 0 and toks[opened] == start else None
