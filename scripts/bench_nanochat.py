"""Time nanochat's own code here, in the shapes and protocol of our benchmarks, so dev/BENCHMARKS.md's side by side
comparison can be rerun. Needs a nanochat checkout (V1: commit 10231df) and PyTorch (the `interop` extra).

    git clone https://github.com/karpathy/nanochat /tmp/nanochat && git -C /tmp/nanochat checkout 10231df
    python -m scripts.bench_nanochat --nanochat_dir=/tmp/nanochat     # decode (paired), then train; --what=decode

decode: nanochat's `Engine.generate(prompt, num_samples=B, max_tokens=256, temperature=1, top_k=50)` on a random
depth-4 model, as `scripts.bench_decode` in its `samples` mode, --reps rounds; unless --paired=0 jaxchat's engine
takes turns with it (the order flips every round) and the median per-round ratio is what counts (this machine drifts
by ±30% within minutes). train: forward, backward, AdamW + Muon on --batch x --seq_len (8 x 512), eager and
torch.compile, --train_steps timed. --threads: torch's threads (0: its default). The last line is JSON.
"""
from __future__ import annotations

import json
import os
import sys
import time
import types

import numpy as np

from jaxchat import config as C
from jaxchat import engine as E
from jaxchat.common import cli
from scripts.bench_decode import Tok, random_engine


def _import_nanochat(path):
    if not os.path.isfile(os.path.join(path, "nanochat", "gpt.py")):
        raise SystemExit(f"bench_nanochat: {path!r} is not a nanochat checkout (no nanochat/gpt.py). Clone it: "
                         "git clone https://github.com/karpathy/nanochat DIR && git -C DIR checkout 10231df")
    sys.path.insert(0, os.path.abspath(path))
    # engine.py imports checkpoint loading (and through it the HF tokenizer); a benchmark loads no checkpoint
    sys.modules.setdefault("nanochat.checkpoint_manager", types.SimpleNamespace(load_model=None))
    import torch  # optional (the interop extra), and only once the checkout is known good
    from nanochat.engine import Engine  # from the checkout (on sys.path only now)
    from nanochat.gpt import GPT, GPTConfig

    return torch, GPT, GPTConfig, Engine


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


def _quantiles(xs):
    xs = sorted(xs)
    return {name: xs[min(len(xs) - 1, int(q * len(xs)))] for name, q in (("median", .5), ("q25", .25), ("q75", .75))}


def bench_decode(torch, GPT, GPTConfig, Engine, a):
    prompt = torch.randint(10, a.vocab_size, (a.prompt_len,), generator=torch.Generator().manual_seed(0)).tolist()
    batches = [int(b) for b in a.batches.split(",")]
    eng = Engine(_model(torch, GPT, GPTConfig, a).eval(), Tok(a.vocab_size))

    def nanochat(B, seed):  # tokens/s of one generation of B samples
        t0 = time.perf_counter()
        n = sum(len(col) for col, _ in eng.generate(prompt, num_samples=B, max_tokens=a.new_tokens, temperature=1.0,
                                                    top_k=50, seed=seed))
        return n / (time.perf_counter() - t0)

    mc = C.load(["model"], ["--preset=tiny_v1", f"--depth={a.depth}", f"--vocab_size={a.vocab_size}",  # V1's model
                            f"--max_seq_len={a.seq_len}"]).model
    ours = random_engine(mc) if a.paired else None

    def jaxchat(B, seed):  # what `scripts.bench_decode` times in its `samples` mode
        t0 = time.perf_counter()
        st, stops = ours.start([prompt], num_samples=B, max_tokens=a.new_tokens, temperature=1.0, top_k=50,
                               seed=seed, use_tools=False)
        n = int(np.asarray(E.run(ours.decode_params, st, a.new_tokens, cfg=mc, stops=stops).n).sum())
        return n / (time.perf_counter() - t0)

    engines = {"nanochat": nanochat, "jaxchat": jaxchat} if a.paired else {"nanochat": nanochat}
    runs = {name: {B: [] for B in batches} for name in engines}
    for r in range(-1, a.reps):  # round -1 warms up (jaxchat: compiles)
        for name in (list(engines) if r % 2 == 0 else list(engines)[::-1]):
            for B in batches:
                tokens_per_s = engines[name](B, r + 1)
                if r >= 0:
                    runs[name][B].append(tokens_per_s)
    out = []
    for B in batches:
        res = {"batch": B, **{name: _quantiles(runs[name][B]) for name in engines}}
        line = f"decode batch {B}: " + ", ".join(f"{n} median {res[n]['median']:,.0f} tokens/s" for n in engines)
        if a.paired:
            r = res["ratio"] = _quantiles([j / n for j, n in zip(runs["jaxchat"][B], runs["nanochat"][B])])
            line += f"; jaxchat/nanochat per round: median {r['median']:.2f}x (quartiles {r['q25']:.2f}-{r['q75']:.2f})"
        print(line + f" ({a.reps} rounds)", file=sys.stderr)
        out.append(res)
    return out


def bench_train(torch, GPT, GPTConfig, a):
    out = {}
    for key in ("eager", "compiled"):
        m = _model(torch, GPT, GPTConfig, a)
        opts = m.setup_optimizers()
        step_model = torch.compile(m, dynamic=False) if key == "compiled" else m
        xy = torch.randint(0, a.vocab_size, (a.batch, a.seq_len + 1), generator=torch.Generator().manual_seed(0))
        x, y = xy[:, :-1].contiguous(), xy[:, 1:].contiguous()
        times = []
        for i in range(a.train_steps + 2):  # two warm-up steps (compilation)
            t0 = time.perf_counter()
            loss = step_model(x, y)
            loss.backward()
            for o in opts:
                o.step()
            m.zero_grad(set_to_none=True)
            loss.item()  # waits for the step (CUDA runs asynchronously)
            times.append(time.perf_counter() - t0)
        out[key] = a.batch * a.seq_len / _quantiles(times[2:])["median"]
        print(f"nanochat train ({key}): {out[key]:,.0f} tokens/s (median of {a.train_steps} steps)", file=sys.stderr)
    return out


def main(argv=None):
    a = C.load([], argv, extra={"nanochat_dir": "", "what": "decode,train", "depth": 4, "vocab_size": 8192,
                                "seq_len": 512, "prompt_len": 64, "new_tokens": 256, "batches": "1,8", "reps": 12,
                                "paired": 1, "batch": 8, "train_steps": 5, "threads": 0}).extra
    if not set(what := a.what.split(",")) <= {"decode", "train"}:
        raise C.ConfigError(f"--what takes decode, train or both; got {a.what!r}")
    torch, GPT, GPTConfig, Engine = _import_nanochat(a.nanochat_dir)
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
    cli(main)
