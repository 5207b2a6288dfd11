"""Evaluation: bits per byte (base/mid stages), CORE (base models), chat evals and ChatCORE.

Bits per byte (nanochat's definition): Σ nll(target) over targets that are real text (token byte length > 0;
special tokens and ignored targets excluded) ÷ (ln 2 · Σ their UTF-8 byte lengths). Vocabulary-size
invariant, and directly comparable with a compressor's output size (`xz_bits_per_byte`).

CORE (`evaluate_core`; tasks, data and prompt templates in `jaxchat.core_tasks`): every item becomes one token
row per choice (or one for language modelling) with a scored span; `Scorer` runs them in fixed-shape batches
through one jitted function (mean span NLL + greedy exactness). Multiple choice and schema pick the lowest
mean NLL (ties → first choice), language modelling needs every span token reproduced; centered accuracy
(acc − b)/(1 − b) per task; CORE = its mean over the tasks run.

Chat evals: `categorical_eval` (ARC, MMLU: logits at the last prompt position over the choice letters),
`generative_eval` (GSM8K, HumanEval, SpellingBee, Arithmetic: Engine.generate_batch, then each task's check /
the HumanEval sandbox), `chatcore` (mean centered accuracy, baselines 0.25 for MC and 0 for generative).
"""
from __future__ import annotations

import lzma
import math
import time
from functools import lru_cache, partial

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from jaxchat import model as gpt
from jaxchat import sharding as shd


@partial(jax.jit, static_argnums=(4,))
def _nll_bytes(params, inputs, targets, token_bytes, model_cfg):
    nll = gpt.token_nll(params, inputs, targets, model_cfg)
    nbytes = jnp.where(targets >= 0, token_bytes[jnp.maximum(targets, 0)], 0)
    counted = nbytes > 0
    return jnp.sum(jnp.where(counted, nll, 0.0)), jnp.sum(nbytes), jnp.sum(jnp.where(targets >= 0, nll, 0.0)), \
        jnp.sum(targets >= 0)


def loss_stats(params, rows, token_bytes, model_cfg, mesh, batch_rows: int) -> dict:
    """Mean loss and bits per byte over rows [N, T+1] (inputs = row[:-1], targets = row[1:]).

    Rows are split across processes and devices; partial batches are padded with ignored targets."""
    with jax.set_mesh(mesh):
        return _loss_stats(params, rows, token_bytes, model_cfg, mesh, batch_rows)


def _loss_stats(params, rows, token_bytes, model_cfg, mesh, batch_rows: int) -> dict:
    div = shd.batch_divisor(mesh) * jax.process_count()
    batch_rows = max(div, (batch_rows // div) * div)
    sharding = shd.batch_sharding(mesh, ndim=2)
    tb = jnp.asarray(token_bytes, jnp.int32)
    tot_nll = tot_bytes = tot_loss = tot_count = 0.0
    for i in range(0, len(rows), batch_rows):
        chunk = rows[i:i + batch_rows]
        inputs, targets = chunk[:, :-1], chunk[:, 1:].astype(np.int32)
        if len(chunk) < batch_rows:  # pad to a fixed shape (one compilation)
            pad = batch_rows - len(chunk)
            inputs = np.concatenate([inputs, np.zeros((pad, inputs.shape[1]), inputs.dtype)])
            targets = np.concatenate([targets, np.full((pad, targets.shape[1]), -1, np.int32)])
        pi, pc = jax.process_index(), jax.process_count()
        a, b, c, d = _nll_bytes(params, shd.put_global_batch(inputs[pi::pc] if pc > 1 else inputs, sharding),
                                shd.put_global_batch(targets[pi::pc] if pc > 1 else targets, sharding), tb, model_cfg)
        tot_nll += float(a)
        tot_bytes += float(b)
        tot_loss += float(c)
        tot_count += float(d)
    return {"loss": tot_loss / max(tot_count, 1), "bpb": tot_nll / (math.log(2) * max(tot_bytes, 1)),
            "tokens": int(tot_count), "bytes": int(tot_bytes)}


def xz_bits_per_byte(text: str) -> float:
    """The same text compressed with xz -9 (extreme): a strong classical baseline for bits per byte."""
    raw = text.encode("utf-8")
    comp = lzma.compress(raw, preset=9 | lzma.PRESET_EXTREME)
    return 8.0 * len(comp) / max(len(raw), 1)


# ====================================================================================================
# Batched scoring: one jitted function over fixed-shape batches, sharded over the mesh
#
# The model is a function of (params, tokens [B, T] int32). Stand-ins (tests) give full logits,
# `apply_fn(params, tokens) -> [B, T, V]`; the GPT gives `logits_at(params, tokens, positions [B, W]) -> [B, W, V]`
# (`model_logits_at`): the blocks run over the whole rows but the unembedding and the softmax only at the W
# positions that are scored — CORE spans sit at the end of each row, so a window of SPAN_WINDOW positions
# before each row's end covers them (a batch whose spans are longer uses the whole row). On CPU with the tiny
# model this is 2.6x faster than full logits, and it keeps the d20 logits small (16K tokens x 65,536 x fp32
# would be 4 GiB per batch).
# Sequences are grouped by length into buckets (64, 128, ... up to the model's context); a batch of bucket T
# holds `token_budget // T` rows (rounded down to a multiple of the mesh's batch divisor), so every batch
# costs about the same memory and each (rows, T, W) shape compiles once. Rows are right-padded with token 0
# (causal attention: padding never reaches the scored positions); filler rows have empty spans and are
# dropped. Calls run under `jax.set_mesh(mesh)` (the model pins activation layouts) and results come back
# replicated, so every process reads all of them.

SPAN_WINDOW = 64


def model_apply(model_cfg):
    """apply_fn for the GPT: full-sequence fp32 logits."""

    def apply(params, tokens):
        return gpt.forward(params, tokens, model_cfg)

    return apply


@lru_cache(maxsize=None)
def model_logits_at(model_cfg):
    """logits_at for the GPT: hidden states of the whole rows, logits only at `positions` [B, W]. Cached per
    config, so every Scorer of one model shares its compiled functions (no recompiling per evaluation)."""

    def logits_at(params, tokens, positions):
        h, _ = gpt.hidden_states(params, tokens, model_cfg)
        h = jnp.take_along_axis(h, positions[..., None], axis=1)
        return gpt.logits_from_hidden(params, h, model_cfg)

    return logits_at


def gather_logits_at(apply_fn):
    """logits_at from a full-logits apply_fn (stand-in models)."""

    def logits_at(params, tokens, positions):
        return jnp.take_along_axis(apply_fn(params, tokens), positions[..., None], axis=1)

    return logits_at


def span_window(starts_B, ends_B, W: int):
    """The W predicting positions ending at each row's last one (token t is predicted at t - 1), clamped at 0,
    and the mask of those whose target lies in the span [start, end)."""
    raw = ends_B[:, None] - 1 - W + jnp.arange(W)[None]
    return jnp.maximum(raw, 0), (raw >= 0) & (raw + 1 >= starts_B[:, None])


def span_scores(logits_BxWxV, targets_BxW, mask_BxW):
    """Per row: mean NLL of the masked targets and whether greedy argmax reproduces every one of them. Rows with
    an empty mask give (0, False)."""
    lg = logits_BxWxV.astype(jnp.float32)
    nll = jax.nn.logsumexp(lg, axis=-1) - jnp.take_along_axis(lg, targets_BxW[..., None], axis=-1)[..., 0]
    pred = jnp.argmax(lg, axis=-1)  # ties → lowest token id
    n = jnp.sum(mask_BxW, axis=1)
    mean = jnp.sum(jnp.where(mask_BxW, nll, 0.0), axis=1) / jnp.maximum(n, 1)
    exact = jnp.all(jnp.where(mask_BxW, pred == targets_BxW, True), axis=1) & (n > 0)
    return mean, exact


def _score_rows(logits_at, W, params, tokens, starts, ends):
    pos, mask = span_window(starts, ends, W)
    tgt = jnp.take_along_axis(tokens, jnp.minimum(pos + 1, tokens.shape[1] - 1), axis=1)
    return span_scores(logits_at(params, tokens, pos), tgt, mask)


def _last_rows(logits_at, params, tokens, lengths, ids):
    last = logits_at(params, tokens, (lengths - 1)[:, None])[:, 0]
    return jnp.take_along_axis(last.astype(jnp.float32), ids, axis=1)


@lru_cache(maxsize=64)
def _jitted(logits_at, mesh):
    out = NamedSharding(mesh, P()) if mesh is not None else None
    return (jax.jit(partial(_score_rows, logits_at), static_argnums=(0,), out_shardings=out),
            jax.jit(partial(_last_rows, logits_at), out_shardings=out))


class Scorer:
    """Scores token rows with a model function in fixed-shape, mesh-sharded batches.

    >>> sc = Scorer.for_model(params, model_cfg, mesh, batch_size=8)
    >>> mean_nll, exact = sc.score(rows, starts, ends)       # CORE spans
    >>> logits_NxK = sc.choice_logits(prompts, candidate_ids)  # categorical chat evals
    >>> Scorer(lambda params, toks: my_logits(toks), max_len=256)  # any full-logits function
    """

    def __init__(self, apply_fn=None, params=None, *, logits_at=None, mesh=None, max_len: int,
                 token_budget: int | None = None, buckets: tuple[int, ...] | None = None,
                 window: int = SPAN_WINDOW):
        if (apply_fn is None) == (logits_at is None):
            raise ValueError("give exactly one of apply_fn (full logits) or logits_at (logits at positions)")
        self.logits_at = logits_at or gather_logits_at(apply_fn)
        self.params, self.mesh, self.max_len, self.window = params, mesh, int(max_len), int(window)
        self.div = (shd.batch_divisor(mesh) if mesh is not None else 1) * jax.process_count()
        self.token_budget = int(token_budget or 8 * self.max_len)
        if buckets is None:
            buckets = tuple(b for b in (64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384) if b < self.max_len)
            buckets = buckets + (self.max_len,)
        self.buckets = tuple(sorted(buckets))
        self._score, self._last = _jitted(self.logits_at, mesh)
        self.shapes: set[tuple] = set()  # (rows, T[, W]) shapes run so far (≈ compilations)

    @classmethod
    def for_model(cls, params, model_cfg, mesh=None, batch_size: int = 8, **kw) -> "Scorer":
        """The GPT; a batch holds about batch_size full-length rows' worth of tokens."""
        return cls(params=params, logits_at=model_logits_at(model_cfg), mesh=mesh, max_len=model_cfg.max_seq_len,
                   token_budget=batch_size * model_cfg.max_seq_len, **kw)

    def _mesh_context(self):
        import contextlib

        return jax.set_mesh(self.mesh) if self.mesh is not None else contextlib.nullcontext()

    # -- batching
    def bucket(self, n: int) -> int:
        for b in self.buckets:
            if n <= b:
                return b
        raise ValueError(f"sequence of {n} tokens exceeds max_len {self.max_len} (crop it first)")

    def rows_for(self, bucket: int) -> int:
        return max(self.div, (self.token_budget // bucket) // self.div * self.div)

    def batches(self, lengths: list[int]):
        """Yield (T, rows, indices): indices sorted by length, grouped by bucket, chunked to `rows`."""
        order = sorted(range(len(lengths)), key=lambda i: lengths[i])
        groups: dict[int, list[int]] = {}
        for i in order:
            groups.setdefault(self.bucket(lengths[i]), []).append(i)
        for T in sorted(groups):
            idx, rows = groups[T], self.rows_for(T)
            for k in range(0, len(idx), rows):
                yield T, rows, idx[k:k + rows]

    def _put(self, arr: np.ndarray):
        if self.mesh is None:
            return jnp.asarray(arr)
        sharding = shd.batch_sharding(self.mesh, ndim=arr.ndim)
        pc = jax.process_count()
        if pc > 1:  # this process's contiguous block of rows
            n = arr.shape[0] // pc
            arr = arr[jax.process_index() * n:(jax.process_index() + 1) * n]
        return shd.put_global_batch(arr, sharding)

    @staticmethod
    def _pad(rows: list[list[int]], idx: list[int], R: int, T: int) -> np.ndarray:
        toks = np.zeros((R, T), np.int32)
        for r, i in enumerate(idx):
            toks[r, : len(rows[i])] = rows[i]
        return toks

    # -- scoring
    def score(self, rows: list[list[int]], starts: list[int], ends: list[int]) -> tuple[np.ndarray, np.ndarray]:
        """Mean NLL over each row's span [start, end) and whether greedy decoding reproduces the span."""
        mean = np.zeros(len(rows), np.float64)
        exact = np.zeros(len(rows), bool)
        for T, R, idx in self.batches([len(r) for r in rows]):
            s = np.ones(R, np.int32)
            e = np.ones(R, np.int32)
            s[: len(idx)] = [starts[i] for i in idx]
            e[: len(idx)] = [ends[i] for i in idx]
            W = self.window if self.window < T and int((e - s).max()) <= self.window else T
            self.shapes.add((R, T, W))
            with self._mesh_context():
                m, x = self._score(W, self.params, self._put(self._pad(rows, idx, R, T)), self._put(s), self._put(e))
            mean[idx] = np.asarray(m)[: len(idx)]
            exact[idx] = np.asarray(x)[: len(idx)]
        return mean, exact

    def choice_logits(self, prompts: list[list[int]], candidates: list[list[int]]) -> list[np.ndarray]:
        """Logits of the candidate token ids at each prompt's last position (prompts longer than max_len are
        cropped from the left). Returns one array per prompt, aligned with its candidates."""
        prompts = [list(p[-self.max_len:]) for p in prompts]
        K = max(len(c) for c in candidates)
        out: list[np.ndarray] = [np.zeros(0)] * len(prompts)
        for T, R, idx in self.batches([len(p) for p in prompts]):
            n = np.ones(R, np.int32)
            ids = np.zeros((R, K), np.int32)
            for r, i in enumerate(idx):
                n[r] = len(prompts[i])
                ids[r, : len(candidates[i])] = candidates[i]
            self.shapes.add((R, T))
            with self._mesh_context():
                lg = np.asarray(self._last(self.params, self._put(self._pad(prompts, idx, R, T)), self._put(n),
                                           self._put(ids)))
            for r, i in enumerate(idx):
                out[i] = lg[r, : len(candidates[i])]
        return out


# ====================================================================================================
# CORE (DCLM): multiple choice / schema / language modelling, centered accuracy (tasks: jaxchat.core_tasks)

TIE_RTOL = 1e-6


def pick_choice(losses) -> int:
    """The choice with the lowest mean loss. Losses within TIE_RTOL (relative) of the minimum count as ties and
    the FIRST such choice wins (a deterministic rule: a model that scores every choice the same, e.g. uniform
    logits, always answers choice 0, so its accuracy is the share of items whose gold is the first choice —
    1/k on average; the float32 means of equal per-token losses over spans of different lengths can differ in
    the last bit, which the tolerance absorbs)."""
    losses = [float(x) for x in losses]
    m = min(losses)
    tol = TIE_RTOL * max(1.0, abs(m))
    return next(i for i, x in enumerate(losses) if x <= m + tol)


def centered(acc: float, baseline_pct: float) -> float:
    b = baseline_pct / 100.0
    return (acc - b) / (1.0 - b)


def evaluate_core_task(scorer: Scorer, tokenizer, task, max_per_task: int = -1, items=None, examples=None) -> dict:
    """One CORE task: accuracy, centered accuracy, examples, wall time. `examples` (from core_tasks.prepare)
    skips the loading and tokenization."""
    from jaxchat import core_tasks as CT

    t0 = time.time()
    if examples is None:
        items = task.load() if items is None else items
        examples = CT.prepare(task, items, tokenizer, scorer.max_len, max_per_task)
    exs = examples
    rows, starts, ends = [], [], []
    for ex in exs:
        rows += ex.rows
        starts += ex.starts
        ends += ex.ends
    mean, exact = scorer.score(rows, starts, ends) if rows else (np.zeros(0), np.zeros(0, bool))
    correct, j = [], 0
    for ex in exs:
        n = len(ex.rows)
        if task.kind == CT.LM:
            correct.append(bool(exact[j]))
        else:
            correct.append(pick_choice(mean[j:j + n]) == ex.gold)
        j += n
    acc = float(np.mean(correct)) if correct else float("nan")
    dt = time.time() - t0
    return {"task": task.label, "type": task.kind, "shots": task.shots, "baseline": task.baseline,
            "delimiter": task.delimiter, "source": task.source, "examples": len(exs), "sequences": len(rows),
            "accuracy": acc, "centered": centered(acc, task.baseline), "time_s": dt,
            "examples_per_s": len(exs) / max(dt, 1e-9)}


def evaluate_core(scorer: Scorer, tokenizer, *, max_per_task: int = -1, bundle: str = "auto", only=None,
                  tasks=None, log=None) -> dict:
    """Run the CORE suite (`jaxchat.core_tasks.core_tasks(bundle)` unless `tasks` is given; `only`: labels).

    CORE = mean centered accuracy over the tasks actually run; `core_tasks_run` says how many (22 with the
    eval bundle; 17 offline). Tasks without data are listed under `not_run` with the reason — never scored."""
    from jaxchat import core_tasks as CT

    suite = tuple(tasks) if tasks is not None else CT.core_tasks(bundle)
    if only:
        known = {t.label for t in suite}
        unknown = [o for o in only if o not in known]
        if unknown:
            raise ValueError(f"unknown CORE task(s) {unknown}; known: {sorted(known)}")
        suite = tuple(t for t in suite if t.label in set(only))
    results, not_run = {}, {}
    t0 = time.time()
    for task in suite:
        if not task.available:
            not_run[task.label] = "no offline source (needs the DCLM eval bundle)"
            continue
        try:
            items = task.load()
        except (FileNotFoundError, OSError) as e:
            not_run[task.label] = f"data not available: {e}"
            continue
        r = evaluate_core_task(scorer, tokenizer, task, max_per_task, items=items)
        results[task.label] = r
        if log:
            log(f"  {task.label:34s} acc {r['accuracy']:.4f} | centered {r['centered']:+.4f} | "
                f"{r['examples']:5d} ex | {r['time_s']:6.1f}s")
    core = float(np.mean([r["centered"] for r in results.values()])) if results else float("nan")
    total_ex = sum(r["examples"] for r in results.values())
    dt = time.time() - t0
    return {"core": core, "core_tasks_run": len(results), "core_tasks_total": len(suite), "tasks": results,
            "not_run": not_run, "data": "eval_bundle" if any(t.source == "bundle" for t in suite) else "offline",
            "max_per_task": max_per_task, "examples": total_ex, "time_s": dt,
            "examples_per_s": total_ex / max(dt, 1e-9)}


def format_core_table(res: dict) -> str:
    lines = [f"{'task':34s} {'type':6s} {'shots':>5s} {'base':>5s} {'acc':>7s} {'centered':>9s} {'n':>6s} "
             f"{'time':>7s}"]
    short = {"multiple_choice": "MC", "schema": "schema", "language_modeling": "LM"}
    for name, r in res["tasks"].items():
        lines.append(f"{name:34s} {short.get(r['type'], r['type']):6s} {r['shots']:5d} {r['baseline']:5.0f} "
                     f"{r['accuracy']:7.4f} {r['centered']:+9.4f} {r['examples']:6d} {r['time_s']:6.1f}s")
    for name, why in res["not_run"].items():
        lines.append(f"{name:34s} not run: {why}")
    lines.append(f"CORE {res['core']:.4f} (mean centered accuracy over {res['core_tasks_run']} of "
                 f"{res['core_tasks_total']} tasks; data: {res['data']})")
    return "\n".join(lines)


# ====================================================================================================
# Chat evaluation: categorical (ARC, MMLU) and generative (GSM8K, HumanEval, SpellingBee, Arithmetic), ChatCORE

def chat_task(name: str):
    """chat_eval's tasks by name, on their evaluation splits (the registry: tasks.CHAT_EVALS)."""
    from jaxchat import tasks as T

    return T.CHAT_EVALS[T.chat_eval_name(name)].make()


def canonical_chat_name(name: str) -> str:
    from jaxchat import tasks as T

    return T.chat_eval_name(name)



def letter_token(tokenizer, letter: str) -> int:
    """The token a bare answer letter starts with, as rendered after <|assistant_start|> (no leading space)."""
    ids = tokenizer.encode(letter)
    if not ids:
        raise ValueError(f"letter {letter!r} encodes to no tokens")
    return ids[0]


def categorical_eval(task, tokenizer, scorer: Scorer, indices=None) -> dict:
    """Multiple choice by the logits at the last prompt position (render_for_completion, ending in
    <|assistant_start|>), restricted to the item's choice letters; argmax (first on ties) vs the gold letter."""
    t0 = time.time()
    indices = list(range(len(task))) if indices is None else list(indices)
    convs = [task[i] for i in indices]
    prompts = [tokenizer.render_for_completion(c) for c in convs]
    cands = []
    for c in convs:
        ids = [letter_token(tokenizer, L) for L in c["letters"]]
        if len(set(ids)) != len(ids):
            raise ValueError(f"choice letters {c['letters']} share a first token: {ids}")
        cands.append(ids)
    logits = scorer.choice_logits(prompts, cands) if prompts else []
    correct = [c["letters"][int(np.argmax(lg))] == c["messages"][-1]["content"] for c, lg in zip(convs, logits)]
    dt = time.time() - t0
    return {"type": "categorical", "accuracy": float(np.mean(correct)) if correct else float("nan"),
            "correct": int(sum(correct)), "total": len(correct), "time_s": dt,
            "problems_per_s": len(correct) / max(dt, 1e-9)}


def categorical_accuracy(params, model_cfg, tokenizer, task, max_problems: int = -1, mesh=None,
                         batch_size: int = 8) -> float:
    """Accuracy of the GPT on the first `max_problems` items of a categorical task (-1: all); the in-training
    metric of the SFT stage. Compiled functions are shared across calls (see model_logits_at)."""
    n = len(task) if max_problems is None or max_problems < 0 else min(max_problems, len(task))
    scorer = Scorer.for_model(params, model_cfg, mesh, batch_size=batch_size)
    return categorical_eval(task, tokenizer, scorer, range(n))["accuracy"]


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples with c correct (Chen et al. 2021)."""
    if n - c < k:
        return 1.0
    return 1.0 - float(np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def generative_eval(task, tokenizer, engine, indices=None, *, num_samples: int = 1, max_new_tokens: int = 512,
                    temperature: float = 0.0, top_k: int = 50, batch_size: int = 8, seed: int = 42,
                    use_tools: bool = True, workers: int = 2, timeout: float = 5.0, log=None) -> dict:
    """Sample completions with `engine.generate_batch` (batch_size prompts × num_samples per call; prompts
    sorted by length, the last batch padded with copies of its first prompt so every call has the same row
    count), then check them: HumanEval in the sandbox (execution.check_humaneval, `workers` threads that run
    while the next batch generates), every other task with its `evaluate`.

    accuracy = share of problems with at least one correct sample (nanochat's; = pass@1 when num_samples is
    1, pass@k for k = num_samples); pass@1 is the unbiased mean over samples. Also: ended_rate = share of
    samples that ended with <|assistant_end|> (rather than being cut at max_new_tokens, or ending on <|bos|>);
    tool_call_rate = share of samples that called the calculator (<|python_start|>). The stop token is removed
    before the completion is decoded and checked."""
    from concurrent.futures import ThreadPoolExecutor

    from jaxchat.execution import check_humaneval

    t0 = time.time()
    indices = list(range(len(task))) if indices is None else list(indices)
    convs = [task[i] for i in indices]
    prompts = [tokenizer.render_for_completion(c) for c in convs]
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    py_start = tokenizer.encode_special("<|python_start|>")
    a_end, bos = tokenizer.encode_special("<|assistant_end|>"), tokenizer.encode_special("<|bos|>")
    outcome: dict[tuple[int, int], object] = {}
    ended, tool = [], []
    samples: dict[int, list[str]] = {}
    pool = ThreadPoolExecutor(max_workers=max(1, workers))
    try:
        for b in range(0, len(order), batch_size):
            idx = order[b:b + batch_size]
            batch = [prompts[i] for i in idx]
            batch += [batch[0]] * (batch_size - len(batch))
            seqs, _ = engine.generate_batch(batch, num_samples=num_samples, max_tokens=max_new_tokens,
                                            temperature=temperature, top_k=top_k, seed=seed + b, use_tools=use_tools,
                                            keep_terminal=True)
            for r, i in enumerate(idx):
                for s in range(num_samples):
                    seq = list(seqs[r * num_samples + s])
                    ended.append(bool(seq) and seq[-1] == a_end)
                    tool.append(py_start in seq)
                    if seq and seq[-1] in (a_end, bos):
                        seq = seq[:-1]
                    text = tokenizer.decode(seq)
                    samples.setdefault(i, []).append(text)
                    conv = convs[i]
                    if "problem" in conv:  # HumanEval: sandboxed, in the background
                        outcome[(i, s)] = pool.submit(check_humaneval, conv["problem"], text, timeout)
                    else:
                        outcome[(i, s)] = bool(task.evaluate(conv, text))
            if log:
                log(f"    {min(b + batch_size, len(order))}/{len(order)} problems generated")
        correct = np.zeros((len(convs), num_samples), bool)
        statuses: dict[str, int] = {}
        for (i, s), v in outcome.items():
            if hasattr(v, "result"):  # a sandbox run
                res = v.result()
                statuses[res.status] = statuses.get(res.status, 0) + 1
                v = res.ok
            correct[i, s] = v
    finally:
        pool.shutdown(wait=True)
    n = len(convs)
    c = correct.sum(axis=1)
    dt = time.time() - t0
    out = {"type": "generative", "accuracy": float(np.mean(c > 0)) if n else float("nan"),
           "pass@1": float(np.mean([pass_at_k(num_samples, int(ci), 1) for ci in c])) if n else float("nan"),
           "correct": int((c > 0).sum()), "total": n, "num_samples": num_samples,
           "ended_rate": float(np.mean(ended)) if ended else float("nan"),
           "tool_call_rate": float(np.mean(tool)) if tool else float("nan"),
           "time_s": dt, "problems_per_s": n / max(dt, 1e-9)}
    if num_samples > 1:
        out[f"pass@{num_samples}"] = out["accuracy"]
    if statuses:
        out["sandbox"] = statuses  # e.g. {"ok": 12, "error": 150, "timeout": 2}
    out["examples"] = [{"index": indices[i], "completion": samples[i][0][:2000], "correct": bool(correct[i, 0])}
                       for i in range(min(n, 3))]
    return out


def chatcore(results: dict) -> tuple[float | None, int]:
    """Mean centered accuracy over the ChatCORE tasks present in `results` (baselines: 0.25 for ARC-E/ARC-C/
    MMLU, 0 for the generative ones); returns (value or None, number of tasks it averages)."""
    from jaxchat.tasks import CHATCORE_BASELINES

    vals = [(results[k]["accuracy"] - b) / (1.0 - b) for k, b in CHATCORE_BASELINES.items() if k in results]
    return (float(np.mean(vals)) if vals else None), len(vals)
