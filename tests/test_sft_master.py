"""nanochat master's SFT (`[sft] inherit = true`, configs/master.toml): it starts from the base checkpoint with the
base run's batch, LRs and optimizer state, packs conversations as master's loader does, and trains on master's
mixture."""
from __future__ import annotations

import random

import jax
import numpy as np
import optax
import pytest

from jaxchat import tasks as T
from jaxchat.checkpoint import Checkpoints
from jaxchat.optim import MasterMuonState

MODEL = ["--depth=1", "--aspect_ratio=64", "--head_dim_target=32", "--max_seq_len=128"]


def master_sft_rows(convs, B, T, bos, buffer_size=100):
    """nanochat master's SFT loader (scripts/chat_sft.py sft_data_generator_bos_bestfit, 92d63d4), transliterated
    for one rank: [B, T+1] rows and the targets' mask (its −1 positions), from (ids, mask) conversations in order."""
    cursor, buf = 0, []
    while True:
        rows, masks = [], []
        for _ in range(B):
            row, mrow = [], []
            while len(row) < T + 1:
                while len(buf) < buffer_size:
                    buf.append(convs[cursor % len(convs)])
                    cursor += 1
                remaining, best_idx, best_len = T + 1 - len(row), -1, 0
                for i, (c, _) in enumerate(buf):
                    if best_len < len(c) <= remaining:
                        best_idx, best_len = i, len(c)
                if best_idx < 0:
                    row, mrow = row + [bos] * remaining, mrow + [0] * remaining
                    break
                c, m = buf.pop(best_idx)
                row, mrow = row + c, mrow + m
            rows.append(row)
            masks.append(mrow)
        yield np.array(rows), np.array(masks)


def _conversations(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    words = "the a cat dog sat on mat what is one two three and then it ran far".split()
    say = lambda: " ".join(rng.choice(words) for _ in range(rng.choice([1, 2, 3, 5, 8, 50])))  # noqa: E731
    return [{"messages": [m for _ in range(rng.choice([1, 1, 1, 2])) for m in
                          ({"role": "user", "content": say()}, {"role": "assistant", "content": say()})]}
            for _ in range(n)]


def test_packed_rows_equal_master_loader():
    """The rows and targets of master's loader from the same conversations (best fit over a 100-conversation
    buffer, padding instead of cropping, loss mask), across epochs; a restored state continues exactly."""
    from helpers import tiny_tokenizer
    from jaxchat.data import PackedSFT

    tok, task = tiny_tokenizer(), T.ListTask(_conversations(40))
    convs = [tuple(map(list, tok.render_conversation(task[i], max_tokens=129))) for i in range(len(task))]
    ref = master_sft_rows(convs, 8, 128, tok.bos_id)
    ours = PackedSFT(task, tok, rows=4, accum=2, max_tokens=128)
    padded = 0
    for _ in range(8):  # 8 x 8 rows: past the first epoch (the buffer alone holds 100)
        b, (rows, mask) = next(ours), next(ref)
        np.testing.assert_array_equal(b["inputs"].reshape(8, 128), rows[:, :-1])
        np.testing.assert_array_equal(b["targets"].reshape(8, 128), np.where(mask[:, 1:] == 1, rows[:, 1:], -1))
        assert (rows[:, 0] == tok.bos_id).all()
        padded += ((rows[:, -1] == tok.bos_id) & (mask[:, -1] == 0)).sum()
    assert ours.consumed > len(task) and padded > 0
    state = ours.get_state()
    again = PackedSFT(task, tok, rows=4, accum=2, max_tokens=128)
    again.set_state(state)
    for _ in range(2):
        a, b = next(again), next(ours)
        assert all(np.array_equal(a[k], b[k]) for k in ("inputs", "targets"))


def test_master_mixture_offline_and_online(monkeypatch):
    """Master's SFT mixture: SmolTalk + MMLU auxiliary_train x3 + GSM8K train x4 online (hub tasks stubbed here);
    offline the chat corpora once, the multiple-choice sets x3, calculator arithmetic x4; no identity or spelling."""
    def counts(mix):
        out = {}
        for t in mix.tasks:
            key = (type(t).__name__, t.split)
            out[key] = out.get(key, 0) + 1
        return out

    offline = T.sft_mixture("train", recipe="master", arithmetic_repeat=2)
    assert counts(offline) == {("ChitChat", "train"): 1, ("ChatterBot", "train"): 1, ("ARC", "validation"): 6,
                               ("MMLU", "dev"): 3, ("MMLU", "validation"): 3, ("Arithmetic", "train"): 4}
    arithmetic = [t for t in offline.tasks if isinstance(t, T.Arithmetic)]
    assert len(arithmetic[0]) == 2 * T.SFT_ARITHMETIC and len(offline) == sum(len(t) for t in offline.tasks)
    assert counts(T.sft_mixture("val", recipe="master")) == {("ChitChat", "val"): 1, ("ChatterBot", "val"): 1,
                                                             ("Arithmetic", "val"): 1}

    class Hub(T.ListTask):
        def __init__(self, split):
            super().__init__([{"messages": []}] * 3, split=split)

    for name in ("SmolTalk", "MMLU", "GSM8K"):
        monkeypatch.setattr(T, name, type(name, (Hub,), {}))
    online = T.sft_mixture("train", online=True, recipe="master")
    assert counts(online) == {("SmolTalk", "train"): 1, ("MMLU", "auxiliary_train"): 3, ("GSM8K", "train"): 4}
    assert len(online) == 3 * 8
    with pytest.raises(ValueError, match="recipe must be v1|master"):
        T.sft_mixture("train", recipe="nanochat")


def _counts(opt_state) -> list:
    """(state type, count) of every optax state with a step count, in tree order."""
    has = lambda s: hasattr(s, "_fields") and "count" in s._fields  # noqa: E731
    return [(type(s).__name__, int(s.count)) for s in jax.tree.leaves(opt_state, is_leaf=has) if has(s)]


def test_master_sft_starts_from_the_base_run(tmp_path, monkeypatch):
    """A tiny base run with master's preset, then master's SFT: its first step's optimizer state is the base
    checkpoint's (Muon momentum and NorMuon buffers, Adam moments and step count) with every schedule back at step
    0; batch and LRs are the base run's unless given on the command line."""
    from helpers import tiny_tokenizer
    from scripts import base_train, chat_sft

    from jaxchat import train

    monkeypatch.setenv("JAXCHAT_BASE_DIR", str(tmp_path))
    tiny_tokenizer().save(tmp_path / "tokenizer" / "tokenizer.model")
    # on master's depth dial: LRs x sqrt(2048 / 2^19) = 1/16 in the run; SFT takes them as configured, as master
    base_train.main(["--preset=master", *MODEL, "--num_iterations=3", "--device_batch_size=1", "--matrix_lr=0.013",
                     "--depth_dial", "--total_batch_size=2048", "--eval_every=3", "--eval_tokens=512",
                     "--sample_every=-1", "--save_every=-1", "--core_metric_every=-1"])

    first = []  # the state the first SFT step is given (copied: the step donates it)
    jit_train_step = train.jit_train_step

    def capture(setup):
        step = jit_train_step(setup)

        def wrapped(state, batch):
            if not first:
                first.append(jax.tree.map(np.asarray, state))
            return step(state, batch)
        return wrapped

    monkeypatch.setattr(train, "jit_train_step", capture)
    sft = chat_sft.main(["--preset=master", "--num_iterations=2", "--eval_every=2", "--eval_steps=1",
                         "--eval_metrics_every=-1", "--embedding_lr=0.07"])
    assert sft["steps"] == 2 and sft["examples"] > 0

    cpu = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    abstract = lambda tree: jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=cpu), tree)  # noqa
    base_ck = Checkpoints(tmp_path / "base_checkpoints" / "d1", async_save=False)
    items, _ = base_ck.restore(3, abstract_params=abstract(first[0]["params"]),
                               abstract_opt_state=abstract(first[0]["opt_state"]))
    base_ck.close()
    is_muon = lambda s: isinstance(s, MasterMuonState)  # noqa: E731
    (muon0,), (muon_base,) = ([s for s in jax.tree.leaves(o, is_leaf=is_muon) if is_muon(s)]
                              for o in (first[0]["opt_state"], items["opt_state"]))
    for a, b in zip(jax.tree.leaves((muon0.mu, muon0.nu)), jax.tree.leaves((muon_base.mu, muon_base.nu))):
        np.testing.assert_array_equal(a, np.asarray(b))
    assert any(np.abs(m).max() > 0 for m in jax.tree.leaves(muon0.mu))  # three base steps of momentum
    # every other moment too; the counts: Adam's go on from the base run's 3 steps, the schedules start at 0
    same = jax.tree.map(lambda a, b: np.array_equal(a, np.asarray(b)), first[0]["opt_state"], items["opt_state"])
    counts0, counts_base = _counts(first[0]["opt_state"]), _counts(items["opt_state"])
    assert all(c == 3 for _, c in counts_base)
    assert counts0 == [(n, 3 if n == optax.ScaleByAdamState.__name__ else 0) for n, _ in counts_base]
    assert sum(not s for s in jax.tree.leaves(same)) == sum(c == 0 for _, c in counts0)

    sft_cfg = Checkpoints(tmp_path / "chatsft_checkpoints" / "d1", async_save=False).read_meta(2)["train"]
    base_meta = Checkpoints(tmp_path / "base_checkpoints" / "d1", async_save=False).read_meta(3)
    assert base_meta["train"]["matrix_lr"] == 0.013 / 16 and base_meta["train"]["total_batch_size"] == 2048
    assert {k: sft_cfg[k] for k in ("device_batch_size", "total_batch_size", "matrix_lr", "unembedding_lr")} == {
        "device_batch_size": 1, "total_batch_size": 2048, "matrix_lr": 0.013, "unembedding_lr": 0.008}
    assert sft_cfg["embedding_lr"] == 0.07  # given on the command line
    assert (sft_cfg["init_lr_frac"], sft_cfg["warmdown_ratio"], sft_cfg["muon_momentum_start"]) == (0.8, 0.5, 0.85)
