"""Pretraining text sources: the embedded offline corpus, FineWeb-edu shards, and a user's own files.

`document_blocks(source, split)` is a lazy, picklable random-access sequence of blocks (lists of document
strings) that data.py shuffles and tokenizes; `iter_documents` walks the same blocks in order (tokenizer
training). A source is "embedded" (CPython's stdlib, the chitchat-dataset package, and whichever Debian
python/perl/linux docs are installed; "embedded:stdlib,chitchat" names components), "fineweb" (nanochat's
FineWeb-edu shards: `python -m jaxchat.corpus download -n 8`), or a path to .txt/.jsonl/.parquet files.
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import hashlib
import importlib.util
import itertools
import json
import math
import os
import re
import shutil
import sys
import sysconfig
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from tqdm import tqdm

from jaxchat import config as C
from jaxchat.common import base_dir, print0

DEFAULT_URL = "https://huggingface.co/datasets/karpathy/fineweb-edu-100b-shuffle/resolve/main/"
NUM_FINEWEB_SHARDS = 1823  # shard_00000.parquet ... shard_01822.parquet
DOWNLOAD_MARKER = "download_complete.json"  # {"num_shards": N}: shards 0..N-1 were all downloaded
SPLITS = ("train", "val")
VAL_FRACTION = 0.02
BLOCK_DOCS, BLOCK_BYTES = 64, 256 * 1024
STDLIB_MAX_BYTES = 200 * 1000
TXT_SPLIT_BYTES = 256 * 1024
USER_EXTENSIONS = (".txt", ".jsonl", ".parquet")
EMBEDDED_COMPONENTS = ("stdlib", "chitchat", "pydoc", "perldoc", "linuxdoc")
DEBIAN_ROOT = Path("/")  # where the Debian documentation components are looked for (tests redirect it)
_DEBIAN_DOCS = {  # component: (its directories under DEBIAN_ROOT, the newest wins; its documents in one)
    "pydoc": ("usr/share/doc/python3.*/html/_sources", "**/*.rst.txt"),
    "perldoc": ("usr/share/perl/*/pod", "*.pod"),
    "linuxdoc": ("usr/share/doc/linux-doc-*/html/_sources", "**/*.txt"),  # minus translations/
}
_HINTS = {
    "stdlib": "install a CPython that ships its Lib/*.py sources (Debian: apt-get install libpython3-stdlib)",
    "chitchat": "pip install --no-deps chitchat-dataset==0.9.0 (or `bash run_all.sh setup`)",
    "pydoc": "apt-get install python3-doc (Debian bookworm: python3.11-doc)",
    "perldoc": "apt-get install perl-doc",
    "linuxdoc": "apt-get install linux-doc",
}


class CorpusError(Exception):
    """A text source is missing, empty or malformed; the message says how to fix it."""


def iter_documents(source: str = "embedded", split: str = "train", *, max_chars: int | None = None,
                   doc_cap: int | None = None, data_dir=None) -> Iterator[str]:
    """All documents in block order, each cut to `doc_cap` chars (nanochat: 10,000 for the tokenizer), stopping
    after exactly `max_chars` chars in total."""
    total = 0
    for block in document_blocks(source, split, data_dir=data_dir):
        for doc in block:
            if max_chars is not None and total >= max_chars:
                return
            doc = doc[:doc_cap][: None if max_chars is None else max_chars - total]
            total += len(doc)
            yield doc


def describe_source(source: str = "embedded", split: str = "train", *, data_dir=None) -> dict:
    """Blocks, docs and chars of one split, in total and per component (embedded component, user file type or
    FineWeb shard). Reads the whole split."""
    blocks = document_blocks(source, split, data_dir=data_dir)
    comps: dict[str, Counter] = {}
    for i, docs in enumerate(blocks):
        comps.setdefault(blocks.label(i), Counter()).update(blocks=1, docs=len(docs), chars=sum(map(len, docs)))
    order = {c: k for k, c in enumerate(EMBEDDED_COMPONENTS)}
    comps = dict(sorted(comps.items(), key=lambda kv: (order.get(kv[0], 99), kv[0])))
    out = {"source": str(source), "split": split, "blocks": len(blocks),
           "docs": sum(c["docs"] for c in comps.values()),
           "chars": sum(c["chars"] for c in comps.values()), "components": comps}
    if blocks.source.split(":")[0] == "embedded":  # its stdlib component depends on the Python version
        out["python"] = "%d.%d.%d" % sys.version_info[:3]
    return out


class DocumentBlocks(Sequence):
    """`blocks[i]` reads block i (list of str) from disk; `blocks.label(i)` names its component. The index
    (`specs`: plain tuples and numpy arrays, cheap to pickle for grain) is built on first use."""

    def __init__(self, source="embedded", split: str = "train", *, data_dir=None):
        if split not in SPLITS:
            raise CorpusError(f"unknown split {split!r}; expected one of {SPLITS}")
        self.source, self.split, self._specs = os.fspath(source), split, None
        if self.source.split(":")[0] == "embedded":
            self._build = functools.partial(_embedded_specs, _embedded_components(self.source), split)
        elif self.source == "fineweb":
            shards = _fineweb_split_files(fineweb_dir(data_dir), split, data_dir)  # listed now: see list_fineweb_shards
            self._build = functools.partial(_fineweb_specs, shards)
        else:
            path = Path(self.source).expanduser()
            if not path.exists():
                raise CorpusError(f"corpus path {str(path)!r} does not exist. A source is 'embedded', "
                                  f"'embedded:<{','.join(EMBEDDED_COMPONENTS)}>', 'fineweb', or a path to a "
                                  f"{'/'.join(USER_EXTENSIONS)} file or a directory of them")
            self._build = functools.partial(_user_specs, path, split)

    @property
    def specs(self) -> list[tuple]:
        if self._specs is None:
            specs = self._build()
            if not specs:
                raise CorpusError(f"source {self.source!r} has no {self.split} documents (it has too few "
                                  "documents to split; the val split takes ~2%, at least one, of at least two)")
            self._specs = specs
        return self._specs

    def __len__(self) -> int:
        return len(self.specs)

    def __getitem__(self, i: int) -> list[str]:
        return _read_block(self.specs[i])

    def label(self, i: int) -> str:
        return self.specs[i][1]


document_blocks = DocumentBlocks


# split rule and blocks (embedded and user sources)


def _hash64(ids: Sequence[str]) -> np.ndarray:
    return np.fromiter((int.from_bytes(hashlib.sha1(s.encode("utf-8")).digest()[:8], "big") for s in ids),
                       dtype=np.uint64, count=len(ids))


def _pack(sel, sizes) -> list[list[int]]:
    """Consecutive documents `sel` in blocks of <= BLOCK_DOCS documents and <= BLOCK_BYTES (>= 1 document)."""
    blocks, nbytes = [], 0
    for j in sel:
        if not blocks or len(blocks[-1]) >= BLOCK_DOCS or nbytes + sizes[j] > BLOCK_BYTES:
            blocks.append([])
            nbytes = 0
        blocks[-1].append(int(j))
        nbytes += sizes[j]
    return blocks


def _split_blocks(groups: list[tuple], split: str) -> list[tuple]:
    """Block specs of one split from `groups` of (doc ids, sizes, make_spec(indices)). A document is val when
    sha1(its id)'s first 8 bytes fall below VAL_FRACTION of 2**64 (else the smallest hash): machine independent.
    Each group is packed in order (sizes None: one block), and the blocks are put in a fixed pseudo-random
    order (sha1 of each block's first id) so that any prefix of `iter_documents` mixes all components."""
    ids = [i for g in groups for i in g[0]]
    h = _hash64(ids)
    val = h < np.uint64(int(VAL_FRACTION * 2**64))
    if len(ids) > 1 and not val.any():
        val[int(np.argmin(h))] = True
    keyed, offset = [], 0
    for gids, sizes, make_spec in groups:
        sel = np.nonzero(val[offset: offset + len(gids)] == (split == "val"))[0]
        offset += len(gids)
        keyed += [(gids[b[0]], make_spec(b)) for b in ([sel] if sizes is None else _pack(sel, sizes)) if len(b)]
    keys = _hash64([k for k, _ in keyed])
    return [keyed[j][1] for j in sorted(range(len(keyed)), key=lambda j: (int(keys[j]), keyed[j][0]))]


def _read_block(spec: tuple) -> list[str]:
    kind, label, path = spec[:3]
    if kind == "files":
        return [(Path(path) / rel).read_bytes().decode("utf-8", errors="replace") for rel in spec[3]]
    if kind == "chitchat":
        texts = _chitchat_texts(path)
        return [texts[c] for c in spec[3]]
    if kind == "rowgroup":
        with pq.ParquetFile(path) as pf:
            col = pf.read_row_group(spec[3], columns=["text"]).column("text")
        return [t for t in (col if spec[4] is None else col.take(spec[4])).to_pylist() if t is not None]
    spans = spec[3]  # "spans": [start, end) byte ranges of paragraphs (label txt) or lines (jsonl) of one file
    lo = int(spans[0, 0])
    with open(path, "rb") as f:
        f.seek(lo)
        data = f.read(int(spans[-1, 1]) - lo)
    out = []
    for s, e in spans.tolist():
        raw = data[s - lo: e - lo]
        if label == "txt":
            out.append(raw.decode("utf-8", errors="replace").strip("\r\n").rstrip())
            continue
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError as err:
            raise CorpusError(f"{path}: invalid JSON at byte {s}: {err}") from None
        if not isinstance(obj, dict) or not isinstance(obj.get("text"), str):
            raise CorpusError(f"{path}: the line at byte {s} has no string \"text\" field")
        out.append(obj["text"])
    return out


# embedded corpus


def _embedded_components(source: str) -> tuple[str, ...]:
    """Plain "embedded": stdlib and chitchat (required) plus each installed Debian component; else the named
    ones, all required."""
    if source == "embedded":
        names, required = EMBEDDED_COMPONENTS, ("stdlib", "chitchat")
    else:
        names = required = [n.strip() for n in source.split(":", 1)[1].split(",") if n.strip()]
        bad = [n for n in names if n not in EMBEDDED_COMPONENTS]
        if bad or not names:
            raise CorpusError(f"unknown embedded component(s) {bad or names} in {source!r}; "
                              f"choose from {', '.join(EMBEDDED_COMPONENTS)} (e.g. 'embedded:stdlib,chitchat')")
    if missing := [n for n in required if _component_root(n) is None]:
        raise CorpusError("embedded corpus component(s) not installed: "
                          + "; ".join(f"{m}: {_HINTS[m]}" for m in missing))
    return tuple(c for c in EMBEDDED_COMPONENTS if c in names and _component_root(c) is not None)


def _component_root(name: str) -> Path | None:
    """Where a component's text lives on this machine, or None when it is not installed (cheap)."""
    if name == "stdlib":
        root = Path(sysconfig.get_paths()["stdlib"])
        return root if (root / "os.py").is_file() else None
    if name == "chitchat":  # found without importing the package
        spec = importlib.util.find_spec("chitchat_dataset")
        locations = list(spec.submodule_search_locations or []) if spec else []
        path = Path(locations[0]) / "dataset.json" if locations else None
        return path if path is not None and path.is_file() else None
    dirs, docs = _DEBIAN_DOCS[name]
    roots = [p for p in DEBIAN_ROOT.glob(dirs) if p.is_dir() and next(p.glob(docs), None)]
    # the highest version numbers in the path: python3.12 > python3.11, 5.36.0 > 5.36
    return max(roots, key=lambda p: ([int(x) for x in re.findall(r"\d+", p.as_posix())], p.as_posix()), default=None)


def _component_files(name: str, root: Path) -> list[str]:
    """Sorted POSIX paths, relative to `root`, of a file component's documents."""
    if name != "stdlib":
        rels = (p.relative_to(root).as_posix() for p in root.glob(_DEBIAN_DOCS[name][1]) if p.is_file())
        return sorted(r for r in rels if not r.startswith("translations/"))
    rels = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".") and d not in
                       {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__"}]
        rels += [(Path(dirpath) / fn).relative_to(root).as_posix() for fn in filenames
                 if fn.endswith(".py") and not fn.startswith("test_")
                 and (Path(dirpath) / fn).stat().st_size <= STDLIB_MAX_BYTES]
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


@functools.lru_cache(maxsize=None)
def _chitchat_texts(json_path: str) -> dict[str, str]:
    """Conversation id -> rendered text; conversations nobody answered (one speaker) are skipped."""
    with open(json_path, encoding="utf-8") as f:
        texts = {cid: render_chitchat(conv) for cid, conv in json.load(f).items()}
    return {cid: t for cid, t in texts.items() if "\nB: " in t}


def _embedded_specs(components: tuple[str, ...], split: str) -> list[tuple]:
    return _split_blocks(_embedded_groups(tuple((c, str(_component_root(c))) for c in components)), split)


@functools.lru_cache(maxsize=None)
def _embedded_groups(roots: tuple[tuple[str, str], ...]) -> list[tuple]:
    """One group per (component, root): one document per file (chitchat: per conversation), id
    "<component>/<relative path or conversation id>"."""
    groups = []
    for c, root in roots:
        if c == "chitchat":
            texts = _chitchat_texts(root)
            units = sorted(texts)
            sizes = [len(texts[u].encode("utf-8")) for u in units]
        else:
            units = _component_files(c, Path(root))
            sizes = [(Path(root) / u).stat().st_size for u in units]
        kind = "chitchat" if c == "chitchat" else "files"
        groups.append(([f"{c}/{u}" for u in units], sizes,
                       lambda b, kind=kind, c=c, root=root, units=units: (kind, c, root, tuple(units[j] for j in b))))
    return groups


# user files


def _paragraph_spans(data: bytes) -> list[tuple[int, int]]:
    """Byte ranges of the paragraphs (text between runs of blank lines) that are not all whitespace."""
    seps = itertools.chain.from_iterable(m.span() for m in re.finditer(rb"\n(?:[ \t\r\f\v]*\n)+", data))
    bounds = [0, *seps, len(data)]
    return [(s, e) for s, e in zip(bounds[::2], bounds[1::2]) if data[s:e].strip()]


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
    """Documents and ids: a .txt of at most TXT_SPLIT_BYTES inside a directory is one document (id: its path
    relative to the directory; these are packed across files); a larger one, or one given as the whole source,
    is split at blank-line runs (id "path#k"; a paragraph loses trailing whitespace). A .jsonl line with a
    "text" string is one ("path:N", line N). A .parquet row of its "text" column is one ("path:N", row N);
    its blocks are row groups, nanochat's unit (write ~1,024 rows per group for good shuffling). A directory is
    searched recursively (sorted; names starting with . skipped)."""
    exts, root = "/".join(USER_EXTENSIONS), path.parent if path.is_file() else path
    if path.is_file() and path.suffix.lower() not in USER_EXTENSIONS:
        raise CorpusError(f"unsupported corpus file {str(path)!r}; supported extensions: {exts}")
    rels = [path.name] if path.is_file() else sorted(
        r.as_posix() for r in (p.relative_to(path) for p in path.rglob("*") if p.is_file())
        if r.suffix.lower() in USER_EXTENSIONS and not any(s.startswith(".") for s in r.parts))
    if not rels:
        raise CorpusError(f"no corpus files in {str(path)!r}; supported extensions: {exts} (searched recursively)")
    groups, whole = [], []
    for rel in rels:
        f, ext = root / rel, Path(rel).suffix.lower()
        if ext == ".txt" and not path.is_file() and f.stat().st_size <= TXT_SPLIT_BYTES:
            whole.append((rel, f.stat().st_size))
        elif ext == ".parquet":
            counts = _row_groups(f)
            for g, (start, n) in enumerate(zip(np.cumsum([0, *counts]).tolist(), counts)):
                groups.append(([f"{rel}:{r}" for r in range(start, start + n)], None,
                               lambda b, f=str(f), g=g, n=n: ("rowgroup", "parquet", f, g, None if len(b) == n else b)))
        else:
            spans = _paragraph_spans(f.read_bytes()) if ext == ".txt" else _jsonl_spans(f)
            ids = [f"{rel}#{k}" for k in range(len(spans))] if ext == ".txt" else [f"{rel}:{s[2]}" for s in spans]
            ranges = np.array([s[:2] for s in spans], np.int64).reshape(-1, 2)
            groups.append((ids, (ranges[:, 1] - ranges[:, 0]).tolist(),
                           lambda b, f=str(f), fmt=ext[1:], ranges=ranges: ("spans", fmt, f, ranges[b])))
    if whole:
        rels, sizes = zip(*whole)
        groups.append((list(rels), sizes, lambda b: ("files", "txt", str(root), tuple(rels[j] for j in b))))
    return _split_blocks(groups, split)


# FineWeb-edu shards


def fineweb_dir(data_dir=None) -> Path:
    return Path(data_dir).expanduser() if data_dir is not None else base_dir() / "base_data"


def shard_name(index: int) -> str:
    return f"shard_{index:05d}.parquet"


def downloaded_shards(data_dir=None) -> int | None:
    """How many shards the downloader's completion marker vouches for (None: no marker)."""
    try:
        return int(json.loads((fineweb_dir(data_dir) / DOWNLOAD_MARKER).read_text())["num_shards"])
    except FileNotFoundError:
        return None


def list_fineweb_shards(data_dir=None) -> list[Path]:
    """Complete shards on disk, sorted (temporary download files never end in .parquet). Where the downloader
    left its completion marker, only the shards it vouches for count: every host of a multi-host run, and a
    stage started while a larger download still runs, then list the same set."""
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


def _fineweb_split_files(d: Path, split: str, data_dir=None) -> list[Path]:
    """nanochat's split: the last shard present is val, all others train (so training needs two)."""
    shards = list_fineweb_shards(d)
    run = f"`python -m jaxchat.corpus download -n 8{'' if data_dir is None else f' --data-dir {d}'}` (needs network)"
    if not shards:
        raise CorpusError(f"no FineWeb-edu shards in {d}; run {run}")
    if split == "train" and len(shards) < 2:
        raise CorpusError(f"only one FineWeb-edu shard in {d}: the last shard present is the val split, "
                          f"so training needs at least two; run {run}")
    return shards[-1:] if split == "val" else shards[:-1]


def _row_groups(path: Path) -> list[int]:
    """Rows per row group of a parquet file with a "text" column (reads the footer only)."""
    with pq.ParquetFile(path) as pf:
        if "text" not in pf.schema_arrow.names:
            raise CorpusError(f"{path}: parquet file has no 'text' column (columns: {pf.schema_arrow.names})")
        return [pf.metadata.row_group(g).num_rows for g in range(pf.metadata.num_row_groups)]


def _fineweb_specs(shards: list[Path]) -> list[tuple]:
    """One block per row group (1,024 documents), in (shard, row group) order: the shards are already shuffled."""
    return [("rowgroup", p.name, str(p), g, None) for p in shards for g in range(len(_row_groups(p)))]


def _download_shard(index: int, d: Path, base_url: str, retries: int, backoff: float, timeout: float) -> None:
    """Fetch one shard unless present: to a temporary name, renamed only once the Content-Length (when sent)
    and the parquet magic at both ends check out; retried with waits backoff·2^k s."""
    name = shard_name(index)
    url, final = base_url.rstrip("/") + "/" + name, d / name
    tmp = d / f"{name}.{os.getpid()}-{threading.get_ident()}.tmp"
    for attempt in range(retries + 1):
        if attempt:
            time.sleep(backoff * 2 ** (attempt - 1))
        if final.exists():  # present, or another process finished it meanwhile
            return
        try:
            req = urllib.request.Request(url, headers={"User-Agent": "jaxchat-corpus"})
            with urllib.request.urlopen(req, timeout=timeout) as resp, open(tmp, "wb") as f:
                shutil.copyfileobj(resp, f, 1 << 20)
                length, got = resp.headers.get("Content-Length"), f.tell()
            if length is not None and got != int(length):
                raise OSError(f"truncated transfer: {got} of {length} bytes")
            with open(tmp, "rb") as f:
                head = f.read(4)
                f.seek(max(0, got - 4))
                if got < 12 or head != b"PAR1" or f.read(4) != b"PAR1":
                    raise OSError(f"not a complete parquet file ({got} bytes, PAR1 magic missing)")
            os.replace(tmp, final)
            return
        except urllib.error.HTTPError as e:
            err = f"HTTP {e.code} {e.reason}"
            if e.code in (400, 401, 403, 404, 410):  # retrying will not help
                break
        except Exception as e:  # URLError, timeouts, IncompleteRead, a bad body, ...
            err = f"{type(e).__name__}: {e}"
        finally:
            tmp.unlink(missing_ok=True)
    raise CorpusError(f"could not download {url}: {err}")


def download_fineweb(num_shards: int, *, data_dir=None, workers: int = 4, base_url: str = DEFAULT_URL,
                     retries: int = 5, backoff: float = 2.0, progress: bool = True,
                     timeout: float = 60.0) -> list[Path]:
    """Download shard_00000 .. shard_{num_shards-1} (-1: all) on parallel threads, skipping shards present,
    then write the completion marker. Returns all requested paths."""
    num_shards = NUM_FINEWEB_SHARDS if num_shards == -1 else num_shards
    if not 1 <= num_shards <= NUM_FINEWEB_SHARDS:
        raise CorpusError(f"num_shards must be in 1..{NUM_FINEWEB_SHARDS} (or -1 for all), got {num_shards}")
    d = fineweb_dir(data_dir)
    d.mkdir(parents=True, exist_ok=True)
    for p in d.glob("shard_*.parquet.*.tmp"):  # left by a killed download an hour ago or more
        with contextlib.suppress(OSError):
            if time.time() - p.stat().st_mtime > 3600:
                p.unlink()
    todo = [i for i in range(num_shards) if not (d / shard_name(i)).exists()]
    errors = []
    with tqdm(total=num_shards, initial=num_shards - len(todo), unit="shard", desc="fineweb-edu",
              disable=not progress) as bar, ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for fut in as_completed([pool.submit(_download_shard, i, d, base_url, retries, backoff, timeout)
                                 for i in todo]):
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


def shards_for_chars(max_chars: int, chars_per_shard: float = 250e6, kept: float = 0.8) -> int:
    """FineWeb-edu shards to download before training a tokenizer on `max_chars` chars: the train split (all but
    the last shard) of ~250M chars a shard, ~80% of them kept under the 10,000-char doc_cap (d20's 2B chars ->
    11 shards, d32's 4B -> 21). Erring high costs seconds (base training downloads them anyway)."""
    return min(NUM_FINEWEB_SHARDS, math.ceil(max_chars / (chars_per_shard * kept)) + 1)


def shards_needed(preset: str, chars_per_token: float = 4.8, chars_per_shard: float = 250e6) -> int:
    """FineWeb-edu shards a preset's base training reads (nanochat: ~4.8 chars per token, ~250M chars per
    shard), plus one validation shard and 10% headroom."""
    from jaxchat import train  # start-up time: train imports jax, which nothing else here needs

    cfg = C.load(["model", "base"], [f"--preset={preset}"])
    n, _ = train.horizon(cfg.model, cfg.base, cfg.base.total_batch_size)
    tokens = n * cfg.base.total_batch_size
    return min(NUM_FINEWEB_SHARDS, math.ceil(1.1 * tokens * chars_per_token / chars_per_shard) + 1)


# CLI


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
            descs = [describe_source(args.source, s, data_dir=args.data_dir)
                     for s in (SPLITS if args.split == "both" else (args.split,))]
            if args.json:
                print0(json.dumps(descs, indent=2))
                return 0
            for desc in descs:
                print0(f"{desc['source']} [{desc['split']}]: {desc['docs']:,} docs, {desc['chars']:,} chars, "
                       f"{desc['blocks']:,} blocks" + (f" (Python {desc['python']})" if "python" in desc else ""))
                for name, c in desc["components"].items():
                    print0(f"  {name:<24} {c['docs']:>9,} docs {c['chars']:>14,} chars {c['blocks']:>7,} blocks")
    except CorpusError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
