"""Tokenizer compression report: bytes per token on several kinds of text (nanochat's tok_eval).

    python -m scripts.tok_eval [--tokenizer=DIR_OR_FILE] [--source=embedded] [--out=FILE]

Kinds: prose (chitchat; Python docs when Debian's python3-doc is installed), code (stdlib files), chat (a rendered
conversation with a tool call; specials count as tokens, 0 bytes), numbers, multilingual, and the first ~1M chars
of the corpus' train and val splits (prose and code are in-sample; `val` is held out). GPT-2 and GPT-4 are
compared when `tiktoken` and its files are available. Writes base_dir()/tokenizer/tok_eval.json.
"""
from __future__ import annotations

import argparse
import glob
import itertools
import json
import os
import random
import sysconfig
import time
from pathlib import Path

from jaxchat import stage
from jaxchat.common import cli
from jaxchat.tokenizer import Tokenizer, default_tokenizer_dir

CODE_FILES = ["textwrap.py", "heapq.py", "json/decoder.py", "bisect.py"]

CHAT_SAMPLE = {"messages": [
    {"role": "system", "content": "You are a helpful assistant. Be concise."},
    {"role": "user", "content": "Hi! Can you tell me what 1234 times 5678 is, and why the sky is blue?"},
    {"role": "assistant", "content": [
        {"type": "text", "text": "Sure. Let me compute the product first.\n"},
        {"type": "python", "text": "1234 * 5678"}, {"type": "python_output", "text": "7006652"},
        {"type": "text", "text": "1234 times 5678 is 7,006,652. The sky looks blue because air molecules scatter short "
                                 "(blue) wavelengths of sunlight much more strongly than long (red) ones; this is "
                                 "called Rayleigh scattering."}]},
    {"role": "user", "content": "Thanks! And in one sentence, what is a tokenizer?"},
    {"role": "assistant", "content": "A tokenizer turns text into a sequence of integer ids (and back) so that a "
                                     "language model can read and write it."}]}

MULTILINGUAL = ("Der schnelle braune Fuchs springt über den faulen Hund. Überall gibt es Bäume und Straßen.\n"
                "Le cœur a ses raisons que la raison ne connaît point. Ça va très bien, merci !\n"
                "El niño pequeño comió una manzana en el jardín mañana por la mañana.\n"
                "Привет, как дела? Сегодня хорошая погода.\n" "안녕하세요, 오늘 날씨가 정말 좋네요. 저는 한국어를 조금 할 수 있어요.\n"
                "今日はいい天気ですね。東京へ行きましょう。\n" "我们今天去公园散步吧。\n" "Emoji: 🙂 👍 🎉 👩‍💻 🇫🇷\n")


def _prose_chitchat(max_chars: int = 20_000) -> str | None:
    try:
        import chitchat_dataset  # a data package (requirements-data.txt): optional here
    except ImportError:
        return None
    data, out, n = chitchat_dataset.Dataset(), [], 0
    for key in sorted(data)[-200:]:  # a fixed slice
        lines = [" ".join(u["text"] for u in turn) for turn in data[key]["messages"]]
        out, n = out + lines + [""], n + sum(len(x) + 1 for x in lines)
        if n >= max_chars:
            break
    return "\n".join(out)


def _prose_pydocs(max_chars: int = 20_000) -> str | None:
    files = sorted(glob.glob("/usr/share/doc/python3*/html/_sources/tutorial/*.txt"))
    return "".join(open(f, encoding="utf-8", errors="replace").read() for f in files[:3])[:max_chars] or None


def _code() -> str:
    paths = [os.path.join(sysconfig.get_paths()["stdlib"], rel) for rel in CODE_FILES]
    return "\n".join(open(p, encoding="utf-8").read() for p in paths if os.path.exists(p))


def _numbers(seed: int = 0) -> str:
    rng, lines = random.Random(seed), []
    for _ in range(100):
        a, b, op = rng.randint(1, 99_999), rng.randint(1, 9_999), rng.choice("+-*")
        lines.append(f"{a} {op} {b} = {eval(f'{a}{op}{b}')}")
    lines.append("pi = 3.14159265358979323846264338327950288419716939937510")
    lines.append("Population in 2023: 8,045,311,447; GDP $105,435,540,000,000; year 1969, 2001, 2024.")
    return "\n".join(lines) + "\n"


def _corpus_sample(source: str, split: str, max_chars: int = 1_000_000) -> str | None:
    from jaxchat.corpus import iter_documents  # looked up when called: tests stand in a small corpus module

    try:
        return "\n".join(iter_documents(source, split, max_chars=max_chars)) or None
    except Exception as e:  # a split that does not exist for this source, no data, ...
        print(f"(corpus {source}/{split} unavailable: {type(e).__name__}: {e})")  # and no text: the row is skipped


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description="Bytes per token of the jaxchat tokenizer on several kinds of text.")
    p.add_argument("--tokenizer", type=str, default=None, help="tokenizer dir or .model file (default: base_dir)")
    p.add_argument("--source", type=str, default="embedded", help="corpus source for the train/val rows")
    p.add_argument("--out", type=str, default=None, help="JSON output (default: base_dir()/tokenizer/tok_eval.json)")
    args = p.parse_args(argv)
    t0, tok = time.time(), Tokenizer.load(args.tokenizer)
    tb, specials = tok.token_bytes(), set(tok.special_ids.values())
    try:
        import tiktoken  # optional (the interop extra)
        encs, skipped = {"gpt2": tiktoken.get_encoding("gpt2"), "gpt4": tiktoken.get_encoding("cl100k_base")}, None
    except ImportError:
        encs, skipped = {}, "tiktoken not installed"
    except Exception as e:  # offline: the BPE files cannot be downloaded
        encs, skipped = {}, f"{type(e).__name__}: {e}"
    rows = []

    def add(kind: str, note: str, ids: list[int], segments: list[str], n_special: int = 0):
        nbytes = int(tb[ids].sum())
        rows.append({"kind": kind, "note": note, "bytes": nbytes, "tokens": len(ids), "ours": nbytes / max(1, len(ids)),
                     **{label: nbytes / max(1, sum(len(enc.encode_ordinary(s)) for s in segments) + n_special)
                        for label, enc in encs.items()}})

    for kind, note, text in [
        ("prose", "chitchat conversations (in-sample)", _prose_chitchat()),
        ("prose-docs", "Python tutorial sources (python3-doc)", _prose_pydocs()),
        ("code", "stdlib " + ", ".join(CODE_FILES) + " (in-sample)", _code()),
        ("numbers", "random arithmetic + long numbers", _numbers()),
        ("multilingual", "fixed de/fr/es/ru/ko/ja/zh/emoji sample", MULTILINGUAL),
        (f"{args.source}-train", "first 1M chars of the train split", _corpus_sample(args.source, "train")),
        (f"{args.source}-val", "first 1M chars of the val split (held out)", _corpus_sample(args.source, "val")),
    ]:
        if not text:
            print(f"(skipping {kind}: not available)")
            continue
        assert tok.decode(ids := tok.encode(text)) == text
        add(kind, note, ids, [text])
    chat_ids, _ = tok.render_conversation(CHAT_SAMPLE)
    runs = itertools.groupby(chat_ids, specials.__contains__)  # the plain-text runs between specials, for tiktoken
    add("chat", "rendered conversation with a tool call; specials = 1 token, 0 bytes", chat_ids,
        [tok.decode(list(r)) for special, r in runs if not special], n_special=sum(i in specials for i in chat_ids))
    print(f"\nbytes/token, tokenizer vocab {tok.vocab_size:,}")
    print(f"{'kind':<16} {'bytes':>9} {'tokens':>9} {'ours':>6}" + "".join(f" {c:>6}" for c in encs)
          + "".join(f" {'vs ' + c:>8}" for c in encs))
    for r in rows:
        print(f"{r['kind']:<16} {r['bytes']:>9,} {r['tokens']:>9,} {r['ours']:>6.2f}" + "".join(
            f" {r[c]:>6.2f}" for c in encs) + "".join(f" {100 * (r['ours'] - r[c]) / r[c]:>+7.1f}%" for c in encs))
    if skipped:
        print(f"GPT-2/GPT-4 comparison skipped: {skipped}")
    result = {"vocab_size": tok.vocab_size, "columns": ["kind", "bytes", "tokens", "ours"] + list(encs), "rows": rows,
              "tiktoken_skipped": skipped}
    out = Path(args.out or default_tokenizer_dir() / "tok_eval.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")
    return stage.finish("tokenizer-evaluation", {**result, "time_s": time.time() - t0})


if __name__ == "__main__":
    cli(main)
