"""Tokenizer compression report: bytes per token on several kinds of text (nanochat's tok_eval).

    python -m scripts.tok_eval [--tokenizer=DIR_OR_FILE] [--source=embedded]

Kinds: prose (chitchat conversations; Python docs when the Debian python3-doc sources are installed), code
(CPython stdlib files), chat (a rendered conversation with a tool call; specials count as tokens, 0 bytes),
numbers (arithmetic and long numbers), multilingual (a fixed sample), and the first ~1M chars of the
embedded corpus' train and val splits when `jaxchat.corpus` is available. Prose and code samples are drawn
from sources the embedded corpus also trains on, so they are in-sample; the `val` row is held out.
With `tiktoken` importable and its GPT-2 / cl100k files cached, GPT-2 and GPT-4 are compared too
(otherwise the comparison is reported as skipped). Writes base_dir()/tokenizer/tok_eval.json (or --out).
"""
from __future__ import annotations

import argparse
import glob
import json

from jaxchat.common import cli, log_section
import os
import random
import sysconfig

CODE_FILES = ["textwrap.py", "heapq.py", "json/decoder.py", "bisect.py"]

CHAT_SAMPLE = {
    "messages": [
        {"role": "system", "content": "You are a helpful assistant. Be concise."},
        {"role": "user", "content": "Hi! Can you tell me what 1234 times 5678 is, and why the sky is blue?"},
        {"role": "assistant", "content": [
            {"type": "text", "text": "Sure. Let me compute the product first.\n"},
            {"type": "python", "text": "1234 * 5678"},
            {"type": "python_output", "text": "7006652"},
            {"type": "text", "text": "1234 times 5678 is 7,006,652. The sky looks blue because air molecules "
                                     "scatter short (blue) wavelengths of sunlight much more strongly than long "
                                     "(red) ones; this is called Rayleigh scattering."},
        ]},
        {"role": "user", "content": "Thanks! And in one sentence, what is a tokenizer?"},
        {"role": "assistant", "content": "A tokenizer turns text into a sequence of integer ids (and back) so "
                                         "that a language model can read and write it."},
    ]
}

MULTILINGUAL = (
    "Der schnelle braune Fuchs springt über den faulen Hund. Überall gibt es Bäume und Straßen.\n"
    "Le cœur a ses raisons que la raison ne connaît point. Ça va très bien, merci !\n"
    "El niño pequeño comió una manzana en el jardín mañana por la mañana.\n"
    "Привет, как дела? Сегодня хорошая погода.\n"
    "안녕하세요, 오늘 날씨가 정말 좋네요. 저는 한국어를 조금 할 수 있어요.\n"
    "今日はいい天気ですね。東京へ行きましょう。\n"
    "我们今天去公园散步吧。\n"
    "Emoji: 🙂 👍 🎉 👩‍💻 🇫🇷\n"
)


def _prose_chitchat(max_chars: int = 20_000) -> str | None:
    try:
        import chitchat_dataset
    except ImportError:
        return None
    data = chitchat_dataset.Dataset()
    out, n = [], 0
    for key in sorted(data)[-200:]:  # a fixed slice
        for turn in data[key]["messages"]:
            line = " ".join(u["text"] for u in turn)
            out.append(line)
            n += len(line) + 1
        out.append("")
        if n >= max_chars:
            break
    return "\n".join(out)


def _prose_pydocs(max_chars: int = 20_000) -> str | None:
    files = sorted(glob.glob("/usr/share/doc/python3*/html/_sources/tutorial/*.txt"))
    if not files:
        return None
    return "".join(open(f, encoding="utf-8", errors="replace").read() for f in files[:3])[:max_chars]


def _code() -> str:
    lib = sysconfig.get_paths()["stdlib"]
    parts = []
    for rel in CODE_FILES:
        p = os.path.join(lib, rel)
        if os.path.exists(p):
            parts.append(open(p, encoding="utf-8").read())
    return "\n".join(parts)


def _numbers(seed: int = 0) -> str:
    rng = random.Random(seed)
    lines = []
    for _ in range(100):
        a, b = rng.randint(1, 99_999), rng.randint(1, 9_999)
        op = rng.choice("+-*")
        lines.append(f"{a} {op} {b} = {eval(f'{a}{op}{b}')}")
    lines.append("pi = 3.14159265358979323846264338327950288419716939937510")
    lines.append("Population in 2023: 8,045,311,447; GDP $105,435,540,000,000; year 1969, 2001, 2024.")
    return "\n".join(lines) + "\n"


def _corpus_sample(source: str, split: str, max_chars: int = 1_000_000) -> str | None:
    try:
        from jaxchat.corpus import iter_documents
    except ImportError:
        return None
    try:
        docs = list(iter_documents(source, split, max_chars=max_chars))
    except Exception as e:  # a split that does not exist for this source, no data, ...
        print(f"(corpus {source}/{split} unavailable: {type(e).__name__}: {e})")
        return None
    return "\n".join(docs) if docs else None


def _tiktoken_encoders() -> tuple[dict, str | None]:
    try:
        import tiktoken
    except ImportError:
        return {}, "tiktoken not installed"
    encs, errs = {}, []
    for label, name in (("gpt2", "gpt2"), ("gpt4", "cl100k_base")):
        try:
            encs[label] = tiktoken.get_encoding(name)
        except Exception as e:  # offline: the BPE files cannot be downloaded
            errs.append(f"{name}: {type(e).__name__}")
    return encs, ("; ".join(errs) or None)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description="Bytes per token of the jaxchat tokenizer on several kinds of text.")
    p.add_argument("--tokenizer", type=str, default=None, help="tokenizer dir or .model file (default: base_dir)")
    p.add_argument("--source", type=str, default="embedded", help="corpus source for the train/val rows")
    p.add_argument("--out", type=str, default=None, help="JSON output (default: base_dir()/tokenizer/tok_eval.json)")
    args = p.parse_args(argv)

    from jaxchat.tokenizer import Tokenizer, default_tokenizer_dir

    tok = Tokenizer.load(args.tokenizer)
    tb = tok.token_bytes()
    specials = set(tok.special_ids.values())
    encs, skipped = _tiktoken_encoders()

    rows = []

    def add(kind: str, note: str, ids: list[int], segments: list[str], n_special: int = 0):
        nbytes = int(tb[ids].sum())
        row = {"kind": kind, "note": note, "bytes": nbytes, "tokens": len(ids), "ours": nbytes / max(1, len(ids))}
        for label, enc in encs.items():
            n = sum(len(enc.encode_ordinary(s)) for s in segments) + n_special
            row[label] = nbytes / max(1, n)
        rows.append(row)

    texts = [
        ("prose", "chitchat conversations (in-sample)", _prose_chitchat()),
        ("prose-docs", "Python tutorial sources (python3-doc)", _prose_pydocs()),
        ("code", "stdlib " + ", ".join(CODE_FILES) + " (in-sample)", _code()),
        ("numbers", "random arithmetic + long numbers", _numbers()),
        ("multilingual", "fixed de/fr/es/ru/ko/ja/zh/emoji sample", MULTILINGUAL),
        (f"{args.source}-train", "first 1M chars of the train split", _corpus_sample(args.source, "train")),
        (f"{args.source}-val", "first 1M chars of the val split (held out)", _corpus_sample(args.source, "val")),
    ]
    for kind, note, text in texts:
        if not text:
            print(f"(skipping {kind}: not available)")
            continue
        ids = tok.encode(text)
        assert tok.decode(ids) == text
        add(kind, note, ids, [text])

    chat_ids, _ = tok.render_conversation(CHAT_SAMPLE)
    segments, run = [], []
    for i in chat_ids:  # the plain-text runs between specials, for the tiktoken comparison
        if i in specials:
            if run:
                segments.append(tok.decode(run))
            run = []
        else:
            run.append(i)
    if run:
        segments.append(tok.decode(run))
    add("chat", "rendered conversation with a tool call; specials = 1 token, 0 bytes", chat_ids, segments,
        n_special=sum(i in specials for i in chat_ids))

    cols = ["kind", "bytes", "tokens", "ours"] + list(encs)
    print(f"\nbytes/token, tokenizer vocab {tok.vocab_size:,}")
    header = f"{'kind':<16} {'bytes':>9} {'tokens':>9} {'ours':>6}" + "".join(f" {c:>6}" for c in encs)
    if encs:
        header += "".join(f" {'vs ' + c:>8}" for c in encs)
    print(header)
    for r in rows:
        line = f"{r['kind']:<16} {r['bytes']:>9,} {r['tokens']:>9,} {r['ours']:>6.2f}"
        line += "".join(f" {r[c]:>6.2f}" for c in encs)
        line += "".join(f" {100 * (r['ours'] - r[c]) / r[c]:>+7.1f}%" for c in encs)
        print(line)
    if skipped:
        print(f"GPT-2/GPT-4 comparison skipped: {skipped}")
    result = {"vocab_size": tok.vocab_size, "columns": cols, "rows": rows, "tiktoken_skipped": skipped}
    out = args.out or str(default_tokenizer_dir() / "tok_eval.json")
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w") as f:
        json.dump(result, f, indent=2)
    log_section("tokenizer-evaluation", result)
    print(f"wrote {out}")
    return result


if __name__ == "__main__":
    cli(main)
