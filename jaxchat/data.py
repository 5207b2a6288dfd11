"""Data pipelines: documents → tokens → packed (B, T+1) rows, with exact, checkpointable iterator state.

Pretraining: `document_blocks` (corpus.py) → grain MapDataset: seeded shuffle of blocks, reshuffled every
epoch, repeated forever → this process's slice `[process_index::process_count]` → batched sentencepiece
encode with BOS per document (threads) → grain iterator → `Packer` → rows.

Packing modes:
- "concat" (nanochat V1): one token stream, cut into rows of T+1 tokens that overlap by one token, so no
  token is wasted; documents may span rows.
- "bos_bestfit" (nanochat's later loader): every row starts at a document's BOS; each row is filled with
  the largest buffered document that still fits, and when none fits the shortest is cropped to fill the
  row exactly (no padding; the cropped tail is dropped).

State: grain's iterator position plus the packer's buffered tokens, serialised to bytes. The packer
implements get_state/set_state/start_prefetch, so `grain.checkpoint.CheckpointSave(packer)` stores it in
an orbax checkpoint with one file per process. Restoring gives the identical next batches.

Conversations: tasks (tasks/) rendered with the tokenizer, a few batches ahead on a background thread.
Midtraining packs rendered conversations like documents (all tokens trained, nanochat V1); SFT uses one
conversation per row, padded, with targets masked to the assistant tokens (`SFTBatches`).

Threads: pretraining encodes on as many threads as the host has cores (`host_threads`; JAXCHAT_DATA_THREADS
overrides).
"""
from __future__ import annotations

import base64
import json
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterator, Sequence

import numpy as np

PACKING_MODES = ("concat", "bos_bestfit")


def _grain():
    import grain

    return grain


# ----------------------------------------------------------------------------------------------------
# Document streams


def block_dataset(blocks: Sequence, tokenize: Callable[[list], list], *, seed: int, shuffle: bool = True,
                  repeat: bool = True, process_index: int = 0, process_count: int = 1):
    """A grain MapDataset of tokenized blocks (each a list of int32 arrays) for this process: blocks in a
    seeded order reshuffled every epoch, documents shuffled within each block."""
    grain = _grain()
    ds = grain.MapDataset.source(blocks)
    if shuffle:
        ds = ds.seed(seed).shuffle()
    if repeat:
        ds = ds.repeat(None)
    if process_count > 1:
        ds = ds[process_index::process_count]
    if shuffle:  # also shuffle documents inside each block (matters for small corpora with few blocks)
        ds = ds.random_map(lambda block, rng: [block[i] for i in rng.permutation(len(block))])
    return ds.map(tokenize)


def host_threads() -> int:
    """CPU threads the host loader uses: $JAXCHAT_DATA_THREADS, else every core this process may run on.
    sentencepiece encodes with the GIL released at ~1M chars/s per thread (2.7-4.5M measured on the embedded
    corpus at vocab 8192), and 8 H100s at nanochat's speed (1.09M tokens/s) eat ~5M chars/s of FineWeb-edu:
    a fixed small count starves a GPU node."""
    if os.environ.get("JAXCHAT_DATA_THREADS"):
        return max(1, int(os.environ["JAXCHAT_DATA_THREADS"]))
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


# One block (64 embedded documents, 1,024 FineWeb ones) is encoded by up to 16 threads: sentencepiece starts
# its threads on every call (~75 µs each, measured), 200 of them would cost more than a block's work. grain
# keeps ceil(cores / 16) blocks (>= 2) in flight, so every core encodes while the Python part of a block
# (reading, int32 conversion: ~3% of its time, measured) holds the GIL.
def encode_threads() -> int:
    return min(host_threads(), 16)


def grain_threads() -> int:
    return max(2, -(-host_threads() // 16))


def make_tokenize(tokenizer, num_threads: int | None = None):
    bos = tokenizer.bos_id
    num_threads = num_threads or encode_threads()

    def tokenize(docs: list[str]) -> list[np.ndarray]:
        ids = tokenizer.encode(list(docs), prepend=bos, num_threads=num_threads)
        return [np.asarray(x, np.int32) for x in ids]

    return tokenize


def iterate(ds, threads: int | None = None, prefetch: int | None = None):
    grain = _grain()
    threads = threads or grain_threads()
    options = grain.ReadOptions(num_threads=threads, prefetch_buffer_size=prefetch or 2 * threads)
    return iter(ds.to_iter_dataset(options))


# ----------------------------------------------------------------------------------------------------
# Packing


class Packer:
    """Packs a stream of token lists into rows of T+1 tokens. `stream` is a grain iterator (get_state /
    set_state) whose elements are lists of int32 arrays (one per document)."""

    def __init__(self, stream, seq_len: int, mode: str = "concat", bos_id: int | None = None,
                 buffer_docs: int = 1000):
        if mode not in PACKING_MODES:
            raise ValueError(f"packing must be one of {PACKING_MODES}, got {mode!r}")
        if mode == "bos_bestfit" and bos_id is None:
            raise ValueError("bos_bestfit packing needs bos_id")
        self.stream, self.T, self.mode, self.bos_id, self.buffer_docs = stream, seq_len, mode, bos_id, buffer_docs
        self.tokens = np.zeros((0,), np.int32)  # concat: pending stream
        self.docs: list[np.ndarray] = []  # bestfit: buffered documents

    # -- rows
    def next_rows(self, n: int) -> np.ndarray:
        return np.stack([self._next_row() for _ in range(n)])

    def _next_row(self) -> np.ndarray:
        return self._concat_row() if self.mode == "concat" else self._bestfit_row()

    def _pull(self):
        block = next(self.stream)
        return [np.asarray(d, np.int32) for d in block if len(d)]

    def _concat_row(self) -> np.ndarray:
        need = self.T + 1
        while len(self.tokens) < need:
            docs = self._pull()
            self.tokens = np.concatenate([self.tokens, *docs]) if docs else self.tokens
        row = self.tokens[:need]
        self.tokens = self.tokens[self.T:]  # overlap by one token: the last target is the next row's first input
        return row

    def _bestfit_row(self) -> np.ndarray:
        need = self.T + 1
        row = []
        room = need
        while room > 0:
            while len(self.docs) < self.buffer_docs:
                self.docs.extend(self._pull())
            lengths = np.fromiter((len(d) for d in self.docs), np.int64, len(self.docs))
            fits = np.nonzero(lengths <= room)[0]
            if len(fits):
                i = int(fits[np.argmax(lengths[fits])])
                doc = self.docs.pop(i)
            else:
                i = int(np.argmin(lengths))
                doc = self.docs.pop(i)[:room]  # crop: the rest of this document is dropped
            row.append(doc)
            room -= len(doc)
        return np.concatenate(row)

    # -- state (bytes, so grain's orbax handler can store it per process)
    def get_state(self) -> bytes:
        lengths = np.asarray([len(d) for d in self.docs], np.int64)
        flat = np.concatenate(self.docs) if self.docs else np.zeros((0,), np.int32)
        state = {
            "stream": self.stream.get_state(),
            "mode": self.mode,
            "T": self.T,
            "tokens": base64.b64encode(self.tokens.astype(np.int32).tobytes()).decode(),
            "doc_lengths": lengths.tolist(),
            "docs": base64.b64encode(flat.astype(np.int32).tobytes()).decode(),
        }
        return json.dumps(state).encode()

    def set_state(self, state: bytes | dict) -> None:
        s = json.loads(state) if isinstance(state, (bytes, str)) else state
        if s["mode"] != self.mode or s["T"] != self.T:
            raise ValueError(f"data state is for packing={s['mode']} T={s['T']}, this loader has "
                             f"packing={self.mode} T={self.T}")
        self.stream.set_state(s["stream"])
        self.tokens = np.frombuffer(base64.b64decode(s["tokens"]), np.int32).copy()
        flat = np.frombuffer(base64.b64decode(s["docs"]), np.int32)
        offs = np.cumsum([0, *s["doc_lengths"]])
        self.docs = [flat[offs[i]:offs[i + 1]].copy() for i in range(len(s["doc_lengths"]))]

    def start_prefetch(self) -> None:
        if hasattr(self.stream, "start_prefetch"):
            self.stream.start_prefetch()


class RowBatches:
    """Batches for the train step: {"inputs", "targets"} of shape [A, B_local, T] from a Packer."""

    def __init__(self, packer: Packer, rows: int, accum: int = 1):
        self.packer, self.rows, self.accum = packer, rows, accum

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        r = self.packer.next_rows(self.rows * self.accum).reshape(self.accum, self.rows, -1)
        return {"inputs": r[..., :-1], "targets": r[..., 1:]}

    # checkpointing goes through the packer
    def get_state(self) -> bytes:
        return self.packer.get_state()

    def set_state(self, state) -> None:
        self.packer.set_state(state)

    def start_prefetch(self) -> None:
        self.packer.start_prefetch()


def pretrain_batches(source: str, split: str, tokenizer, *, rows: int, seq_len: int, accum: int = 1,
                     seed: int = 0, packing: str = "concat", process_index: int = 0, process_count: int = 1,
                     threads: int | None = None) -> RowBatches:
    """Infinite shuffled training batches from a corpus source (corpus.py)."""
    from jaxchat.corpus import document_blocks

    blocks = document_blocks(source, split)
    ds = block_dataset(blocks, make_tokenize(tokenizer), seed=seed, process_index=process_index,
                       process_count=process_count)
    packer = Packer(iterate(ds, threads=threads), seq_len, packing, bos_id=tokenizer.bos_id)
    return RowBatches(packer, rows, accum)


def eval_rows(source: str, split: str, tokenizer, *, seq_len: int, max_tokens: int) -> np.ndarray:
    """A fixed, unshuffled set of rows [N, T+1] (concat packing, in block order) for loss / bits per byte."""
    from jaxchat.corpus import document_blocks

    blocks = document_blocks(source, split)
    tok = make_tokenize(tokenizer)
    n_rows = max(1, max_tokens // seq_len)
    stream = np.zeros((0,), np.int32)
    out = []
    for i in range(len(blocks)):
        stream = np.concatenate([stream, *tok(blocks[i])])
        while len(stream) >= seq_len + 1 and len(out) < n_rows:
            out.append(stream[: seq_len + 1])
            stream = stream[seq_len:]
        if len(out) >= n_rows:
            break
    if not out:
        raise ValueError(f"the {split} split of {source!r} has fewer than {seq_len + 1} tokens")
    return np.stack(out)


# ----------------------------------------------------------------------------------------------------
# Conversations


class _Ahead:
    """fn(i) for i = 0, 1, 2, ... computed `depth` calls ahead on one background thread, so rendering
    conversations (pure Python) overlaps the device step instead of delaying the next dispatch. fn must be a
    pure function of i: the caller's state stays the next index and resume is exact."""

    def __init__(self, fn: Callable[[int], object], depth: int = 4):
        self.fn, self.depth, self.pending, self.pool = fn, depth, {}, None

    def __call__(self, i: int):
        self.pool = self.pool or ThreadPoolExecutor(1, thread_name_prefix="jaxchat-render")
        for j in [j for j in self.pending if j < i]:  # a restored state skipped these
            self.pending.pop(j).cancel()
        for j in range(i, i + self.depth + 1):
            if j not in self.pending:
                self.pending[j] = self.pool.submit(self.fn, j)
        return self.pending.pop(i).result()


class _ListIterator:
    """A minimal checkpointable iterator over a Python sequence (grain-compatible get/set_state); items are
    made ahead on a background thread (`_Ahead`)."""

    def __init__(self, items_fn: Callable[[int], list], n: int, repeat: bool):
        self.n, self.repeat, self.i = n, repeat, 0
        self.items = _Ahead(lambda i: items_fn(i % n))

    def __next__(self):
        if self.i >= self.n and not self.repeat:
            raise StopIteration
        item = self.items(self.i)
        self.i += 1
        return item

    def get_state(self):
        return {"next_index": self.i}

    def set_state(self, s):
        self.i = int(s["next_index"])

    @property
    def epoch(self) -> float:
        return self.i / self.n


def conversation_stream(task, tokenizer, *, max_tokens: int, process_index: int = 0, process_count: int = 1,
                        repeat: bool = False, group: int = 64):
    """Rendered conversations (ids only, mask ignored) in task order, `group` per element, for packing."""
    idx = np.arange(process_index, len(task), process_count)
    n_groups = (len(idx) + group - 1) // group

    def items(g):
        return [np.asarray(tokenizer.render_conversation(task[int(j)], max_tokens=max_tokens)[0], np.int32)
                for j in idx[g * group:(g + 1) * group]]

    return _ListIterator(items, n_groups, repeat)


def sft_batch(rendered: list[tuple[list, list]], pad_id: int, T: int) -> dict:
    """One rendered conversation per row, right-padded to T; targets are the next tokens where the mask is 1,
    else −1 (nanochat pads with <|assistant_end|>; padded positions are never trained)."""
    inputs = np.full((len(rendered), T), pad_id, np.int32)
    targets = np.full((len(rendered), T), -1, np.int32)
    for r, (ids, mask) in enumerate(rendered):
        ids, mask = np.asarray(ids[: T + 1], np.int32), np.asarray(mask[: T + 1], np.int32)
        n = len(ids) - 1
        inputs[r, :n] = ids[:-1]
        targets[r, :n] = np.where(mask[1:] == 1, ids[1:], -1)
    return {"inputs": inputs, "targets": targets}


def bucket_length(n: int, buckets: Sequence[int]) -> int:
    for b in buckets:
        if n <= b:
            return b
    return buckets[-1]


class SFTBatches:
    """SFT batches [A, B_local, T]: one conversation per row, a seeded shuffle per epoch, conversations of
    similar length batched together and rows padded to a length bucket, so little compute goes to padding
    and only a handful of shapes compile (not one per batch). The state is the step index."""

    def __init__(self, task, tokenizer, *, rows: int, accum: int, max_tokens: int, seed: int, process_index: int = 0,
                 process_count: int = 1, buckets: Sequence[int] = (128, 256, 512, 1024, 2048)):
        self.task, self.tok, self.rows, self.accum, self.max_tokens = task, tokenizer, rows, accum, max_tokens
        self.seed, self.pi, self.pc = seed, process_index, process_count
        self.buckets = [b for b in buckets if b < max_tokens] + [max_tokens]
        self.pad = tokenizer.encode_special("<|assistant_end|>")
        self.per_step = rows * accum
        self.steps_per_epoch = (len(task) // process_count) // self.per_step
        if self.steps_per_epoch < 1:
            raise ValueError(f"{len(task)} conversations cannot fill one step of {self.per_step * process_count}")
        self.step = 0
        self._ahead = _Ahead(self._batch)  # batches are rendered on a background thread

    def __iter__(self):
        return self

    GROUP = 8  # steps whose conversations are sorted by length together (less padding, same examples)

    def _order(self, epoch: int) -> np.ndarray:
        """This epoch's conversation order: a seeded shuffle, then within each group of GROUP steps the
        conversations are sorted by length and the group's batches are shuffled again."""
        if getattr(self, "_cached_epoch", None) == epoch:
            return self._cached_order
        rng = np.random.default_rng(self.seed + epoch)
        order = rng.permutation(len(self.task))[self.pi::self.pc][: self.steps_per_epoch * self.per_step]
        chunk = self.GROUP * self.per_step
        out = []
        for g in range(0, len(order), chunk):
            idx = order[g:g + chunk]
            lengths = np.asarray([self._length(int(i)) for i in idx])
            idx = idx[np.argsort(lengths, kind="stable")]
            batches = idx.reshape(-1, self.per_step)
            out.append(batches[rng.permutation(len(batches))].reshape(-1))
        self._cached_epoch, self._cached_order = epoch, np.concatenate(out)
        return self._cached_order

    def _length(self, i: int) -> int:
        return len(self.tok.render_conversation(self.task[i], max_tokens=self.max_tokens + 1)[0])

    def _batch(self, step: int) -> dict:
        epoch, s = divmod(step, self.steps_per_epoch)
        order = self._order(epoch)
        rendered = [self.tok.render_conversation(self.task[int(i)], max_tokens=self.max_tokens + 1)
                    for i in order[s * self.per_step:(s + 1) * self.per_step]]
        T = bucket_length(max(len(ids) for ids, _ in rendered) - 1, self.buckets)
        b = sft_batch(rendered, self.pad, T)
        return {k: v.reshape(self.accum, self.rows, T) for k, v in b.items()}

    def __next__(self) -> dict:
        b = self._ahead(self.step)
        self.step += 1
        return b

    def get_state(self) -> bytes:
        return json.dumps({"step": self.step}).encode()

    def set_state(self, state) -> None:
        self.step = int(json.loads(state)["step"])

    def start_prefetch(self) -> None:
        pass
