"""Supervised finetuning (nanochat's chat_sft.py): loss only on the assistant's tokens (text, python calls,
<|assistant_end|>; never user text or tool output).

    python -m scripts.chat_sft                         # tiny preset: offline SFT mixture
    python -m scripts.chat_sft --preset d20            # nanochat's mixture (ARC, GSM8K, SmolTalk, ...)
    python -m scripts.chat_sft --preset master         # nanochat master's SFT, straight from the base model

V1: one conversation per row, padded; --target_examples_per_step conversations a step; LR × 0.02 decaying linearly
to 0, Muon momentum 0.95. Master (`inherit = true`): the base run's LRs, batch and optimizer state (see
`stage.inherit_optimizer`), rows of max_seq_len tokens packed by `data.PackedSFT`, --total_batch_size tokens a step;
LR × 0.8, constant, then linear to 0 over the last half; Muon momentum 0.85 → 0.95 over 300 steps
(configs/master.toml). Validation loss every --eval_every steps and quick categorical accuracy on MMLU / ARC-Easy
slices every --eval_metrics_every steps.
"""
from __future__ import annotations

import itertools

import jax

from jaxchat import config as C
from jaxchat import data, stage, train
from jaxchat import model as gpt
from jaxchat import sharding as shd
from jaxchat.checkpoint import Checkpoints
from jaxchat.common import cli, print0
from jaxchat.evaluate import categorical_accuracy
from jaxchat.tasks import ARC, MMLU, sft_mixture


def _masked_nll_sum(params, b, mc):
    """(Σ nll, #targets) over an [A, B, T] batch: counted on the device, so every process sees global totals."""
    nll = gpt.token_nll(params, b["inputs"].reshape(-1, b["inputs"].shape[-1]),
                        b["targets"].reshape(-1, b["targets"].shape[-1]), mc)
    return nll.sum(), (b["targets"] >= 0).sum()


def quick_metrics(params, mc, tok, ctx, max_problems: int) -> dict:
    """Categorical accuracy on slices of MMLU and ARC-Easy (test splits), as nanochat's SFT logs."""
    return {name: categorical_accuracy(params, mc, tok, task, max_problems=max_problems, mesh=ctx.mesh)
            for name, task in (("mmlu_acc", MMLU("test")), ("arc_easy_acc", ARC("ARC-Easy", "test")))}


def main(argv=None):
    cfg, ctx, tc, tok, params, mc, src_meta = stage.start_finetune("sft", argv)
    tag, T = stage.model_tag(tc.model_tag, mc), mc.max_seq_len
    rows, local_rows = stage.rows_per_process(tc.device_batch_size, ctx)
    train_task = sft_mixture("train", online=tc.online, seed=tc.seed, arithmetic_repeat=tc.arithmetic_repeat,
                             recipe=tc.mixture)
    val_task = sft_mixture("val", online=tc.online, seed=tc.seed, recipe=tc.mixture)
    shards = {"process_index": ctx.process_index, "process_count": ctx.process_count}
    if tc.inherit:  # master: packed rows, total_batch_size tokens a step, an epoch estimated from the token count
        accum = train.grad_accum_steps(tc.total_batch_size, tc.device_batch_size, T, ctx.n_devices)
        batches = data.PackedSFT(train_task, tok, rows=local_rows, accum=accum, max_tokens=T, **shards)
        epoch_steps = max(1, int(stage.estimate_tokens(train_task, tok, T) // (accum * rows * T)))
        val_iter = data.PackedSFT(val_task, tok, rows=local_rows, accum=1, max_tokens=T, **shards)
        n_val = max(1, int(stage.estimate_tokens(val_task, tok, T) // (rows * T)))
        unit = f"{accum} x {rows} x {T} tokens"
    else:
        if tc.target_examples_per_step % rows:
            raise C.ConfigError(f"target_examples_per_step={tc.target_examples_per_step} must be a multiple of "
                                f"device_batch_size x devices = {rows}")
        accum = tc.target_examples_per_step // rows
        batches = data.SFTBatches(train_task, tok, rows=local_rows, accum=accum, max_tokens=T, seed=tc.seed, **shards)
        epoch_steps = batches.steps_per_epoch
        val_iter = data.SFTBatches(val_task, tok, rows=local_rows, accum=1, max_tokens=T, seed=0, **shards)
        n_val, unit = len(val_task) // rows, f"{accum} x {rows} conversations"
    n_iter = tc.num_iterations if tc.num_iterations > 0 else epoch_steps * tc.num_epochs
    stage.banner("chat_sft", source=f"{tc.source} d{mc.depth} step {src_meta.get('step')}",
                 mixture=f"{len(train_task):,} conversations", batch=unit,
                 steps=f"{n_iter} ({n_iter / epoch_steps:.2f} epochs)")
    val_batches = list(itertools.islice(val_iter, min(tc.eval_steps, n_val)))
    setup = train.create_train_state(mc, tc, ctx.mesh, n_iter, params=params)
    if tc.inherit:
        stage.inherit_optimizer(setup, tc, src_meta)
    ck = Checkpoints(stage.out_dir("sft", tag), keep=tc.keep_checkpoints)
    # on the mesh like the train step: the batch sharded by the rules table, the model's layout pins active
    nll_sum = shd.in_mesh(ctx.mesh, jax.jit(lambda p, b: _masked_nll_sum(p, b, mc)))

    def evaluate_fn(state, step):
        sums = [nll_sum(state["params"], train.put_batch(setup, b)) for b in val_batches]
        out = {"val_loss": sum(float(s) for s, _ in sums) / max(sum(float(c) for _, c in sums), 1)}
        if tc.eval_metrics_every > 0 and (step % tc.eval_metrics_every == 0 or step == n_iter):
            out.update(quick_metrics(state["params"], mc, tok, ctx, tc.eval_metrics_max_problems))
        return out

    state, summary = train.run(setup, lambda step, state: next(batches), name="chat_sft", ck=ck, data=batches,
                               log=stage.logger("sft", tag, tc), evaluate=evaluate_fn, save_optimizer=tc.save_optimizer,
                               meta={"stage": "sft", "preset": cfg.preset})
    examples = batches.consumed * ctx.process_count if tc.inherit else n_iter * tc.target_examples_per_step
    summary.update(conversations=len(train_task), epochs=n_iter / epoch_steps, examples=examples, depth=mc.depth,
                   online=tc.online)
    print0(f"[chat_sft] done: val loss {summary.get('val_loss', float('nan')):.4f}")
    return stage.finish("chat-sft", summary, checkpoints=ck)


if __name__ == "__main__":
    cli(main)
