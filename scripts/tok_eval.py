"""Tokenizer compression report (nanochat's tok_eval): bytes per token on several kinds of text (those available),
against GPT-2's and GPT-4's when tiktoken and its files are; writes base_dir()/tokenizer/tok_eval.json.
    python -m scripts.tok_eval [--tokenizer=DIR_OR_FILE] [--source=embedded] [--out=FILE]
"""
from __future__ import annotations

import argparse
import glob
import itertools
import json
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


def _prose_chitchat() -> str:
    import chitchat_dataset  # a data package (requirements-data.txt): optional here

    data, convs = chitchat_dataset.Dataset(), []
    for key in sorted(data)[-200:]:  # a fixed slice: whole conversations until ~20k chars
        convs.append([" ".join(u["text"] for u in turn) for turn in data[key]["messages"]])
        if sum(len(line) + 1 for c in convs for line in c) >= 20_000:
            break
    return "\n".join(line for c in convs for line in c + [""])


def _prose_pydocs() -> str:
    files = sorted(glob.glob("/usr/share/doc/python3*/html/_sources/tutorial/*.txt"))[:3]
    return "".join(Path(f).read_text(encoding="utf-8", errors="replace") for f in files)[:20_000]


def _numbers(seed: int = 0) -> str:
    rng = random.Random(seed)
    sums = [(rng.randint(1, 99_999), rng.randint(1, 9_999), rng.choice("+-*")) for _ in range(100)]
    return "\n".join([f"{a} {op} {b} = {eval(f'{a}{op}{b}')}" for a, b, op in sums] + [
        "pi = 3.14159265358979323846264338327950288419716939937510",
        "Population in 2023: 8,045,311,447; GDP $105,435,540,000,000; year 1969, 2001, 2024."]) + "\n"


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description="Bytes per token of the jaxchat tokenizer on several kinds of text.")
    p.add_argument("--tokenizer", type=str, default=None, help="tokenizer dir or .model file (default: base_dir)")
    p.add_argument("--source", type=str, default="embedded", help="corpus source for the train/val rows")
    p.add_argument("--out", type=str, default=None, help="JSON output (default: base_dir()/tokenizer/tok_eval.json)")
    args = p.parse_args(argv)
    from jaxchat.corpus import iter_documents  # only now: tests stand in a small corpus module
    t0, tok = time.time(), Tokenizer.load(args.tokenizer)
    tb, specials = tok.token_bytes(), set(tok.special_ids.values())
    try:
        import tiktoken  # optional (the interop extra)
        encs, skipped = {"gpt2": tiktoken.get_encoding("gpt2"), "gpt4": tiktoken.get_encoding("cl100k_base")}, None
    except Exception as e:  # not installed, or offline: the BPE files cannot be downloaded
        encs, skipped = {}, "tiktoken not installed" if isinstance(e, ImportError) else f"{type(e).__name__}: {e}"
        print(f"GPT-2/GPT-4 comparison skipped: {skipped}")
    rows, stdlib = [], sysconfig.get_paths()["stdlib"]
    for kind, note, get in [
        ("prose", "chitchat conversations (in-sample)", _prose_chitchat),
        ("prose-docs", "Python tutorial sources (python3-doc)", _prose_pydocs),
        ("code", "stdlib " + ", ".join(CODE_FILES) + " (in-sample)",
         lambda: "\n".join(Path(stdlib, rel).read_text(encoding="utf-8") for rel in CODE_FILES)),
        ("numbers", "random arithmetic + long numbers", _numbers),
        ("multilingual", "fixed de/fr/es/ru/ko/ja/zh/emoji sample", lambda: MULTILINGUAL),
        (f"{args.source}-train", "first 1M chars of the train split",
         lambda: "\n".join(iter_documents(args.source, "train", max_chars=1_000_000))),
        (f"{args.source}-val", "first 1M chars of the val split (held out)",
         lambda: "\n".join(iter_documents(args.source, "val", max_chars=1_000_000))),
        ("chat", "rendered conversation with a tool call; specials = 1 token, 0 bytes", lambda: CHAT_SAMPLE),
    ]:
        try:
            if not (text := get()):
                raise ValueError("no text")
        except Exception as e:  # an optional package, a split this source lacks, no data, ...
            print(f"(skipping {kind}: {type(e).__name__}: {e})")
            continue
        ids = tok.render_conversation(text)[0] if kind == "chat" else tok.encode(text)
        runs = itertools.groupby(ids, specials.__contains__)  # the plain text between specials: tiktoken's input
        segments = [tok.decode(list(r)) for special, r in runs if not special]
        assert kind == "chat" or segments == [text]  # the round trip
        nbytes, n_special = int(tb[ids].sum()), sum(i in specials for i in ids)
        rows.append({"kind": kind, "note": note, "bytes": nbytes, "tokens": len(ids), "ours": nbytes / max(1, len(ids)),
                     **{label: nbytes / max(1, sum(len(enc.encode_ordinary(s)) for s in segments) + n_special)
                        for label, enc in encs.items()}})
    print(f"\nbytes/token, tokenizer vocab {tok.vocab_size:,}")
    print(f"{'kind':<16} {'bytes':>9} {'tokens':>9} {'ours':>6}" + "".join(f" {c:>6}" for c in encs)
          + "".join(f" {'vs ' + c:>8}" for c in encs))
    for r in rows:
        print(f"{r['kind']:<16} {r['bytes']:>9,} {r['tokens']:>9,} {r['ours']:>6.2f}" + "".join(
            f" {r[c]:>6.2f}" for c in encs) + "".join(f" {100 * (r['ours'] - r[c]) / r[c]:>+7.1f}%" for c in encs))
    result = {"vocab_size": tok.vocab_size, "columns": ["kind", "bytes", "tokens", "ours"] + list(encs), "rows": rows,
              "tiktoken_skipped": skipped}
    out = Path(args.out or default_tokenizer_dir() / "tok_eval.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")
    return stage.finish("tokenizer-evaluation", {**result, "time_s": time.time() - t0})


if __name__ == "__main__":
    cli(main)
