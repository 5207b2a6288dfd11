"""Midtraining (nanochat's mid_train.py): chat format, tool calls, multiple choice and spelling from conversations
packed into rows, ALL tokens trained (nanochat V1); one pass over the shuffled mixture, or --num_iterations steps.

    python -m scripts.mid_train                        # tiny preset: offline mixture (see jaxchat/tasks)
    python -m scripts.mid_train --preset d20           # nanochat's online mixture (SmolTalk, MMLU aux, GSM8K, ...)
"""
from __future__ import annotations

from jaxchat import data, evaluate, stage, train
from jaxchat import model as gpt
from jaxchat.checkpoint import Checkpoints
from jaxchat.common import cli, print0
from jaxchat.tasks import mid_train_mixture


def main(argv=None):
    cfg, ctx, tc, tok, params, mc, src_meta = stage.start_finetune("mid", argv)
    tag, T = stage.model_tag(tc.model_tag, mc), mc.max_seq_len
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
    val_packer = data.Packer(data.conversation_stream(val_task, tok, max_tokens=T, repeat=True), T, "concat")
    val_rows = val_packer.next_rows(max(rows, int(min(tc.eval_tokens, stage.estimate_tokens(val_task, tok, T)) // T)))
    ck = Checkpoints(stage.out_dir("mid", tag), keep=tc.keep_checkpoints)

    def evaluate_fn(state, step):
        s = evaluate.loss_stats(state["params"], val_rows, tok.token_bytes(), mc, ctx.mesh, batch_rows=rows)
        return {"val_loss": s["loss"], "val_bpb": s["bpb"]}

    state, summary = train.run(  # its summary holds the last step's val_loss / val_bpb
        train.create_train_state(mc, tc, ctx.mesh, n_iter, params=params), lambda step, state: next(batches),
        name="mid_train", ck=ck, log=stage.logger("mid", tag, tc), data=batches, evaluate=evaluate_fn,
        meta={"stage": "mid", "preset": cfg.preset})
    tokens = n_iter * tokens_per_step
    summary.update(tokens=tokens, epochs=n_iter / epoch_steps, conversations=len(train_task), depth=mc.depth,
                   online=tc.online, tok_per_sec=tokens / max(summary["train_time_s"], 1e-9), params=gpt.num_params(mc))
    print0(f"[mid_train] done: val loss {summary['val_loss']:.4f}, val bpb {summary['val_bpb']:.4f}")
    return stage.finish("midtraining", summary, checkpoints=ck)


if __name__ == "__main__":
    cli(main)
