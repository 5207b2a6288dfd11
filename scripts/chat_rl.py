"""RL on math (nanochat's chat_rl.py): simplified GRPO = on-policy REINFORCE with a group-mean baseline, no KL, no
reference model, no ratio clipping. Per step: `examples_per_step` questions × `num_samples` completions sampled WITH
the calculator tool; reward 1 if the answer after #### is right; advantage = reward − group mean (÷ group std with
--normalize_std); loss = −Σ logp(sampled token)·advantage / #sampled tokens. Held-out pass@k every --eval_every.

    python -m scripts.chat_rl                          # tiny preset: synthetic calculator arithmetic (offline)
    python -m scripts.chat_rl --preset d20             # GSM8K train from the hub
"""
from __future__ import annotations

import time

import numpy as np

from jaxchat import evaluate, stage, train
from jaxchat.checkpoint import Checkpoints
from jaxchat.common import bucket, cli, print0, read_jsonl
from jaxchat.engine import Engine
from jaxchat.tasks import rl_tasks

BUCKETS = (64, 128, 256, 512, 1024, 2048)


def policy_gradient_batch(prompts, seqs, masks, advantages, pad_id: int, buckets=BUCKETS) -> dict:
    """Rows = prompt + completion; targets: the tokens the policy SAMPLED (mask 1), −1 at prompt, forced (tool
    output) and padding positions; weights: the row's advantage (the train step's Σ w·nll / #targets is the loss)."""
    rows = [list(p) + list(s) for p, s in zip(prompts, seqs)]
    T = bucket(min(max(len(r) for r in rows) - 1, buckets[-1]), buckets)  # longer rows are cut
    inputs, targets = (np.full((len(rows), T), fill, np.int32) for fill in (pad_id, -1))
    weights = np.zeros((len(rows), T), np.float32)
    for i, (p, m) in enumerate(zip(prompts, masks)):
        row = rows[i][: T + 1]
        n = len(row) - 1
        inputs[i, :n] = row[:-1]
        sampled = np.asarray([0] * (len(p) - 1) + list(m), bool)[:n]  # target j is row[j + 1]
        targets[i, :n] = np.where(sampled, row[1:], -1)
        weights[i, :n] = advantages[i]
    return {"inputs": inputs[None], "targets": targets[None], "weights": weights[None]}


def group_advantages(rewards: np.ndarray, num_samples: int, normalize_std: bool) -> np.ndarray:
    r = rewards.reshape(-1, num_samples)
    a = r - r.mean(axis=1, keepdims=True)
    if normalize_std:
        a = a / (r.std(axis=1, keepdims=True) + 1e-6)
    return a.reshape(-1)


def main(argv=None):
    cfg, ctx, tc, tok, params, mc, src_meta = stage.start_finetune("rl", argv)
    tag, E, N = stage.model_tag(tc.model_tag, mc), tc.examples_per_step, tc.num_samples
    train_task, test_task = rl_tasks(online=tc.task == "gsm8k")
    n_iter = tc.num_iterations if tc.num_iterations > 0 else len(train_task) // E
    stage.banner("chat_rl", source=f"{tc.source} d{mc.depth} step {src_meta.get('step')}",
                 task=f"{type(train_task).__name__} ({len(train_task):,} train / {len(test_task):,} held out)",
                 rollouts=f"{E} questions x {N} samples, <= {tc.max_new_tokens} new tokens, T={tc.temperature}",
                 steps=n_iter)
    order, pad = np.random.default_rng(tc.seed).permutation(len(train_task)), tok.encode_special("<|assistant_end|>")

    def rollouts(step, state):  # the batch: this step's questions, sampled from the current policy
        t0 = time.perf_counter()
        convs = [train_task[int(order[(step * E + j) % len(order)])] for j in range(E)]
        prompts = [tok.render_for_completion(c) for c in convs]
        seqs, masks = Engine(state["params"], mc, tok, mesh=ctx.mesh).generate_batch(
            prompts, num_samples=N, max_tokens=tc.max_new_tokens, temperature=tc.temperature, top_k=tc.top_k,
            seed=tc.seed * 100_003 + step, keep_terminal=True)
        dt, n_tok = time.perf_counter() - t0, sum(len(s) for s in seqs)
        texts = [tok.decode([t for t in s if t != pad]) for s in seqs]
        rewards = np.asarray([train_task.reward(convs[i // N], t) for i, t in enumerate(texts)], np.float32)
        adv = group_advantages(rewards, N, tc.normalize_std)
        batch = policy_gradient_batch([p for p in prompts for _ in range(N)], seqs, masks, adv, pad)
        return {**batch, "info": {"reward": float(rewards.mean()), "seq_len": n_tok / len(seqs), "rollout_s": dt,
                                  "rollout_tok_per_sec": n_tok / dt,
                                  "ended": float(np.mean([bool(s) and s[-1] == pad for s in seqs]))}}

    held_out_convs, k = [test_task[i] for i in range(min(tc.eval_examples, len(test_task)))], min(8, N)

    def held_out(params) -> np.ndarray:  # [problems, k]: which of k samples (temperature 1) are right
        engine, right, chunk = Engine(params, mc, tok, mesh=ctx.mesh), [], max(1, E * N // k)  # rollout-sized
        for b in range(0, len(held_out_convs), chunk):
            convs = held_out_convs[b:b + chunk]
            seqs, _ = engine.generate_batch([tok.render_for_completion(c) for c in convs], num_samples=k,
                                            max_tokens=tc.max_new_tokens, temperature=1.0, top_k=tc.top_k, seed=b)
            right += [test_task.reward(convs[i // k], tok.decode(s)) > 0 for i, s in enumerate(seqs)]
        return np.asarray(right).reshape(-1, k)

    last = {}

    def evaluate_fn(state, step):  # pass@j: any of the first j samples right; reward: the share of right samples
        right = last["right"] = held_out(state["params"])
        return {"heldout_reward": float(right.mean()),
                **{f"pass@{j}": float(right[:, :j].any(axis=1).mean()) for j in range(1, k + 1)}}

    before = held_out(params)  # the source model (before training donates its buffers)
    ck, log = Checkpoints(stage.out_dir("rl", tag), keep=tc.keep_checkpoints), stage.logger("rl", tag, tc)
    state, summary = train.run(train.create_train_state(mc, tc, ctx.mesh, n_iter, params=params), rollouts,
                               name="chat_rl", ck=ck, log=log, evaluate=evaluate_fn, show=("reward",),
                               meta={"stage": "rl", "preset": cfg.preset})
    # The gain without step noise: the same held-out problems and samples (seeds) before and after, so each
    # problem's own difficulty cancels in the paired difference (a 200 x 8 evaluation tells ~0.02 from nothing).
    gain, se = evaluate.paired_gain(*({"total": len(r), "scores": r.sum(axis=1), "num_samples": k}
                                      for r in (before, last["right"])))
    summary.update(heldout_reward_before=float(before.mean()), heldout_gain=gain, heldout_gain_se=se,
                   heldout_problems=len(before), heldout_samples=k)
    print0(f"[chat_rl] held-out reward ({len(before)} problems x {k} samples): {before.mean():.3f} -> "
           f"{summary['heldout_reward']:.3f}, paired gain {gain:+.3f} +- {se:.3f} (standard error)")
    by_step = {r["step"]: r for r in read_jsonl(log.path) if r.get("kind") == "train"}  # a resumed run's last record
    rewards = [by_step[s]["reward"] for s in sorted(by_step)]
    k = min(10, max(1, len(rewards) // 2))
    summary.update(reward_first=float(np.mean(rewards[:k])), reward_last=float(np.mean(rewards[-k:])),
                   reward_window=k, task=type(train_task).__name__, depth=mc.depth,
                   rollout_tok_per_sec=float(np.mean([r["rollout_tok_per_sec"] for r in by_step.values()])))
    print0(f"[chat_rl] done: mean reward first {k} steps {summary['reward_first']:.3f} -> last {k} steps "
           f"{summary['reward_last']:.3f}; rollouts {summary['rollout_tok_per_sec']:,.0f} tokens/s")
    return stage.finish("chat-rl", summary, checkpoints=ck)


if __name__ == "__main__":
    cli(main)
