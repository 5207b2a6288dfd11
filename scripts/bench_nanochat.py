"""Time nanochat's own code on this machine, in the shapes and protocol of our benchmarks, so the README's side by
side comparison can be rerun. It needs a nanochat checkout (V1 is commit 10231df) and PyTorch (the `interop`
extra); nothing of nanochat is vendored here.

    git clone https://github.com/karpathy/nanochat /tmp/nanochat && git -C /tmp/nanochat checkout 10231df
    python -m scripts.bench_nanochat --nanochat_dir=/tmp/nanochat              # decode (paired), then train
    python -m scripts.bench_nanochat --nanochat_dir=/tmp/nanochat --what=decode --reps=16

decode: `Engine.generate(prompt, num_samples=B, max_tokens=256, temperature=1, top_k=50)` on a randomly
initialised depth-4 model (prompt 64 tokens), counting every row's tokens, as `scripts.bench_decode` does in its
`samples` mode. Unless `--paired=0`, jaxchat's engine is timed in the same process on the same protocol, the two
taking turns (the order flips every round), and the figure that counts is the median of the per-round ratios:
this machine's speed drifts by ±30% within minutes, which separate runs of the two benchmarks cannot tell from
a real difference. train: forward, backward and its AdamW + Muon step on batch 8 x 512, eager and
torch.compile. The last line of output is JSON.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
import types


def _import_nanochat(path):
    if not os.path.isfile(os.path.join(path, "nanochat", "gpt.py")):
        raise SystemExit(f"bench_nanochat: {path!r} is not a nanochat checkout (no nanochat/gpt.py). Clone it: "
                         "git clone https://github.com/karpathy/nanochat DIR && git -C DIR checkout 10231df")
    sys.path.insert(0, os.path.abspath(path))
    # engine.py imports checkpoint loading (and through it the HF tokenizer); a benchmark loads no checkpoint
    sys.modules.setdefault("nanochat.checkpoint_manager", types.SimpleNamespace(load_model=None))
    from nanochat.engine import Engine
    from nanochat.gpt import GPT, GPTConfig

    return GPT, GPTConfig, Engine


def _model(torch, GPT, GPTConfig, a):
    dim = a.depth * 64  # nanochat's aspect ratio; head_dim 128
    cfg = GPTConfig(sequence_len=a.seq_len, vocab_size=a.vocab_size, n_layer=a.depth, n_head=max(1, dim // 128),
                    n_kv_head=max(1, dim // 128), n_embd=dim)
    torch.manual_seed(0)
    m = GPT(cfg)
    m.init_weights()
    with torch.no_grad():  # zero-initialised output layers would give uniform logits
        for p in m.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return m


def _nanochat_decoder(torch, GPT, GPTConfig, Engine, a, prompt):
    from scripts.bench_decode import Tok

    m = _model(torch, GPT, GPTConfig, a).eval()
    eng = Engine(m, Tok(a.vocab_size))

    def rep(B, seed):
        t0, n = time.perf_counter(), 0
        for col, _ in eng.generate(prompt, num_samples=B, max_tokens=a.new_tokens, temperature=1.0, top_k=50,
                                   seed=seed):
            n += len(col)
        return n / (time.perf_counter() - t0)

    return rep


def _jaxchat_decoder(a, prompt):
    """jaxchat's engine on the same protocol (what `scripts.bench_decode` times in its `samples` mode)."""
    import numpy as np

    from jaxchat import config as C
    from jaxchat import engine as E
    from scripts.bench_decode import random_engine

    mc = C.load(["model"], [f"--depth={a.depth}", f"--vocab_size={a.vocab_size}", f"--max_seq_len={a.seq_len}"]).model
    eng = random_engine(mc)

    def rep(B, seed):
        t0 = time.perf_counter()
        st, stops = eng.start([prompt], num_samples=B, max_tokens=a.new_tokens, temperature=1.0, top_k=50, seed=seed,
                              use_tools=False)
        st = E.run(eng.decode_params, st, a.new_tokens, cfg=mc, stops=stops)
        n = int(np.asarray(st["n"]).sum())
        return n / (time.perf_counter() - t0)

    return rep


def _quantiles(xs):
    xs = sorted(xs)
    at = lambda q: xs[min(len(xs) - 1, int(q * len(xs)))]  # noqa: E731
    return {"median": at(0.5), "q25": at(0.25), "q75": at(0.75)}


def bench_decode(torch, GPT, GPTConfig, Engine, a):
    g = torch.Generator().manual_seed(0)
    prompt = torch.randint(10, a.vocab_size, (a.prompt_len,), generator=g).tolist()
    batches = [int(b) for b in a.batches.split(",")]
    engines = {"nanochat": _nanochat_decoder(torch, GPT, GPTConfig, Engine, a, prompt)}
    if a.paired:
        engines["jaxchat"] = _jaxchat_decoder(a, prompt)
    for rep in engines.values():  # warm up (jaxchat: compile)
        for B in batches:
            rep(B, 0)
    runs = {name: {B: [] for B in batches} for name in engines}
    names = list(engines)
    for r in range(a.reps):
        for name in (names if r % 2 == 0 else names[::-1]):
            for B in batches:
                runs[name][B].append(engines[name](B, r + 1))
    out = []
    for B in batches:
        res = {"batch": B, "nanochat": _quantiles(runs["nanochat"][B])}
        line = f"decode batch {B}: nanochat median {res['nanochat']['median']:,.0f} tokens/s"
        if a.paired:
            res["jaxchat"] = _quantiles(runs["jaxchat"][B])
            res["ratio"] = _quantiles([j / n for j, n in zip(runs["jaxchat"][B], runs["nanochat"][B])])
            line += (f", jaxchat median {res['jaxchat']['median']:,.0f}; jaxchat/nanochat per round: median "
                     f"{res['ratio']['median']:.2f}x (quartiles {res['ratio']['q25']:.2f}-{res['ratio']['q75']:.2f})")
        print(line + f" ({a.reps} rounds)", file=sys.stderr)
        out.append(res)
    return out


def bench_train(torch, GPT, GPTConfig, a):
    out = {}
    for compiled in (False, True):
        m = _model(torch, GPT, GPTConfig, a)
        opts = m.setup_optimizers()
        step_model = torch.compile(m, dynamic=False) if compiled else m
        g = torch.Generator().manual_seed(0)
        xy = torch.randint(0, a.vocab_size, (a.batch, a.seq_len + 1), generator=g)
        x, y = xy[:, :-1].contiguous(), xy[:, 1:].contiguous()
        times = []
        for i in range(a.train_steps + 2):  # two warm-up steps (compilation)
            t0 = time.perf_counter()
            loss = step_model(x, y)
            loss.backward()
            for o in opts:
                o.step()
            m.zero_grad(set_to_none=True)
            loss.item()
            if i >= 2:
                times.append(time.perf_counter() - t0)
        times.sort()
        tps = a.batch * a.seq_len / times[len(times) // 2]
        key = "compiled" if compiled else "eager"
        out[key] = tps
        print(f"nanochat train ({key}): {tps:,.0f} tokens/s (median of {len(times)} steps)", file=sys.stderr)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nanochat_dir", required=True)
    ap.add_argument("--what", default="decode,train")
    ap.add_argument("--depth", type=int, default=4)
    ap.add_argument("--vocab_size", type=int, default=8192)
    ap.add_argument("--seq_len", type=int, default=512)
    ap.add_argument("--prompt_len", type=int, default=64)
    ap.add_argument("--new_tokens", type=int, default=256)
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--reps", type=int, default=12, help="decode rounds (each engine, each batch, once a round)")
    ap.add_argument("--paired", type=int, default=1, help="1: time jaxchat's engine in the same rounds")
    ap.add_argument("--batch", type=int, default=8, help="train batch (rows of seq_len)")
    ap.add_argument("--train_steps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    a = ap.parse_args(argv)
    what = a.what.split(",")
    if any(w not in ("decode", "train") for w in what):
        ap.error(f"--what takes decode, train or both; got {a.what!r}")
    GPT, GPTConfig, Engine = _import_nanochat(a.nanochat_dir)
    import torch

    if a.threads:
        torch.set_num_threads(a.threads)
    res = {"bench": "nanochat", "torch": torch.__version__, "threads": torch.get_num_threads(), "depth": a.depth,
           "vocab_size": a.vocab_size}
    if "decode" in what:
        res["decode"] = bench_decode(torch, GPT, GPTConfig, Engine, a)
    if "train" in what:
        res["train"] = bench_train(torch, GPT, GPTConfig, a)
    print(json.dumps(res))
    return res


if __name__ == "__main__":
    main()
