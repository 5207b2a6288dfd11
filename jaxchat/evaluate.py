"""Evaluation: bits per byte (base/mid stages), CORE (base models), chat evals and ChatCORE.

Bits per byte (nanochat's): Σ nll over real-text targets (token byte length > 0) ÷ (ln 2 · Σ their UTF-8 bytes),
vocabulary-size invariant and comparable with xz. CORE: each item becomes token rows with a scored span
(`jaxchat.core_tasks`) scored by `Scorer`; CORE = mean centered accuracy. Chat: categorical (letter logits),
generative (sampled, checked), ChatCORE.
"""
from __future__ import annotations

import lzma
import math
import time
from collections import Counter
from concurrent.futures import Future, ThreadPoolExecutor
from functools import lru_cache, partial
from itertools import groupby

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from jaxchat import core_tasks as CT
from jaxchat import model as gpt
from jaxchat import sharding as shd
from jaxchat.common import bucket
from jaxchat.sandbox import check_humaneval
from jaxchat.tasks import CHATCORE_BASELINES


def _mean(xs) -> float:
    return float(np.mean(xs)) if len(xs) else float("nan")


def _timing(t0: float, n: int, per_s: str) -> dict:
    dt = time.time() - t0
    return {"time_s": dt, per_s: n / max(dt, 1e-9)}


def _put(arr: np.ndarray, mesh):
    """This process's contiguous block of a global batch's rows, placed on the mesh (None: the default device)."""
    if mesh is None:
        return jnp.asarray(arr)
    n = arr.shape[0] // jax.process_count()
    arr = arr[jax.process_index() * n:(jax.process_index() + 1) * n]
    return shd.put_global_batch(arr, shd.batch_sharding(mesh, ndim=arr.ndim))


@partial(jax.jit, static_argnums=(4,))
def _nll_bytes(params, inputs, targets, token_bytes, model_cfg):
    nll = gpt.token_nll(params, inputs, targets, model_cfg)
    nbytes = jnp.where(targets >= 0, token_bytes[jnp.maximum(targets, 0)], 0)
    return jnp.sum(jnp.where(nbytes > 0, nll, 0.0)), jnp.sum(nbytes), jnp.sum(jnp.where(targets >= 0, nll, 0.0)), \
        jnp.sum(targets >= 0)


def loss_stats(params, rows, token_bytes, model_cfg, mesh, batch_rows: int) -> dict:
    """Mean loss and bits per byte over rows [N, T+1] (inputs row[:-1], targets row[1:]); a partial batch is
    padded with ignored targets (one compiled shape)."""
    div = shd.batch_divisor(mesh) * jax.process_count()
    batch_rows = max(div, (batch_rows // div) * div)
    tb = jnp.asarray(token_bytes, jnp.int32)
    tot = np.zeros(4)  # Σ nll over counted targets, Σ bytes, Σ nll, target count
    for i in range(0, len(rows), batch_rows):
        chunk = rows[i:i + batch_rows].astype(np.int32)
        chunk = np.pad(chunk, ((0, batch_rows - len(chunk)), (0, 0)), constant_values=-1)
        inputs, targets = np.maximum(chunk[:, :-1], 0), chunk[:, 1:]
        with shd.scope(mesh):
            tot += [float(x) for x in _nll_bytes(params, _put(inputs, mesh), _put(targets, mesh), tb, model_cfg)]
    nll, nbytes, loss, count = map(float, tot)
    return {"loss": loss / max(count, 1), "bpb": nll / (math.log(2) * max(nbytes, 1)), "tokens": int(count),
            "bytes": int(nbytes)}


def xz_bits_per_byte(text: str) -> float:
    """The same text compressed with xz -9 (extreme): a strong classical baseline for bits per byte."""
    raw = text.encode("utf-8")
    return 8.0 * len(lzma.compress(raw, preset=9 | lzma.PRESET_EXTREME)) / max(len(raw), 1)


# ====================================================================================================
# Batched scoring. `logits_at(params, tokens, positions)` runs the blocks over whole rows but the unembedding only
# at the W scored positions (a CORE span ends its row: a SPAN_WINDOW before the end covers it; 2.6x faster on CPU).
# Rows are bucketed by length, right-padded with token 0 (causal: never seen by scored positions): each (rows, T,
# W) shape compiles once.

SPAN_WINDOW = 64
BUCKETS = (64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384)  # row lengths, up to the model's context


def _gpt_logits_at(model_cfg, params, tokens, positions):
    h, _ = gpt.hidden_states(params, tokens, model_cfg)
    return gpt.logits_from_hidden(params, jnp.take_along_axis(h, positions[..., None], axis=1), model_cfg)


@lru_cache(maxsize=None)
def model_logits_at(model_cfg):
    """logits_at for the GPT; cached per config, so every Scorer of one model shares its compiled functions."""
    return partial(_gpt_logits_at, model_cfg)


def _score_rows(logits_at, W, params, tokens, starts, ends):
    """Per row: mean NLL over the span [start, end) and whether greedy argmax (ties → lowest id) reproduces it,
    from the W predicting positions ending at the row's last one. An empty span gives (0, False)."""
    raw = ends[:, None] - 1 - W + jnp.arange(W)[None]
    pos, mask = jnp.maximum(raw, 0), (raw >= 0) & (raw + 1 >= starts[:, None])
    tgt = jnp.take_along_axis(tokens, jnp.minimum(pos + 1, tokens.shape[1] - 1), axis=1)
    lg = logits_at(params, tokens, pos).astype(jnp.float32)
    nll = jax.nn.logsumexp(lg, axis=-1) - jnp.take_along_axis(lg, tgt[..., None], axis=-1)[..., 0]
    n = jnp.sum(mask, axis=1)
    mean = jnp.sum(jnp.where(mask, nll, 0.0), axis=1) / jnp.maximum(n, 1)
    exact = jnp.all(jnp.where(mask, jnp.argmax(lg, axis=-1) == tgt, True), axis=1) & (n > 0)
    return mean, exact


def _last_rows(logits_at, params, tokens, lengths, ids):
    last = logits_at(params, tokens, (lengths - 1)[:, None])[:, 0]
    return jnp.take_along_axis(last.astype(jnp.float32), ids, axis=1)


@lru_cache(maxsize=64)
def _jitted(logits_at, mesh):
    out = NamedSharding(mesh, P()) if mesh is not None else None
    return (jax.jit(partial(_score_rows, logits_at), static_argnums=(0,), out_shardings=out),
            jax.jit(partial(_last_rows, logits_at), out_shardings=out))


class Scorer:
    """Scores token rows in fixed-shape, mesh-sharded batches (token_budget // T rows of length T): `score` (CORE
    spans), `choice_logits` (categorical chat evals). `Scorer.for_model`: the GPT."""

    def __init__(self, logits_at, params, *, mesh=None, max_len: int, token_budget: int | None = None,
                 buckets: tuple[int, ...] | None = None, window: int = SPAN_WINDOW):
        self.params, self.mesh, self.max_len, self.window = params, mesh, int(max_len), int(window)
        self.div = (shd.batch_divisor(mesh) if mesh is not None else 1) * jax.process_count()
        self.token_budget = int(token_budget or 8 * self.max_len)
        self.buckets = tuple(sorted(buckets or [b for b in BUCKETS if b < self.max_len] + [self.max_len]))
        self._score, self._last = _jitted(logits_at, mesh)
        self.shapes: set[tuple] = set()  # (rows, T[, W]) shapes run so far (≈ compilations)

    @classmethod
    def for_model(cls, params, model_cfg, mesh=None, batch_size: int = 8, **kw) -> "Scorer":
        """The GPT; a batch holds about batch_size full-length rows' worth of tokens."""
        return cls(model_logits_at(model_cfg), params, mesh=mesh, max_len=model_cfg.max_seq_len,
                   token_budget=batch_size * model_cfg.max_seq_len, **kw)

    def _batches(self, rows: list[list[int]]):
        """Yield (indices, tokens [R, T]): rows sorted by length, grouped by bucket, R = the bucket's row count."""
        order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
        for T, group in groupby(order, key=lambda i: bucket(len(rows[i]), self.buckets)):
            idx, R = list(group), max(self.div, (self.token_budget // T) // self.div * self.div)
            for k in range(0, len(idx), R):
                toks = np.zeros((R, T), np.int32)
                for r, i in enumerate(idx[k:k + R]):
                    toks[r, :len(rows[i])] = rows[i]
                yield idx[k:k + R], toks

    def score(self, rows: list[list[int]], starts: list[int], ends: list[int]) -> tuple[np.ndarray, np.ndarray]:
        """Mean NLL over each row's span [start, end) and whether greedy decoding reproduces the span."""
        mean, exact = np.zeros(len(rows)), np.zeros(len(rows), bool)
        for idx, toks in self._batches(rows):
            s, e = np.ones((2, len(toks)), np.int32)
            s[:len(idx)], e[:len(idx)] = np.take(starts, idx), np.take(ends, idx)
            T = toks.shape[1]
            W = self.window if self.window < T and int((e - s).max()) <= self.window else T
            self.shapes.add((*toks.shape, W))
            with shd.scope(self.mesh):
                m, x = self._score(W, self.params, *(_put(a, self.mesh) for a in (toks, s, e)))
            mean[idx], exact[idx] = np.asarray(m)[:len(idx)], np.asarray(x)[:len(idx)]
        return mean, exact

    def choice_logits(self, prompts: list[list[int]], candidates: list[list[int]]) -> list[np.ndarray]:
        """Logits of each prompt's candidate ids at its last position (prompts cropped from the left to max_len)."""
        prompts = [list(p[-self.max_len:]) for p in prompts]
        K = max(len(c) for c in candidates)
        out: list[np.ndarray] = [np.zeros(0)] * len(prompts)
        for idx, toks in self._batches(prompts):
            n, ids = np.ones(len(toks), np.int32), np.zeros((len(toks), K), np.int32)
            for r, i in enumerate(idx):
                n[r], ids[r, :len(candidates[i])] = len(prompts[i]), candidates[i]
            self.shapes.add(toks.shape)
            with shd.scope(self.mesh):
                lg = np.asarray(self._last(self.params, *(_put(a, self.mesh) for a in (toks, n, ids))))
            for r, i in enumerate(idx):
                out[i] = lg[r, :len(candidates[i])]
        return out


# ====================================================================================================
# CORE (DCLM): multiple choice / schema / language modelling, centered accuracy (tasks: jaxchat.core_tasks)


def pick_choice(losses) -> int:
    """The choice with the lowest mean loss; within 1e-6 (relative) of the minimum the FIRST wins (a model that
    scores every choice the same answers 0; float32 means of equal per-token losses may differ in the last bit)."""
    losses = [float(x) for x in losses]
    m = min(losses)
    return next(i for i, x in enumerate(losses) if x <= m + 1e-6 * max(1.0, abs(m)))


def centered(acc: float, baseline: float) -> float:  # baseline: a fraction
    return (acc - baseline) / (1.0 - baseline)


def evaluate_core_task(scorer: Scorer, tokenizer, task, max_per_task: int = -1, items=None, examples=None) -> dict:
    """One CORE task; `examples` (from core_tasks.prepare) skips the loading and tokenization."""
    t0 = time.time()
    if examples is None:
        examples = CT.prepare(task, task.load() if items is None else items, tokenizer, scorer.max_len, max_per_task)
    rows, starts, ends = ([x for ex in examples for x in getattr(ex, f)] for f in ("rows", "starts", "ends"))
    mean, exact = scorer.score(rows, starts, ends)
    first = np.cumsum([0] + [len(ex.rows) for ex in examples])  # each example's first row
    acc = _mean([bool(exact[j]) if task.kind == CT.LM else pick_choice(mean[j:j + len(ex.rows)]) == ex.gold
                 for j, ex in zip(first, examples)])
    return {"task": task.label, "type": task.kind, "shots": task.shots, "baseline": task.baseline,
            "delimiter": task.delimiter, "source": task.source, "examples": len(examples), "sequences": len(rows),
            "accuracy": acc, "centered": centered(acc, task.baseline / 100.0),
            **_timing(t0, len(examples), "examples_per_s")}


def evaluate_core(scorer: Scorer, tokenizer, *, max_per_task: int = -1, bundle: str = "auto", only=None,
                  tasks=None, log=None) -> dict:
    """Run the CORE suite (`core_tasks.core_tasks(bundle)` unless `tasks` is given; `only`: labels). CORE = mean
    centered accuracy over the tasks run; tasks without data are listed under `not_run`."""
    suite = tuple(tasks) if tasks is not None else CT.core_tasks(bundle)
    if unknown := [o for o in only or () if o not in {t.label for t in suite}]:
        raise ValueError(f"unknown CORE task(s) {unknown}; known: {sorted(t.label for t in suite)}")
    suite = tuple(t for t in suite if not only or t.label in only)
    results, not_run = {}, {}
    t0 = time.time()
    for task in suite:
        try:
            items = task.load()
        except OSError as e:  # CoreTask.load raises FileNotFoundError for a task with no offline source
            why = f"data not available: {e}" if task.available else "no offline source (needs the DCLM eval bundle)"
            not_run[task.label] = why
            continue
        r = results[task.label] = evaluate_core_task(scorer, tokenizer, task, max_per_task, items=items)
        if log:
            log(f"  {task.label:34s} acc {r['accuracy']:.4f} | centered {r['centered']:+.4f} | "
                f"{r['examples']:5d} ex | {r['time_s']:6.1f}s")
    total_ex = sum(r["examples"] for r in results.values())
    return {"core": _mean([r["centered"] for r in results.values()]), "core_tasks_run": len(results),
            "core_tasks_total": len(suite), "tasks": results, "not_run": not_run,
            "data": "eval_bundle" if any(t.source == "bundle" for t in suite) else "offline",
            "max_per_task": max_per_task, "examples": total_ex, **_timing(t0, total_ex, "examples_per_s")}


def format_core_table(res: dict) -> str:
    lines = [f"{'task':34s} {'type':6s} {'shots':>5s} {'base':>5s} {'acc':>7s} {'centered':>9s} {'n':>6s} {'time':>7s}"]
    short = {"multiple_choice": "MC", "schema": "schema", "language_modeling": "LM"}
    for name, r in res["tasks"].items():
        lines.append(f"{name:34s} {short.get(r['type'], r['type']):6s} {r['shots']:5d} {r['baseline']:5.0f} "
                     f"{r['accuracy']:7.4f} {r['centered']:+9.4f} {r['examples']:6d} {r['time_s']:6.1f}s")
    lines += [f"{name:34s} not run: {why}" for name, why in res["not_run"].items()]
    lines.append(f"CORE {res['core']:.4f} (mean centered accuracy over {res['core_tasks_run']} of "
                 f"{res['core_tasks_total']} tasks; data: {res['data']})")
    return "\n".join(lines)


# ====================================================================================================
# Chat evaluation (tasks: jaxchat.tasks.CHAT_EVALS): categorical (ARC, MMLU), generative (GSM8K, HumanEval,
# SpellingBee, Arithmetic), ChatCORE


def categorical_eval(task, tokenizer, scorer: Scorer, indices=None) -> dict:
    """Multiple choice by the logits at the last prompt position (after <|assistant_start|>) over the item's
    choice letters; argmax (first on ties) vs the gold letter."""
    t0 = time.time()
    convs = [task[i] for i in (range(len(task)) if indices is None else indices)]
    cands = [[tokenizer.encode(L)[0] for L in c["letters"]] for c in convs]  # as after <|assistant_start|>
    for c, ids in zip(convs, cands):
        if len(set(ids)) != len(ids):
            raise ValueError(f"choice letters {c['letters']} share a first token: {ids}")
    logits = scorer.choice_logits([tokenizer.render_for_completion(c) for c in convs], cands) if convs else []
    correct = [c["letters"][int(np.argmax(lg))] == c["messages"][-1]["content"] for c, lg in zip(convs, logits)]
    return {"type": "categorical", "accuracy": _mean(correct), "correct": int(sum(correct)), "total": len(correct),
            "scores": [int(c) for c in correct], **_timing(t0, len(correct), "problems_per_s")}


def categorical_accuracy(params, model_cfg, tokenizer, task, max_problems=-1, mesh=None, batch_size=8) -> float:
    """The GPT's accuracy on the first `max_problems` items (-1: all): the SFT stage's in-training metric."""
    n = len(task) if max_problems is None or max_problems < 0 else min(max_problems, len(task))
    scorer = Scorer.for_model(params, model_cfg, mesh, batch_size=batch_size)
    return categorical_eval(task, tokenizer, scorer, range(n))["accuracy"]


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples with c correct (Chen et al. 2021)."""
    return 1.0 if n - c < k else 1.0 - float(np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def generative_eval(task, tokenizer, engine, indices=None, *, num_samples: int = 1, max_new_tokens: int = 512,
                    temperature: float = 0.0, top_k: int = 50, batch_size: int = 8, seed: int = 42,
                    use_tools: bool = True, workers: int = 2, timeout: float = 5.0, log=None) -> dict:
    """Sample in length-sorted batches (the last padded with copies of its first) and check: HumanEval in the
    sandbox (`workers` threads, while the next batch generates), other tasks with their `evaluate`. accuracy: share
    of problems with a correct sample (nanochat's); ended_rate / tool_call_rate: share of samples ending with
    <|assistant_end|> / calling the calculator."""
    t0 = time.time()
    indices = list(range(len(task)) if indices is None else indices)
    convs = [task[i] for i in indices]
    prompts = [tokenizer.render_for_completion(c) for c in convs]
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    py_start, a_end, bos = map(tokenizer.encode_special, ("<|python_start|>", "<|assistant_end|>", "<|bos|>"))
    outcome, texts, ended, tool = {}, {}, [], []  # outcome[(i, s)]: bool or a sandbox Future
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for b in range(0, len(order), batch_size):
            idx = order[b:b + batch_size]
            batch = [prompts[i] for i in idx]
            seqs, _ = engine.generate_batch(batch + [batch[0]] * (batch_size - len(batch)), num_samples=num_samples,
                                            max_tokens=max_new_tokens, temperature=temperature, top_k=top_k,
                                            seed=seed + b, use_tools=use_tools, keep_terminal=True)
            for k, seq in enumerate(map(list, seqs[:len(idx) * num_samples])):
                i, s = idx[k // num_samples], k % num_samples
                ended.append(bool(seq) and seq[-1] == a_end)
                tool.append(py_start in seq)
                text = texts[i, s] = tokenizer.decode(seq[:-1] if seq and seq[-1] in (a_end, bos) else seq)
                outcome[i, s] = (pool.submit(check_humaneval, convs[i]["problem"], text, timeout)
                                 if "problem" in convs[i] else bool(task.evaluate(convs[i], text)))
            if log:
                log(f"    {min(b + batch_size, len(order))}/{len(order)} problems generated")
        done = {k: v.result() if isinstance(v, Future) else v for k, v in outcome.items()}
    statuses = Counter(v.status for v in done.values() if not isinstance(v, bool))  # sandbox runs
    correct = np.zeros((len(convs), num_samples), bool)
    for (i, s), v in done.items():
        correct[i, s] = v if isinstance(v, bool) else v.ok
    n, c = len(convs), correct.sum(axis=1)
    out = {"type": "generative", "accuracy": _mean(c > 0), "pass@1": _mean([pass_at_k(num_samples, ci, 1) for ci in c]),
           "correct": int((c > 0).sum()), "total": n, "num_samples": num_samples, "ended_rate": _mean(ended),
           "tool_call_rate": _mean(tool), "scores": c.tolist(),  # per problem: correct samples of num_samples
           **_timing(t0, n, "problems_per_s")}
    if num_samples > 1:
        out[f"pass@{num_samples}"] = out["accuracy"]
    if statuses:
        out["sandbox"] = dict(statuses)  # e.g. {"ok": 12, "error": 150, "timeout": 2}
    out["examples"] = [{"index": indices[i], "completion": texts[i, 0][:2000], "correct": bool(correct[i, 0])}
                       for i in range(min(n, 3))]
    return out


def paired_gain(before: dict, after: dict) -> tuple[float, float]:
    """Mean per-problem score change between two evaluations of the same problems (e.g. SFT → RL sampled reward) and
    its standard error from the paired differences: the problems' own difficulty cancels out."""
    if before["total"] != after["total"]:
        raise ValueError(f"paired_gain needs the same problems: {before['total']} vs {after['total']}")
    d = (np.asarray(after["scores"]) / after.get("num_samples", 1) -
         np.asarray(before["scores"]) / before.get("num_samples", 1))
    return float(d.mean()), float(d.std(ddof=1) / np.sqrt(len(d))) if len(d) > 1 else float("nan")


def chatcore(results: dict) -> tuple[float | None, int]:
    """Mean centered accuracy over the ChatCORE tasks in `results`: (value or None, number of tasks)."""
    vals = [centered(results[k]["accuracy"], b) for k, b in CHATCORE_BASELINES.items() if k in results]
    return (float(np.mean(vals)) if vals else None), len(vals)
