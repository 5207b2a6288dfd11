"""Supervised finetuning (nanochat's chat_sft.py): one conversation per row, padded, loss only on the
assistant's tokens (text, python calls, <|assistant_end|>; never user text or tool output).

    python -m scripts.chat_sft                         # tiny preset: offline SFT mixture
    python -m scripts.chat_sft --preset d20            # nanochat's mixture (ARC, GSM8K, SmolTalk, ...)

LR × 0.02 decaying linearly to 0, Muon momentum 0.95; validation loss every --eval_every steps and quick
categorical accuracy on MMLU / ARC-Easy slices every --eval_metrics_every steps.
"""
from __future__ import annotations

import dataclasses
import time

import jax

from jaxchat import config as C
from jaxchat import data, stage, train
from jaxchat import model as gpt
from jaxchat import sharding as shd
from jaxchat.checkpoint import Checkpoints
from jaxchat.common import cli, log_section, print0
from jaxchat.tasks import sft_mixture
from jaxchat.tokenizer import Tokenizer


def _masked_nll_sum(params, b, mc):
    """(Σ nll, #targets) over an [A, B, T] batch: counted on the device, so every process sees global totals."""
    nll = gpt.token_nll(params, b["inputs"].reshape(-1, b["inputs"].shape[-1]),
                        b["targets"].reshape(-1, b["targets"].shape[-1]), mc)
    return nll.sum(), (b["targets"] >= 0).sum()


def main(argv=None):
    cfg = C.load(["mesh", "sft"], argv, extra={"source_step": -1})
    ctx = stage.init(cfg.mesh, training=True)
    tc: C.SFTConfig = cfg.sft
    tok = Tokenizer.load()
    params, mc, src_meta = stage.load_source(tc.source, tc.model_tag, ctx, cfg.extra.source_step)
    tag = stage.model_tag(tc.model_tag, mc)
    rows, local_rows = stage.rows_per_process(tc.device_batch_size, ctx)
    if tc.target_examples_per_step % rows:
        raise C.ConfigError(f"target_examples_per_step={tc.target_examples_per_step} must be a multiple of "
                            f"device_batch_size x devices = {rows}")
    accum = tc.target_examples_per_step // rows
    train_task = sft_mixture("train", online=tc.online, seed=tc.seed, arithmetic_repeat=tc.arithmetic_repeat)
    val_task = sft_mixture("val", online=tc.online, seed=tc.seed)
    T = mc.max_seq_len
    batches = data.SFTBatches(train_task, tok, rows=local_rows, accum=accum, max_tokens=T, seed=tc.seed,
                              process_index=ctx.process_index, process_count=ctx.process_count)
    epoch_steps = batches.steps_per_epoch
    n_iter = tc.num_iterations if tc.num_iterations > 0 else epoch_steps * tc.num_epochs
    stage.banner("chat_sft", source=f"{tc.source} d{mc.depth} step {src_meta.get('step')}",
                 mixture=f"{len(train_task):,} conversations", batch=f"{accum} x {rows} conversations",
                 steps=f"{n_iter} ({n_iter / epoch_steps:.2f} epochs)")
    val_batches = list(_take(data.SFTBatches(val_task, tok, rows=local_rows, accum=1, max_tokens=T, seed=0,
                                             process_index=ctx.process_index, process_count=ctx.process_count),
                             min(tc.eval_steps, len(val_task) // rows)))
    setup = train.create_train_state(mc, tc, ctx.mesh, n_iter, params=params)
    ck = Checkpoints(stage.out_dir("sft", tag), keep=tc.keep_checkpoints)
    # on the mesh like the train step: the batch sharded by the rules table, the model's layout pins active
    nll_sum = shd.in_mesh(ctx.mesh, jax.jit(lambda p, b: _masked_nll_sum(p, b, mc)))

    def evaluate_fn(state, step):
        tot = cnt = 0.0
        for b in val_batches:
            s, c = nll_sum(state["params"], train.put_batch(setup, {k: b[k] for k in ("inputs", "targets")}))
            tot, cnt = tot + float(s), cnt + float(c)
        out = {"val_loss": tot / max(cnt, 1)}
        if tc.eval_metrics_every > 0 and (step % tc.eval_metrics_every == 0 or step == n_iter):
            out.update(quick_metrics(state["params"], mc, tok, ctx, tc.eval_metrics_max_problems))
        return out

    loop = train.Loop(setup=setup, batches=batches, name="chat_sft", tokens_per_step=accum * rows * T,
                      checkpoints=ck, log=stage.logger("sft", tag), evaluate=evaluate_fn,
                      eval_every=tc.eval_every, save_every=tc.save_every, resume=tc.resume,
                      overwrite=tc.overwrite, save_optimizer=tc.save_optimizer,
                      meta=lambda: {"stage": "sft", "train": dataclasses.asdict(tc), "preset": cfg.preset})
    t0 = time.time()
    state, summary = train.run(loop)
    summary.update(wall_time_s=time.time() - t0, conversations=len(train_task), epochs=n_iter / epoch_steps,
                   examples=n_iter * tc.target_examples_per_step, depth=mc.depth, online=tc.online)
    stage.write_summary("sft", tag, summary)
    log_section("chat-sft", summary)
    print0(f"[chat_sft] done: val loss {summary.get('val_loss', float('nan')):.4f}")
    ck.close()
    return summary


def quick_metrics(params, mc, tok, ctx, max_problems: int) -> dict:
    """Categorical accuracy on slices of MMLU and ARC-Easy (test splits), as nanochat's SFT logs."""
    try:
        from jaxchat.evaluate import categorical_accuracy
    except ImportError:  # the chat-eval scorer is optional here
        return {}
    from jaxchat.tasks import ARC, MMLU

    out = {}
    for name, task in (("mmlu_acc", MMLU("test")), ("arc_easy_acc", ARC("ARC-Easy", "test"))):
        n = min(len(task), max_problems)
        out[name] = categorical_accuracy(params, mc, tok, task, max_problems=n, mesh=ctx.mesh)
    return out


def _take(it, n):
    for _ in range(n):
        yield next(it)


if __name__ == "__main__":
    cli(main)
