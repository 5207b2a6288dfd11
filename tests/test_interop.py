"""Interop: nanochat PyTorch checkpoints (logit parity against a PyTorch reference written here from the spec,
lossless round trips), safetensors export/import, the NumPy-only runner, nanochat's tiktoken tokenizer, and a
converted model chatting through chat_cli."""
from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from jaxchat import interop
from jaxchat import model as gpt
from jaxchat.config import ModelConfig
from jaxchat.tokenizer import SPECIAL_TOKENS
from helpers import tiny_model, tiny_tokenizer

ROOT = Path(__file__).resolve().parent.parent
NEEDS_TORCH = "torch is not installed: pip install -e '.[interop]' (torch==2.13.0 CPU build)"


def _torch():
    return pytest.importorskip("torch", reason=NEEDS_TORCH)


def _safetensors():
    return pytest.importorskip("safetensors", reason="safetensors is not installed: pip install -e '.[interop]'")


# ----------------------------------------------------------------------------------------------------
# A nanochat-architecture reference in PyTorch, written from reference/nanochat.md §2 (not nanochat's code,
# not a translation of jaxchat's model): torch layouts, [B, H, T, Dh] attention through SDPA with GQA.


def reference_gpt(V, L, D, H, K, *, pad_to=64, seed=0, bf16_rotary=False):
    torch = _torch()
    nn, F = torch.nn, torch.nn.functional
    Dh = D // H
    Vp = -(-V // pad_to) * pad_to

    def norm(x):
        return F.rms_norm(x, (x.size(-1),))  # eps=None: torch uses finfo(float32).eps

    def rotate(x, cos, sin):  # x [B, T, N, Dh]; split halves
        a, b = x.chunk(2, dim=-1)
        return torch.cat([a * cos + b * sin, b * cos - a * sin], dim=-1)

    class Attention(nn.Module):
        def __init__(self):
            super().__init__()
            self.c_q = nn.Linear(D, H * Dh, bias=False)
            self.c_k = nn.Linear(D, K * Dh, bias=False)
            self.c_v = nn.Linear(D, K * Dh, bias=False)
            self.c_proj = nn.Linear(D, D, bias=False)

        def forward(self, x, cos, sin):
            B, T, _ = x.shape
            q = norm(rotate(self.c_q(x).view(B, T, H, Dh), cos, sin)).transpose(1, 2)
            k = norm(rotate(self.c_k(x).view(B, T, K, Dh), cos, sin)).transpose(1, 2)
            v = self.c_v(x).view(B, T, K, Dh).transpose(1, 2)
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
            return self.c_proj(y.transpose(1, 2).reshape(B, T, D))

    class MLP(nn.Module):
        def __init__(self):
            super().__init__()
            self.c_fc = nn.Linear(D, 4 * D, bias=False)
            self.c_proj = nn.Linear(4 * D, D, bias=False)

        def forward(self, x):
            return self.c_proj(F.relu(self.c_fc(x)).square())

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.attn, self.mlp = Attention(), MLP()

        def forward(self, x, cos, sin):
            x = x + self.attn(norm(x), cos, sin)
            return x + self.mlp(norm(x))

    class GPT(nn.Module):
        def __init__(self):
            super().__init__()
            blocks = nn.ModuleList(Block() for _ in range(L))
            self.transformer = nn.ModuleDict({"wte": nn.Embedding(Vp, D), "h": blocks})
            self.lm_head = nn.Linear(D, Vp, bias=False)

        def forward(self, idx):
            T = idx.size(1)
            inv = 1.0 / 10000.0 ** (torch.arange(0, Dh, 2, dtype=torch.float32) / Dh)
            ang = torch.outer(torch.arange(T, dtype=torch.float32), inv)
            cos, sin = ang.cos()[None, :, None, :], ang.sin()[None, :, None, :]
            if bf16_rotary:  # what nanochat V1 does with its tables
                cos, sin = cos.bfloat16().float(), sin.bfloat16().float()
            x = norm(self.transformer["wte"](idx))
            for blk in self.transformer["h"]:
                x = blk(x, cos, sin)
            logits = self.lm_head(norm(x))[..., :V].float()
            return 15.0 * torch.tanh(logits / 15.0)

    torch.manual_seed(seed)
    m = GPT()
    with torch.no_grad():  # random and non-zero everywhere (output projections and lm_head included)
        for name, p in m.named_parameters():
            std = 1.0 if "wte" in name else 0.8 / p.shape[1] ** 0.5
            p.normal_(0.0, std)
    return m.eval()


def write_nanochat_dir(model, directory: Path, step: int, mc: dict, *, prefix: bool):
    torch = _torch()
    directory.mkdir(parents=True, exist_ok=True)
    sd = {("_orig_mod." if prefix else "") + k: v.detach().clone() for k, v in model.state_dict().items()}
    torch.save(sd, directory / f"model_{step:06d}.pt")
    (directory / f"meta_{step:06d}.json").write_text(json.dumps({"step": step, "model_config": mc, "user_config": {}}))


def nanochat_mc(V, L, D, H, K, T=64):
    return {"sequence_len": T, "vocab_size": V, "n_layer": L, "n_head": H, "n_kv_head": K, "n_embd": D}


def random_params(cfg: ModelConfig, seed=0):
    """Random params, non-zero everywhere (jaxchat's init zero-inits lm_head and the output projections)."""
    rng = np.random.default_rng(seed)

    def draw(path, s):
        std = 1.0 if path[-1].key == "wte" else 0.8 / np.sqrt(s.shape[-2])  # fan-in = the second-last axis
        return (rng.standard_normal(s.shape) * std).astype(np.float32)

    return jax.tree_util.tree_map_with_path(draw, gpt.param_shapes(cfg))


def assert_tree_equal(a, b):
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(la, lb):
        x, y = np.asarray(x), np.asarray(y)
        assert x.dtype == y.dtype == np.float32 and x.shape == y.shape
        np.testing.assert_array_equal(x, y)


# ----------------------------------------------------------------------------------------------------
# nanochat checkpoints


@pytest.mark.parametrize("V,L,D,H,K,prefix", [
    (200, 2, 64, 2, 2, True),    # vocab padded 200 → 256 in the checkpoint; torch.compile key prefixes
    (256, 2, 128, 4, 2, False),  # GQA (2 query heads per kv head), head_dim 32 ≠ 128
], ids=["mha-padded-vocab-orig_mod", "gqa"])
def test_nanochat_logit_parity_and_lossless_round_trip(tmp_path, V, L, D, H, K, prefix):
    torch = _torch()
    ref = reference_gpt(V, L, D, H, K, seed=L + D)
    ck = tmp_path / "chatsft_checkpoints" / f"d{L}"
    write_nanochat_dir(reference_gpt(V, L, D, H, K, seed=99), ck, 100, nanochat_mc(V, L, D, H, K), prefix=prefix)
    write_nanochat_dir(ref, ck, 250, nanochat_mc(V, L, D, H, K), prefix=prefix)

    params, cfg, meta = interop.load_nanochat(tmp_path / "chatsft_checkpoints")  # stage folder → d2, latest step
    assert meta["step"] == 250
    assert (cfg.n_layer, cfg.n_embd, cfg.n_head, cfg.kv_heads, cfg.head_dim, cfg.vocab_size, cfg.max_seq_len) == \
        (L, D, H, K, D // H, V, 64)
    tokens = np.random.default_rng(0).integers(0, V, size=(2, 48))
    with torch.no_grad():
        want = ref(torch.from_numpy(tokens)).numpy()
    got = np.asarray(jax.jit(lambda p, t: gpt.forward(p, t, cfg))(params, tokens))
    err = np.abs(got - want).max()
    assert err <= 1e-5 * np.abs(want).max(), f"max abs logit diff {err:.3g} (max |logit| {np.abs(want).max():.3g})"

    # jaxchat → nanochat layout → jaxchat is bit-exact; nanochat's strict loader accepts our state dict
    mp, jp = interop.save_nanochat(params, cfg, tmp_path / "out", step=7)
    assert mp.name == "model_000007.pt" and jp.name == "meta_000007.json"
    assert json.loads(jp.read_text())["model_config"] == nanochat_mc(V, L, D, H, K)
    back, cfg2, _ = interop.load_nanochat(tmp_path / "out")
    assert cfg2 == cfg
    assert_tree_equal(back, params)
    sd = torch.load(mp, weights_only=True)
    assert sd["lm_head.weight"].shape[0] % 64 == 0
    fresh = reference_gpt(V, L, D, H, K, seed=5)
    fresh.load_state_dict(sd, strict=True)
    with torch.no_grad():
        np.testing.assert_array_equal(fresh(torch.from_numpy(tokens)).numpy(), want)


def test_nanochat_config_mapping_and_errors(tmp_path):
    cfg = interop.config_from_nanochat(nanochat_mc(65536, 20, 1280, 10, 10, T=2048))
    assert (cfg.depth, cfg.aspect_ratio, cfg.head_dim_target, cfg.n_kv_head) == (20, 64, 128, 0)  # nanochat d20
    cfg = interop.config_from_nanochat(nanochat_mc(300, 3, 96, 3, 1))
    assert (cfg.n_embd, cfg.n_head, cfg.head_dim, cfg.kv_heads) == (96, 3, 32, 1)
    with pytest.raises(interop.InteropError, match="not a multiple of n_layer"):
        interop.config_from_nanochat(nanochat_mc(300, 3, 64, 2, 2))
    # a HEAD-era key (value embeddings) is refused, not silently dropped
    torch = _torch()
    sd = {k: v.numpy() for k, v in reference_gpt(64, 1, 32, 1, 1).state_dict().items()}
    cfg = interop.config_from_nanochat(nanochat_mc(64, 1, 32, 1, 1))
    interop.state_dict_to_params(sd, cfg)
    sd["value_embeds.0.weight"] = np.zeros((64, 32), np.float32)
    with pytest.raises(interop.InteropError, match="value_embeds"):
        interop.state_dict_to_params(sd, cfg)
    # bfloat16 wte (nanochat on CUDA) is upcast
    d = tmp_path / "bf16"
    m = reference_gpt(64, 1, 32, 1, 1)
    write_nanochat_dir(m, d, 1, nanochat_mc(64, 1, 32, 1, 1), prefix=False)
    sd = torch.load(d / "model_000001.pt", weights_only=True)
    sd["transformer.wte.weight"] = sd["transformer.wte.weight"].bfloat16()
    torch.save(sd, d / "model_000001.pt")
    p, _, _ = interop.load_nanochat(d, step=1)
    np.testing.assert_array_equal(p["wte"], sd["transformer.wte.weight"].float().numpy())


# ----------------------------------------------------------------------------------------------------
# safetensors and the NumPy runner


def test_safetensors_round_trip_bit_exact(tmp_path):
    _safetensors()
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import run_numpy
    finally:
        sys.path.pop(0)
    tok = tiny_tokenizer()
    cfg = tiny_model(tok.vocab_size, n_kv_head=1, depth=3)
    params = random_params(cfg)
    path = interop.export_safetensors(params, cfg, tmp_path / "m.safetensors", tokenizer=tok)
    back, cfg2 = interop.import_safetensors(path)
    assert cfg2 == cfg
    assert_tree_equal(back, params)
    assert interop.safetensors_tokenizer(path).model_proto == tok.model_proto
    tensors, meta = run_numpy.read_safetensors(str(path))  # the hand-written reader agrees with safetensors
    ref = pytest.importorskip("safetensors.numpy").load_file(str(path))  # what import_safetensors read as `back`
    assert sorted(tensors) == sorted(ref)
    for k, v in ref.items():
        assert tensors[k].dtype == v.dtype == np.float32 and np.array_equal(tensors[k], v), k
    assert json.loads(meta["jaxchat_shape"])["n_kv_head"] == 1
    assert sorted(tensors) == ["blocks.w_fc", "blocks.w_proj", "blocks.wk", "blocks.wo", "blocks.wq", "blocks.wv",
                               "lm_head", "wte"]


def _numpy_env():
    return dict(os.environ, PYTHONPATH="")  # the runner needs nothing from the repo on its path


def test_numpy_runner_matches_engine_greedy_without_jax(tmp_path):
    from jaxchat.engine import Engine

    _safetensors()
    tok = tiny_tokenizer()
    cfg = tiny_model(tok.vocab_size, n_kv_head=1)
    params = random_params(cfg, seed=3)
    path = interop.export_safetensors(params, cfg, tmp_path / "m.safetensors", tokenizer=tok)
    prompt = tok.render_for_completion({"messages": [{"role": "user", "content": "What is 12 * 34?"}]})
    seqs, _ = Engine(params, cfg, tok).generate_batch(prompt, max_tokens=32, temperature=0.0, use_tools=False)
    want = seqs[0]
    assert len(want) == 32

    script = str(ROOT / "scripts" / "run_numpy.py")
    ids = subprocess.run([sys.executable, "-X", "importtime", script, str(path), "--ids", ",".join(map(str, prompt)),
                          "--max_tokens", "32", "--temperature", "0"],
                         capture_output=True, text=True, env=_numpy_env(), timeout=120)
    assert ids.returncode == 0, ids.stderr[-2000:]
    imported = {line.split("|")[-1].strip().split(".")[0] for line in ids.stderr.splitlines() if "|" in line}
    assert "numpy" in imported and not {"jax", "jaxlib", "jaxchat", "flax", "torch"} & imported
    assert [int(t) for t in ids.stdout.strip().split(",")] == want

    text = subprocess.run([sys.executable, script, str(path), "-p", "What is 12 * 34?", "--max_tokens", "32",
                           "--temperature", "0"], capture_output=True, text=True, env=_numpy_env(), timeout=120)
    assert text.returncode == 0, text.stderr[-2000:]
    assert text.stdout.rstrip("\n") == tok.decode(want)


# ----------------------------------------------------------------------------------------------------
# nanochat's tokenizer


GPT4_STYLE_SPLIT = (r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,2}| ?[^\s\p{L}\p{N}]++[\r\n]*"""
                    r"""|\s*[\r\n]|\s+(?!\S)|\s+""")


def tiny_tiktoken():
    tiktoken = pytest.importorskip("tiktoken", reason="tiktoken is not installed: pip install -e '.[interop]'")
    ranks = {bytes([i]): i for i in range(256)}
    for word in (b"he", b"ll", b"llo", b"hello", b" w", b"or", b" wor", b"ld", b" world"):
        ranks[word] = len(ranks)
    specials = {s: len(ranks) + i for i, s in enumerate(SPECIAL_TOKENS)}
    return tiktoken.Encoding("tiny-nanochat", pat_str=GPT4_STYLE_SPLIT, mergeable_ranks=ranks, special_tokens=specials)


def test_nanochat_tokenizer_adapter(tmp_path):
    enc, _ = tiny_tiktoken(), _safetensors()
    src = tmp_path / "nanochat" / "tokenizer"
    src.mkdir(parents=True)
    (src / "tokenizer.pkl").write_bytes(pickle.dumps(enc))  # nanochat's format: a pickled Encoding
    dest = interop.install_nanochat_tokenizer(src, tmp_path / "base" / "tokenizer")
    tok = interop.load_any_tokenizer(dest)
    assert isinstance(tok, interop.NanochatTokenizer)
    assert tok.vocab_size == 265 + 9 and tok.bos_id == 265 and tok.encode_special("<|assistant_end|>") == 269
    assert tok.encode("hello world") == [259, 264]
    assert tok.encode(["hello", "<|bos|>"], prepend="<|bos|>", append=5) == \
        [[265, 259, 5], [265, *b"<|bos|>", 5]]  # special-token text stays ordinary text
    assert tok.decode(tok.encode("héllo <|user_end|> world\n")) == "héllo <|user_end|> world\n"
    tb = tok.token_bytes()
    assert tb[259] == 5 and tb[264] == 6 and tb[ord("a")] == 1 and (tb[265:] == 0).all()
    conv = {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hello"},
                         {"role": "assistant", "content": [{"type": "text", "text": "hello"},
                                                           {"type": "python", "text": "1+1"},
                                                           {"type": "python_output", "text": "2"}]}]}
    ids, mask = tok.render_conversation(conv)
    sp = tok.encode_special
    assert ids == [sp("<|bos|>"), sp("<|user_start|>"), *tok.encode("Be brief.\n\nhello"), sp("<|user_end|>"),
                   sp("<|assistant_start|>"), 259, sp("<|python_start|>"), *tok.encode("1+1"), sp("<|python_end|>"),
                   sp("<|output_start|>"), ord("2"), sp("<|output_end|>"), sp("<|assistant_end|>")]
    assert mask == [0] * (len(tok.encode("Be brief.\n\nhello")) + 4) + [1] * 6 + [0] * 3 + [1]
    assert tok.render_for_completion(conv)[-1] == sp("<|assistant_start|>")
    # also a dict of mergeable ranks; and a pickle that wants to run code is refused
    (src / "tokenizer.pkl").write_bytes(pickle.dumps({"mergeable_ranks": enc._mergeable_ranks,
                                                      "pattern": enc._pat_str}))
    assert interop.NanochatTokenizer.from_file(src / "tokenizer.pkl").encode("hello world") == [259, 264]

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    (src / "tokenizer.pkl").write_bytes(pickle.dumps(Evil()))
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        interop.NanochatTokenizer.from_file(src / "tokenizer.pkl")
    # our own sentencepiece tokenizer is found by the same loader
    tiny_tokenizer().save(tmp_path / "ours" / "tokenizer.model")
    assert type(interop.load_any_tokenizer(tmp_path / "ours")).__name__ == "Tokenizer"
    # a nanochat model + tokenizer embedded in safetensors runs through the NumPy runner (tiktoken text)
    cfg = ModelConfig(depth=1, vocab_size=tok.vocab_size, max_seq_len=32, aspect_ratio=32, head_dim_target=16)
    path = interop.export_safetensors(random_params(cfg), cfg, tmp_path / "nc.safetensors", tokenizer=tok)
    again = interop.safetensors_tokenizer(path)
    assert isinstance(again, interop.NanochatTokenizer) and again.enc._mergeable_ranks == enc._mergeable_ranks
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "run_numpy.py"), str(path), "-p", "hello world",
                          "--max_tokens", "4"], capture_output=True, text=True, env=_numpy_env(), timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]


# ----------------------------------------------------------------------------------------------------
# A converted nanochat checkpoint chats through chat_cli


def test_converted_nanochat_model_chats_through_chat_cli(tmp_path, monkeypatch):
    torch, _ = _torch(), _safetensors()
    monkeypatch.syspath_prepend(str(ROOT))
    from scripts import convert

    tok = tiny_tokenizer()
    V = tok.vocab_size
    nano = tmp_path / "nanochat" / "chatsft_checkpoints" / "d2"
    write_nanochat_dir(reference_gpt(V, 2, 64, 2, 2, seed=11), nano, 500, nanochat_mc(V, 2, 64, 2, 2), prefix=True)
    base = tmp_path / "jaxchat"
    monkeypatch.setenv("JAXCHAT_BASE_DIR", str(base))
    tok.save(base / "tokenizer" / "tokenizer.model")
    st_path = tmp_path / "nc.safetensors"
    args = ["from-nanochat", str(nano), "--stage=sft", "--model_tag=nc", "--safetensors", str(st_path)]
    assert convert.main(args) == 0
    assert (base / "chatsft_checkpoints" / "nc" / "500").is_dir()
    assert convert.main(["from-nanochat", str(nano), "--stage=sft", "--model_tag=nc"]) == 2  # refuses to overwrite
    assert convert.main(["from-nanochat", str(nano), "--stage=sft", "--model_tag=nc", "--force"]) == 0  # same step
    # nanochat → jaxchat checkpoint (orbax) → nanochat gives back the very same state dict
    assert convert.main(["to-nanochat", "--source=sft", "--model_tag=nc", "--out", str(tmp_path / "back")]) == 0
    orig = torch.load(nano / "model_000500.pt", weights_only=True)
    back = torch.load(tmp_path / "back" / "model_000500.pt", weights_only=True)
    assert sorted(back) == sorted(k.removeprefix("_orig_mod.") for k in orig)
    for k, v in orig.items():
        assert torch.equal(back[k.removeprefix("_orig_mod.")], v), k

    env = dict(os.environ, JAXCHAT_BASE_DIR=str(base), JAX_PLATFORMS="cpu", XLA_FLAGS="")
    res = subprocess.run([sys.executable, "-m", "scripts.chat_cli", "--source=sft", "--model_tag=nc", "-p", "hi",
                          "--max_tokens=8", "--temperature=0"], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    answer = res.stdout.split("\nAssistant: ", 1)[1][:-1]  # chat_cli ends the reply with one newline
    assert answer.strip(), res.stdout
    print("chat_cli answer:", repr(answer))
    # the same converted weights through the NumPy runner give the same greedy reply
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "run_numpy.py"), str(st_path), "-p", "hi",
                          "--max_tokens", "8", "--temperature", "0"], capture_output=True, text=True,
                         env=_numpy_env(), timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout[:-1] == answer
