"""Pretrain the base model (nanochat's base_train.py): --total_batch_size tokens a step for --num_iterations >
--target_flops > --target_param_data_ratio steps; val bpb every --eval_every steps, CORE every --core_metric_every.

    python -m scripts.base_train                       # tiny preset: embedded corpus, CPU
    python -m scripts.base_train --preset d20          # 8xH100: FineWeb-edu, 21,400 steps of 524,288 tokens
    python -m scripts.base_train --preset speedrun     # master's: d24 on the depth dial, 5,568 steps of 1,048,576
    python -m scripts.base_train --resume              # continue exactly from the last checkpoint
"""
from __future__ import annotations

import dataclasses
import json
import math

from jaxchat import config as C
from jaxchat import core_tasks, data, evaluate, report, stage, train
from jaxchat import model as gpt
from jaxchat.checkpoint import Checkpoints
from jaxchat.common import cli, print0
from jaxchat.tokenizer import Tokenizer


def main(argv=None):
    cfg = C.load(["model", "mesh", "base", "eval"], argv, extra={"dry_run": False, "devices": -1})
    ctx = stage.init(cfg.mesh, training=True, dry_run=cfg.extra.dry_run)
    tc, mc = cfg.base, cfg.model
    tok = None if cfg.extra.dry_run else Tokenizer.load()
    if tok is not None and tok.vocab_size != mc.vocab_size:
        print0(f"[base_train] vocab_size {mc.vocab_size} -> {tok.vocab_size} (the trained tokenizer's)")
        mc = dataclasses.replace(mc, vocab_size=tok.vocab_size)
    tc, dial = train.depth_dial(mc, tc)  # master's batch, LRs and weight decay from depth (when [base] depth_dial)
    T, fpt = mc.max_seq_len, gpt.flops_per_token(mc)
    if cfg.extra.dry_run and cfg.extra.devices > 0:  # plan for another machine (e.g. --devices=8 for an 8-GPU node)
        ctx = dataclasses.replace(ctx, n_devices=cfg.extra.devices)
    rows, local_rows = stage.rows_per_process(tc.device_batch_size, ctx)
    accum = train.grad_accum_steps(tc.total_batch_size, tc.device_batch_size, T, ctx.n_devices)
    tokens_per_step = accum * rows * T
    n_iter, why = train.horizon(mc, tc, tokens_per_step)
    tokens, tag = n_iter * tokens_per_step, stage.model_tag(tc.model_tag, mc)
    scaled = {"dial": f"LR x {dial['lr_scale']:.4f}, weight decay {dial['weight_decay']:.4f}"} if tc.depth_dial else {}
    stage.banner("base_train" + " dry run" * cfg.extra.dry_run, model=f"d{mc.depth} ({gpt.num_params(mc):,} params)",
                 devices=ctx.n_devices, batch=f"{accum} x {rows} x {T} = {tokens_per_step:,} tokens/step",
                 steps=f"{n_iter:,} ({why})", tokens=f"{tokens:,}", flops=f"{fpt:.3e}/token, {fpt * tokens:.3e} in all",
                 **scaled)
    if cfg.extra.dry_run:
        plan = {"params": gpt.num_params(mc), "depth": mc.depth, "width": mc.n_embd, "heads": mc.n_head,
                "seq_len": T, "vocab": mc.vocab_size, "devices": ctx.n_devices,
                "device_batch_size": tc.device_batch_size, "grad_accum": accum, "tokens_per_step": tokens_per_step,
                "steps": n_iter, "horizon_rule": why, "tokens": tokens, "flops_per_token": fpt,
                "total_flops": fpt * tokens, **dial}
        print0("[base_train] dry run: " + json.dumps(plan))
        return plan

    batches = data.pretrain_batches(tc.source, "train", tok, rows=local_rows, seq_len=T, accum=accum, seed=tc.seed,
                                    packing=tc.packing, process_index=ctx.process_index,
                                    process_count=ctx.process_count)
    val_rows = data.eval_rows(tc.source, "val", tok, seq_len=T, max_tokens=tc.eval_tokens, packing=tc.packing)
    ck = Checkpoints(stage.out_dir("base", tag), keep=tc.keep_checkpoints)
    # the CORE suite is resolved (its bundle fetched) here, so a failed download stops the run before any training
    core_every = tc.core_metric_every
    core_suite = core_tasks.core_tasks(cfg.eval.core_bundle) if core_every > 0 else ()

    def evaluate_fn(state, step):  # called every gcd(eval_every, core_metric_every) steps; each keeps its schedule
        res, due = {}, lambda every: step == n_iter or (every > 0 and step % every == 0)
        if due(tc.eval_every):
            s = evaluate.loss_stats(state["params"], val_rows, tok.token_bytes(), mc, ctx.mesh, batch_rows=rows)
            res.update(val_bpb=s["bpb"], val_loss=s["loss"])
        if core_every > 0 and due(core_every):
            scorer = evaluate.Scorer.for_model(state["params"], mc, ctx.mesh, batch_size=cfg.eval.batch_size)
            r = evaluate.evaluate_core(scorer, tok, max_per_task=tc.core_max_per_task, tasks=core_suite)
            res.update(core_metric=r["core"], core_tasks_run=r["core_tasks_run"])
        return res

    def sample_fn(state, step):
        return {"samples": stage.sample_completions(state["params"], mc, tok, ctx.mesh)}

    log = stage.logger("base", tag, tc)
    state, summary = train.run(
        train.create_train_state(mc, tc, ctx.mesh, n_iter), lambda step, state: next(batches), name="base_train",
        ck=ck, log=log, data=batches, evaluate=evaluate_fn, sample=sample_fn,
        eval_every=math.gcd(*(e for e in (tc.eval_every, core_every) if e > 0)) or -1,
        meta={"stage": "base", "preset": cfg.preset, "tokenizer_vocab": tok.vocab_size,
              "user_config": dataclasses.asdict(cfg.base)})  # before the dial: master's SFT inherits these LRs
    summary.update(params=gpt.num_params(mc), tokens=tokens, tokens_per_step=tokens_per_step, flops_per_token=fpt,
                   tok_per_sec=tokens / max(summary["train_time_s"], 1e-9), depth=mc.depth, preset=cfg.preset,
                   source=tc.source)
    core = ""
    if core_every > 0:  # time to GPT-2: the training time (evaluations excluded) when CORE first reached GPT-2's
        history = core_history(log.path)
        t = next((t for _, t, c in history if c >= tc.gpt2_core), None)
        summary.update(core_history=history, gpt2_core=tc.gpt2_core, time_to_gpt2_s=t)
        core = f", CORE {summary['core_metric']:.4f} (GPT-2's {tc.gpt2_core}: " + (
            "not reached)" if t is None else f"reached after {t / 60:.1f} min of steps)")
    print0(f"[base_train] done: val bpb {summary['val_bpb']:.4f}{core}, {summary['tok_per_sec']:,.0f} tokens/s, "
           f"{summary['train_time_s'] / 60:.1f} min of steps")
    return stage.finish("base-model-training", summary, checkpoints=ck)


def core_history(log_path) -> list:
    """[[step, training seconds, CORE]] of every CORE evaluation in the run's log (the last record per step: a resumed
    run re-logs). Evaluations stop the clock, so the time at step s's is that logged with training step s - 1."""
    log = report.read_log(log_path) if log_path.exists() else {}  # process 0 writes the log
    elapsed = {r["step"]: r["elapsed"] for r in log.get("train", [])}
    return [[r["step"], elapsed.get(r["step"] - 1, 0.0), r["core_metric"]] for r in log.get("eval", [])
            if "core_metric" in r]


if __name__ == "__main__":
    cli(main)
