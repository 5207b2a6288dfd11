"""Tests for jaxchat.tasks: record counts, conversation well-formedness, GSM8K tool-call conversion, answer
extraction, synthetic tasks (determinism, split disjointness, correctness), slicing/mixtures, hub adapters
(on local parquet files), and the leakage test (no evaluation question in any offline train/val mixture).
Loaded datasets are cached per process by the loaders, so the whole file runs in well under a minute."""
from __future__ import annotations

import random
import re
import subprocess
import sys
import types

import pytest

from jaxchat import sandbox
from jaxchat import tasks as T
from jaxchat.tasks import common, gsm8k
from jaxchat.tasks.common import PART_TYPES, normalize_text

N_SAMPLE = 40  # conversations sampled per task for the well-formedness check


def question_text(conversation: dict) -> str:
    """Text of the first user message (what leakage checks compare)."""
    c = next(m["content"] for m in conversation["messages"] if m["role"] == "user")
    return c if isinstance(c, str) else "".join(p["text"] for p in c if p["type"] == "text")


def validate_conversation(conv: dict) -> None:
    """AssertionError unless `conv` is well formed: optional leading system message, then user/assistant strictly
    alternating, starting with user and ending with assistant; contents are non-empty strings or part lists (parts
    only in assistant messages); multiple-choice conversations have a gold letter among `letters`."""
    msgs = conv["messages"]
    assert isinstance(msgs, list) and msgs, "no messages"
    if msgs[0]["role"] == "system":
        assert isinstance(msgs[0]["content"], str)
        msgs = msgs[1:]
    assert len(msgs) >= 2 and len(msgs) % 2 == 0, f"odd or short conversation: {len(msgs)} messages"
    for i, m in enumerate(msgs):
        want = "user" if i % 2 == 0 else "assistant"
        assert m["role"] == want, f"message {i}: role {m['role']!r}, expected {want!r}"
        c = m["content"]
        if isinstance(c, str):
            assert c.strip(), f"message {i}: empty content"
        else:
            assert want == "assistant", "part lists only in assistant messages"
            assert isinstance(c, list) and c, f"message {i}: bad content"
            for p in c:
                assert p["type"] in PART_TYPES and isinstance(p["text"], str), p
    if "letters" in conv:
        letters = conv["letters"]
        assert len(set(letters)) == len(letters)
        assert msgs[-1]["content"] in letters, (msgs[-1]["content"], letters)
        for letter in letters:
            assert f"={letter}\n" in msgs[0]["content"], (letter, msgs[0]["content"])


def sample(task, n=N_SAMPLE, seed=0):
    """First, last and some random items of a task."""
    idx = {0, len(task) - 1} | set(random.Random(seed).sample(range(len(task)), min(n, len(task))))
    return [task[i] for i in sorted(idx)]


# ------------------------------------------------------------------------------------------------------------
# record counts


@pytest.mark.parametrize(
    "make,n",
    [
        (lambda: T.ARC("ARC-Easy", "validation"), 570),
        (lambda: T.ARC("ARC-Easy", "test"), 2376),
        (lambda: T.ARC("ARC-Challenge", "validation"), 299),
        (lambda: T.ARC("ARC-Challenge", "test"), 1172),
        (lambda: T.MMLU("dev"), 285),
        (lambda: T.MMLU("validation"), 1531),
        (lambda: T.MMLU("test"), 14042),
        (lambda: T.GSM8K("test"), 1319),
        (lambda: T.HumanEval(), 164),
    ],
)
def test_benchmark_counts(make, n):
    assert len(make()) == n


def test_decontaminated_and_chat_counts():
    # training-side splits minus questions that also occur in an eval set
    ex = T.eval_questions()
    assert len(T.ARC("ARC-Easy", "validation", exclude=ex)) == 570
    assert len(T.ARC("ARC-Challenge", "validation", exclude=ex)) == 297
    assert len(T.MMLU("dev", exclude=ex)) == 279
    assert len(T.MMLU("validation", exclude=ex)) == 1492
    from jaxchat.tasks.chat import load_chatterbot, load_chitchat

    assert len(load_chatterbot()) == 2025  # 2,026 English entries, one bare string without an answer
    assert len(load_chitchat()) == 4017  # 7,168 chats minus 3,150 single-turn ones and 1 with an empty turn
    assert [len(T.ChitChat(s, exclude=ex)) for s in ("train", "val")] == [3928, 89]
    assert [len(T.ChatterBot(s, exclude=ex)) for s in ("train", "val")] == [2004, 18]
    assert len(T.MMLU("test", subset="anatomy")) == 135
    assert len(T.mmlu.subjects()) == 57


# ------------------------------------------------------------------------------------------------------------
# well-formed conversations

ALL_TASKS = {
    "arc_easy_val": lambda: T.ARC("ARC-Easy", "validation"),
    "arc_easy_test": lambda: T.ARC("ARC-Easy", "test"),
    "arc_challenge_val": lambda: T.ARC("ARC-Challenge", "validation"),
    "arc_challenge_test": lambda: T.ARC("ARC-Challenge", "test"),
    "mmlu_dev": lambda: T.MMLU("dev"),
    "mmlu_val": lambda: T.MMLU("validation"),
    "mmlu_test": lambda: T.MMLU("test"),
    "gsm8k": lambda: T.GSM8K(),
    "humaneval": lambda: T.HumanEval(),
    "chitchat_train": lambda: T.ChitChat("train"),
    "chitchat_val": lambda: T.ChitChat("val"),
    "chatterbot_train": lambda: T.ChatterBot("train"),
    "chatterbot_val": lambda: T.ChatterBot("val"),
    **{f"{name}_{split}": (lambda c=cls, s=split: c(s, size=500))
       for name, cls in [("identity", T.Identity), ("arithmetic", T.Arithmetic),
                         ("simple_spelling", T.SimpleSpelling), ("spelling_bee", T.SpellingBee)]
       for split in ("train", "val", "test")},
}


@pytest.mark.parametrize("name", sorted(ALL_TASKS))
def test_conversations_well_formed(name):
    task = ALL_TASKS[name]()
    assert len(task) > 0
    for conv in sample(task):
        validate_conversation(conv)
        if task.eval_type == "categorical":
            letters = conv["letters"]
            assert letters == list("ABCDE"[: len(letters)])
            prompt = conv["messages"][0]["content"]
            assert prompt.startswith("Multiple Choice question: ")
            assert prompt.endswith("\n\nRespond only with the letter of the correct answer.")
            assert prompt.count("\n- ") == len(letters)
            assert task.evaluate(conv, " " + conv["messages"][-1]["content"] + "\n")
            wrong = next(x for x in letters if x != conv["messages"][-1]["content"])
            assert not task.evaluate(conv, wrong)


def test_render_mc_format():
    s = common.render_mc("What is 2+2?", ["A", "B"], ["3", "4"])
    want = "Multiple Choice question: What is 2+2?\n- 3=A\n- 4=B\n\nRespond only with the letter of the correct answer."
    assert s == want


def test_arc_letters_normalised():
    """ARC items labelled 1-4 (or with 3/5 choices) are lettered A, B, C, ... with the gold index preserved (the
    hub's labels "1"-"3": test_hub_adapters)."""
    sizes = {len(c["letters"]) for c in T.ARC("ARC-Easy", "validation")}
    assert sizes == {3, 4, 5}


def test_validate_conversation_rejects_bad():
    good = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
    validate_conversation(good)
    validate_conversation({"messages": [{"role": "system", "content": "be nice"}] + good["messages"]})
    for bad in [
        {"messages": good["messages"][:1]},
        {"messages": good["messages"][::-1]},
        {"messages": good["messages"] + [{"role": "user", "content": "more"}]},
        {"messages": [good["messages"][0], {"role": "assistant", "content": [{"type": "code", "text": "x"}]}]},
        {"messages": good["messages"], "letters": ["A", "B"]},
    ]:
        with pytest.raises(AssertionError):
            validate_conversation(bad)


# ------------------------------------------------------------------------------------------------------------
# GSM8K conversion and answer extraction


def parts_to_answer(parts: list[dict]) -> str:
    """Inverse of `gsm8k.answer_parts` (re-inserts the `<<expr=result>>` annotations)."""
    wrap = {"python": "<<{}=", "python_output": "{}>>", "text": "{}"}
    return "".join(wrap[p["type"]].format(p["text"]) for p in parts)


def test_gsm8k_parts_reproduce_answer():
    task = T.GSM8K()
    n_calls = 0
    for i, row in enumerate(task.rows):
        conv = task[i]
        parts = conv["messages"][1]["content"]
        assert parts_to_answer(parts) == row["answer"]
        exprs = [m.rsplit("=", 1)[0] for m in re.findall(r"<<([^<>]*)>>", row["answer"])]
        assert [p["text"] for p in parts if p["type"] == "python"] == exprs
        outs = [m.rsplit("=", 1)[1] for m in re.findall(r"<<([^<>]*)>>", row["answer"])]
        assert [p["text"] for p in parts if p["type"] == "python_output"] == outs
        types_ = [p["type"] for p in parts]
        assert all(b == "python_output" for a, b in zip(types_, types_[1:]) if a == "python")
        assert parts[-1]["type"] == "text" and "####" in parts[-1]["text"]
        assert conv["answer"] == row["answer"].split("####")[-1].strip().replace(",", "")
        assert task.evaluate(conv, f"so the answer is\n#### {conv['answer']}")
        n_calls += len(exprs)
    assert n_calls == 4282  # calculator annotations in the test split


def test_gsm8k_example_conversion():
    parts = gsm8k.answer_parts("It takes 2/2=<<2/2=1>>1 bolt\nTotal 2+1=<<2+1=3>>3\n#### 3")
    assert parts == [
        {"type": "text", "text": "It takes 2/2="},
        {"type": "python", "text": "2/2"},
        {"type": "python_output", "text": "1"},
        {"type": "text", "text": "1 bolt\nTotal 2+1="},
        {"type": "python", "text": "2+1"},
        {"type": "python_output", "text": "3"},
        {"type": "text", "text": "3\n#### 3"},
    ]


@pytest.mark.parametrize(
    "text,want",
    [
        ("#### 18", "18"),
        ("blah\n#### 1,234", "1234"),
        ("#### -3", "-3"),
        ("#### 0.5", "0.5"),
        ("#### $12", "12"),
        ("####12.", "12"),
        ("#### 1,450,000 dollars", "1450000"),
        ("#### 3 then #### 4", "4"),
        ("first #### 7\nsecond #### -2.25", "-2.25"),
        ("the answer is 12", None),
        ("####", None),
        ("#### none", None),
        ("", None),
    ],
)
def test_extract_answer(text, want):
    assert common.extract_answer(text) == want


def test_generative_evaluate_compares_numbers():
    task = T.ListTask([], eval_type="generative")
    conv = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "#### 1,200"}]}
    assert task.evaluate(conv, "#### 1200.00")  # gold: the reference's "####" number
    assert not task.evaluate(conv, "1200")  # no ####
    assert task.evaluate({**conv, "answer": "12"}, "#### 12.0") and task.evaluate({**conv, "answer": "0"}, "#### -0")
    assert not task.evaluate({**conv, "answer": "12"}, "#### 13")  # the `answer` key wins over the reference
    assert task.evaluate({**conv, "answer": "n/a"}, "#### 1,200") is False  # a non-numeric gold: text comparison


# ------------------------------------------------------------------------------------------------------------
# HumanEval (the sandbox itself is tested in test_sandbox.py)


def test_humaneval_evaluate_uses_its_checker():
    calls = []

    def fake_check(problem, completion):
        calls.append((problem["task_id"], completion))
        return types.SimpleNamespace(ok=completion == "good")

    task = T.humaneval.HumanEval(check=fake_check)
    conv = task[0]
    assert conv["messages"][0]["content"] == conv["problem"]["prompt"]
    assert conv["messages"][1]["content"].startswith(conv["problem"]["prompt"])
    assert task.evaluate(conv, "good") and not task.evaluate(conv, "bad")
    assert task.reward(conv, "good") == 1.0
    assert calls[0] == ("HumanEval/0", "good")
    assert T.HumanEval().check is sandbox.check_humaneval  # the package's HumanEval runs the sandbox
    with pytest.raises(ValueError, match="checker"):
        T.humaneval.HumanEval().evaluate(conv, "good")


# ------------------------------------------------------------------------------------------------------------
# chat corpora


def test_chat_corpora_mapping():
    conv = T.ChitChat("train", exclude=T.eval_questions())[0]
    assert conv["messages"][0]["content"] == "Hello\nHow are you doing today?"  # a turn's messages joined
    assert conv["messages"][-1]["role"] == "assistant"
    train_ids = {r[0] for r in T.ChitChat("train").rows}
    assert not train_ids & {r[0] for r in T.ChitChat("val").rows}
    first = lambda t: {normalize_text(r[1][0]) for r in t.rows}  # noqa: E731
    assert not first(T.ChatterBot("train")) & first(T.ChatterBot("val"))


# ------------------------------------------------------------------------------------------------------------
# synthetic tasks

SYNTHETIC = [T.Identity, T.Arithmetic, T.SimpleSpelling, T.SpellingBee]


@pytest.mark.parametrize("cls", SYNTHETIC, ids=lambda c: c.__name__)
def test_synthetic_deterministic(cls):
    a, b = cls("train", size=1000), cls("train", size=1000)
    for i in (0, 1, 17, 999):
        assert a[i] == b[i]
    assert a[5] != a[6]
    sliced = cls("train", size=1000, start=10, step=7)
    assert sliced[3] == a[10 + 3 * 7]
    assert cls("test", size=10)[0] != a[0]
    assert cls("train", size=1000, seed=1)[0] != a[0]


@pytest.mark.parametrize("cls", SYNTHETIC, ids=lambda c: c.__name__)
def test_synthetic_splits_disjoint(cls):
    n = 3000 if cls is not T.Identity else 2000
    keys = {s: {normalize_text(question_text(c)) for c in cls(s, size=n if s == "train" else 500)}
            for s in ("train", "val", "test")}
    assert not keys["train"] & keys["test"]
    assert not keys["train"] & keys["val"]
    assert not keys["val"] & keys["test"]
    assert len(keys["test"]) > (50 if cls is T.Identity else 300)  # varied


def _eval_python(expr: str) -> int:
    assert re.fullmatch(r"[0-9+\-*/() ]+", expr), expr
    return eval(expr, {"__builtins__": {}}, {})  # noqa: S307 (digits and operators only)


def test_arithmetic_correct():
    task = T.Arithmetic("train", size=2000)
    shapes, exprs = set(), []
    for conv in task:
        parts = conv["messages"][1]["content"]
        assert [p["type"] for p in parts] == ["text", "python", "python_output", "text"]
        expr, out = parts[1]["text"], parts[2]["text"]
        value = _eval_python(expr)  # Python's own integer arithmetic ("//" = exact division here)
        assert isinstance(value, int) and str(value) == out == conv["answer"]
        assert _eval_python(expr.replace("//", "/")) == value  # divisions are exact
        assert parts[3]["text"].endswith(f"#### {value}")
        assert parts[0]["text"].endswith("\n") and parts[3]["text"].startswith("\n")
        assert all(1 <= len(n) <= 4 for n in re.findall(r"\d+", expr))
        assert task.evaluate(conv, "".join(p["text"] for p in parts))
        assert not task.evaluate(conv, f"#### {value + 1}")
        shapes.add(re.sub(r"\d+", "n", conv["messages"][0]["content"]))
        exprs.append(expr)
    assert len(shapes) > 100  # varied wording (bare expressions and word problems)
    assert any("(" in e for e in exprs) and any("//" in e for e in exprs) and any("*" in e for e in exprs)
    assert any("apples" in s for s in shapes) and any(s.startswith("What is n") for s in shapes)
    assert task.reward(task[0], "#### " + task[0]["answer"]) == 1.0


def test_simple_spelling_correct():
    task = T.SimpleSpelling("train", size=300)
    for conv in task:
        word = conv["word"]
        assert re.fullmatch(r"[a-z]{3,12}", word)
        assert conv["messages"][0]["content"] == f"Spell the word: {word}"
        spelled = conv["messages"][1]["content"]
        assert spelled == word + ":" + ",".join(word)
        assert task.evaluate(conv, spelled) and not task.evaluate(conv, spelled[:-2])


def test_spelling_bee_correct():
    task = T.SpellingBee("train", size=400)
    in_word = 0
    for conv in task:
        word, letter = conv["word"], conv["letter"]
        parts = conv["messages"][1]["content"]
        assert [p["type"] for p in parts] == ["text", "python", "python_output", "text"]
        assert parts[1]["text"] == f"'{word}'.count('{letter}')"
        assert parts[2]["text"] == str(word.count(letter)) == conv["answer"]
        text = parts[0]["text"]
        assert f"{word}:{','.join(word)}" in text
        hits = re.findall(r"^(\d+):([a-z]) hit! count=(\d+)$", text, flags=re.M)
        assert [int(c) for _, _, c in hits] == list(range(1, word.count(letter) + 1))
        assert all(word[int(i) - 1] == ch == letter for i, ch, _ in hits)
        assert parts[3]["text"].endswith(f"#### {word.count(letter)}")
        user = conv["messages"][0]["content"]
        assert word in user and letter in user
        assert task.evaluate(conv, "".join(p["text"] for p in parts))
        in_word += letter in word
    assert 0.8 < in_word / len(task) < 0.99  # letter from the word with p=0.9


def test_identity_content():
    task = T.Identity("train", size=300)
    n_multi = 0
    for conv in task:
        msgs = conv["messages"]
        for user, reply in zip(msgs[::2], msgs[1::2]):
            if any(re.search(rf"\b{re.escape(o)}\b", user["content"], re.I) for o in T.identity.OTHERS):
                assert re.match(r"(\w+! )?No\b", reply["content"]), reply
        n_multi += len(conv["messages"]) > 2
    assert n_multi > 100
    text = " ".join(m["content"] for c in task for m in c["messages"])
    for fact in ("jaxchat", "JAX", "Flax", "nanochat", "calculator"):
        assert fact in text
    assert any(c["messages"][0]["content"].startswith(("Hola", "Bonjour", "Hallo", "Olá", "¿", "Comment", "Wie"))
               for c in task)


# ------------------------------------------------------------------------------------------------------------
# slicing, sequences, mixtures


def _toy(n, tag):
    convs = [{"messages": [{"role": "user", "content": f"{tag}{i}"}, {"role": "assistant", "content": "ok"}]}
             for i in range(n)]
    return T.ListTask(convs)


def _tag(c):
    return c["messages"][0]["content"]


def test_slicing():
    t = T.ListTask(_toy(10, "x").rows, start=2, stop=9, step=3)
    assert len(t) == 3 and [_tag(c) for c in t] == ["x2", "x5", "x8"]
    assert _tag(t[-1]) == "x8" and _tag(t[-3]) == "x2"
    with pytest.raises(IndexError):
        t[3]
    with pytest.raises(IndexError):
        t[-4]
    with pytest.raises(TypeError):
        t["0"]
    assert len(T.ListTask(_toy(5, "x").rows, stop=100)) == 5  # stop is clamped
    assert len(T.ListTask(_toy(5, "x").rows, start=7)) == 0
    with pytest.raises(ValueError):
        T.ListTask([], step=0)
    assert len(T.MMLU("test", start=100, stop=200)) == 100


def test_mixture():
    a, b = _toy(30, "a"), _toy(10, "b")
    mix = T.TaskMixture([a, b, b], seed=3)
    tags = [_tag(c) for c in mix]
    assert len(mix) == 50
    assert sorted(tags) == sorted([f"a{i}" for i in range(30)] + [f"b{i}" for i in range(10)] * 2)  # b ×2
    assert tags == [_tag(c) for c in T.TaskMixture([a, b, b], seed=3)]  # deterministic
    assert tags != [_tag(c) for c in T.TaskMixture([a, b, b], seed=4)]
    assert tags[:10] != [f"a{i}" for i in range(10)]  # shuffled
    assert [_tag(c) for c in T.TaskMixture([a, b, b], seed=3, start=5, stop=20, step=5)] == tags[5:20:5]
    task, j = mix.source(0)
    assert _tag(task[j]) == tags[0]
    assert len(T.TaskMixture([])) == 0


def test_offline_mixture_sizes():
    mid, sft = T.mid_train_mixture("train"), T.sft_mixture("train")
    assert len(mid) == 24142 and len(sft) == 5246
    assert len(T.mid_train_mixture("val")) == len(T.sft_mixture("val")) == 1107
    # Identity is listed twice in midtraining: every identity conversation appears exactly twice
    ident = [j for k in range(len(mid)) for t, j in [mid.source(k)] if isinstance(t, T.Identity)]
    assert len(ident) == 2 * 1000 and len(set(ident)) == 1000
    assert [_tag(mid[i]) for i in range(5)] == [_tag(T.mid_train_mixture("train")[i]) for i in range(5)]
    with pytest.raises(ValueError):
        T.sft_mixture("test")


def test_arithmetic_repeat_keeps_mid_and_sft_problems_apart():
    """Oversampled calculator arithmetic: midtraining's items never reach SFT's, and a repeat that would make
    them overlap is refused."""
    mid, sft = T.mid_train_mixture("train", arithmetic_repeat=2), T.sft_mixture("train", arithmetic_repeat=2)
    n_mid, n_sft = T.MID_ARITHMETIC, T.SFT_ARITHMETIC
    assert len(mid) == 24142 + n_mid and len(sft) == 5246 + n_sft
    (a_mid,) = [t for t in mid.tasks if isinstance(t, T.Arithmetic)]
    (a_sft,) = [t for t in sft.tasks if isinstance(t, T.Arithmetic)]
    assert a_mid.start + len(a_mid) <= T.SFT_ARITHMETIC_START <= a_sft.start and len(a_sft) == 2 * n_sft
    with pytest.raises(ValueError, match="arithmetic_repeat"):
        T.mid_train_mixture("train", arithmetic_repeat=T.SFT_ARITHMETIC_START // n_mid + 1)


def test_chat_evals_and_rl_tasks():
    sizes = {"ARC-Easy": 2376, "ARC-Challenge": 1172, "MMLU": 14042, "GSM8K": 1319, "HumanEval": 164,
             "SpellingBee": 256, "Arithmetic": 400}
    assert {k: len(e.make()) for k, e in T.CHAT_EVALS.items()} == sizes
    assert all(e.make().split == "test" for e in T.CHAT_EVALS.values())
    assert set(T.CHATCORE_BASELINES) == set(sizes) - {"Arithmetic"}
    assert T.chat_eval_name("arc_easy") == "ARC-Easy" and T.chat_eval_name("spellingbee") == "SpellingBee"
    with pytest.raises(KeyError):
        T.chat_eval_name("nope")
    train, ev = T.rl_tasks(online=False)
    assert train.split == "train" and ev.split == "test" and ev.eval_type == "generative"


def test_no_jax_import():
    code = "import sys, jaxchat.tasks; assert 'jax' not in sys.modules, 'jax imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


# ------------------------------------------------------------------------------------------------------------
# THE LEAKAGE TEST


def _keys(conv):
    keys = {normalize_text(question_text(conv))}
    if "question" in conv:  # MC stems, so the same question with reordered choices still counts
        keys.add(normalize_text(conv["question"]))
    return keys


def test_no_eval_item_in_any_offline_train_or_val_mixture():
    eval_sets = {
        "ARC-Easy test": T.ARC("ARC-Easy", "test"), "ARC-Challenge test": T.ARC("ARC-Challenge", "test"),
        "MMLU test": T.MMLU("test"), "GSM8K test": T.GSM8K(), "HumanEval": T.HumanEval(),
        "Arithmetic test": T.Arithmetic("test", size=3000), "SpellingBee test": T.SpellingBee("test", size=1000),
        "SimpleSpelling test": T.SimpleSpelling("test", size=1000), "Identity test": T.Identity("test", size=1000),
    }
    eval_keys: dict[str, str] = {}
    for name, task in eval_sets.items():
        for conv in task:
            for k in _keys(conv):
                eval_keys.setdefault(k, name)
    assert len(eval_keys) > 20_000
    mixtures = {"mid train": T.mid_train_mixture("train"), "mid val": T.mid_train_mixture("val"),
                "sft train": T.sft_mixture("train"), "sft val": T.sft_mixture("val")}
    leaks = []
    for mname, mix in mixtures.items():
        for task in mix.tasks:  # every item of every component (the mixture is a permutation of these)
            for conv in task:
                for k in _keys(conv) & eval_keys.keys():
                    leaks.append((mname, repr(task), eval_keys[k], k[:80]))
    assert not leaks, f"{len(leaks)} eval questions in training/val mixtures, e.g. {leaks[:5]}"


def test_synthetic_partition_keys_disjoint():
    """Stronger than text equality: no test computation (expression) or test word appears in train."""
    from jaxchat.tasks.spelling import words_for_split

    train_w, test_w, val_w = (set(words_for_split(s)) for s in ("train", "test", "val"))
    assert not train_w & test_w and not train_w & val_w and not val_w & test_w
    assert 0.75 < len(train_w) / (len(train_w) + len(test_w) + len(val_w)) < 0.85
    train_exprs = {c["expression"] for c in T.Arithmetic("train", size=5000)}
    test_exprs = {c["expression"] for c in T.Arithmetic("test", size=1000)}
    assert not train_exprs & test_exprs
    assert {c["word"] for c in T.SpellingBee("test", size=300)} <= test_w


# ------------------------------------------------------------------------------------------------------------
# hub adapters on local parquet files (no network here)


@pytest.fixture
def fake_hub(tmp_path, monkeypatch):
    import pyarrow as pa
    import pyarrow.parquet as pq

    tables = {
        "data/train": pa.Table.from_pylist([
            {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                          {"role": "assistant", "content": "Hello!"}]},
            {"messages": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"},
                          {"role": "user", "content": "thanks"}, {"role": "assistant", "content": "welcome"}]},
        ]),
        "all/auxiliary_train": pa.Table.from_pylist([
            {"train": {"question": "Sky color?", "subject": "", "choices": ["red", "blue", "green", "pink"],
                       "answer": 1}}]),
        "main/train": pa.Table.from_pylist([
            {"question": "Tom has 2 bags of 3 apples. How many?", "answer": "2*3=<<2*3=6>>6 apples\n#### 6"}]),
        "ARC-Easy/train": pa.Table.from_pylist([
            {"id": "x1", "question": "Which is a mammal?",
             "choices": {"text": ["shark", "whale", "trout"], "label": ["1", "2", "3"]}, "answerKey": "2"}]),
    }

    tables["data/test"] = tables["data/train"]
    tables["ARC-Challenge/train"] = tables["ARC-Easy/train"]
    seen = []

    def fake_download(repo_id, config_dir, split):
        seen.append((repo_id, config_dir, split))
        path = tmp_path / f"{config_dir.replace('/', '_')}_{split}.parquet"
        pq.write_table(tables[f"{config_dir}/{split}"], path)
        return [path]

    monkeypatch.setattr(common, "download_parquet", fake_download)
    caches = (common.hub_table, T.arc.load_arc, T.mmlu.load_mmlu, gsm8k.load_gsm8k)
    for f in caches:
        f.cache_clear()
    yield seen
    for f in caches:
        f.cache_clear()


def test_hub_adapters(fake_hub):
    st = T.SmolTalk("train")
    convs = sorted((st[i] for i in range(len(st))), key=lambda c: len(c["messages"]))
    assert convs[0]["messages"][0] == {"role": "system", "content": "Be brief."}
    assert [m["role"] for m in convs[1]["messages"]] == ["user", "assistant", "user", "assistant"]
    aux = T.MMLU("auxiliary_train")[0]
    assert aux["messages"][1]["content"] == "B" and aux["letters"] == ["A", "B", "C", "D"]
    g = T.GSM8K("train")
    conv = g[0]
    assert conv["answer"] == "6" and [p["type"] for p in conv["messages"][1]["content"]] == [
        "text", "python", "python_output", "text"]
    assert g.evaluate(conv, "#### 6")
    arc = T.ARC("ARC-Easy", "train")[0]
    assert arc["letters"] == ["A", "B", "C"] and arc["messages"][1]["content"] == "B"
    for c in convs + [aux, conv, arc]:
        validate_conversation(c)


def test_hub_missing_extra_and_offline(monkeypatch):
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # import fails as if not installed
    with pytest.raises(ImportError, match=r"pip install -e '\.\[hub\]'"):
        common.download_parquet("openai/gsm8k", "main", "train")

    def offline(*a, **k):
        raise OSError("network is unreachable")

    monkeypatch.setitem(sys.modules, "huggingface_hub", types.SimpleNamespace(snapshot_download=offline))
    with pytest.raises(RuntimeError, match="online=False"):
        common.download_parquet("openai/gsm8k", "main", "train")
    with pytest.raises(RuntimeError, match="could not download"):
        T.mid_train_mixture("train", online=True)


def test_online_mixtures_build(fake_hub):
    """nanochat's V1 mixtures (on the tiny fake hub tables): components and synthetic sizes."""
    mid = T.mid_train_mixture("train", online=True)
    assert len(mid) == 2 + 1 + 1 + 2 * 1000 + 200_000 + 80_000
    sft = T.sft_mixture("train", online=True)
    assert len(sft) == 1 + 1 + 1 + 2 + 1000 + 300 + 300
    assert len(T.mid_train_mixture("val", online=True)) == 2 + 279 + 1492 + 100 + 200 + 200
    assert len(T.sft_mixture("val", online=True)) == 2
    assert {r for r, _, _ in fake_hub} == {"HuggingFaceTB/smol-smoltalk", "cais/mmlu", "openai/gsm8k",
                                           "allenai/ai2_arc"}
    for i in range(0, len(sft), 97):
        validate_conversation(sft[i])
    train, ev = T.rl_tasks(online=True)
    assert isinstance(train, T.GSM8K) and (train.split, ev.split) == ("train", "test")


def test_tool_outputs_match_the_calculator():
    """The python_output parts of the synthetic tasks are exactly what the engine's calculator tool prints."""
    from jaxchat.calculator import calculator

    for task in (T.Arithmetic("train", size=300), T.Arithmetic("test", size=100), T.SpellingBee("train", size=100)):
        for conv in task:
            parts = conv["messages"][1]["content"]
            calls = [(a["text"], b["text"]) for a, b in zip(parts, parts[1:]) if a["type"] == "python"]
            assert calls and all(calculator(expr) == out for expr, out in calls), calls
