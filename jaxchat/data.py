"""Data pipelines: documents → tokens → packed (B, T+1) rows, with exact, checkpointable iterator state.

Pretraining: corpus blocks → grain MapDataset (seeded shuffle every epoch, this process's slice, threaded
sentencepiece encode) → `Packer` → rows; midtraining packs rendered conversations the same way, SFT trains one
per row. A loader's state (grain position + packer buffer) goes to `grain.checkpoint.CheckpointSave`.
"""
from __future__ import annotations

import base64
import contextlib
import functools
import itertools
import json
import os
import sys
from typing import Callable, Sequence

import grain
import numpy as np

from jaxchat.common import bucket
from jaxchat.corpus import document_blocks

PACKING_MODES = ("concat", "bos_bestfit")


def block_dataset(blocks: Sequence, tokenize: Callable[[list], list], *, seed: int, shuffle: bool = True,
                  repeat: bool = True, process_index: int = 0, process_count: int = 1):
    """A grain MapDataset of tokenized blocks (each a list of int32 arrays) for this process: blocks in a
    seeded order reshuffled every epoch, documents shuffled within each block."""
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
    """$JAXCHAT_DATA_THREADS, else every core this process may run on: sentencepiece encodes ~1M chars/s per
    thread (GIL released) and 8 H100s at nanochat's speed eat ~5M chars/s, so a fixed small count starves them."""
    if os.environ.get("JAXCHAT_DATA_THREADS"):
        return max(1, int(os.environ["JAXCHAT_DATA_THREADS"]))
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


# A block (64 embedded documents, 1,024 FineWeb ones) is encoded by <= 16 threads, as sentencepiece starts them
# on every call (~75 µs each, measured); grain keeps ceil(cores / 16) blocks (>= 2) in flight, so every core
# encodes while the Python part of a block (reading, int32 conversion: ~3% of its time) holds the GIL.
def encode_threads() -> int:
    return min(host_threads(), 16)


def grain_threads() -> int:
    return max(2, -(-host_threads() // 16))


def make_tokenize(tokenizer, num_threads: int | None = None):
    num_threads = num_threads or encode_threads()

    def tokenize(docs: list[str]) -> list[np.ndarray]:
        ids = tokenizer.encode(list(docs), prepend=tokenizer.bos_id, num_threads=num_threads)
        return [np.asarray(x, np.int32) for x in ids]

    return tokenize


def iterate(ds, threads: int | None = None, prefetch: int | None = None):
    threads = threads or grain_threads()
    options = grain.ReadOptions(num_threads=threads, prefetch_buffer_size=prefetch or 2 * threads)
    return iter(ds.to_iter_dataset(options))


class Packer:
    """Packs a stream of token lists into rows of T+1 tokens. `stream` is a grain iterator whose elements are
    lists of int32 arrays (one per document).

    - "concat" (nanochat V1): one token stream cut into rows that overlap by one token; documents span rows.
    - "bos_bestfit" (nanochat master's loader, the same rows from the same documents): every row starts at a
      document's BOS. Before each pick the buffer is topped up to `buffer_docs` documents, `chunk_docs` at a time
      from the stream's current element (master tokenizes each row group 128 documents at a time); the row takes
      the longest buffered document that fits (the oldest of equal ones) until none does, then the shortest (the
      oldest) cropped to fill it, the rest of it dropped (~35% of the tokens at T=2048). No padding."""

    def __init__(self, stream, seq_len: int, mode: str = "concat", buffer_docs: int = 1000, chunk_docs: int = 128):
        if mode not in PACKING_MODES:
            raise ValueError(f"packing must be one of {PACKING_MODES}, got {mode!r}")
        self.stream, self.T, self.mode = stream, seq_len, mode
        self.buffer_docs, self.chunk_docs = buffer_docs, chunk_docs
        self.tokens = np.zeros((0,), np.int32)  # concat: pending stream
        self.docs: list[np.ndarray] = []  # bestfit: buffered documents, oldest first
        self.lens = np.zeros((0,), np.int64)  # bestfit: their lengths
        self.pending: list[np.ndarray] = []  # bestfit: the rest of the stream's current element

    def next_rows(self, n: int) -> np.ndarray:
        return np.stack([self.next_row() for _ in range(n)])

    def next_row(self) -> np.ndarray:
        return self._concat_row() if self.mode == "concat" else self._bestfit_row()

    def _pull(self) -> list[np.ndarray]:
        return [np.asarray(d, np.int32) for d in next(self.stream) if len(d)]

    def _concat_row(self) -> np.ndarray:
        while len(self.tokens) < self.T + 1:
            self.tokens = np.concatenate([self.tokens, *self._pull()])
        row = self.tokens[:self.T + 1]
        self.tokens = self.tokens[self.T:]  # overlap by one token: the last target is the next row's first input
        return row

    def _bestfit_row(self) -> np.ndarray:
        row, room = [], self.T + 1
        while room > 0:
            while len(self.docs) < self.buffer_docs:
                self.pending = self.pending or self._pull()
                chunk, self.pending = self.pending[:self.chunk_docs], self.pending[self.chunk_docs:]
                self.docs += chunk
                self.lens = np.concatenate([self.lens, np.fromiter(map(len, chunk), np.int64, len(chunk))])
            fit = np.where(self.lens <= room, self.lens, 0)  # documents are never empty (BOS)
            i = int(np.argmax(fit)) if fit.any() else int(np.argmin(self.lens))  # the first of equals, as master
            doc = self.docs.pop(i)[:room]  # cropped only when nothing fits
            self.lens = np.delete(self.lens, i)
            row.append(doc)
            room -= len(doc)
        return np.concatenate(row)

    def get_state(self) -> bytes:  # the pending tokens (concat) or buffered and pending documents, back to back
        flat = np.concatenate([self.tokens, *self.docs, *self.pending])
        return json.dumps({"stream": self.stream.get_state(), "mode": self.mode, "T": self.T,
                           "lengths": [len(d) for d in (self.tokens, *self.docs, *self.pending)],
                           "buffered": len(self.docs), "tokens": base64.b64encode(flat.tobytes()).decode()}).encode()

    def set_state(self, state: bytes) -> None:
        s = json.loads(state)
        if s["mode"] != self.mode or s["T"] != self.T:
            raise ValueError(f"data state is for packing={s['mode']} T={s['T']}, this loader has "
                             f"packing={self.mode} T={self.T}")
        self.stream.set_state(s["stream"])
        flat = np.frombuffer(base64.b64decode(s["tokens"]), np.int32).copy()
        self.tokens, *docs = np.split(flat, np.cumsum(s["lengths"][:-1], dtype=np.int64))
        n = s.get("buffered", len(docs))  # (absent from states saved before documents were kept pending)
        self.docs, self.pending = docs[:n], docs[n:]
        self.lens = np.array([len(d) for d in self.docs], np.int64)

    def start_prefetch(self) -> None:
        self.stream.start_prefetch()


class RowBatches:
    """Batches for the train step: {"inputs", "targets"} of shape [A, B_local, T] from a Packer, whose state
    (get_state / set_state / start_prefetch) is the loader's."""

    def __init__(self, packer: Packer, rows: int, accum: int = 1):
        self.packer, self.rows, self.accum = packer, rows, accum

    def __getattr__(self, name):
        return getattr(self.packer, name)

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        r = self.packer.next_rows(self.rows * self.accum).reshape(self.accum, self.rows, -1)
        return {"inputs": r[..., :-1], "targets": r[..., 1:]}


def pretrain_batches(source: str, split: str, tokenizer, *, rows: int, seq_len: int, accum: int = 1,
                     seed: int = 0, packing: str = "concat", process_index: int = 0, process_count: int = 1,
                     threads: int | None = None) -> RowBatches:
    """Infinite shuffled training batches from a corpus source (corpus.py)."""
    ds = block_dataset(document_blocks(source, split), make_tokenize(tokenizer), seed=seed,
                       process_index=process_index, process_count=process_count)
    packer = Packer(iterate(ds, threads=threads), seq_len, packing)
    return RowBatches(packer, rows, accum)


def eval_rows(source: str, split: str, tokenizer, *, seq_len: int, max_tokens: int, packing: str = "concat"):
    """A fixed, unshuffled set of rows [N, T+1] (in block order) for loss / bits per byte. bos_bestfit packs as
    nanochat master's val loader does, going round the split again when it runs out (its buffer needs 1,000
    documents; its ~35% cropping reads ~1.5 tokens per token kept)."""
    blocks = document_blocks(source, split)
    blocks = itertools.chain.from_iterable(itertools.repeat(blocks)) if packing == "bos_bestfit" else blocks
    packer, out = Packer(map(make_tokenize(tokenizer), blocks), seq_len, packing), []
    with contextlib.suppress(StopIteration):  # the split may run out first
        while len(out) < max(1, max_tokens // seq_len):
            out.append(packer.next_row())
    if not out:
        raise ValueError(f"the {split} split of {source!r} has fewer than {seq_len + 1} tokens")
    return np.stack(out)


def _ahead(fn: Callable[[int], object], n: int, repeat: bool = False):
    """fn(0), fn(1), ... as a grain iterator (state: the next index) that computes a few items ahead on one
    background thread, so rendering conversations (pure Python) overlaps the device step. fn must be a pure
    function of its index for resume to be exact."""
    ds = grain.MapDataset.range(n)
    return iterate((ds.repeat(None) if repeat else ds).map(fn), threads=1, prefetch=4)


def conversation_stream(task, tokenizer, *, max_tokens: int, process_index: int = 0, process_count: int = 1,
                        repeat: bool = False, group: int = 64):
    """Rendered conversations (ids only, mask ignored) in task order, `group` per element, for packing."""
    idx = np.arange(process_index, len(task), process_count)

    def items(g):
        return [np.asarray(tokenizer.render_conversation(task[int(j)], max_tokens=max_tokens)[0], np.int32)
                for j in idx[g * group:(g + 1) * group]]

    return _ahead(items, -(-len(idx) // group), repeat)


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


class SFTBatches:
    """SFT batches [A, B_local, T]: one conversation per row, a seeded shuffle per epoch, conversations of
    similar length batched together and rows padded to a length bucket, so little compute goes to padding
    and only a handful of shapes compile (not one per batch). The state is the step index."""

    GROUP = 8  # steps whose conversations are sorted by length together (less padding, same examples)

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
        self._it = _ahead(self._batch, sys.maxsize)

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        return next(self._it)

    @functools.lru_cache(maxsize=1)
    def _order(self, epoch: int) -> np.ndarray:
        """A seeded shuffle; within each group of GROUP steps sorted by length, the group's batches shuffled again."""
        rng = np.random.default_rng(self.seed + epoch)
        order = rng.permutation(len(self.task))[self.pi::self.pc][: self.steps_per_epoch * self.per_step]
        out = []
        for g in range(0, len(order), self.GROUP * self.per_step):
            idx = order[g:g + self.GROUP * self.per_step]
            idx = idx[np.argsort([len(self._render(int(i))[0]) for i in idx], kind="stable")]
            batches = idx.reshape(-1, self.per_step)
            out.append(batches[rng.permutation(len(batches))].reshape(-1))
        return np.concatenate(out)

    def _render(self, i: int):
        return self.tok.render_conversation(self.task[i], max_tokens=self.max_tokens + 1)

    def _batch(self, step: int) -> dict:
        epoch, s = divmod(step, self.steps_per_epoch)
        rendered = [self._render(int(i)) for i in self._order(epoch)[s * self.per_step:(s + 1) * self.per_step]]
        T = bucket(max(len(ids) for ids, _ in rendered) - 1, self.buckets)  # rendering keeps ids <= max_tokens + 1
        return {k: v.reshape(self.accum, self.rows, T) for k, v in sft_batch(rendered, self.pad, T).items()}

    def get_state(self) -> bytes:
        return json.dumps(self._it.get_state()).encode()

    def set_state(self, state) -> None:
        self._it.set_state(json.loads(state))

    def start_prefetch(self) -> None:
        self._it.start_prefetch()


class PackedSFT:
    """nanochat master's SFT rows: [A, B_local, T] batches of rows of T+1 tokens, each filled with whole
    conversations, every time the longest of the `buffer` waiting ones that still fits; when none fits the rest of
    the row is padding (BOS, never trained), so no conversation is cropped. Targets are the next tokens where the
    rendered mask is 1, else −1. This process's share of the mixture, in order, repeating; rendered a few groups
    ahead on background threads. The state is the stream's position and the waiting conversations' indices."""

    GROUP = 64  # conversations rendered per background task

    def __init__(self, task, tokenizer, *, rows: int, accum: int, max_tokens: int, process_index: int = 0,
                 process_count: int = 1, buffer: int = 100):
        self.task, self.tok, self.rows, self.accum, self.T = task, tokenizer, rows, accum, max_tokens
        self.buffer, self.idx = buffer, np.arange(process_index, len(task), process_count)
        groups = grain.MapDataset.range(-(-len(self.idx) // self.GROUP)).repeat(None)
        self.stream = iterate(groups.map(self._render_group))
        self.pulled, self.waiting, self.consumed = [], [], 0  # pulled: rendered, not yet in the buffer

    def _render(self, i: int) -> tuple:
        return (i, *self.tok.render_conversation(self.task[i], max_tokens=self.T + 1))

    def _render_group(self, g: int) -> list:
        return [self._render(int(i)) for i in self.idx[g * self.GROUP:(g + 1) * self.GROUP]]

    def _row(self) -> tuple[list, list]:
        ids, mask = [], []
        while True:
            while len(self.waiting) < self.buffer:
                self.pulled = self.pulled or next(self.stream)
                self.waiting.append(self.pulled.pop(0))
            room = self.T + 1 - len(ids)
            fits = [k for k, (_, c, _) in enumerate(self.waiting) if len(c) <= room]
            if not fits:
                break
            _, c, m = self.waiting.pop(max(fits, key=lambda k: len(self.waiting[k][1])))
            ids, mask, self.consumed = ids + c, mask + m, self.consumed + 1
        pad = self.T + 1 - len(ids)
        return ids + [self.tok.bos_id] * pad, mask + [0] * pad

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        ids, mask = (np.asarray(x, np.int32) for x in zip(*(self._row() for _ in range(self.rows * self.accum))))
        shape = (self.accum, self.rows, self.T)
        return {"inputs": ids[:, :-1].reshape(shape),
                "targets": np.where(mask[:, 1:] == 1, ids[:, 1:], -1).reshape(shape).astype(np.int32)}

    def get_state(self) -> bytes:
        return json.dumps({"stream": self.stream.get_state(), "pulled": [c[0] for c in self.pulled],
                           "waiting": [c[0] for c in self.waiting], "consumed": self.consumed}).encode()

    def set_state(self, state) -> None:
        s = json.loads(state)
        self.stream.set_state(s["stream"])
        self.pulled, self.waiting = ([self._render(i) for i in s[k]] for k in ("pulled", "waiting"))
        self.consumed = s["consumed"]

    def start_prefetch(self) -> None:
        self.stream.start_prefetch()
