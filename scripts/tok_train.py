"""Train the tokenizer (sentencepiece BPE, see jaxchat/tokenizer.py and tokenizer/README.md).

    python -m scripts.tok_train                      # tiny preset: vocab 8192 on 20M chars of the embedded corpus
    python -m scripts.tok_train --vocab_size=65536 --max_chars=2000000000 --source=fineweb

Writes base_dir()/tokenizer/{tokenizer.model, token_bytes.npy, tok_train.json}.
"""
from __future__ import annotations

import argparse
import json

from jaxchat.common import cli, log_section
import time

import numpy as np


def parse_args(argv=None):
    """`--preset NAME` plus [tokenizer] keys (vocab_size, max_chars, doc_cap, source, digit_group) and
    --num_threads."""
    from jaxchat import config as C

    cfg = C.load(["tokenizer"], argv, extra={"num_threads": 0})
    t = cfg.tokenizer
    return argparse.Namespace(vocab_size=t.vocab_size, max_chars=t.max_chars, doc_cap=t.doc_cap or None,
                              source=t.source, digit_group=t.digit_group, num_threads=cfg.extra.num_threads or None)


def main(argv=None) -> dict:
    args = parse_args(argv)
    from jaxchat.common import print0
    from jaxchat.corpus import iter_documents  # lazy: the corpus module may pull optional deps
    from jaxchat.tokenizer import SPECIAL_TOKENS, TOKEN_BYTES_FILENAME, TOKENIZER_FILENAME, default_tokenizer_dir, train_tokenizer

    print0(f"tok_train: vocab_size={args.vocab_size:,} max_chars={args.max_chars:,} doc_cap={args.doc_cap} "
           f"source={args.source} digit_group={args.digit_group}")
    t0 = time.time()
    texts = iter_documents(args.source, "train", max_chars=args.max_chars, doc_cap=args.doc_cap)
    tok = train_tokenizer(texts, args.vocab_size, max_chars=args.max_chars, doc_cap=args.doc_cap,
                          num_threads=args.num_threads, digit_group=args.digit_group)
    train_time = time.time() - t0  # includes reading the corpus
    info = tok.train_info or {}
    print0(f"trained on {info.get('chars', 0):,} chars ({info.get('documents', 0):,} documents) "
           f"in {train_time:.2f}s (reading the corpus included)")

    out_dir = default_tokenizer_dir()
    model_path = tok.save(out_dir / TOKENIZER_FILENAME)
    token_bytes = tok.token_bytes()
    np.save(out_dir / TOKEN_BYTES_FILENAME, token_bytes)

    # sanity: round trip, specials are single ids that plain text cannot produce
    sample = "Hello world! def f(x):\n\treturn x ** 2  # 12345 \u2581 h\u00e9llo \U0001F600 <|assistant_end|>\r\n"
    ids = tok.encode(sample)
    assert tok.decode(ids) == sample, "round trip failed"
    assert not set(ids) & set(tok.special_ids.values()), "plain text produced a special token"
    assert int(token_bytes[ids].sum()) == len(sample.encode("utf-8")), "token_bytes disagree with the text"
    print0(f"round trip OK: {len(sample.encode('utf-8'))} bytes -> {len(ids)} tokens")
    print0("specials: " + ", ".join(f"{s}={tok.special_ids[s]}" for s in SPECIAL_TOKENS))

    nz = token_bytes[token_bytes > 0]
    summary = {
        "vocab_size": tok.vocab_size,
        "source": args.source,
        "max_chars": args.max_chars,
        "doc_cap": args.doc_cap,
        "digit_group": args.digit_group,
        "train_chars": info.get("chars"),
        "train_documents": info.get("documents"),
        "train_time_s": round(train_time, 3),
        "num_special_tokens": len(SPECIAL_TOKENS),
        "special_ids": tok.special_ids,
        "token_bytes_min": int(nz.min()),
        "token_bytes_max": int(nz.max()),
        "token_bytes_mean": round(float(nz.mean()), 3),
        "token_bytes_std": round(float(nz.std()), 3),
        "model_path": str(model_path),
    }
    (out_dir / "tok_train.json").write_text(json.dumps(summary, indent=2) + "\n")
    log_section("tokenizer-training", summary)
    print0(f"token_bytes (non-special): min {summary['token_bytes_min']} max {summary['token_bytes_max']} "
           f"mean {summary['token_bytes_mean']} std {summary['token_bytes_std']}")
    print0(f"saved {model_path}, {out_dir / TOKEN_BYTES_FILENAME}, {out_dir / 'tok_train.json'}")
    return summary


if __name__ == "__main__":
    cli(main)
