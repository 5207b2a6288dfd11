"""The KV-cache engine: exactness against full forwards, compile discipline, sampling semantics, tool use."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxchat import engine as E
from jaxchat.calculator import calculator
from jaxchat import model as gpt
from jaxchat import sharding as shd
from jaxchat.common import bucket
from jaxchat.config import MeshConfig
from helpers import tiny_model, tiny_tokenizer


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


@pytest.fixture(scope="module")
def setup(tok):
    cfg = tiny_model(tok.vocab_size, max_seq_len=128)
    p = jax.jit(lambda k: gpt.init_params(cfg, k))(jax.random.key(0))
    # random (not zero-init) output layers so greedy decoding is non-trivial
    leaves, tdef = jax.tree.flatten(p)
    keys = jax.random.split(jax.random.key(1), len(leaves))
    p = jax.tree.unflatten(tdef, [x + 0.3 * jax.random.normal(k, x.shape) / np.sqrt(x.shape[-2] if x.ndim > 1 else 1)
                                  for x, k in zip(leaves, keys)])
    return cfg, p


def greedy_reference(params, cfg, prompt, n, ends):
    """Greedy decoding by full forward passes, no cache: the sequence lives in a fixed-size buffer (one
    compilation; causality makes the padding irrelevant) and the logits are read at the last real position."""
    fwd = jax.jit(lambda p, x: gpt.forward(p, x, cfg))
    L = len(prompt) + n
    ids, out = list(prompt), []
    for _ in range(n):
        buf = np.zeros((1, L), np.int32)
        buf[0, : len(ids)] = ids
        t = int(jnp.argmax(fwd(params, jnp.asarray(buf))[0, len(ids) - 1]))
        out.append(t)
        ids.append(t)
        if t in ends:
            break
    return out


@pytest.mark.parametrize("mesh", [None, "fsdp8"])
def test_greedy_with_cache_equals_full_forward(setup, tok, mesh):
    cfg, p = setup
    m = None
    if mesh:
        m = shd.make_mesh(MeshConfig(fsdp=8))
        p = jax.device_put(p, gpt.param_shardings(cfg, m))
    eng = E.Engine(p, cfg, tok, mesh=m)
    prompt = tok.encode("import json\ndef load(path):", prepend=tok.bos_id)
    seqs, masks = eng.generate_batch(prompt, max_tokens=64, temperature=0.0, use_tools=False)
    ref = greedy_reference(p, cfg, prompt, 64, eng.ends)
    ref = ref[:-1] if ref and ref[-1] in eng.ends else ref
    assert seqs[0] == ref and len(ref) > 10
    assert all(masks[0])


def test_decode_windows_cover_the_cache():
    assert gpt.decode_windows(128) == (128,)
    assert gpt.decode_windows(512) == (128, 256, 512)
    assert gpt.decode_windows(320) == (128, 256, 320)
    idx = [int(gpt.window_index(jnp.asarray(n), 512)) for n in (1, 128, 129, 256, 257, 512, 600)]
    assert idx == [0, 0, 1, 1, 2, 2, 2]


def test_greedy_exact_across_attention_windows(setup, tok):
    """A batch whose long row crosses the 128-key window while its short row stays below: both rows equal
    greedy decoding by full forwards (the window only drops keys no active row can see)."""
    cfg, p = setup
    eng = E.Engine(p, cfg, tok)
    long_prompt = tok.encode("def f(x):\n    return x * 2 + 1\n" * 6, prepend=tok.bos_id)[:112]
    short_prompt = tok.encode("import os", prepend=tok.bos_id)
    seqs, _ = eng.generate_batch([long_prompt, short_prompt], max_tokens=40, temperature=0.0, use_tools=False)
    for prompt, got in zip((long_prompt, short_prompt), seqs):
        ref = greedy_reference(p, cfg, prompt, 40, eng.ends)
        ref = ref[:-1] if ref and ref[-1] in eng.ends else ref
        assert got == ref
    assert len(long_prompt) + len(seqs[0]) > 130  # really crossed into the 256-key window


def test_ragged_batch_rows_match_their_own_runs(setup, tok):
    cfg, p = setup
    eng = E.Engine(p, cfg, tok)
    prompts = [tok.encode(s, prepend=tok.bos_id) for s in ("x = 1", "class Decoder(object):\n    def", "Hello")]
    batch, _ = eng.generate_batch(prompts, max_tokens=24, temperature=0.0, use_tools=False)
    for pr, got in zip(prompts, batch):
        alone, _ = eng.generate_batch(pr, max_tokens=24, temperature=0.0, use_tools=False)
        assert got == alone[0]
    # several prompts, each prefilled once and copied to its samples (rows ordered prompt by prompt)
    twice, _ = eng.generate_batch(prompts[:2], num_samples=2, max_tokens=24, temperature=0.0, use_tools=False)
    assert twice == [batch[0], batch[0], batch[1], batch[1]]


def test_too_long_is_a_clear_error(setup, tok):
    eng = E.Engine(setup[1], setup[0], tok)
    with pytest.raises(ValueError, match="a prompt of 9000 tokens: the engine takes at most 8192"):
        eng.start([[1] * 9000], max_tokens=8)
    with pytest.raises(ValueError, match=r"prompt \(100\) \+ max_tokens \(20000\) exceeds the cache length 16384"):
        eng.start([[1] * 100], max_tokens=20000)


def test_no_recompilation_within_a_bucket_or_while_decoding(setup, tok):
    cfg, p = setup
    eng = E.Engine(p, cfg, tok)
    prompts = [tok.encode(s, prepend=tok.bos_id)[:n] for s, n in (("a b c d e f g h i j k", 5),
                                                                 ("one two three four five six", 9),
                                                                 ("def f(x): return x * 2 + 1", 13))]
    assert len({bucket(len(x), E.PROMPT_BUCKETS) for x in prompts}) == 1
    eng.generate_batch(prompts[0], max_tokens=256, temperature=1.0, use_tools=False)
    before = (E.prefill._cache_size(), E.run._cache_size())
    for pr in prompts[1:]:
        eng.generate_batch(pr, max_tokens=256, temperature=1.0, use_tools=False)
    # 256 decode steps streamed one at a time reuse the same compiled step too
    for _ in eng.generate(prompts[1], max_tokens=256, temperature=1.0, use_tools=False):
        pass
    assert (E.prefill._cache_size(), E.run._cache_size()) == before


def test_sampling_semantics(setup, tok):
    cfg, p = setup
    eng = E.Engine(p, cfg, tok)
    prompt = tok.encode("The answer is", prepend=tok.bos_id)
    greedy, _ = eng.generate_batch(prompt, num_samples=4, max_tokens=16, temperature=0.0)
    assert all(s == greedy[0] for s in greedy)  # temperature 0: identical rows
    hot, _ = eng.generate_batch(prompt, num_samples=4, max_tokens=16, temperature=1.0, top_k=0, seed=3)
    assert len({tuple(s) for s in hot}) > 1  # one prefill, N independent samples
    assert len({s[0] for s in hot}) > 1  # rows sample their first token independently
    again, _ = eng.generate_batch(prompt, num_samples=4, max_tokens=16, temperature=1.0, top_k=0, seed=3)
    assert again == hot  # same seed, same output
    top1, _ = eng.generate_batch(prompt, num_samples=4, max_tokens=16, temperature=1.0, top_k=1, seed=5)
    assert all(s == greedy[0] for s in top1)  # top-k 1 is greedy


def test_sampler_respects_top_k_and_temperature():
    logits = jnp.log(jnp.asarray([[0.5, 0.3, 0.15, 0.05]] * 4000))
    keys = jax.random.split(jax.random.key(0), 4000)
    picks = np.asarray(E.sample(logits, keys, jnp.ones(4000), jnp.full(4000, 2, jnp.int32)))
    assert set(np.unique(picks)) == {0, 1}
    assert abs((picks == 0).mean() - 0.5 / 0.8) < 0.03
    full = np.asarray(E.sample(logits, keys, jnp.ones(4000), jnp.zeros(4000, jnp.int32)))
    np.testing.assert_allclose(np.bincount(full, minlength=4) / 4000, [0.5, 0.3, 0.15, 0.05], atol=0.03)


def test_topk_width_and_narrow_sampler_agree_with_wide():
    assert [E.topk_width(k) for k in (0, 1, 50, 51, 200, 5000)] == [50, 50, 50, E.KMAX, E.KMAX, E.KMAX]
    rng = np.random.default_rng(0)
    row = rng.normal(size=300).astype(np.float32)
    row[[7, 99]] = row.max() + 1.0  # a tie at the top: greedy picks the lower index
    n = 4000
    logits = jnp.asarray(np.tile(row, (n, 1)))
    keys = jax.random.split(jax.random.key(1), n)
    greedy = np.asarray(E.sample(logits, keys, jnp.zeros(n), jnp.full(n, 5, jnp.int32), kmax=50))
    assert (greedy == 7).all()
    top5 = np.argsort(-row, kind="stable")[:5]
    p = np.exp(row[top5] - row[top5].max())
    p /= p.sum()
    for kmax in (50, E.KMAX):
        picks = np.asarray(E.sample(logits, keys, jnp.ones(n), jnp.full(n, 5, jnp.int32), kmax=kmax))
        assert set(np.unique(picks)) <= set(top5.tolist())
        freq = np.asarray([(picks == i).mean() for i in top5])
        np.testing.assert_allclose(freq, p, atol=0.03)
    # top_k = 0 still draws from the whole vocabulary when the static width is narrow
    full = np.asarray(E.sample(logits, keys, jnp.ones(n), jnp.zeros(n, jnp.int32), kmax=50))
    assert len(np.unique(full)) > 50


def test_calculator_tool_use_is_forced_and_marked(setup, tok):
    cfg, p = setup
    eng = E.Engine(p, cfg, tok)
    sp = tok.encode_special
    call = [sp("<|python_start|>"), *tok.encode("12*34"), sp("<|python_end|>")]
    prompt = tok.encode("Compute.", prepend=tok.bos_id)
    st, stops = eng.start([prompt], max_tokens=40, temperature=1.0, seed=0, use_tools=True)
    # make the row "emit" the tool call (as a model that learned it would) by queueing it
    buf = np.zeros(E.FORCED_CAP, np.int32)
    buf[: len(call)] = call
    st = E.set_forced(st, 0, jnp.asarray(buf), len(call))
    while bool(np.asarray(st.active).any()):
        st = E.run(eng.params, st, 1 << 20, cfg=cfg, stops=stops)
        st = eng.handle_tools(st)
    out = np.asarray(st.out[0, : int(st.n[0])]).tolist()
    smp = np.asarray(st.sampled[0, : int(st.n[0])]).tolist()
    i = out.index(sp("<|python_end|>"))
    expect = [sp("<|output_start|>"), *tok.encode("408"), sp("<|output_end|>")]
    assert out[i + 1: i + 1 + len(expect)] == expect
    assert not any(smp[i + 1: i + 1 + len(expect)])  # forced, not sampled
    assert len(out) > i + 1 + len(expect) and all(smp[i + 1 + len(expect):])  # and the row continues sampling


def test_rejected_expression_injects_nothing(tok):
    ids = [tok.encode_special("<|python_start|>"), *tok.encode("__import__('os')"), tok.encode_special("<|python_end|>")]
    expr = E._since_last(ids, tok.encode_special("<|python_start|>"), tok.encode_special("<|python_end|>"))
    assert calculator(tok.decode(expr)) is None
