"""Benchmark generation: tokens/s at batch 1 and batch 8 (prompt 64 tokens, 256 new tokens, temperature 1,
top-k 50) on a randomly initialised model of the preset, through the fully jitted decode loop. Also reports the
decode step time against its memory-bandwidth bound ((weights + KV cache bytes read per step) / bandwidth) when
the device's bandwidth is known. The last line of output is JSON.

A batch of B rows is measured two ways: `samples` is nanochat's `Engine.generate(prompt, num_samples=B)`, one
prompt prefilled once and its cache copied to B rows (what `scripts/bench_nanochat.py` times on nanochat);
`prompts` is B different prompts prefilled together (what evals and the web server do). The stop tokens lie
outside the vocabulary, so every row decodes all new tokens, as in nanochat's count.

    python -m scripts.bench_decode                     # tiny preset
    python -m scripts.bench_decode --preset d20 --compute_dtype=bfloat16
"""
from __future__ import annotations

from jaxchat.common import cli

import json
import math
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxchat import config as C
from jaxchat import engine as E
from jaxchat import model as gpt

# HBM bandwidth (bytes/s) by device kind, for the roofline comparison.
BANDWIDTH = {"H100": 3.35e12, "H200": 4.8e12, "A100": 2.0e12, "B200": 8.0e12, "L4": 0.3e12, "A10": 0.6e12}


class Tok:
    """Just enough tokenizer for jaxchat's engine and nanochat's (`scripts/bench_nanochat.py`). Its special
    tokens are ids past the vocabulary, so a random model never samples a stop and every row runs its full
    length."""

    NAMES = ["<|bos|>", "<|user_start|>", "<|user_end|>", "<|assistant_start|>", "<|assistant_end|>",
             "<|python_start|>", "<|python_end|>", "<|output_start|>", "<|output_end|>"]

    def __init__(self, vocab):
        self.vocab_size = vocab
        self.bos_id = vocab

    def encode_special(self, name):
        return self.vocab_size + self.NAMES.index(name)

    def get_bos_token_id(self):
        return self.bos_id


def random_engine(mc) -> E.Engine:
    """jaxchat's engine on a randomly initialised model of config `mc`."""
    params = jax.jit(lambda k: gpt.init_params(mc, k))(jax.random.key(0))
    # non-zero output layers (zero-init logits would be uniform: fine for timing, but keep it realistic)
    params = jax.tree.map(lambda a: a + 0.02 * jax.random.normal(jax.random.key(1), a.shape, a.dtype), params)
    return E.Engine(params, mc, Tok(mc.vocab_size))


def main(argv=None):
    cfg = C.load(["model"], argv, extra={"prompt_len": 64, "new_tokens": 256, "batches": "1,8", "reps": 3,
                                         "modes": "samples,prompts"})
    mc, x = cfg.model, cfg.extra
    eng = random_engine(mc)
    params = eng.params
    rng = np.random.default_rng(0)
    results = []
    modes = str(x.modes).split(",")
    if not modes or any(m not in ("samples", "prompts") for m in modes):
        raise C.ConfigError(f"--modes takes 'samples', 'prompts' or both, comma-separated; got {x.modes!r}")
    cases = [(B, m) for B in [int(b) for b in str(x.batches).split(",")] for m in (modes if B > 1 else modes[:1])]
    for B, mode in cases:
        n_prompts = B if mode == "prompts" else 1
        prompts = [rng.integers(10, mc.vocab_size, x.prompt_len).tolist() for _ in range(n_prompts)]
        times = []
        for rep in range(x.reps + 1):
            t0 = time.perf_counter()
            st, stops = eng.start(prompts, num_samples=B // n_prompts, max_tokens=x.new_tokens, temperature=1.0,
                                  top_k=50, seed=rep, use_tools=False)
            jax.block_until_ready(st["token"])
            t1 = time.perf_counter()
            st = E.run(eng.decode_params, st, x.new_tokens, cfg=mc, stops=stops)
            n = int(np.asarray(st["n"]).sum())
            t2 = time.perf_counter()
            if rep:  # rep 0 compiles
                times.append((t1 - t0, t2 - t1, n))
        prefill_s = float(np.median([t[0] for t in times]))
        decode_s = float(np.median([t[1] for t in times]))
        n = times[0][2]
        steps = x.new_tokens - 1  # the first token comes from the prefill
        weight_bytes = sum(a.size * jnp.dtype(mc.compute_dtype).itemsize for a in jax.tree.leaves(params)) - \
            params["wte"].size * jnp.dtype(mc.compute_dtype).itemsize
        S = st["cache"]["k"][0].shape[2]
        cache_bytes = 2 * mc.n_layer * B * S * mc.kv_heads * mc.head_dim * st["cache"]["k"][0].dtype.itemsize
        kind = jax.devices()[0].device_kind
        bw = next((v for k, v in BANDWIDTH.items() if k.lower() in kind.lower()), None)
        step_s = decode_s / steps
        r = {"batch": B, "mode": mode if B > 1 else "single", "new_tokens_total": n,
             "tokens_per_s": n / (prefill_s + decode_s),
             "decode_tokens_per_s": B * steps / decode_s, "decode_step_ms": 1e3 * step_s,
             "prefill_ms": 1e3 * prefill_s, "weights_bytes": int(weight_bytes), "cache_bytes": int(cache_bytes)}
        if bw:
            bound = (weight_bytes + cache_bytes) / bw
            r.update(bandwidth_bytes_per_s=bw, roofline_step_ms=1e3 * bound, step_vs_roofline=step_s / bound)
        results.append(r)
        print(f"batch {B} ({r['mode']}): {r['tokens_per_s']:,.0f} tokens/s end to end "
              f"({r['decode_tokens_per_s']:,.0f} in decode), "
              f"decode step {r['decode_step_ms']:.2f} ms, prefill {r['prefill_ms']:.1f} ms"
              + (f", {r['step_vs_roofline']:.2f}x the bandwidth bound" if bw else ""), file=sys.stderr)
    out = {"bench": "decode", "device": jax.devices()[0].device_kind, "platform": jax.default_backend(),
           "jax": jax.__version__, "depth": mc.depth, "vocab_size": mc.vocab_size, "compute_dtype": mc.compute_dtype,
           "prompt_len": x.prompt_len, "new_tokens": x.new_tokens, "results": results}
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    cli(main)
