"""chat_rl's policy-gradient pieces against hand-computed references: the batch layout (prompt, forced
tool-output and padding positions excluded), the group-mean advantages, and the loss and its gradient through
the real train step's loss function."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxchat import model as gpt
from jaxchat import train
from scripts.chat_rl import group_advantages, policy_gradient_batch
from helpers import tiny_model

PAD = 0


def toy_batch():
    # row 0: prompt [1, 10, 11], completion 20 21 <py_s 6> 12 <py_e 7> | forced: <out_s 8> 40 <out_e 9> | 22 <end 5>
    # row 1: prompt [1, 12], completion 23 5 (all sampled)
    prompts = [[1, 10, 11], [1, 12]]
    seqs = [[20, 21, 6, 12, 7, 8, 40, 9, 22, 5], [23, 5]]
    masks = [[1, 1, 1, 1, 1, 0, 0, 0, 1, 1], [1, 1]]
    adv = np.array([0.75, -0.25], np.float32)
    return prompts, seqs, masks, adv


def test_batch_layout_by_hand():
    prompts, seqs, masks, adv = toy_batch()
    b = policy_gradient_batch(prompts, seqs, masks, adv, pad_id=PAD, buckets=(16, 32))
    assert {k: v.shape for k, v in b.items()} == {"inputs": (1, 2, 16), "targets": (1, 2, 16), "weights": (1, 2, 16)}
    inp, tgt, w = b["inputs"][0], b["targets"][0], b["weights"][0]
    # row 0: the 13-token row minus its last token as input, padded to the bucket
    assert inp[0].tolist() == [1, 10, 11, 20, 21, 6, 12, 7, 8, 40, 9, 22] + [PAD] * 4
    # targets: prompt continuations (10, 11) excluded, sampled tokens kept, forced 8 40 9 excluded, padding -1
    assert tgt[0].tolist() == [-1, -1, 20, 21, 6, 12, 7, -1, -1, -1, 22, 5] + [-1] * 4
    assert tgt[1].tolist() == [-1, 23, 5] + [-1] * 13
    assert inp[1].tolist() == [1, 12, 23] + [PAD] * 13
    assert np.all(w[0, :12] == 0.75) and np.all(w[1, :3] == -0.25)
    # every sampled token is a target exactly once
    assert int((tgt >= 0).sum()) == sum(int(sum(m)) for m in masks)


def test_group_advantages_by_hand():
    r = np.array([1, 0, 0, 1, 0, 0, 0, 0], np.float32)  # 2 groups of 4
    np.testing.assert_allclose(group_advantages(r, 4, False), [0.5, -0.5, -0.5, 0.5, 0, 0, 0, 0])
    std = np.array([0.5, 0.5, 0.5, 0.5]) + 1e-6
    np.testing.assert_allclose(group_advantages(r, 4, True)[:4], np.array([0.5, -0.5, -0.5, 0.5]) / std, rtol=1e-6)
    np.testing.assert_allclose(group_advantages(r, 4, True)[4:], 0)  # an all-wrong group teaches nothing


def test_pg_loss_and_gradient_equal_the_reference():
    """train.loss_and_grads on the RL batch == −Σ_sampled A_i · log p(token) / #sampled, written directly on the
    model's logits (log_softmax + explicit index lists, not the train step's masked-target path)."""
    cfg = tiny_model(64)
    params = gpt.init_params(cfg, jax.random.key(0))
    # nanochat's init zeroes lm_head; perturb it so log-probs are not uniform and the gradient is informative
    params = {**params, "lm_head": 0.05 * jax.random.normal(jax.random.key(1), params["lm_head"].shape)}
    prompts, seqs, masks, adv = toy_batch()
    b = policy_gradient_batch(prompts, seqs, masks, adv, pad_id=PAD, buckets=(16,))
    lg = jax.jit(lambda p, batch: train.loss_and_grads(p, batch, cfg))
    loss, _, grads = lg(params, {k: jnp.asarray(v) for k, v in b.items()})

    picks = []  # (row, position, token, advantage) for every sampled token, from the raw inputs
    for i, (p, s, m) in enumerate(zip(prompts, seqs, masks)):
        for j, (tok, sampled) in enumerate(zip(s, m)):
            if sampled:
                picks.append((i, len(p) + j - 1, tok, float(adv[i])))
    rows, pos, toks, a = (jnp.asarray(x) for x in zip(*picks))

    def reference(p):
        logp = jax.nn.log_softmax(gpt.forward(p, jnp.asarray(b["inputs"][0]), cfg), axis=-1)
        return -jnp.sum(a * logp[rows, pos, toks]) / len(picks)

    ref_loss, ref_grads = jax.jit(jax.value_and_grad(reference))(params)
    np.testing.assert_allclose(float(loss), float(ref_loss), rtol=1e-5, atol=1e-6)
    for (path, g), r in zip(jax.tree_util.tree_leaves_with_path(grads), jax.tree.leaves(ref_grads)):
        np.testing.assert_allclose(np.asarray(g), np.asarray(r), rtol=1e-4, atol=1e-6, err_msg=str(path))
    assert float(jnp.abs(ref_grads["lm_head"]).max()) > 0
    # flipping every advantage flips the gradient: the forced tokens and padding contribute nothing either way
    b_neg = {**b, "weights": -b["weights"]}
    _, _, g_neg = lg(params, {k: jnp.asarray(v) for k, v in b_neg.items()})
    np.testing.assert_allclose(np.asarray(g_neg["lm_head"]), -np.asarray(grads["lm_head"]), rtol=1e-5, atol=1e-7)
