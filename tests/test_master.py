"""nanochat master's architecture and optimizer: against numbers produced by master's own code (the fixture written by
`scripts/parity_nanochat.py --fixture` from a 92d63d4 checkout), and the KV-cache contract with windows and smear."""
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxchat import config as C
from jaxchat import engine as E
from jaxchat import interop
from jaxchat import model as gpt
from scripts.bench_decode import Tok
from scripts.parity_nanochat import DEPTHS, jax_train, setup

FIXTURE = Path(__file__).parent / "fixtures" / "nanochat_master.npz"


@pytest.fixture(scope="module")
def master():
    return dict(np.load(FIXTURE)), setup()


def test_logits_match_masters_forward(master):
    fix, (mc, _, noisy, _) = master
    got = np.asarray(jax.jit(lambda p, t: gpt.forward(p, t, mc))(noisy, fix["logit_tokens"]))
    assert np.abs(got - fix["logits"]).max() <= 1e-3  # measured 6e-7 (float32 both sides)
    one_window = C.load(["model"], ["--preset=master", "--window_pattern=L"]).model
    assert mc.windows[0] == 128 < mc.max_seq_len and one_window.windows[0] == one_window.max_seq_len


def test_greedy_decode_matches_masters_engine(master):
    """Through the caches, past the short window (129 keys) and past T (the long layers' window): token for token."""
    fix, (mc, _, noisy, _) = master
    eng = E.Engine(noisy, mc, Tok(mc.vocab_size))
    out = eng.generate_batch(fix["decode_prompt"].tolist(), max_tokens=len(fix["decode_tokens"]), temperature=0.0,
                             use_tools=False)[0][0]
    assert len(fix["decode_prompt"]) + len(out) > mc.max_seq_len
    assert out == fix["decode_tokens"].tolist()


def test_optimizer_steps_track_masters_muonadamw(master):
    fix, (mc, init, _, batches) = master
    np.testing.assert_array_equal(batches, fix["batches"])
    losses, _ = jax_train(mc, init, batches)
    assert np.abs(losses - fix["losses"]).max() <= 0.01
    assert fix["losses"][-1] < fix["losses"][0] - 1.0  # the run learns: the test is not of a flat line


def test_scaling_params_and_flops_equal_masters(master):
    fix, _ = master
    for d, want in zip(DEPTHS, fix["sizes"]):
        mc = C.load(["model"], ["--preset=master", f"--depth={d}", "--vocab_size=32768", "--max_seq_len=2048"]).model
        n = gpt.scaling_params(mc)
        got = [n[k] for k in ("wte", "value_embeds", "lm_head", "transformer_matrices", "scalars", "total")]
        assert got + [gpt.flops_per_token(mc)] == want.tolist(), d
    d24 = dict(zip(DEPTHS, fix["sizes"]))[24]
    assert (d24[5], d24[6]) == (1_384_122_122, 4_775_225_616)  # master's own d24 numbers, as published


@pytest.mark.parametrize("pattern", ["SSSL", "SL", "S", "L"])
def test_cache_contract_with_windows_and_smear(pattern):
    """Ragged prefill then one token at a time across the short window's edge (129 keys) equals the full forward
    at every position, for every layer pattern; the window really changes logits past its edge."""
    mc = C.load(["model"], ["--preset=master", "--depth=3", "--aspect_ratio=32", "--head_dim_target=32",
                            "--vocab_size=100", "--max_seq_len=256", f"--window_pattern={pattern}"]).model
    p = jax.tree.map(lambda a: a + 0.05 * jax.random.normal(jax.random.key(a.size), a.shape),
                     gpt.init_params(mc, jax.random.key(0)))
    seq = jax.random.randint(jax.random.key(1), (2, 150), 0, mc.vocab_size)
    fwd = jax.jit(gpt.forward, static_argnums=2)
    full = np.asarray(fwd(p, seq, mc))
    lens = jnp.asarray([120, 110])
    cache = gpt.init_cache(mc, 2, 256)
    pre, cache = fwd(p, seq[:, :120], mc, cache=cache, lengths_B=lens)
    np.testing.assert_allclose(pre[1, :110], full[1, :110], atol=2e-5)
    for t in range(20):  # row 0 at positions 120..139, row 1 at 110..129
        pos = np.asarray(cache["pos"])
        logits, cache = fwd(p, seq[jnp.arange(2), pos][:, None], mc, cache=cache)
        for b in range(2):
            np.testing.assert_allclose(logits[b, 0], full[b, pos[b]], atol=2e-5, err_msg=f"row {b} at {pos[b]}")
    full_attn = np.asarray(fwd(p, seq, C.ModelConfig(**{**mc.__dict__, "window_pattern": ""})))
    np.testing.assert_allclose(full_attn[:, :129], full[:, :129], atol=2e-5)  # the window holds every key
    assert (np.abs(full_attn[:, 129:] - full[:, 129:]).max() > 1e-3) == (mc.windows[0] < 256)


def test_master_checkpoint_round_trip_and_switches_from_keys(tmp_path):
    """A master-layout state dict gives back master's config (switches from its keys) and the same params; a model
    that mixes V1 and master switches has no nanochat layout and says which switch differs."""
    mc = C.load(["model"], ["--preset=master", "--depth=2", "--aspect_ratio=32", "--head_dim_target=32",
                            "--vocab_size=100"]).model
    params = jax.tree.map(np.asarray, gpt.init_params(mc, jax.random.key(0)))
    sd = interop.params_to_state_dict(params, mc)
    assert sd["smear_gate.weight"].shape == (1, 24) and sd["transformer.h.1.attn.ve_gate.weight"].shape == (2, 12)
    assert sd["value_embeds.1.weight"].shape == (128, 64) and "value_embeds.0.weight" not in sd
    meta = interop.nanochat_model_config(mc)
    assert meta["window_pattern"] == "SSSL"
    assert interop.config_from_nanochat(meta, sd) == mc
    back = interop.state_dict_to_params(sd, mc)
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(back), jax.tree.leaves(params)))
    mixed = C.ModelConfig(**{**mc.__dict__, "smear": False})
    with pytest.raises(interop.InteropError, match="smear=False"):
        interop.nanochat_model_config(mixed)
    with pytest.raises(C.ConfigError, match="scan_layers"):
        C.ModelConfig(**{**mc.__dict__, "scan_layers": True})


def test_master_checkpoint_converts_chats_and_exports_back(tmp_path, monkeypatch):
    """A checkpoint in master's layout (its meta has window_pattern, no jaxchat block) → `convert from-nanochat` →
    chat_cli answers → `convert to-nanochat` writes the very same state dict back."""
    torch = pytest.importorskip("torch", reason="torch is not installed: pip install -e '.[interop]'")
    import json
    import os
    import subprocess
    import sys

    from helpers import tiny_tokenizer
    from scripts import convert

    tok, root = tiny_tokenizer(), Path(__file__).resolve().parent.parent
    mc = C.load(["model"], ["--preset=master", "--depth=2", "--aspect_ratio=32", "--head_dim_target=32",
                            f"--vocab_size={tok.vocab_size}"]).model
    params = jax.tree.map(lambda a: np.asarray(a + 0.05 * jax.random.normal(jax.random.key(a.size), a.shape)),
                          gpt.init_params(mc, jax.random.key(0)))
    nano = tmp_path / "nanochat" / "chatsft_checkpoints" / "d2"
    mp, jp = interop.save_nanochat(params, mc, nano, 300)
    jp.write_text(json.dumps({k: v for k, v in json.loads(jp.read_text()).items() if k != "jaxchat"}))
    base = tmp_path / "jaxchat"
    monkeypatch.setenv("JAXCHAT_BASE_DIR", str(base))
    tok.save(base / "tokenizer" / "tokenizer.model")
    assert convert.main(["from-nanochat", str(nano), "--stage=sft", "--model_tag=m"]) == 0
    env = dict(os.environ, JAXCHAT_BASE_DIR=str(base), JAX_PLATFORMS="cpu", XLA_FLAGS="")
    res = subprocess.run([sys.executable, "-m", "scripts.chat_cli", "--source=sft", "--model_tag=m", "-p", "hi",
                          "--max_tokens=8", "--temperature=0"], cwd=root, env=env, capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    assert res.stdout.split("\nAssistant: ", 1)[1].strip()
    assert convert.main(["to-nanochat", "--source=sft", "--model_tag=m", "--out", str(tmp_path / "back")]) == 0
    orig, back = (torch.load(d / "model_000300.pt", weights_only=True) for d in (nano, tmp_path / "back"))
    assert sorted(back) == sorted(orig) and all(torch.equal(back[k], v) for k, v in orig.items())


def test_our_window_mask_is_what_the_cudnn_path_asks_for():
    """On GPU the windows go to `jax.nn.dot_product_attention(local_window_size=(w, 0))`; its reference (XLA)
    implementation of that argument equals our masked attention: the same keys p-w..p."""
    q, k, v = (jax.random.normal(jax.random.key(i), (2, 300, 2, 16)) for i in range(3))
    mc = C.ModelConfig(attn_impl="xla")
    for w in (128, 40):
        want = jax.nn.dot_product_attention(q, k, v, is_causal=True, local_window_size=(w, 0), implementation="xla")
        np.testing.assert_allclose(gpt.causal_attention(q, k, v, mc, w), want, atol=2e-5)
    assert np.abs(gpt.causal_attention(q, k, v, mc, 40) - gpt.causal_attention(q, k, v, mc)).max() > 1e-2
