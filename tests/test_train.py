"""The pure train step: a tiny model learns; accumulation and masking are exact; horizon/batch arithmetic; the loop's
schedule, log records and exact resume."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxchat import config as C
from jaxchat import model as gpt
from jaxchat import sharding as shd
from jaxchat import train
from jaxchat.checkpoint import Checkpoints
from jaxchat.common import JsonlLog, read_jsonl
from jaxchat.config import MeshConfig, ModelConfig, TrainConfig

CFG = ModelConfig(depth=2, vocab_size=64, max_seq_len=16, aspect_ratio=32, head_dim_target=16)


def make(cfg=CFG, tc=TrainConfig(num_iterations=200), devices=1):
    mesh = shd.make_mesh(MeshConfig(fsdp=devices), jax.devices()[:devices])
    return train.create_train_state(cfg, tc, mesh, num_iterations=tc.num_iterations)


def test_tiny_model_memorises_sequences():
    """200 steps on four fixed random sequences drive the loss close to zero."""
    setup = make()
    step = train.jit_train_step(setup)
    seq = np.random.default_rng(0).integers(0, CFG.vocab_size, (1, 4, CFG.max_seq_len + 1), dtype=np.int32)
    batch = train.put_batch(setup, {"inputs": seq[..., :-1], "targets": seq[..., 1:]})
    state, losses = setup.state, []
    for _ in range(200):
        state, m = step(state, batch)
        losses.append(float(m["loss"]))
    assert losses[0] == pytest.approx(np.log(CFG.vocab_size), rel=0.02)  # zero-init lm_head: uniform
    assert losses[-1] < 0.05, losses[-10:]
    assert int(state["step"]) == 200


def test_state_is_donated():
    setup = make(tc=TrainConfig(num_iterations=2))
    step = train.jit_train_step(setup)
    seq = np.zeros((1, 2, CFG.max_seq_len + 1), np.int32)
    old = setup.state
    new, _ = step(old, train.put_batch(setup, {"inputs": seq[..., :-1], "targets": seq[..., 1:]}))
    assert old["params"]["wte"].is_deleted() and not new["params"]["wte"].is_deleted()


def test_grad_accumulation_equals_one_big_batch():
    setup = make()
    rng = np.random.default_rng(1)
    seq = rng.integers(0, CFG.vocab_size, (1, 8, CFG.max_seq_len + 1), dtype=np.int32)
    tgt = seq[..., 1:].copy()
    tgt[0, :3, :5] = -1  # uneven masking across micro-batches: the normaliser must be global
    one = {"inputs": seq[..., :-1], "targets": tgt}
    two = {k: v.reshape(2, 4, CFG.max_seq_len) for k, v in one.items()}
    f = jax.jit(lambda p, b: train.loss_and_grads(p, b, CFG))
    params = jax.tree.map(lambda x: x + 0.01 * jax.random.normal(jax.random.key(0), x.shape), setup.state["params"])
    l1, _, g1 = f(params, one)
    l2, _, g2 = f(params, two)
    np.testing.assert_allclose(float(l1), float(l2), rtol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-7), g1, g2)


def test_loss_masks_and_weights():
    """loss = sum(w * nll) / #(targets >= 0): masked targets contribute nothing; weights scale tokens."""
    setup = make()
    params = jax.tree.map(lambda x: x + 0.02 * jax.random.normal(jax.random.key(1), x.shape), setup.state["params"])
    rng = np.random.default_rng(2)
    x = rng.integers(0, CFG.vocab_size, (1, 2, 8), dtype=np.int32)
    y = rng.integers(0, CFG.vocab_size, (1, 2, 8), dtype=np.int32)
    y[0, 1, 4:] = -1
    w = rng.normal(size=(1, 2, 8)).astype(np.float32)
    nll = np.asarray(gpt.token_nll(params, jnp.asarray(x[0]), jnp.asarray(y[0]), CFG))
    valid = y[0] >= 0
    lg = jax.jit(lambda p, b: train.loss_and_grads(p, b, CFG))  # eager op-by-op on 8 devices is slow
    loss, mean_nll, _ = lg(params, {"inputs": x, "targets": y, "weights": w})
    np.testing.assert_allclose(float(loss), (w[0] * nll)[valid].sum() / valid.sum(), rtol=1e-5)
    np.testing.assert_allclose(float(mean_nll), nll[valid].mean(), rtol=1e-5)
    # changing a masked target's value changes nothing
    y2 = y.copy()
    y2[0, 1, 5] = -7
    loss2, _, _ = lg(params, {"inputs": x, "targets": y2, "weights": w})
    assert float(loss2) == pytest.approx(float(loss))


def test_horizon_precedence_and_batch_arithmetic():
    d20 = ModelConfig(depth=20, vocab_size=65536, max_seq_len=2048)
    tc = TrainConfig(total_batch_size=524288, device_batch_size=32)
    assert train.grad_accum_steps(524288, 32, 2048, 8) == 1
    assert train.grad_accum_steps(524288, 16, 2048, 8) == 2
    with pytest.raises(ValueError, match="multiple"):
        train.grad_accum_steps(500000, 32, 2048, 8)
    assert train.horizon(d20, tc, 524288) == (21400, "param_data_ratio")  # nanochat's logged d20 horizon
    assert train.horizon(d20, TrainConfig(num_iterations=7, target_flops=1e18), 524288) == (7, "num_iterations")
    n, why = train.horizon(d20, TrainConfig(target_flops=3.917670e19), 524288)
    assert why == "target_flops" and abs(n - 21400) <= 1


def test_peak_flops_lookup_is_per_device_kind():
    class Dev:
        platform = "gpu"

        def __init__(self, kind):
            self.device_kind = kind

    assert train.device_peak_flops(Dev("NVIDIA H100 80GB HBM3")) == 989e12
    assert train.device_peak_flops(Dev("NVIDIA A100-SXM4-80GB")) == 312e12
    assert train.device_peak_flops(Dev("NVIDIA GeForce RTX 4090")) == 165e12
    assert train.device_peak_flops(Dev("Mystery Accelerator")) is None
    assert train.device_peak_flops(jax.devices()[0]) is None  # CPU: MFU is not reported rather than guessed


@pytest.mark.parametrize("master", [False, True], ids=["v1", "master"])
def test_loop_schedule_log_and_exact_resume(tmp_path, master):
    """next_batch(step, state) feeds the step (its "info" logged with it); evaluation every eval_every steps and
    at the end; a resumed run continues from the checkpoint with the very same losses (V1's optimizer state and
    master's: model switches of configs/master.toml, its MuonAdamW)."""
    cfg = dataclasses.replace(CFG, **{k: v for k, v in C.load_preset("master")["model"].items()
                                      if k not in ("depth", "vocab_size", "max_seq_len")}) if master else CFG
    seqs = np.random.default_rng(3).integers(0, CFG.vocab_size, (4, 1, 2, CFG.max_seq_len + 1), dtype=np.int32)
    next_batch = lambda step, state: {"inputs": seqs[step, ..., :-1], "targets": seqs[step, ..., 1:],  # noqa: E731
                                      "info": {"reward": float(step)}}
    evaluate = lambda state, step: {"val": float(step)}  # noqa: E731

    def run(resume):
        ck, log = Checkpoints(tmp_path / "ck", keep=5), JsonlLog(tmp_path / "log.jsonl")
        tc = TrainConfig(num_iterations=4, eval_every=3, save_every=2, resume=resume,
                         optimizer="master" if master else "v1")
        _, summary = train.run(make(cfg, tc=tc), next_batch, name="t", ck=ck, log=log, evaluate=evaluate, show=("reward",))
        ck.close()
        return summary, read_jsonl(log.path)

    summary, log = run(False)
    train_recs = {r["step"]: r for r in log if r["kind"] == "train"}
    assert sorted(train_recs) == [0, 1, 2, 3] and [r["reward"] for r in train_recs.values()] == [0.0, 1.0, 2.0, 3.0]
    assert [r["step"] for r in log if r["kind"] == "eval"] == [3, 4] and summary["val"] == 4.0
    assert summary["steps"] == 4 and summary["final_loss"] is not None
    Checkpoints(tmp_path / "ck").delete_after(2)  # as if killed after the step-2 checkpoint
    _, log2 = run(True)
    resumed = [r for r in log2 if r["kind"] == "train"][4:]
    assert [(r["step"], r["loss"]) for r in resumed] == [(s, train_recs[s]["loss"]) for s in (2, 3)]
