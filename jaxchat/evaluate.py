"""Evaluation: bits per byte (base/mid stages), CORE (base models), chat evals and ChatCORE.

Bits per byte (nanochat's definition): Σ nll(target) over targets that are real text (token byte length > 0;
special tokens and ignored targets excluded) ÷ (ln 2 · Σ their UTF-8 byte lengths). Vocabulary-size
invariant, and directly comparable with a compressor's output size (`xz_bits_per_byte`).
"""
from __future__ import annotations

import lzma
import math
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from jaxchat import model as gpt
from jaxchat import sharding as shd


@partial(jax.jit, static_argnums=(4,))
def _nll_bytes(params, inputs, targets, token_bytes, model_cfg):
    nll = gpt.token_nll(params, inputs, targets, model_cfg)
    nbytes = jnp.where(targets >= 0, token_bytes[jnp.maximum(targets, 0)], 0)
    counted = nbytes > 0
    return jnp.sum(jnp.where(counted, nll, 0.0)), jnp.sum(nbytes), jnp.sum(jnp.where(targets >= 0, nll, 0.0)), \
        jnp.sum(targets >= 0)


def loss_stats(params, rows, token_bytes, model_cfg, mesh, batch_rows: int) -> dict:
    """Mean loss and bits per byte over rows [N, T+1] (inputs = row[:-1], targets = row[1:]).

    Rows are split across processes and devices; partial batches are padded with ignored targets."""
    div = shd.batch_divisor(mesh) * jax.process_count()
    batch_rows = max(div, (batch_rows // div) * div)
    sharding = shd.batch_sharding(mesh, ndim=2)
    tb = jnp.asarray(token_bytes, jnp.int32)
    tot_nll = tot_bytes = tot_loss = tot_count = 0.0
    for i in range(0, len(rows), batch_rows):
        chunk = rows[i:i + batch_rows]
        inputs, targets = chunk[:, :-1], chunk[:, 1:].astype(np.int32)
        if len(chunk) < batch_rows:  # pad to a fixed shape (one compilation)
            pad = batch_rows - len(chunk)
            inputs = np.concatenate([inputs, np.zeros((pad, inputs.shape[1]), inputs.dtype)])
            targets = np.concatenate([targets, np.full((pad, targets.shape[1]), -1, np.int32)])
        pi, pc = jax.process_index(), jax.process_count()
        a, b, c, d = _nll_bytes(params, shd.put_global_batch(inputs[pi::pc] if pc > 1 else inputs, sharding),
                                shd.put_global_batch(targets[pi::pc] if pc > 1 else targets, sharding), tb, model_cfg)
        tot_nll += float(a)
        tot_bytes += float(b)
        tot_loss += float(c)
        tot_count += float(d)
    return {"loss": tot_loss / max(tot_count, 1), "bpb": tot_nll / (math.log(2) * max(tot_bytes, 1)),
            "tokens": int(tot_count), "bytes": int(tot_bytes)}


def xz_bits_per_byte(text: str) -> float:
    """The same text compressed with xz -9 (extreme): a strong classical baseline for bits per byte."""
    raw = text.encode("utf-8")
    comp = lzma.compress(raw, preset=9 | lzma.PRESET_EXTREME)
    return 8.0 * len(comp) / max(len(raw), 1)
