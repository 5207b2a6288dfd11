"""Benchmark the host pretraining loader (`data.pretrain_batches`) without a model: tokens/s and chars/s per
process, per core and per CPU second (a rate a busy host does not dent), the share of the tokens read that are not
in the rows (`cropped`; bos_bestfit: also those piling up in its buffer at first), and the packer alone on tokenized
documents (one thread); the last line is JSON. 8 H100s at nanochat master's d24 speedrun (5,568 steps of 1,048,576
tokens in 1.65 h) take 0.98M tokens/s from their host's one process: `cores_for_master_speed` cores busy at this rate.
`--source=climbmix --tokenizer=tokenizer` for a trained tokenizer on ClimbMix; JAXCHAT_DATA_THREADS sets threads.
"""
from __future__ import annotations

import contextlib
import itertools
import json
import os
import platform
import sys
import time

import numpy as np

from jaxchat import config as C
from jaxchat import data
from jaxchat.common import cli
from jaxchat.corpus import document_blocks, iter_documents
from jaxchat.tokenizer import Tokenizer, train_tokenizer

MASTER_TOKENS_PER_S = 5568 * 2**20 / (1.65 * 3600)  # 8 H100s, nanochat master's d24 speedrun (its leaderboard)


def counted(stream, pulled: list):
    for element in stream:
        pulled[0] += sum(map(len, element))
        yield element


def main(argv=None) -> dict:
    cfg = C.load(["tokenizer"], argv, extra={"tokenizer": "", "seconds": 10.0, "rows": 32, "seq_len": 2048,
                                             "packing": "concat", "sample_blocks": 64})
    t, x, t0 = cfg.tokenizer, cfg.extra, time.perf_counter()
    tok = Tokenizer.load(x.tokenizer) if x.tokenizer else train_tokenizer(  # the preset's, trained here (tiny: seconds)
        iter_documents(t.source, "train", max_chars=t.max_chars, doc_cap=t.doc_cap), t.vocab_size,
        max_chars=t.max_chars, doc_cap=t.doc_cap, digit_group=t.digit_group)
    tok_s, t0 = time.perf_counter() - t0, time.perf_counter()
    it, pulled = data.pretrain_batches(t.source, "train", tok, rows=x.rows, seq_len=x.seq_len, packing=x.packing), [0]
    it.packer.stream = counted(it.packer.stream, pulled)
    next(it)
    first_s, n, read0 = time.perf_counter() - t0, 0, pulled[0]
    t0, cpu0 = time.perf_counter(), time.process_time()
    while (dt := time.perf_counter() - t0) < x.seconds or n < 2:
        next(it)
        n += 1
    cpu_s, tokens, read = time.process_time() - cpu0, n * x.rows * x.seq_len, pulled[0] - read0
    blocks = document_blocks(t.source, "train")  # chars per token (BOS counted, as the trainer sees it), sampled
    docs = [d for i in np.random.default_rng(0).choice(len(blocks), min(x.sample_blocks, len(blocks)), replace=False)
            for d in blocks[int(i)]]
    ids = data.make_tokenize(tok)(docs)
    chars_per_token = sum(map(len, docs)) / sum(map(len, ids))
    packer, pack_rows, t1 = data.Packer(itertools.repeat(ids), x.seq_len, x.packing), 1024, time.perf_counter()
    packer.next_rows(pack_rows)  # the packer alone, on the sampled documents
    pack_s = time.perf_counter() - t1
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    cpu = platform.processor() or "unknown"
    with contextlib.suppress(OSError, StopIteration), open("/proc/cpuinfo") as f:
        cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    out = {"bench": "data", "cpu": cpu, "cores": cores, "threads": data.host_threads(),
           "encode_threads": data.encode_threads(), "grain_threads": data.grain_threads(),
           "load_avg_1m": round(os.getloadavg()[0], 2), "source": t.source, "vocab_size": tok.vocab_size,
           "packing": x.packing, "rows": x.rows, "seq_len": x.seq_len, "batches": n, "seconds": round(dt, 2),
           "first_batch_s": round(first_s, 2), "tokenizer_s": round(tok_s, 2), "cpu_s": round(cpu_s, 2),
           "chars_per_token": round(chars_per_token, 3), "packer_tokens_per_s": round(pack_rows * x.seq_len / pack_s),
           "cropped": round(1 - n * x.rows * (x.seq_len + (x.packing != "concat")) / read, 3) if read else None,
           "cores_for_master_speed": round(MASTER_TOKENS_PER_S / (tokens / cpu_s), 1),  # busy CPUs it takes
           **{  # tokens and chars per second, per core, per CPU second
               f"{k}_per_{per}": round(v / d) for per, d in (("s", dt), ("s_per_core", dt * cores), ("cpu_s", cpu_s))
               for k, v in (("tokens", tokens), ("chars", tokens * chars_per_token))}}
    print(f"loader: {tokens / dt / 1e6:.3f}M tokens/s, {out['chars_per_s'] / 1e6:.2f}M chars/s per process, "
          f"{out['chars_per_cpu_s'] / 1e6:.2f}M chars per CPU second ({cores} cores, {out['threads']} threads, "
          f"{out['cpu']}, load {out['load_avg_1m']})", file=sys.stderr)
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    cli(main)
