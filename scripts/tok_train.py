"""Train the tokenizer (sentencepiece BPE, see jaxchat/tokenizer.py and tokenizer/README.md).

    python -m scripts.tok_train                      # tiny preset: vocab 8192 on 20M chars of the embedded corpus
    python -m scripts.tok_train --vocab_size=65536 --max_chars=2000000000 --source=fineweb

Writes base_dir()/tokenizer/{tokenizer.model, token_bytes.npy, tok_train.json}. Multi-host (the jax.distributed
environment of jaxchat/sharding.py): process 0 trains; the others wait for it at a barrier, then check that
the shared base_dir shows them the same tokenizer file.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os

from jaxchat.common import cli, log_section
import time

import numpy as np

BARRIER_TIMEOUT_S = 6 * 3600  # how long the other hosts wait for process 0 (4B chars may train for an hour+)


def parse_args(argv=None):
    """`--preset NAME` plus [tokenizer] keys (vocab_size, max_chars, doc_cap, source, digit_group) and
    --num_threads."""
    from jaxchat import config as C

    cfg = C.load(["tokenizer"], argv, extra={"num_threads": 0})
    t = cfg.tokenizer
    return argparse.Namespace(vocab_size=t.vocab_size, max_chars=t.max_chars, doc_cap=t.doc_cap or None,
                              source=t.source, digit_group=t.digit_group, num_threads=cfg.extra.num_threads or None)


def _multihost() -> bool:
    """Join jax.distributed when the environment describes a multi-host run; a single host never imports JAX."""
    if not (os.environ.get("JAX_COORDINATOR_ADDRESS") or os.environ.get("SLURM_JOB_ID")):
        return False
    os.environ.setdefault("JAX_PLATFORMS", "cpu")  # process_index() starts a backend: not the GPUs for this
    from jaxchat.sharding import maybe_initialize_distributed

    return maybe_initialize_distributed()


def _sha256(path) -> str | None:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None


def _wait_for_process0(summary: dict | None) -> dict:
    """Barrier: process 0 publishes its summary (with the tokenizer's sha256) and every process waits for it;
    the others then check that the shared base_dir shows them that same file. Returns process 0's summary."""
    from jax._src import distributed  # the coordination service's client (orbax uses it the same way)

    from jaxchat.common import base_dir, process_index
    from jaxchat.config import ConfigError
    from jaxchat.tokenizer import TOKENIZER_FILENAME, Tokenizer, default_tokenizer_dir

    client = distributed.global_state.client
    if summary is not None:
        client.key_value_set("jaxchat/tok_train", json.dumps(summary))
    client.wait_at_barrier("jaxchat_tok_train", BARRIER_TIMEOUT_S * 1000)
    summary = json.loads(client.blocking_key_value_get("jaxchat/tok_train", 60_000))
    if process_index() == 0:
        return summary
    path = default_tokenizer_dir() / TOKENIZER_FILENAME
    for _ in range(30):  # a shared filesystem (NFS) may show another host's new file a few seconds late
        if _sha256(path) == summary["sha256"]:
            break
        time.sleep(2)
    else:
        raise ConfigError(f"process {process_index()} finds {'no' if _sha256(path) is None else 'another'} "
                          f"tokenizer at {path} after process 0 trained one: JAXCHAT_BASE_DIR ({base_dir()}) must "
                          "be a directory every host shares")
    tok = Tokenizer.load()
    print(f"tok_train: process {process_index()} uses the tokenizer process 0 trained (vocab {tok.vocab_size:,}, "
          f"sha256 {summary['sha256'][:16]})", flush=True)
    return summary


def main(argv=None) -> dict:
    args = parse_args(argv)
    multi = _multihost()
    from jaxchat.common import process_index

    summary = _train(args) if process_index() == 0 else None
    if multi:
        summary = _wait_for_process0(summary)
    # only after the barrier: a late host must not find this stage's report section, skip it, and leave
    # process 0 waiting at the barrier
    log_section("tokenizer-training", summary)
    return summary


def _train(args) -> dict:
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
    if info.get("chars", 0) < args.max_chars:
        print0(f"note: the {args.source} train split holds only {info.get('chars', 0):,} of the "
               f"{args.max_chars:,} chars asked for")

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
        "sha256": _sha256(model_path),
    }
    (out_dir / "tok_train.json").write_text(json.dumps(summary, indent=2) + "\n")
    print0(f"token_bytes (non-special): min {summary['token_bytes_min']} max {summary['token_bytes_max']} "
           f"mean {summary['token_bytes_mean']} std {summary['token_bytes_std']}")
    print0(f"saved {model_path}, {out_dir / TOKEN_BYTES_FILENAME}, {out_dir / 'tok_train.json'}")
    return summary


if __name__ == "__main__":
    cli(main)
