"""Benchmark generation: tokens/s at batch 1 and 8 (prompt 64, 256 new tokens, temperature 1, top-k 50) of a random
model, and the decode step against its bandwidth bound ((weights + KV cache) bytes / bandwidth) where known. Mode
`samples` is nanochat's `Engine.generate(prompt, num_samples=B)` (as `scripts/bench_nanochat.py` times it); `prompts`
is B different prompts. Stop tokens lie outside the vocabulary (every row decodes all new tokens). Last line: JSON.

    python -m scripts.bench_decode                     # tiny preset
    python -m scripts.bench_decode --preset d20 --compute_dtype=bfloat16
"""
from __future__ import annotations

import json
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxchat import config as C
from jaxchat import engine as E
from jaxchat import model as gpt
from jaxchat.common import cli

HBM_BPS = {"H100": 3.35e12, "H200": 4.8e12, "A100": 2.0e12, "B200": 8.0e12, "L4": 0.3e12, "A10": 0.6e12}  # bytes/s


class Tok:
    """Just enough tokenizer for jaxchat's engine and nanochat's; its special tokens lie past the vocabulary."""

    NAMES = ["<|bos|>", "<|user_start|>", "<|user_end|>", "<|assistant_start|>", "<|assistant_end|>",
             "<|python_start|>", "<|python_end|>", "<|output_start|>", "<|output_end|>"]

    def __init__(self, vocab):
        self.vocab_size = self.bos_id = vocab

    def encode_special(self, name):
        return self.vocab_size + self.NAMES.index(name)

    def get_bos_token_id(self):
        return self.bos_id


def random_engine(mc) -> E.Engine:
    """jaxchat's engine on a randomly initialised model (non-zero output layers: realistic logits)."""
    params = jax.jit(lambda k: gpt.init_params(mc, k))(jax.random.key(0))
    params = jax.tree.map(lambda a: a + 0.02 * jax.random.normal(jax.random.key(1), a.shape, a.dtype), params)
    return E.Engine(params, mc, Tok(mc.vocab_size))


def main(argv=None):
    cfg = C.load(["model"], argv, extra={"prompt_len": 64, "new_tokens": 256, "batches": "1,8", "reps": 3,
                                         "modes": "samples,prompts"})
    mc, x = cfg.model, cfg.extra
    if not set(modes := str(x.modes).split(",")) <= {"samples", "prompts"}:
        raise C.ConfigError(f"--modes takes 'samples', 'prompts' or both, comma-separated; got {x.modes!r}")
    eng, rng, results = random_engine(mc), np.random.default_rng(0), []
    weight_bytes = (sum(a.size for a in jax.tree.leaves(eng.params)) - eng.params["wte"].size) * jnp.dtype(
        mc.compute_dtype).itemsize  # the embedding is a lookup: one row read per token
    bw = next((v for k, v in HBM_BPS.items() if k.lower() in jax.devices()[0].device_kind.lower()), None)
    for B, mode in [(B, m) for B in map(int, str(x.batches).split(",")) for m in (modes if B > 1 else modes[:1])]:
        prompts = [rng.integers(10, mc.vocab_size, x.prompt_len).tolist() for _ in range(B if mode == "prompts" else 1)]
        times = []  # (prefill s, decode s, new tokens) per rep; rep 0 compiles
        for rep in range(x.reps + 1):
            t0 = time.perf_counter()
            st, stops = eng.start(prompts, num_samples=B // len(prompts), max_tokens=x.new_tokens, temperature=1.0,
                                  top_k=50, seed=rep, use_tools=False)
            jax.block_until_ready(st.token)
            t1 = time.perf_counter()
            st = E.run(eng.decode_params, st, x.new_tokens, cfg=mc, stops=stops)
            times.append((t1 - t0, time.perf_counter() - t1, int(np.asarray(st.n).sum())))
        prefill_s, decode_s = (float(np.median([t[i] for t in times[1:]])) for i in (0, 1))
        steps, cache_bytes = x.new_tokens - 1, 2 * mc.n_layer * st.cache["k"][0].nbytes  # token 1: prefill; k + v
        r = {"batch": B, "mode": mode if B > 1 else "single", "new_tokens_total": times[-1][2],
             "tokens_per_s": times[-1][2] / (prefill_s + decode_s), "decode_tokens_per_s": B * steps / decode_s,
             "decode_step_ms": 1e3 * decode_s / steps, "prefill_ms": 1e3 * prefill_s,
             "weights_bytes": int(weight_bytes), "cache_bytes": int(cache_bytes)}
        if bw:
            bound = (weight_bytes + cache_bytes) / bw
            r.update(bandwidth_bytes_per_s=bw, roofline_step_ms=1e3 * bound, step_vs_roofline=decode_s / steps / bound)
        results.append(r)
        print(f"batch {B} ({r['mode']}): {r['tokens_per_s']:,.0f} tokens/s end to end ({r['decode_tokens_per_s']:,.0f}"
              f" in decode), decode step {r['decode_step_ms']:.2f} ms, prefill {r['prefill_ms']:.1f} ms"
              + (f", {r['step_vs_roofline']:.2f}x the bandwidth bound" if bw else ""), file=sys.stderr)
    out = {"bench": "decode", "device": jax.devices()[0].device_kind, "platform": jax.default_backend(),
           "jax": jax.__version__, "depth": mc.depth, "vocab_size": mc.vocab_size, "compute_dtype": mc.compute_dtype,
           "prompt_len": x.prompt_len, "new_tokens": x.new_tokens, "results": results}
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    cli(main)
