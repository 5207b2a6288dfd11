"""Midtraining (nanochat's mid_train.py): the base model learns the chat format, tool calls, multiple choice
and spelling from conversations rendered and packed into rows, trained on ALL tokens (nanochat V1).

    python -m scripts.mid_train                        # tiny preset: offline mixture (see jaxchat/tasks)
    python -m scripts.mid_train --preset d20           # nanochat's online mixture (SmolTalk, MMLU aux, GSM8K, ...)

One pass over the mixture (or --num_iterations steps of a uniform subsample: the mixture is shuffled), same
optimizer and LRs as pretraining, constant LR then linear decay over the last 20%, Muon momentum warmup.
"""
from __future__ import annotations

import dataclasses
import time

from jaxchat import config as C
from jaxchat import data, evaluate, stage, train
from jaxchat import model as gpt
from jaxchat.checkpoint import Checkpoints
from jaxchat.common import cli, log_section, print0
from jaxchat.tasks import mid_train_mixture
from jaxchat.tokenizer import Tokenizer


def main(argv=None):
    cfg = C.load(["mesh", "mid"], argv, extra={"source_step": -1})
    ctx = stage.init(cfg.mesh, training=True)
    tc: C.MidConfig = cfg.mid
    tok = Tokenizer.load()
    params, mc, src_meta = stage.load_source(tc.source, tc.model_tag, ctx, cfg.extra.source_step)
    tag = stage.model_tag(tc.model_tag, mc)
    T = mc.max_seq_len
    rows, local_rows = stage.rows_per_process(tc.device_batch_size, ctx)
    accum = train.grad_accum_steps(tc.total_batch_size, tc.device_batch_size, T, ctx.n_devices)
    tokens_per_step = accum * rows * T
    train_task = mid_train_mixture("train", online=tc.online, seed=tc.seed, arithmetic_repeat=tc.arithmetic_repeat)
    val_task = mid_train_mixture("val", online=tc.online, seed=tc.seed)
    total = stage.estimate_tokens(train_task, tok, T)
    epoch_steps = max(1, int(total // tokens_per_step))
    n_iter = tc.num_iterations if tc.num_iterations > 0 else epoch_steps
    stage.banner("mid_train", source=f"{tc.source} d{mc.depth} step {src_meta.get('step')}",
                 mixture=f"{len(train_task):,} conversations ≈ {total:,.0f} tokens",
                 batch=f"{accum} x {rows} x {T} = {tokens_per_step:,} tokens/step",
                 steps=f"{n_iter} ({n_iter / epoch_steps:.2f} epochs)")

    stream = data.conversation_stream(train_task, tok, max_tokens=T, process_index=ctx.process_index,
                                      process_count=ctx.process_count, repeat=True)
    batches = data.RowBatches(data.Packer(stream, T, "concat"), local_rows, accum)
    val_stream = data.conversation_stream(val_task, tok, max_tokens=T, repeat=True)
    val_packer = data.Packer(val_stream, T, "concat")
    n_val_rows = max(rows, min(tc.eval_tokens // T, int(stage.estimate_tokens(val_task, tok, T) // T)))
    val_rows = val_packer.next_rows(n_val_rows)
    token_bytes = tok.token_bytes()
    setup = train.create_train_state(mc, tc, ctx.mesh, n_iter, params=params)
    ck = Checkpoints(stage.out_dir("mid", tag), keep=tc.keep_checkpoints)

    def evaluate_fn(state, step):
        s = evaluate.loss_stats(state["params"], val_rows, token_bytes, mc, ctx.mesh, batch_rows=rows)
        return {"val_loss": s["loss"], "val_bpb": s["bpb"]}

    loop = train.Loop(setup=setup, batches=batches, name="mid_train", tokens_per_step=tokens_per_step, checkpoints=ck,
                      log=stage.logger("mid", tag), evaluate=evaluate_fn, eval_every=tc.eval_every,
                      save_every=tc.save_every, resume=tc.resume, overwrite=tc.overwrite,
                      meta=lambda: {"stage": "mid", "train": dataclasses.asdict(tc), "preset": cfg.preset})
    t0 = time.time()
    state, summary = train.run(loop)  # its summary holds the last step's val_loss / val_bpb
    summary.update(wall_time_s=time.time() - t0, tokens=n_iter * tokens_per_step,
                   epochs=n_iter / epoch_steps, conversations=len(train_task), depth=mc.depth, online=tc.online,
                   tok_per_sec=n_iter * tokens_per_step / max(summary["train_time_s"], 1e-9),
                   params=gpt.num_params(mc))
    stage.write_summary("mid", tag, summary)
    log_section("midtraining", summary)
    print0(f"[mid_train] done: val loss {summary['val_loss']:.4f}, val bpb {summary['val_bpb']:.4f}")
    ck.close()
    return summary


if __name__ == "__main__":
    cli(main)
