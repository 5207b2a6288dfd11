"""Benchmark the host pretraining loader (jaxchat/data.py `pretrain_batches`: shuffled blocks → sentencepiece
encode → packed rows) on this host, without a model: tokens/s and chars/s per process and per core, and per CPU
second (all threads' CPU time: a per-core rate that a busy host does not dent). The last line is JSON. 8 H100s
at nanochat's d20 speed take ~1.09M tokens/s (~5M chars/s of FineWeb-edu) from the one process of their host.
Thread counts follow the host's cores (JAXCHAT_DATA_THREADS overrides them).

    python -m scripts.bench_data                                  # embedded corpus, tiny preset tokenizer
    python -m scripts.bench_data --source=fineweb --tokenizer=tokenizer   # a trained tokenizer, FineWeb shards
    JAXCHAT_DATA_THREADS=1 python -m scripts.bench_data --seconds=5
"""
from __future__ import annotations

import json
import os
import platform
import sys
import time

import numpy as np

from jaxchat import config as C
from jaxchat import data
from jaxchat.common import cli


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or "unknown"


def main(argv=None) -> dict:
    cfg = C.load(["tokenizer"], argv, extra={"tokenizer": "", "seconds": 10.0, "rows": 32, "seq_len": 2048,
                                             "packing": "concat", "sample_blocks": 64})
    t, x = cfg.tokenizer, cfg.extra
    from jaxchat.corpus import document_blocks, iter_documents
    from jaxchat.tokenizer import Tokenizer, train_tokenizer

    t0 = time.perf_counter()
    if x.tokenizer:
        tok = Tokenizer.load(x.tokenizer)
    else:  # the preset's tokenizer, trained in memory (tiny: vocab 8192 on 20M chars, seconds)
        tok = train_tokenizer(iter_documents(t.source, "train", max_chars=t.max_chars, doc_cap=t.doc_cap),
                              t.vocab_size, max_chars=t.max_chars, doc_cap=t.doc_cap, digit_group=t.digit_group)
    tok_s = time.perf_counter() - t0
    # chars per token of the stream (BOS counted as a token, as the trainer sees it), from a sample of blocks
    blocks = document_blocks(t.source, "train")
    pick = np.random.default_rng(0).choice(len(blocks), min(x.sample_blocks, len(blocks)), replace=False)
    docs = [d for i in pick for d in blocks[int(i)]]
    chars_per_token = sum(map(len, docs)) / sum(map(len, data.make_tokenize(tok)(docs)))

    t0 = time.perf_counter()
    it = data.pretrain_batches(t.source, "train", tok, rows=x.rows, seq_len=x.seq_len, packing=x.packing)
    next(it)
    first_s = time.perf_counter() - t0
    n, t0, cpu0 = 0, time.perf_counter(), time.process_time()
    while (dt := time.perf_counter() - t0) < x.seconds or n < 2:
        next(it)
        n += 1
    cpu_s = time.process_time() - cpu0  # all threads: tokens per CPU second holds even on a busy host
    tokens_per_s = n * x.rows * x.seq_len / dt
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    out = {
        "bench": "data", "cpu": cpu_model(), "cores": cores, "threads": data.host_threads(),
        "encode_threads": data.encode_threads(), "grain_threads": data.grain_threads(),
        "load_avg_1m": round(os.getloadavg()[0], 2), "source": t.source, "vocab_size": tok.vocab_size,
        "packing": x.packing, "rows": x.rows, "seq_len": x.seq_len, "batches": n, "seconds": round(dt, 2),
        "first_batch_s": round(first_s, 2), "tokenizer_s": round(tok_s, 2),
        "chars_per_token": round(chars_per_token, 3),
        "tokens_per_s": round(tokens_per_s), "chars_per_s": round(tokens_per_s * chars_per_token),
        "tokens_per_s_per_core": round(tokens_per_s / cores), "chars_per_s_per_core": round(
            tokens_per_s * chars_per_token / cores),
        "cpu_s": round(cpu_s, 2), "tokens_per_cpu_s": round(tokens_per_s * dt / cpu_s),
        "chars_per_cpu_s": round(tokens_per_s * dt * chars_per_token / cpu_s),
    }
    print(f"loader: {tokens_per_s / 1e6:.3f}M tokens/s, {out['chars_per_s'] / 1e6:.2f}M chars/s per process, "
          f"{out['chars_per_cpu_s'] / 1e6:.2f}M chars per CPU second ({cores} cores, {out['threads']} threads, "
          f"{out['cpu']}, load {out['load_avg_1m']})", file=sys.stderr)
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    cli(main)
