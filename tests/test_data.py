"""Data pipeline: determinism, exact resume of the iterator, per-process shards, packing invariants, SFT masks."""
import itertools
import os
import pathlib

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jaxchat import data
from jaxchat.corpus import document_blocks, shard_names
from helpers import stdlib_texts, tiny_tokenizer, write_corpus


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return str(write_corpus(tmp_path_factory.mktemp("corpus")))


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


def take(it, n):
    return [next(it) for _ in range(n)]


@pytest.mark.parametrize("packing", ["concat", "bos_bestfit"])
def test_same_seed_same_batches_and_exact_resume(corpus, tok, packing):
    mk = lambda seed: data.pretrain_batches(corpus, "train", tok, rows=3, seq_len=32, accum=2, seed=seed,  # noqa: E731
                                            packing=packing)
    a, b = mk(7), mk(7)
    first_a, first_b = take(a, 4), take(b, 4)
    for x, y in zip(first_a, first_b):
        np.testing.assert_array_equal(x["inputs"], y["inputs"])
    assert first_a[0]["inputs"].shape == (2, 3, 32)
    if packing == "concat":  # (best-fit picks by length from a buffer larger than this corpus: order-free)
        other = take(mk(8), 1)[0]
        assert not np.array_equal(other["inputs"], first_a[0]["inputs"])
    # state after 4 batches -> a fresh loader restored from it yields the identical next 3 batches
    state = a.get_state()
    expect = take(a, 3)
    c = mk(7)
    c.set_state(state)
    got = take(c, 3)
    for x, y in zip(expect, got):
        np.testing.assert_array_equal(x["inputs"], y["inputs"])
        np.testing.assert_array_equal(x["targets"], y["targets"])


def test_concat_rows_are_the_shifted_stream(corpus, tok):
    it = data.pretrain_batches(corpus, "train", tok, rows=4, seq_len=16, seed=0, packing="concat")
    b = next(it)
    x, y = b["inputs"][0], b["targets"][0]
    np.testing.assert_array_equal(x[:, 1:], y[:, :-1])  # targets are inputs shifted by one
    np.testing.assert_array_equal(y[:-1, -1], x[1:, 0])  # rows overlap by one token: nothing is wasted
    assert (x == tok.bos_id).any()  # documents start with BOS


def test_bestfit_rows_start_with_bos_and_have_no_padding(corpus, tok):
    it = data.pretrain_batches(corpus, "train", tok, rows=8, seq_len=48, seed=0, packing="bos_bestfit")
    for _ in range(3):
        b = next(it)
        x = b["inputs"].reshape(-1, 48)
        assert (x[:, 0] == tok.bos_id).all()
        assert x.shape[1] == 48 and b["targets"].shape[-1] == 48


def master_bestfit(elements, B, T, bos, buffer_size=1000, chunk=128):
    """nanochat master's BOS best-fit loader (nanochat/dataloader.py, 92d63d4), transliterated: `elements` stand in
    for its row groups, which it tokenizes `chunk` documents at a time. Yields [B, T+1] rows."""
    chunks = (docs[i:i + chunk] for docs in elements for i in range(0, len(docs), chunk))
    buf = []
    while True:
        rows = []
        for _ in range(B):
            row = []
            while len(row) < T + 1:
                while len(buf) < buffer_size:
                    buf.extend(list(d) for d in next(chunks))
                remaining, best_idx, best_len = T + 1 - len(row), -1, 0
                for i, doc in enumerate(buf):
                    if best_len < len(doc) <= remaining:
                        best_idx, best_len = i, len(doc)
                if best_idx >= 0:
                    row += buf.pop(best_idx)
                else:
                    row += buf.pop(min(range(len(buf)), key=lambda i: len(buf[i])))[:remaining]
            assert row[0] == bos
            rows.append(row)
        yield np.array(rows)


def synthetic_elements(seed, n, sizes, mean_len, bos=1):
    """Row-group-like elements of documents: BOS then random ids, lengths long-tailed (some longer than a row)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        lens = np.maximum(1, rng.lognormal(np.log(mean_len), 1.0, rng.integers(*sizes))).astype(int)
        out.append([np.concatenate([[bos], rng.integers(2, 1000, k - 1)]).astype(np.int32) for k in lens])
    return out


@pytest.mark.parametrize("T,buffer,chunk,sizes,mean_len", [(64, 40, 16, (1, 50), 20), (2048, 1000, 128, (1024, 1025),
                                                                                      400)])
def test_bestfit_rows_equal_master_algorithm(T, buffer, chunk, sizes, mean_len):
    """The same rows as master's loader from the same documents: best fit, crops, buffer refills, tie order; and
    a packer restored from a state (buffered and pending documents) continues with the same rows."""
    elements = synthetic_elements(0, 40, sizes, mean_len)
    ref = master_bestfit(elements, 8, T, 1, buffer, chunk)

    def packer():
        stream = data.iterate(data.block_dataset(elements, list, seed=0, shuffle=False, repeat=False))
        return data.Packer(stream, T, "bos_bestfit", buffer_docs=buffer, chunk_docs=chunk)

    ours, kept = packer(), 0
    for step in range(4):
        if step == 2:
            state, resumed = ours.get_state(), packer()
            resumed.set_state(state)
            assert resumed.pending  # the state holds documents read but not yet buffered
            master_rows = np.concatenate([next(ref), next(ref)])
            np.testing.assert_array_equal(resumed.next_rows(16), master_rows)
        rows = ours.next_rows(8)
        np.testing.assert_array_equal(rows, next(ref) if step < 2 else master_rows[8 * (step - 2):][:8])
        assert rows.shape == (8, T + 1) and (rows[:, 0] == 1).all()
        kept += rows.size
    read = sum(map(len, [d for e in elements for d in e])) - sum(map(len, ours.docs + ours.pending))
    assert read > kept  # some documents were cropped


def test_bestfit_equals_master_code(tmp_path, monkeypatch, tok):
    """Master's own loader (its checkout at /tmp/nanochat_master, torch CPU) on ClimbMix-named shards gives the
    rows ours gives from the same shards read in order (master's order; ours shuffles by default)."""
    root = pathlib.Path(os.environ.get("NANOCHAT_MASTER", "/tmp/nanochat_master"))
    if not (root / "nanochat" / "dataloader.py").is_file():
        pytest.skip("no nanochat master checkout")
    pytest.importorskip("torch")
    texts = stdlib_texts(40)
    docs = [t[i:i + n] for t in texts for i, n in zip(range(0, len(t), 700), itertools.cycle([90, 400, 1300, 30]))]
    for k, name in enumerate(shard_names("climbmix", 2)):
        pq.write_table(pa.table({"text": docs[k::3]}), tmp_path / name, row_group_size=300)
    monkeypatch.setenv("NANOCHAT_BASE_DIR", str(tmp_path))
    monkeypatch.syspath_prepend(str(root))
    dataset = pytest.importorskip("nanochat.dataset")
    loader = pytest.importorskip("nanochat.dataloader")
    monkeypatch.setattr(dataset, "DATA_DIR", str(tmp_path))

    class MasterTok:  # master's tokenizer interface over ours
        get_bos_token_id = lambda self: tok.bos_id  # noqa: E731
        encode = staticmethod(tok.encode)

    T, B = 128, 16
    ref = loader.tokenizing_distributed_data_loader_bos_bestfit(MasterTok(), B, T, "train", device="cpu")
    blocks = document_blocks("climbmix", "train", data_dir=tmp_path)
    ours = data.RowBatches(data.Packer(data.iterate(data.block_dataset(blocks, data.make_tokenize(tok), seed=0,
                                                                       shuffle=False)), T, "bos_bestfit"), B)
    for _ in range(6):  # past the end of the split (an epoch is ~1,100 documents)
        x, y = next(ref)
        b = next(ours)
        np.testing.assert_array_equal(b["inputs"][0], x.numpy())
        np.testing.assert_array_equal(b["targets"][0], y.numpy())


def test_loader_threads_follow_the_host(monkeypatch):
    assert data.host_threads() >= 1  # the cores this process may use
    for cores, encode, grain in ((1, 1, 2), (3, 3, 2), (64, 16, 4), (200, 16, 13)):
        monkeypatch.setenv("JAXCHAT_DATA_THREADS", str(cores))
        assert (data.host_threads(), data.encode_threads(), data.grain_threads()) == (cores, encode, grain)


def test_process_shards_are_disjoint_and_cover():
    blocks = range(11)
    ids = [[i] for i in blocks]  # stand-in blocks that name themselves
    seen = []
    for pi in range(3):
        ds = data.block_dataset(ids, lambda block: block[0], seed=1, repeat=False, process_index=pi, process_count=3)
        seen.append({ds[i] for i in range(len(ds))})
    assert all(not (seen[i] & seen[j]) for i in range(3) for j in range(i + 1, 3))
    assert set().union(*seen) == set(range(len(blocks)))


def test_eval_rows_are_deterministic(corpus, tok):
    a = data.eval_rows(corpus, "val", tok, seq_len=16, max_tokens=160)
    b = data.eval_rows(corpus, "val", tok, seq_len=16, max_tokens=160)
    np.testing.assert_array_equal(a, b)
    assert a.shape[1] == 17 and 1 <= len(a) <= 10
    # master's val rows: best fit over the split in order, round it again as often as its 1,000-document buffer needs
    rows = data.eval_rows(corpus, "val", tok, seq_len=16, max_tokens=160, packing="bos_bestfit")
    blocks = [data.make_tokenize(tok)(b) for b in document_blocks(corpus, "val")]
    np.testing.assert_array_equal(rows, next(master_bestfit(itertools.cycle(blocks), 10, 16, tok.bos_id)))


def test_sft_batch_trains_only_assistant_tokens(tok):
    conv = {"messages": [{"role": "user", "content": "What is 12 * 34?"},
                         {"role": "assistant", "content": [{"type": "text", "text": "Let me compute. "},
                                                           {"type": "python", "text": "12*34"},
                                                           {"type": "python_output", "text": "408"},
                                                           {"type": "text", "text": " It is 408."}]}]}
    ids, mask = tok.render_conversation(conv)
    b = data.sft_batch([(ids, mask), (ids[:10], mask[:10])], tok.encode_special("<|assistant_end|>"), T=len(ids) + 3)
    x, y = b["inputs"], b["targets"]
    np.testing.assert_array_equal(x[0, : len(ids) - 1], ids[:-1])
    trained = y[0] >= 0
    np.testing.assert_array_equal(trained[: len(ids) - 1], np.asarray(mask[1:]) == 1)
    assert not trained[len(ids) - 1:].any()  # padding is never trained
    out_tokens = {tok.encode_special(s) for s in ("<|output_start|>", "<|output_end|>")}
    assert not any(int(t) in out_tokens for t in y[0][trained])  # tool output is not trained
    assert y[0][trained][-1] == tok.encode_special("<|assistant_end|>")
    assert not (y[1] >= 0).any()  # the truncated user-only row has nothing to train


def test_conversation_loaders_resume_exactly(tok):
    """Mid/SFT batches are rendered ahead on a background thread; a restored state still gives the identical
    next batches (the state is an index, the rendering a pure function of it)."""
    task = [{"messages": [{"role": "user", "content": f"What is {i} + {i * 7}?" + " Please." * (i % 5)},
                          {"role": "assistant", "content": f"It is {i + i * 7}."}]} for i in range(40)]

    def mid():
        return data.RowBatches(data.Packer(data.conversation_stream(task, tok, max_tokens=32, group=4, repeat=True),
                                           32), rows=2)

    def sft():
        return data.SFTBatches(task, tok, rows=2, accum=2, max_tokens=64, seed=3)

    for mk in (mid, sft):
        a = mk()
        take(a, 5)
        state, expect = a.get_state(), take(a, 12)  # runs past the end of an epoch
        for before in (2, 9):  # restored forward, and back over batches already rendered ahead
            b = mk()
            take(b, before)
            b.set_state(state)
            for x, y in zip(expect, take(b, 12)):
                np.testing.assert_array_equal(x["inputs"], y["inputs"])
                np.testing.assert_array_equal(x["targets"], y["targets"])
