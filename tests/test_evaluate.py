"""Evaluation: CORE prompt rendering and spans, the batched scorer proven with stand-in models (an oracle that
knows the gold sequences scores 1.0 on every task type; a uniform model lands on the random baseline), mesh
invariance with a tiny GPT, chat_eval's categorical / generative paths (GSM8K answers, HumanEval in the
sandbox with a stand-in engine), and base_eval / chat_eval run end to end on a tiny checkpoint.

Stand-in models are `apply_fn(params, tokens) -> logits` with their tables passed as `params` (so XLA never
constant-folds them); every Scorer here uses a short context to keep shapes (and compilations) few."""
from __future__ import annotations

import dataclasses
import json
import random
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import FileServer, tiny_model, tiny_tokenizer, write_eval_bundle, zip_dir
from jaxchat import core_tasks as CT
from jaxchat import evaluate as E
from jaxchat import model as gpt
from jaxchat import sharding as shd
from jaxchat import tasks as T
from jaxchat.config import MeshConfig
from jaxchat.tasks import GSM8K, HumanEval, ListTask

MAX_LEN = 256
BUDGET = 2048  # tokens per scorer batch: (rows, T) = (32, 64), (16, 128), (8, 256)
TASKS = {t.label: t for t in CT.OFFLINE_TASKS}


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


# ------------------------------------------------------------------------------------------------------------
# stand-in models


def gold_table(rows: list[list[int]]) -> jnp.ndarray:
    G = np.full((len(rows), max(len(r) for r in rows)), -1, np.int32)
    for i, r in enumerate(rows):
        G[i, : len(r)] = r
    return jnp.asarray(G)


def oracle_apply(vocab: int, boost: float = 10.0):
    """Logits that know the gold sequences (params = padded table G [N, Tg]): at position t of a row whose
    tokens 0..t equal some gold sequence's, a high logit for that sequence's token t+1; else all zeros."""

    def apply(G, toks):
        B, T = toks.shape
        Gp = jnp.pad(G, ((0, 0), (0, max(0, T + 1 - G.shape[1]))), constant_values=-1)
        g, nxt = Gp[:, :T], Gp[:, 1:T + 1]  # gold token at t and t + 1: [N, T]
        match = jnp.cumprod((toks[:, None, :] == g[None]).astype(jnp.int32), axis=2).astype(bool)
        match &= nxt[None] >= 0  # [B, N, T]
        first = jnp.argmax(match, axis=1)  # [B, T]: first matching gold sequence
        tok_next = nxt[first, jnp.arange(T)[None]]
        hit = jnp.any(match, axis=1)
        return jnp.where(hit[..., None], boost * jax.nn.one_hot(jnp.maximum(tok_next, 0), vocab), 0.0)

    return apply


def uniform_apply(zeros_V, toks):
    return jnp.broadcast_to(zeros_V, toks.shape + zeros_V.shape)


def full_logits(apply):
    """A Scorer's logits_at from a full-logits apply_fn."""
    return lambda params, toks, pos: jnp.take_along_axis(apply(params, toks), pos[..., None], axis=1)


def oracle_scorer(tok, gold_rows):
    return E.Scorer(full_logits(oracle_apply(tok.vocab_size)), gold_table(gold_rows), max_len=MAX_LEN,
                    token_budget=BUDGET, buckets=(MAX_LEN,))  # one shape: one compilation


def uniform_scorer(tok):
    return E.Scorer(full_logits(uniform_apply), jnp.zeros(tok.vocab_size), max_len=MAX_LEN, token_budget=BUDGET,
                    buckets=(MAX_LEN,))


# ------------------------------------------------------------------------------------------------------------
# the task table, rendering and spans


def test_suite_table():
    assert len({t.label for t in CT.OFFLINE_TASKS}) == 22
    offline = [t.label for t in CT.OFFLINE_TASKS if t.available]
    missing = [t.label for t in CT.OFFLINE_TASKS if not t.available]
    assert missing == ["bigbench_qa_wikidata", "winograd", "agi_eval_lsat_ar", "bigbench_cs_algorithms",
                       "bigbench_language_identification"]
    assert len(offline) == 17
    for t in CT.OFFLINE_TASKS:
        assert t.kind in (CT.MC, CT.SCHEMA, CT.LM)
        if t.kind == CT.LM:
            assert t.baseline == 0


@pytest.mark.parametrize("label", [t.label for t in CT.OFFLINE_TASKS if t.available and t.kind != CT.LM])
def test_baseline_matches_choice_count(label):
    """Random baseline = 100 / (the task's usual number of choices)."""
    t = TASKS[label]
    counts = [len(it.get("choices") or it["context_options"]) for it in t.load()]
    k = max(set(counts), key=counts.count)
    assert t.baseline == pytest.approx(100.0 / k)
    assert all(0 <= it["gold"] < len(it.get("choices") or it["context_options"]) for it in t.load())


def test_render_mc_golden():
    shots = [{"query": "Question: 1+1?", "choices": ["2", "3"], "gold": 0},
             {"query": "Question: 2+2?", "choices": ["3", "4"], "gold": 1}]
    item = {"query": "Question: 3+3?", "choices": ["6", "7"], "gold": 0}
    got = CT.render_prompts(CT.MC, item, "\nAnswer: ", shots)
    head = "Question: 1+1?\nAnswer: 2\n\nQuestion: 2+2?\nAnswer: 4\n\n"
    assert got == [head + "Question: 3+3?\nAnswer: 6", head + "Question: 3+3?\nAnswer: 7"]
    assert CT.render_prompts(CT.MC, item) == ["Question: 3+3? 6", "Question: 3+3? 7"]  # 0-shot, " "


def test_render_schema_golden():
    shots = [{"context_options": ["Ann lent Bo money because Ann", "Ann lent Bo money because Bo"],
              "continuation": "was rich.", "gold": 0}]
    item = {"context_options": ["The cup beat the jug because the cup", "The cup beat the jug because the jug"],
            "continuation": "was bigger.", "gold": 0}
    got = CT.render_prompts(CT.SCHEMA, item, " ", shots)
    head = "Ann lent Bo money because Ann was rich.\n\n"
    assert got == [head + "The cup beat the jug because the cup was bigger.",
                   head + "The cup beat the jug because the jug was bigger."]


def test_render_lm_golden():
    shots = [{"context": "SCIENCE: It boils at 100 C ", "continuation": "water"}]
    item = {"context": " HISTORY: First US president", "continuation": "George Washington"}
    prompt, full = CT.render_prompts(CT.LM, item, "\nAnswer: ", shots)
    assert full == "SCIENCE: It boils at 100 C\nAnswer: water\n\nHISTORY: First US president\nAnswer: George Washington"
    assert prompt == "SCIENCE: It boils at 100 C\nAnswer: water\n\nHISTORY: First US president\nAnswer:"


def test_render_real_items_golden():
    """CORE-style rendering of real offline items (0-shot), one per source format."""
    r = lambda label, i=0: CT.render_prompts(TASKS[label].kind, TASKS[label].load()[i], TASKS[label].delimiter)  # noqa
    assert r("copa") == ["The man turned on the faucet, therefore the toilet filled with water.",
                         "The man turned on the faucet, therefore water flowed from the spout."]
    assert r("winogrande") == ["Sarah was a much better surgeon than Maria so Sarah always got the easier cases.",
                               "Sarah was a much better surgeon than Maria so Maria always got the easier cases."]
    assert r("hellaswag")[3] == ("Roof shingle removal: A man is sitting on a roof. He starts pulling up roofing on "
                                 "a roof.")
    assert r("jeopardy")[1] == ("SCIENCE: At sea level at 70 degrees this travels 1,129 feet per second; it speeds up "
                                "over 1 foot per sec. for each rising degree\nAnswer: sound")
    assert r("boolq")[1].startswith("Passage: All biomass goes through")
    assert r("boolq")[1].endswith("\nQuestion: does ethanol take more energy make that produces?\nAnswer: yes")
    assert r("lambada_openai")[1].endswith("I don't care about signs")
    assert r("arc_easy")[0].startswith("Question: ") and "\nAnswer: " in r("arc_easy")[0]
    assert r("coqa")[1].endswith("\n\nQ: What color was Cotton?\nA: white")


def test_generated_tasks_deterministic_and_correct():
    for name, size in [("dyck", 1000), ("operators", 210), ("repeat_copy", 100)]:
        a = CT.generated.__wrapped__(name, size)
        assert a == CT.generated(name, size) and len(set(json.dumps(x) for x in a)) > 0.8 * size
    for it in CT.generated("dyck", 1000):  # the continuation closes exactly the open brackets
        stack = []
        for ch in it["context"].split("Input: ")[1].split() + it["continuation"].split():
            if ch in CT.PAIRS:
                stack.append(ch)
            else:
                assert CT.PAIRS[stack.pop()] == ch
        assert not stack
    it = CT.operators_item(random.Random(3))
    assert it["context"].startswith("If ") and it["context"].endswith(" =") and it["continuation"].lstrip("-").isdigit()


def test_fewshot_draw_and_shuffle():
    n, k = 50, 10
    for idx in (0, 7, 49):
        got = CT.fewshot_indices(n, idx, k)
        want = random.Random(1234 + idx).sample([i for i in range(n) if i != idx], k)  # the definition
        assert got == want and idx not in got
    assert CT.fewshot_indices(1, 0, 10) == [] and len(CT.fewshot_indices(5, 2, 10)) == 4


def test_spans_and_crop():
    # MC: span starts where the choices' tokens diverge
    rows, s, e = CT.spans(CT.MC, [[1, 5, 6, 7], [1, 5, 6, 8, 9]])
    assert s == [3, 3] and e == [4, 5]
    # a choice that is a prefix of another still scores its last token
    assert CT.spans(CT.MC, [[1, 5, 6], [1, 5, 6, 7]])[1] == [2, 3]
    # schema: span = common suffix
    assert CT.spans(CT.SCHEMA, [[1, 2, 3, 8, 9], [1, 4, 8, 9]])[1:] == ([3, 2], [5, 4])
    # LM: span = full minus prompt
    assert CT.spans(CT.LM, [[1, 2, 3], [1, 2, 3, 4, 5]]) == ([[1, 2, 3, 4, 5]], [3], [5])
    assert CT.crop([1, 2, 3, 4, 5, 6], 4, 6, 4) == ([3, 4, 5, 6], 2, 4)
    assert CT.crop([1, 2, 3, 4, 5, 6], 1, 6, 4) == ([3, 4, 5, 6], 1, 4)


def test_prepare_tokenizes_with_bos_and_crops(tok):
    t = TASKS["squad"]  # 10-shot reading comprehension: always longer than MAX_LEN with this tokenizer
    exs = CT.prepare(t, t.load(), tok, MAX_LEN, 5)
    assert len(exs) == 5
    for ex in exs:
        (row,) = ex.rows
        assert len(row) == MAX_LEN and 1 <= ex.starts[0] < ex.ends[0] == MAX_LEN
    short = CT.prepare(TASKS["copa"], TASKS["copa"].load(), tok, MAX_LEN, 3)
    assert all(r[0] == tok.bos_id for ex in short for r in ex.rows)
    # the shuffle makes max_per_task a random subset, deterministically
    again = CT.prepare(TASKS["copa"], TASKS["copa"].load(), tok, MAX_LEN, 3)
    assert [ex.rows for ex in short] == [ex.rows for ex in again]


def test_pick_choice_ties():
    assert E.pick_choice([2.0, 1.0, 1.0]) == 1
    assert E.pick_choice([1.0 + 1e-9, 1.0, 3.0]) == 0  # within tolerance: first wins
    assert E.pick_choice([1.1, 1.0]) == 1
    assert E.centered(0.25, 0.25) == 0.0 and E.centered(1.0, 0.5) == 1.0 and E.centered(0.3, 0) == 0.3


# ------------------------------------------------------------------------------------------------------------
# the scorer with stand-in models

ORACLE_TASKS = ["arc_easy", "hellaswag", "copa", "boolq", "winogrande", "lambada_openai", "squad", "jeopardy",
                "bigbench_dyck_languages", "bigbench_operators"]


@pytest.fixture(scope="module")
def oracle_setup(tok):
    """Small slices of real tasks of every type, the oracle that knows their gold rows, and the uniform model
    (each scorer compiles once: module scope, one bucket)."""
    exs = {lb: CT.prepare(TASKS[lb], TASKS[lb].load(), tok, MAX_LEN, 6) for lb in ORACLE_TASKS}
    gold = [ex.rows[ex.gold] for lb in ORACLE_TASKS for ex in exs[lb]]
    return exs, oracle_scorer(tok, gold), uniform_scorer(tok)


def test_oracle_scores_one_and_uniform_scores_baseline(tok, oracle_setup):
    """Every task type: the oracle gets accuracy 1.0 (centered 1.0); the uniform model answers the first
    choice on every MC/schema item (tie rule) and reproduces no LM continuation."""
    exs, oracle, uniform = oracle_setup
    for lb in ORACLE_TASKS:
        t = TASKS[lb]
        r = E.evaluate_core_task(oracle, tok, t, examples=exs[lb])
        assert (r["accuracy"], r["centered"], r["examples"]) == (1.0, 1.0, 6), lb
        u = E.evaluate_core_task(uniform, tok, t, examples=exs[lb])
        want = 0.0 if t.kind == CT.LM else float(np.mean([ex.gold == 0 for ex in exs[lb]]))
        assert u["accuracy"] == want, lb
    # fixed shapes: one (rows, T) bucket; the scored window is the last 64 positions, or the whole row
    assert {x[:2] for x in oracle.shapes | uniform.shapes} == {(8, MAX_LEN)}
    assert {x[2] for x in oracle.shapes | uniform.shapes} <= {64, MAX_LEN}


@pytest.mark.parametrize("label,n", [("copa", 100), ("hellaswag_zeroshot", 200), ("winogrande", 200),
                                     ("lambada_openai", 50)])
def test_uniform_model_lands_on_baseline(tok, oracle_setup, label, n):
    t = TASKS[label]
    r = E.evaluate_core_task(oracle_setup[2], tok, t, n)
    assert r["examples"] == n
    assert abs(r["accuracy"] - t.baseline / 100) < 0.08 and abs(r["centered"]) < 0.16, r


def test_evaluate_core_reports_tasks_run_and_not_run(tok, oracle_setup):
    oracle = oracle_setup[1]  # knows copa's and operators' first 6 items
    res = E.evaluate_core(oracle, tok, max_per_task=4, only=["copa", "bigbench_operators", "winograd"], bundle="off")
    assert res["core"] == 1.0 and res["core_tasks_run"] == 2 and res["core_tasks_total"] == 3
    assert list(res["not_run"]) == ["winograd"] and res["data"] == "offline"
    assert "CORE 1.0000" in E.format_core_table(res)
    with pytest.raises(ValueError):
        E.evaluate_core(oracle, tok, only=["nope"], bundle="off")


def test_bundle_loader(tmp_path, tok, oracle_setup):
    """A (miniature) DCLM eval bundle replaces the offline suite: tasks, delimiters and baselines from it."""
    d = write_eval_bundle(tmp_path / "eval_bundle", TASKS["copa"].load()[:8])
    assert CT.bundle_present(d)
    suite = CT.core_tasks("auto", d)
    assert [(t.label, t.kind, t.shots, t.baseline, t.delimiter, t.source) for t in suite] == [
        ("copa", CT.MC, 0, 50.0, " ", "bundle"), ("lambada_openai", CT.LM, 0, 0.0, "\nA: ", "bundle")]
    assert len(suite[0].load()) == 8
    assert CT.core_tasks("off", d) == CT.OFFLINE_TASKS
    res = E.evaluate_core(oracle_setup[2], tok, tasks=suite)
    assert res["data"] == "eval_bundle" and res["core_tasks_run"] == 2



def test_bundle_download(tmp_path, monkeypatch):
    """download_eval_bundle / core_tasks("download") against a loopback server ($JAXCHAT_EVAL_BUNDLE_URL): unzipped
    in place, parsed with the bundle's baselines, fetched once; a failed, corrupt or incomplete download leaves
    no bundle folder (nor temporary files) and says how to get the data instead."""
    monkeypatch.setenv("no_proxy", "*")
    monkeypatch.setenv("NO_PROXY", "*")
    good = zip_dir(write_eval_bundle(tmp_path / "src"), "eval_bundle")
    server = FileServer({"eval_bundle.zip": good, "corrupt.zip": b"<html>rate limited</html>",
                         "incomplete.zip": zip_dir(tmp_path / "src" / "eval_data", "eval_data")})
    base = tmp_path / "base"
    d = base / "eval_bundle"
    server.truncate_once.add("eval_bundle.zip")  # a short body under the full Content-Length, once
    try:
        for name, err in [("missing.zip", "HTTP Error 404"), ("corrupt.zip", "not a zip file"),
                          ("eval_bundle.zip", "truncated transfer"), ("incomplete.zip", "no core.yaml")]:
            monkeypatch.setenv("JAXCHAT_EVAL_BUNDLE_URL", server.url + name)
            with pytest.raises(RuntimeError, match=f"from {server.url + name}: .*{err}.*--core_bundle=auto"):
                CT.core_tasks("download", d)
            assert list(base.iterdir()) == []  # no half-written bundle, no temporary folder
        monkeypatch.setenv("JAXCHAT_EVAL_BUNDLE_URL", server.url + "eval_bundle.zip")
        suite = CT.core_tasks("download", d)  # the truncation was once: this download is complete
        assert server.requests["eval_bundle.zip"] == 2
        assert sorted(p.name for p in d.iterdir()) == ["core.yaml", "eval_data", "eval_meta_data.csv"]
        assert [(t.label, t.baseline, t.source, len(t.load())) for t in suite] == [
            ("copa", 50.0, "bundle", 8), ("lambada_openai", 0.0, "bundle", 1)]
        assert [p.name for p in base.iterdir()] == ["eval_bundle"]
        assert CT.core_tasks("download", d) == suite and server.requests["eval_bundle.zip"] == 2  # no refetch
    finally:
        server.close()



def test_core_presets():
    """GPU presets: CORE on the 22-task DCLM bundle, during training every 2000 steps on 500 examples per task
    (nanochat's); tiny: the offline tasks, after training only (base_eval)."""
    from jaxchat import config as C

    for preset in ("d20", "d26", "d32"):
        cfg = C.load(["base", "eval"], [f"--preset={preset}"])
        assert (cfg.eval.core_bundle, cfg.base.core_metric_every, cfg.base.core_max_per_task) == ("download", 2000, 500)
    tiny = C.load(["base", "eval"], ["--preset=tiny"])
    assert (tiny.eval.core_bundle, tiny.base.core_metric_every) == ("auto", -1)
    with pytest.raises(C.ConfigError, match="core_bundle must be auto"):
        C.load(["eval"], ["--core_bundle=yes"])


# ------------------------------------------------------------------------------------------------------------
# a tiny GPT: 1 device and the 8-device mesh give the same scores


def tiny_params(cfg, seed=0):
    """Random params in numpy (no compilation): every weight ~ N(0, 1/fan_in), so the output layers are not zero
    and the model's predictions are non-trivial."""
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda s: (rng.standard_normal(s.shape) / np.sqrt(s.shape[-2] if len(s.shape) > 1 else 1))
                        .astype(np.float32), gpt.param_shapes(cfg))


def test_core_same_on_one_device_and_mesh(tok):
    cfg = tiny_model(tok.vocab_size, max_seq_len=128)
    p = tiny_params(cfg)
    out = []
    for devices, mc in [(jax.devices()[:1], MeshConfig(fsdp=1)), (jax.devices(), MeshConfig(fsdp=8))]:
        mesh = shd.make_mesh(mc, devices=devices)
        sc = E.Scorer.for_model(jax.device_put(p, gpt.param_shardings(cfg, mesh)), cfg, mesh, batch_size=8,
                                buckets=(128,))
        res = E.evaluate_core(sc, tok, max_per_task=16, only=["copa", "winogrande", "lambada_openai"], bundle="off")
        exs = CT.prepare(TASKS["copa"], TASKS["copa"].load(), tok, 128, 16)
        mean, _ = sc.score([r for ex in exs for r in ex.rows], [s for ex in exs for s in ex.starts],
                           [e for ex in exs for e in ex.ends])
        out.append(({k: v["accuracy"] for k, v in res["tasks"].items()}, res["core"], mean))
    (acc1, core1, m1), (acc8, core8, m8) = out
    assert acc1 == acc8 and core1 == core8
    np.testing.assert_array_equal(m1, m8)


def test_windowed_logits_match_full_logits(tok):
    """The GPT scorer's shortcut (logits only in a window before each row's end; the whole row when a span is
    longer) gives the full-logits answer, whatever the padding: rows padded to a 128 bucket vs 64/128."""
    cfg = tiny_model(tok.vocab_size, max_seq_len=128)
    p = jax.tree.map(jnp.asarray, tiny_params(cfg, seed=7))
    exs = [ex for lb in ("copa", "lambada_openai", "hellaswag")
           for ex in CT.prepare(TASKS[lb], TASKS[lb].load(), tok, 128, 6)]
    rows, starts, ends = ([x for ex in exs for x in getattr(ex, f)] for f in ("rows", "starts", "ends"))
    full = E.Scorer(full_logits(lambda p, t: gpt.forward(p, t, cfg)), p, max_len=128, token_budget=1024, buckets=(128,))
    win = E.Scorer(E.model_logits_at(cfg), p, max_len=128, token_budget=1024, window=32)
    m1, x1 = full.score(rows, starts, ends)
    m2, x2 = win.score(rows, starts, ends)
    np.testing.assert_allclose(m1, m2, rtol=2e-5)
    shapes = {(t, w) for _, t, w in win.shapes}
    assert (x1 == x2).all() and any(w == 32 for _, w in shapes) and (128, 128) in shapes, shapes  # window + fallback


# ------------------------------------------------------------------------------------------------------------
# chat eval: categorical


def test_chat_mc_prompt_golden(tok):
    conv = {"messages": [{"role": "user", "content": "Multiple Choice question: 2+2?\n- 3=A\n- 4=B\n\n"
                                                     "Respond only with the letter of the correct answer."},
                         {"role": "assistant", "content": "B"}], "letters": ["A", "B"]}
    want = ("<|bos|><|user_start|>Multiple Choice question: 2+2?\n- 3=A\n- 4=B\n\nRespond only with the letter of "
            "the correct answer.<|user_end|><|assistant_start|>")
    assert tok.decode(tok.render_for_completion(conv)) == want
    ids, _ = tok.render_conversation(conv)
    assert ids[-2] == tok.encode("B")[0] and ids[-1] == tok.encode_special("<|assistant_end|>")


def test_categorical_oracle_and_uniform(tok, oracle_setup):
    task = T.CHAT_EVALS["ARC-Easy"].make()
    idx = list(range(12))
    # the oracle's table: each (left-cropped, as the scorer crops) prompt followed by its gold letter
    gold = [tok.render_for_completion(task[i])[-MAX_LEN:] + tok.encode(task[i]["messages"][-1]["content"])[:1]
            for i in idx]
    assert max(len(tok.render_for_completion(task[i])) for i in idx) > MAX_LEN  # cropping is exercised
    r = E.categorical_eval(task, tok, oracle_scorer(tok, gold), idx)
    assert (r["accuracy"], r["total"]) == (1.0, 12)
    assert r["scores"] == [1] * 12
    u = E.categorical_eval(task, tok, oracle_setup[2], idx)  # uniform: ties → first letter
    assert u["accuracy"] == np.mean([task[i]["messages"][-1]["content"] == "A" for i in idx])


def test_categorical_accuracy_helper_reuses_compilation(tok):
    """The SFT stage's in-training metric: repeated calls share one compiled function per shape."""
    cfg = tiny_model(tok.vocab_size, max_seq_len=64)
    p = jax.tree.map(jnp.asarray, tiny_params(cfg, seed=5))
    task = T.CHAT_EVALS["ARC-Easy"].make()
    a = E.categorical_accuracy(p, cfg, tok, task, max_problems=4)
    _, last = E._jitted(E.model_logits_at(cfg), None)
    n = last._cache_size()
    assert E.categorical_accuracy(p, cfg, tok, task, max_problems=4) == a and last._cache_size() == n == 1


# ------------------------------------------------------------------------------------------------------------
# chat eval: generative, with a stand-in engine


class StandInEngine:
    """generate_batch that answers from a table: prompt ids → one completion text per sample."""

    def __init__(self, tok, table: dict, default: str = ""):
        self.tok, self.table, self.default, self.calls = tok, table, default, []

    def generate_batch(self, prompts, *, num_samples=1, max_tokens=256, temperature=1.0, top_k=50, seed=42,
                       use_tools=True, keep_terminal=False):
        self.calls.append(len(prompts))
        end = [self.tok.encode_special("<|assistant_end|>")] if keep_terminal else []
        seqs = []
        for p in prompts:
            texts = self.table.get(tuple(p), [self.default] * num_samples)
            seqs += [(self.tok.encode(t) + end)[:max_tokens] for t in texts[:num_samples]]
        return seqs, [[1] * len(s) for s in seqs]


def test_gsm8k_answers_through_chat_eval(tok):
    """chat_eval's GSM8K path: the number after the last "####", commas/sign/decimals handled, missing → wrong."""
    cases = [("1,234", "1234", True), ("-5", "-5", True), ("3.50", "3.5", True), ("$1,000,000", "1000000", True),
             (None, "7", False), ("12", "13", False)]
    convs, table = [], {}
    for k, (said, gold, _) in enumerate(cases):
        conv = {"messages": [{"role": "user", "content": f"Question {k}?"},
                             {"role": "assistant", "content": f"#### {gold}"}], "answer": gold}
        convs.append(conv)
        table[tuple(tok.render_for_completion(conv))] = [f"Let me think.\n#### {said}" if said else f"It is {gold}."]
    task = ListTask(convs, eval_type="generative")
    eng = StandInEngine(tok, table)
    r = E.generative_eval(task, tok, eng, batch_size=4, max_new_tokens=64)
    assert r["correct"] == sum(c[2] for c in cases) and r["total"] == len(cases)
    assert eng.calls == [4, 4]  # fixed batch: the last one padded
    assert r["ended_rate"] == 1.0 and r["tool_call_rate"] == 0.0
    # the real GSM8K task: its gold answers, written with thousands separators
    real = GSM8K()
    table = {tuple(tok.render_for_completion(real[i])): [f"#### {int(real[i]['answer']):,}"] for i in range(3)}
    r = E.generative_eval(real, tok, StandInEngine(tok, table), indices=[0, 1, 2], batch_size=4)
    assert r["accuracy"] == 1.0


def test_humaneval_through_chat_eval(tok):
    """Canonical solution → pass, empty → fail, infinite loop → timeout without stalling; pass@1 and pass@k."""
    task = HumanEval()
    p = [task[i]["problem"] for i in range(4)]
    loop = "    while True:\n        pass\n"
    samples = [[p[0]["prompt"] + p[0]["canonical_solution"]] * 2,  # both pass
               [p[1]["canonical_solution"], ""],  # a bare body passes (the prompt is prepended); empty fails
               ["", ""],
               [p[3]["prompt"] + loop, loop]]
    table = {tuple(tok.render_for_completion(task[i])): samples[i] for i in range(4)}
    t0 = time.time()
    r = E.generative_eval(task, tok, StandInEngine(tok, table), indices=range(4), num_samples=2, batch_size=4,
                          max_new_tokens=100_000, timeout=3.0, workers=2)
    assert time.time() - t0 < 25  # two 3 s timeouts on two workers, plus six short runs
    assert r["sandbox"] == {"ok": 3, "error": 3, "timeout": 2}, r["sandbox"]
    assert r["correct"] == 2 and r["accuracy"] == 0.5 and r["pass@2"] == 0.5
    assert r["pass@1"] == pytest.approx((1 + 0.5 + 0 + 0) / 4)
    assert r["scores"] == [2, 1, 0, 0]  # every problem's correct samples: --output keeps them for paired errors
    after = {**r, "scores": [2, 2, 1, 0]}
    gain, se = E.paired_gain(r, after)
    d = np.array([0, 0.5, 0.5, 0])
    assert gain == pytest.approx(d.mean()) and se == pytest.approx(d.std(ddof=1) / 2)
    assert E.pass_at_k(5, 0, 1) == 0.0 and E.pass_at_k(5, 5, 3) == 1.0 and E.pass_at_k(4, 1, 1) == 0.25


def test_chatcore():
    res = {"ARC-Easy": {"accuracy": 0.25}, "MMLU": {"accuracy": 1.0}, "GSM8K": {"accuracy": 0.1},
           "Arithmetic": {"accuracy": 0.9}}
    value, n = E.chatcore(res)
    assert n == 3 and value == pytest.approx((0.0 + 1.0 + 0.1) / 3)
    assert E.chatcore({}) == (None, 0)
    assert T.chat_eval_name("arc_easy") == "ARC-Easy" and len(T.CHAT_EVALS["Arithmetic"].make()) == 400


# ------------------------------------------------------------------------------------------------------------
# the scripts, end to end on a tiny checkpoint


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory, tok):
    import os

    from jaxchat.checkpoint import Checkpoints

    base = tmp_path_factory.mktemp("jaxchat_base")
    old = os.environ.get("JAXCHAT_BASE_DIR")
    os.environ["JAXCHAT_BASE_DIR"] = str(base)
    tok.save(base / "tokenizer" / "tokenizer.model")
    cfg = tiny_model(tok.vocab_size, max_seq_len=64)  # one scorer bucket: one compilation per script
    ck = Checkpoints(base / "base_checkpoints" / "d2", async_save=False)
    ck.save(5, params=tiny_params(cfg, seed=3), meta={"model": dataclasses.asdict(cfg)})
    ck.close()
    yield base
    if old is None:
        os.environ.pop("JAXCHAT_BASE_DIR", None)
    else:
        os.environ["JAXCHAT_BASE_DIR"] = old


def test_base_eval_script(tiny_base):
    from scripts import base_eval

    res = base_eval.main(["--max_per_task=2"])
    out = json.loads((tiny_base / "base_eval" / "base_d2_step5.json").read_text())
    assert out["core_tasks_run"] == 17 and len(out["not_run"]) == 5 and out["tasks"]["copa"]["examples"] == 2
    assert out["core"] == pytest.approx(res["core"])
    section = json.loads((tiny_base / "report" / "base-model-evaluation.json").read_text())
    assert section["core_tasks_run"] == 17 and "not_run" in section


def test_chat_eval_script(tiny_base):
    """A categorical task and a generative one through the real engine (HumanEval's sandbox path is covered
    with the stand-in engine above)."""
    from scripts import chat_eval

    res = chat_eval.main(["-i", "base", "-a", "ARC-Easy|Arithmetic", "-x", "2", "-m", "4"])
    out = json.loads((tiny_base / "chat_eval" / "base_d2_step5.json").read_text())
    assert set(out["tasks"]) == {"ARC-Easy", "Arithmetic"} and out["chatcore_tasks"] == res["chatcore_tasks"] == 1
    assert out["tasks"]["ARC-Easy"]["total"] == out["tasks"]["Arithmetic"]["total"] == 2
    a = out["tasks"]["Arithmetic"]
    assert a["ended_rate"] == 0.0 and 0 <= a["accuracy"] <= 1 and a["split"] == T.CHAT_EVALS["Arithmetic"].split
    assert (tiny_base / "report" / "chat-evaluation-base.json").exists()
