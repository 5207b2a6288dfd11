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
from jaxchat.common import cli, print0
from jaxchat.tokenizer import Tokenizer


def main(argv=None):
    cfg = C.load(["mesh", "base"], argv, extra={"step": -1, "xz_max_bytes": 4_000_000})
    ctx = stage.init(cfg.mesh)
    tc = cfg.base
    tok = Tokenizer.load()
    params, mc, _ = stage.load_source("base", tc.model_tag, ctx, cfg.extra.step)
    rows = tc.device_batch_size * ctx.n_devices
    t0 = time.time()
    res = {}
    for split in ("train", "val"):  # contiguous text whatever the training packing: what xz compresses too
        r = data.eval_rows(tc.source, split, tok, seq_len=mc.max_seq_len, max_tokens=tc.eval_tokens)
        s = evaluate.loss_stats(params, r, tok.token_bytes(), mc, ctx.mesh, batch_rows=rows)
        res[f"{split}_bpb"], res[f"{split}_loss"], res[f"{split}_tokens"] = s["bpb"], s["loss"], s["tokens"]
    # xz on the exact text the validation targets cover (r: the val rows)
    text = tok.decode(np.concatenate([r[0, :1], r[:, 1:].reshape(-1)]).tolist())
    text = text.encode()[: cfg.extra.xz_max_bytes].decode("utf-8", "ignore")
    res.update(xz_bpb=evaluate.xz_bits_per_byte(text), xz_bytes=len(text.encode()))
    res["vs_xz"] = res["val_bpb"] / res["xz_bpb"] - 1.0
    print0(f"[base_loss] train bpb {res['train_bpb']:.4f} | val bpb {res['val_bpb']:.4f} | "
           f"xz -9 on the same val text {res['xz_bpb']:.4f} bpb | model vs xz {100 * res['vs_xz']:+.1f}%")
    res.update(samples=stage.sample_completions(params, mc, tok, ctx.mesh), time_s=time.time() - t0)
    return stage.finish("base-model-loss", res)


if __name__ == "__main__":
    cli(main)
