"""Bits per byte of the base model on larger train/validation splits, greedy samples, and the xz -9 baseline
on exactly the same validation text (nanochat's base_loss.py, plus the compressor comparison).

    python -m scripts.base_loss                   # tiny preset
    python -m scripts.base_loss --preset d20 --eval_tokens=10485760
"""
from __future__ import annotations

import time

import numpy as np

from jaxchat import config as C
from jaxchat import data, evaluate, stage
from jaxchat.checkpoint import load_model
from jaxchat.common import cli, log_section, print0
from jaxchat.engine import Engine
from jaxchat.tokenizer import Tokenizer


def main(argv=None):
    cfg = C.load(["mesh", "base"], argv, extra={"step": -1, "xz_max_bytes": 4_000_000})
    ctx = stage.init(cfg.mesh)
    tc = cfg.base
    tok = Tokenizer.load()
    params, mc, meta = load_model("base", tc.model_tag or None, None if cfg.extra.step < 0 else cfg.extra.step,
                                  mesh=ctx.mesh)
    tag = meta.get("model_tag") or stage.model_tag(tc.model_tag, mc)
    T = mc.max_seq_len
    rows = tc.device_batch_size * ctx.n_devices
    token_bytes = tok.token_bytes()
    t0 = time.time()
    results = {}
    for split in ("train", "val"):
        r = data.eval_rows(tc.source, split, tok, seq_len=T, max_tokens=tc.eval_tokens)
        s = evaluate.loss_stats(params, r, token_bytes, mc, ctx.mesh, batch_rows=rows)
        results[f"{split}_bpb"], results[f"{split}_loss"], results[f"{split}_tokens"] = s["bpb"], s["loss"], s["tokens"]
        if split == "val":
            # the exact text those validation targets cover, for the compressor baseline
            text = tok.decode(np.concatenate([r[0, :1], r[:, 1:].reshape(-1)]).tolist())
            text = text.encode()[: cfg.extra.xz_max_bytes].decode("utf-8", "ignore")
            results["xz_bpb"] = evaluate.xz_bits_per_byte(text)
            results["xz_bytes"] = len(text.encode())
    results["vs_xz"] = results["val_bpb"] / results["xz_bpb"] - 1.0
    eng = Engine(params, mc, tok, mesh=ctx.mesh)
    prompts = [tok.encode(p, prepend=tok.bos_id) for p in stage.SAMPLE_PROMPTS]
    seqs, _ = eng.generate_batch(prompts, max_tokens=16, temperature=0.0, use_tools=False)
    results["samples"] = {p: tok.decode(s) for p, s in zip(stage.SAMPLE_PROMPTS, seqs)}
    results["eval_time_s"] = time.time() - t0
    print0(f"[base_loss] train bpb {results['train_bpb']:.4f} | val bpb {results['val_bpb']:.4f} | "
           f"xz -9 on the same val text {results['xz_bpb']:.4f} bpb | model vs xz {100 * results['vs_xz']:+.1f}%")
    for p, s in results["samples"].items():
        print0(f"    {p!r} -> {s!r}")
    stage.write_summary("base", tag, {**_previous(tag), "base_loss": results})
    log_section("base-model-loss", results)
    return results


def _previous(tag):
    import json

    p = stage.out_dir("base", tag) / "summary.json"
    return json.loads(p.read_text()) if p.exists() else {}


if __name__ == "__main__":
    cli(main)
