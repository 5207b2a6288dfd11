"""Evaluation: bits per byte (base/mid stages), CORE (base models), chat evals and ChatCORE.

Bits per byte (nanochat's): Σ nll over real-text targets (token byte length > 0) ÷ (ln 2 · Σ their UTF-8
bytes), vocabulary-size invariant and comparable with xz (`xz_bits_per_byte`). CORE: every item becomes token
rows with a scored span (`jaxchat.core_tasks`), run through `Scorer`; centered accuracy per task, CORE = their
mean. Chat evals: `categorical_eval` (letter logits), `generative_eval` (sampled, checked), `chatcore`.
"""
from __future__ import annotations

import lzma
import math
import time
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache, partial

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


@partial(jax.jit, static_argnums=(4,))
def _nll_bytes(params, inputs, targets, token_bytes, model_cfg):
    nll = gpt.token_nll(params, inputs, targets, model_cfg)
    nbytes = jnp.where(targets >= 0, token_bytes[jnp.maximum(targets, 0)], 0)
    counted = nbytes > 0
    return jnp.sum(jnp.where(counted, nll, 0.0)), jnp.sum(nbytes), jnp.sum(jnp.where(targets >= 0, nll, 0.0)), \
        jnp.sum(targets >= 0)


def loss_stats(params, rows, token_bytes, model_cfg, mesh, batch_rows: int) -> dict:
    """Mean loss and bits per byte over rows [N, T+1] (inputs = row[:-1], targets = row[1:]), split across
    processes and devices; partial batches are padded with ignored targets (one compiled shape)."""
    div = shd.batch_divisor(mesh) * jax.process_count()
    batch_rows = max(div, (batch_rows // div) * div)
    sharding = shd.batch_sharding(mesh, ndim=2)
    tb = jnp.asarray(token_bytes, jnp.int32)
    pi, pc = jax.process_index(), jax.process_count()
    tot = np.zeros(4)  # Σ nll over counted targets, Σ bytes, Σ nll, target count
    for i in range(0, len(rows), batch_rows):
        chunk = rows[i:i + batch_rows]
        inputs, targets = chunk[:, :-1], chunk[:, 1:].astype(np.int32)
        if len(chunk) < batch_rows:
            pad = batch_rows - len(chunk)
            inputs = np.concatenate([inputs, np.zeros((pad, inputs.shape[1]), inputs.dtype)])
            targets = np.concatenate([targets, np.full((pad, targets.shape[1]), -1, np.int32)])
        with shd.scope(mesh):
            out = _nll_bytes(params, shd.put_global_batch(inputs[pi::pc], sharding),
                             shd.put_global_batch(targets[pi::pc], sharding), tb, model_cfg)
        tot += [float(x) for x in out]
    nll, nbytes, loss, count = (float(x) for x in tot)
    return {"loss": loss / max(count, 1), "bpb": nll / (math.log(2) * max(nbytes, 1)), "tokens": int(count),
            "bytes": int(nbytes)}


def xz_bits_per_byte(text: str) -> float:
    """The same text compressed with xz -9 (extreme): a strong classical baseline for bits per byte."""
    raw = text.encode("utf-8")
    return 8.0 * len(lzma.compress(raw, preset=9 | lzma.PRESET_EXTREME)) / max(len(raw), 1)


# ====================================================================================================
# Batched scoring. The GPT's `logits_at` runs the blocks over whole rows but the unembedding only at the W scored
# positions (CORE spans end each row: a SPAN_WINDOW before the end covers them), 2.6x faster on CPU and small
# logits at d20. Rows are bucketed by length, token_budget // T rows a batch, right-padded with token 0 (causal:
# never seen by scored positions): each (rows, T, W) shape compiles once. Results come back replicated.

SPAN_WINDOW = 64
BUCKETS = (64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384)  # row lengths, up to the model's context


def model_apply(model_cfg):
    """apply_fn for the GPT: full-sequence fp32 logits."""
    return lambda params, tokens: gpt.forward(params, tokens, model_cfg)


@lru_cache(maxsize=None)
def model_logits_at(model_cfg):
    """logits_at for the GPT; cached per config, so every Scorer of one model shares its compiled functions."""

    def logits_at(params, tokens, positions):
        h, _ = gpt.hidden_states(params, tokens, model_cfg)
        h = jnp.take_along_axis(h, positions[..., None], axis=1)
        return gpt.logits_from_hidden(params, h, model_cfg)

    return logits_at


def _score_rows(logits_at, W, params, tokens, starts, ends):
    """Per row: mean NLL over the span [start, end) and whether greedy argmax (ties → lowest id) reproduces it,
    from the W predicting positions ending at the row's last one (token t is predicted at t - 1; clamped at 0).
    An empty span gives (0, False)."""
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
    """Scores token rows in fixed-shape, mesh-sharded batches: `score` (CORE spans), `choice_logits` (categorical
    chat evals). The model: `Scorer.for_model` (the GPT), or any full-logits `apply_fn`."""

    def __init__(self, apply_fn=None, params=None, *, logits_at=None, mesh=None, max_len: int,
                 token_budget: int | None = None, buckets: tuple[int, ...] | None = None,
                 window: int = SPAN_WINDOW):
        self.logits_at = logits_at or (lambda params, tokens, positions: jnp.take_along_axis(
            apply_fn(params, tokens), positions[..., None], axis=1))
        self.params, self.mesh, self.max_len, self.window = params, mesh, int(max_len), int(window)
        self.div = (shd.batch_divisor(mesh) if mesh is not None else 1) * jax.process_count()
        self.token_budget = int(token_budget or 8 * self.max_len)
        self.buckets = tuple(sorted(buckets or [b for b in BUCKETS if b < self.max_len] + [self.max_len]))
        self._score, self._last = _jitted(self.logits_at, mesh)
        self.shapes: set[tuple] = set()  # (rows, T[, W]) shapes run so far (≈ compilations)

    @classmethod
    def for_model(cls, params, model_cfg, mesh=None, batch_size: int = 8, **kw) -> "Scorer":
        """The GPT; a batch holds about batch_size full-length rows' worth of tokens."""
        return cls(params=params, logits_at=model_logits_at(model_cfg), mesh=mesh, max_len=model_cfg.max_seq_len,
                   token_budget=batch_size * model_cfg.max_seq_len, **kw)

    def batches(self, lengths: list[int]):
        """Yield (T, rows, indices): indices sorted by length, grouped by bucket, chunked to `rows`."""
        groups: dict[int, list[int]] = {}
        for i in sorted(range(len(lengths)), key=lambda i: lengths[i]):
            groups.setdefault(bucket(lengths[i], self.buckets), []).append(i)
        for T in sorted(groups):
            idx, rows = groups[T], max(self.div, (self.token_budget // T) // self.div * self.div)
            for k in range(0, len(idx), rows):
                yield T, rows, idx[k:k + rows]

    def _put(self, arr: np.ndarray):
        if self.mesh is None:
            return jnp.asarray(arr)
        n = arr.shape[0] // jax.process_count()  # this process's contiguous block of rows
        arr = arr[jax.process_index() * n:(jax.process_index() + 1) * n]
        return shd.put_global_batch(arr, shd.batch_sharding(self.mesh, ndim=arr.ndim))

    def score(self, rows: list[list[int]], starts: list[int], ends: list[int]) -> tuple[np.ndarray, np.ndarray]:
        """Mean NLL over each row's span [start, end) and whether greedy decoding reproduces the span."""
        mean = np.zeros(len(rows), np.float64)
        exact = np.zeros(len(rows), bool)
        for T, R, idx in self.batches([len(r) for r in rows]):
            toks, s, e = np.zeros((R, T), np.int32), np.ones(R, np.int32), np.ones(R, np.int32)
            for r, i in enumerate(idx):
                toks[r, : len(rows[i])], s[r], e[r] = rows[i], starts[i], ends[i]
            W = self.window if self.window < T and int((e - s).max()) <= self.window else T
            self.shapes.add((R, T, W))
            with shd.scope(self.mesh):
                m, x = self._score(W, self.params, self._put(toks), self._put(s), self._put(e))
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
            toks, n, ids = np.zeros((R, T), np.int32), np.ones(R, np.int32), np.zeros((R, K), np.int32)
            for r, i in enumerate(idx):
                toks[r, : len(prompts[i])], n[r] = prompts[i], len(prompts[i])
                ids[r, : len(candidates[i])] = candidates[i]
            self.shapes.add((R, T))
            with shd.scope(self.mesh):
                lg = np.asarray(self._last(self.params, self._put(toks), self._put(n), self._put(ids)))
            for r, i in enumerate(idx):
                out[i] = lg[r, : len(candidates[i])]
        return out


# ====================================================================================================
# CORE (DCLM): multiple choice / schema / language modelling, centered accuracy (tasks: jaxchat.core_tasks)

TIE_RTOL = 1e-6


def pick_choice(losses) -> int:
    """The choice with the lowest mean loss; losses within TIE_RTOL of the minimum tie and the FIRST wins (a
    model that scores every choice the same answers choice 0; the tolerance absorbs float32 means of equal
    per-token losses over spans of different lengths differing in the last bit)."""
    losses = [float(x) for x in losses]
    m = min(losses)
    return next(i for i, x in enumerate(losses) if x <= m + TIE_RTOL * max(1.0, abs(m)))


def centered(acc: float, baseline_pct: float) -> float:
    b = baseline_pct / 100.0
    return (acc - b) / (1.0 - b)


def evaluate_core_task(scorer: Scorer, tokenizer, task, max_per_task: int = -1, items=None, examples=None) -> dict:
    """One CORE task: accuracy, centered accuracy, examples, wall time. `examples` (from core_tasks.prepare)
    skips the loading and tokenization."""
    t0 = time.time()
    if examples is None:
        items = task.load() if items is None else items
        examples = CT.prepare(task, items, tokenizer, scorer.max_len, max_per_task)
    rows, starts, ends = ([x for ex in examples for x in getattr(ex, f)] for f in ("rows", "starts", "ends"))
    mean, exact = scorer.score(rows, starts, ends) if rows else (np.zeros(0), np.zeros(0, bool))
    first = np.cumsum([0] + [len(ex.rows) for ex in examples])  # each example's first row
    correct = [bool(exact[j]) if task.kind == CT.LM else pick_choice(mean[j:j + len(ex.rows)]) == ex.gold
               for j, ex in zip(first, examples)]
    acc = float(np.mean(correct)) if correct else float("nan")
    dt = time.time() - t0
    return {"task": task.label, "type": task.kind, "shots": task.shots, "baseline": task.baseline,
            "delimiter": task.delimiter, "source": task.source, "examples": len(examples), "sequences": len(rows),
            "accuracy": acc, "centered": centered(acc, task.baseline), "time_s": dt,
            "examples_per_s": len(examples) / max(dt, 1e-9)}


def evaluate_core(scorer: Scorer, tokenizer, *, max_per_task: int = -1, bundle: str = "auto", only=None,
                  tasks=None, log=None) -> dict:
    """Run the CORE suite (`core_tasks.core_tasks(bundle)` unless `tasks` is given; `only`: labels). CORE = mean
    centered accuracy over the tasks run; tasks without data are listed under `not_run`, never scored."""
    suite = tuple(tasks) if tasks is not None else CT.core_tasks(bundle)
    if only:
        unknown = [o for o in only if o not in {t.label for t in suite}]
        if unknown:
            raise ValueError(f"unknown CORE task(s) {unknown}; known: {sorted(t.label for t in suite)}")
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
        r = results[task.label] = evaluate_core_task(scorer, tokenizer, task, max_per_task, items=items)
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
# Chat evaluation (tasks: jaxchat.tasks.CHAT_EVALS): categorical (ARC, MMLU), generative (GSM8K, HumanEval,
# SpellingBee, Arithmetic), ChatCORE


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
    convs = [task[i] for i in (range(len(task)) if indices is None else indices)]
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
    """Accuracy of the GPT on the first `max_problems` items of a categorical task (-1: all); the SFT stage's
    in-training metric (compiled functions are shared across calls: model_logits_at)."""
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
    """Sample with `engine.generate_batch` (prompts sorted by length, the last batch padded with copies of its
    first), then check: HumanEval in the sandbox (`workers` threads, while the next batch generates), other tasks
    with their `evaluate`. accuracy: share of problems with a correct sample (nanochat's; pass@k for k =
    num_samples); pass@1: the unbiased mean; ended_rate: share of samples ending with <|assistant_end|>;
    tool_call_rate: share that called the calculator."""
    t0 = time.time()
    indices = list(range(len(task))) if indices is None else list(indices)
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
            for r, i in enumerate(idx):
                for s in range(num_samples):
                    seq = list(seqs[r * num_samples + s])
                    ended.append(bool(seq) and seq[-1] == a_end)
                    tool.append(py_start in seq)
                    text = texts[i, s] = tokenizer.decode(seq[:-1] if seq and seq[-1] in (a_end, bos) else seq)
                    if "problem" in convs[i]:  # HumanEval: sandboxed, in the background
                        outcome[(i, s)] = pool.submit(check_humaneval, convs[i]["problem"], text, timeout)
                    else:
                        outcome[(i, s)] = bool(task.evaluate(convs[i], text))
            if log:
                log(f"    {min(b + batch_size, len(order))}/{len(order)} problems generated")
        correct = np.zeros((len(convs), num_samples), bool)
        statuses: dict[str, int] = {}
        for (i, s), v in outcome.items():
            if hasattr(v, "result"):  # a sandbox run
                v = v.result()
                statuses[v.status] = statuses.get(v.status, 0) + 1
                v = v.ok
            correct[i, s] = v
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
    out["examples"] = [{"index": indices[i], "completion": texts[i, 0][:2000], "correct": bool(correct[i, 0])}
                       for i in range(min(n, 3))]
    return out


def chatcore(results: dict) -> tuple[float | None, int]:
    """Mean centered accuracy over the ChatCORE tasks in `results` (tasks.CHATCORE_BASELINES); returns (value
    or None, number of tasks averaged)."""
    vals = [(results[k]["accuracy"] - b) / (1.0 - b) for k, b in CHATCORE_BASELINES.items() if k in results]
    return (float(np.mean(vals)) if vals else None), len(vals)
