"""jaxchat's nanochat-master model and optimizer against master's own code (a checkout: nothing of it is vendored).

    git clone https://github.com/karpathy/nanochat /tmp/nanochat && git -C /tmp/nanochat checkout 92d63d4
    python -m scripts.parity_nanochat --nanochat_dir=/tmp/nanochat        # last line: JSON
    python -m scripts.parity_nanochat --nanochat_dir=/tmp/nanochat --fixture=tests/fixtures/nanochat_master.npz

A tiny model (depth 4, width 64, 2 heads, vocab 250 padded to 256, T 256: the short window of 128 binds), float32 on
both sides: (1) logits of random non-zero weights; (2) greedy decode through the caches, master's Engine against ours,
past the short window and past T; (3) --steps optimizer steps from master's init on fixed batches, master's MuonAdamW
driven by the schedule functions of its own scripts/base_train.py, against ours; (4) master's parameter counts and
FLOPs per token at d12-d26 and its schedules over a d24 speedrun. `--fixture` saves what tests/test_master.py checks
in CI without torch or a checkout.
"""
from __future__ import annotations

import ast
import json
import math
import os
import sys
import tempfile
import types

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxchat import config as C
from jaxchat import engine as E
from jaxchat import interop
from jaxchat import model as gpt
from jaxchat import optim
from jaxchat.common import cli
from scripts.bench_decode import Tok

TINY = ["--preset=master", "--depth=4", "--aspect_ratio=16", "--head_dim_target=32", "--vocab_size=250",
        "--max_seq_len=256"]
OPT = ["--preset=master", "--warmup_steps=5"]  # master's base_train defaults; a warmup that ends within the run
DEPTHS = (12, 20, 24, 26)  # master's counts at vocab 32,768 and T 2,048


def setup(steps: int = 30, batch: int = 2):
    """The tiny master config; master's init with its zeros (output projections, smear λ) made small and random; the
    same weights made random and non-zero everywhere; `steps` fixed batches [steps, batch, T+1] from a noisy bigram
    chain. From master's exact init the loss does not depend on the layer λs (with zero projections the residual is
    a multiple of x0, and the final norm removes its scale): their gradients are rounding noise, which Adam turns
    into full ±lr steps, differently in every implementation; 1e-3 of noise gives them a real gradient."""
    mc = C.load(["model"], TINY).model
    init = jax.tree.map(np.asarray, jax.jit(lambda k: gpt.init_params(mc, k))(jax.random.key(0)))
    rng = np.random.default_rng(0)
    init = jax.tree.map(lambda a: a if a.any() else rng.normal(0, 1e-3, a.shape).astype(np.float32), init)
    noisy = jax.tree.map(lambda a: a + rng.normal(0, 0.04 if a.ndim > 1 else 0.2, a.shape).astype(np.float32), init)
    nxt = rng.integers(0, mc.vocab_size, (mc.vocab_size, 4))  # each token has 4 likely successors
    toks = np.zeros((steps * batch, mc.max_seq_len + 1), np.int64)
    toks[:, 0] = rng.integers(0, mc.vocab_size, steps * batch)
    for t in range(1, toks.shape[1]):
        toks[:, t] = nxt[toks[:, t - 1], rng.integers(0, 4, len(toks))]
    return mc, init, noisy, toks.reshape(steps, batch, -1)


def jax_train(mc, params, batches):
    """Our losses over the batches with the `--preset=master` optimizer."""
    tc = C.load(["base"], OPT).base
    tx = optim.make_optimizer(mc, tc, len(batches))
    vg = jax.jit(jax.value_and_grad(lambda p, x, y: gpt.token_nll(p, x, y, mc).mean()))
    step = jax.jit(lambda g, s, p: tx.update(g, s, p))
    state, losses = tx.init(params), []
    for xy in batches:
        loss, g = vg(params, xy[:, :-1], xy[:, 1:])
        updates, state = step(g, state, params)
        params, losses = optax.apply_updates(params, updates), losses + [float(loss)]
    return np.array(losses), params


def master_schedules(path: str, tc, n: int, wd: float):
    """get_lr_multiplier / get_muon_momentum / get_weight_decay exactly as master's base_train.py defines them."""
    tree = ast.parse(open(os.path.join(path, "scripts", "base_train.py")).read())
    defs = [f for f in tree.body if isinstance(f, ast.FunctionDef) and f.name.startswith("get_")]
    ns = {"math": math, "num_iterations": n, "weight_decay_scaled": wd,
          "args": types.SimpleNamespace(warmup_steps=tc.warmup_steps, warmdown_ratio=tc.warmdown_ratio,
                                        final_lr_frac=tc.final_lr_frac)}
    exec(compile(ast.Module(defs, []), "base_train.py", "exec"), ns)
    return ns["get_lr_multiplier"], ns["get_muon_momentum"], ns["get_weight_decay"]


def import_master(path: str):
    if not os.path.isfile(os.path.join(path, "nanochat", "gpt.py")):
        raise SystemExit(f"parity_nanochat: {path!r} is not a nanochat checkout. Clone it: git clone "
                         "https://github.com/karpathy/nanochat DIR && git -C DIR checkout 92d63d4")
    os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")  # torch.compile wants a C++ toolchain; eager is the same maths
    sys.path.insert(0, os.path.abspath(path))
    sys.modules.setdefault("nanochat.checkpoint_manager", types.SimpleNamespace(load_model=None))  # (its tokenizer)
    import torch  # the interop extra, imported once the checkout is known good
    from nanochat.engine import Engine
    from nanochat.gpt import GPT, GPTConfig
    return torch, GPT, GPTConfig, Engine


def main(argv=None):
    a = C.load([], argv, extra={"nanochat_dir": "", "steps": 30, "new_tokens": 200, "prompt_len": 100,
                                "fixture": ""}).extra
    torch, GPT, GPTConfig, Engine = import_master(a.nanochat_dir)
    torch.manual_seed(0)
    mc, init, noisy, batches = setup(a.steps)

    def master_model(params):  # our export, as files, loaded by master's code (strict: every key, every shape)
        with tempfile.TemporaryDirectory() as d:
            mp, jp = interop.save_nanochat(params, mc, d, 0)
            m = GPT(GPTConfig(**json.loads(jp.read_text())["model_config"]))
            m.init_weights()  # the rotary buffers; every weight is then overwritten
            m.load_state_dict(torch.load(mp, weights_only=True), strict=True)
        return m

    res, fix = {"bench": "parity_nanochat", "torch": torch.__version__}, {}
    # (1) logits
    m = master_model(noisy).eval()
    tokens = batches[0][:1, :-1]
    with torch.no_grad():
        ref = m(torch.tensor(tokens)).numpy()
    ours = np.asarray(gpt.forward(noisy, jnp.asarray(tokens), mc))
    res["max_abs_dlogit"] = float(np.abs(ours - ref).max())
    fix.update(logit_tokens=tokens, logits=ref)
    # (2) greedy decode through the caches
    prompt = batches[1][0, :a.prompt_len].tolist()
    cols = Engine(m, Tok(mc.vocab_size)).generate(prompt, num_samples=1, max_tokens=a.new_tokens, temperature=0)
    theirs = [c[0] for c, _ in cols]
    mine = E.Engine(noisy, mc, Tok(mc.vocab_size)).generate_batch(prompt, max_tokens=a.new_tokens, temperature=0.0,
                                                                  use_tools=False)[0][0]
    same = [x == y for x, y in zip(mine, theirs)]
    res["decode"] = {"tokens": len(theirs), "equal": mine == theirs, "first_difference": same.index(False)
                     if False in same else None}
    fix.update(decode_prompt=np.array(prompt), decode_tokens=np.array(theirs))
    # (3) optimizer steps from master's init: master's MuonAdamW, driven as its base_train drives it
    m = master_model(init).train()
    tc = C.load(["base"], OPT).base
    opt = m.setup_optimizer(unembedding_lr=tc.unembedding_lr, embedding_lr=tc.embedding_lr, matrix_lr=tc.matrix_lr,
                            weight_decay=tc.weight_decay, scalar_lr=tc.scalar_lr)
    lrm, mom, wdf = master_schedules(a.nanochat_dir, tc, a.steps, tc.weight_decay)
    theirs = []
    for step, xy in enumerate(torch.tensor(batches)):
        loss = m(xy[:, :-1].contiguous(), xy[:, 1:].contiguous())
        loss.backward()
        for g in opt.param_groups:
            g["lr"] = g["initial_lr"] * lrm(step)
            if g["kind"] == "muon":
                g.update(momentum=mom(step), weight_decay=wdf(step))
        opt.step()
        m.zero_grad(set_to_none=True)
        theirs.append(loss.item())
    mine, _ = jax_train(mc, init, batches)
    res["train"] = {"steps": a.steps, "loss_first": theirs[0], "loss_last": theirs[-1],
                    "max_abs_dloss": float(np.abs(mine - np.array(theirs)).max())}
    fix.update(batches=batches.astype(np.int16), losses=np.array(theirs))
    # (4) master's sizes and a d24 speedrun's schedules (5,568 steps, wd 0.0597), point by point
    counts = []
    for d in DEPTHS:
        width = -(-d * 64 // 128) * 128
        with torch.device("meta"):
            g = GPT(GPTConfig(sequence_len=2048, vocab_size=32768, n_layer=d, n_head=width // 128,
                              n_kv_head=width // 128, n_embd=width))
        counts.append([*g.num_scaling_params().values(), g.estimate_flops()])
    res["sizes"] = {f"d{d}": dict(zip(["wte", "value_embeds", "lm_head", "transformer_matrices", "scalars", "total",
                                       "flops_per_token"], c)) for d, c in zip(DEPTHS, counts)}
    fix["sizes"] = np.array(counts, np.int64)
    n, wd = 5568, 0.0597
    tc = C.load(["base"], ["--preset=master"]).base
    sched, master = optim.schedules(tc, n, wd), master_schedules(a.nanochat_dir, tc, n, wd)
    res["schedules_max_abs_diff"] = max(abs(float(ours(s)) - theirs(s)) for ours, theirs in zip(sched, master)
                                        for s in range(n + 1))
    if a.fixture:
        np.savez_compressed(a.fixture, **fix)
        res["fixture"] = a.fixture
    print(json.dumps(res))
    return res


if __name__ == "__main__":
    cli(main)
