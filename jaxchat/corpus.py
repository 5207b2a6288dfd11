"""Pretraining text sources: the embedded offline corpus, FineWeb-edu or ClimbMix shards, and a user's own files.

`document_blocks(source, split)` is a lazy, picklable random-access sequence of blocks (lists of documents) that
data.py shuffles and tokenizes; `iter_documents` walks them in order (tokenizer training). A source is "embedded"
(CPython's stdlib, the chitchat-dataset package and the installed Debian python/perl/linux docs;
"embedded:stdlib,chitchat" names components), "fineweb" or "climbmix" (nanochat master's data: `python -m
jaxchat.corpus download --source climbmix -n 8`), or a path.
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
import sys
import sysconfig
import time
import urllib.request
from collections import Counter, namedtuple
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from tqdm import tqdm

from jaxchat import config as C
from jaxchat.common import base_dir, print0

DOWNLOAD_MARKER = "download_complete.json"  # {"num_shards": N}: shards 0..N-1 were all downloaded
SPLITS = ("train", "val")
VAL_FRACTION = 0.02
BLOCK_DOCS, BLOCK_BYTES = 64, 256 * 1024
STDLIB_MAX_BYTES = 200 * 1000
TXT_SPLIT_BYTES = 256 * 1024
USER_EXTENSIONS = (".txt", ".jsonl", ".parquet")
_HINTS = {  # embedded component: how to install it
    "stdlib": "install a CPython that ships its Lib/*.py sources (Debian: apt-get install libpython3-stdlib)",
    "chitchat": "pip install --no-deps chitchat-dataset==0.9.0 (or `bash run_all.sh setup`)",
    "pydoc": "apt-get install python3-doc (Debian bookworm: python3.11-doc)",
    "perldoc": "apt-get install perl-doc",
    "linuxdoc": "apt-get install linux-doc",
}
EMBEDDED_COMPONENTS = tuple(_HINTS)
DEBIAN_ROOT = Path("/")  # where the Debian documentation components are looked for (tests redirect it)
_DEBIAN_DOCS = {  # component: (its directories under DEBIAN_ROOT, the newest wins; its documents in one)
    "pydoc": ("usr/share/doc/python3.*/html/_sources", "**/*.rst.txt"),
    "perldoc": ("usr/share/perl/*/pod", "*.pod"),
    "linuxdoc": ("usr/share/doc/linux-doc-*/html/_sources", "**/*.txt"),  # minus translations/
}


class CorpusError(Exception):
    """A text source is missing, empty or malformed; the message says how to fix it."""


def iter_documents(source: str = "embedded", split: str = "train", *, max_chars: int | None = None,
                   doc_cap: int | None = None, data_dir=None) -> Iterator[str]:
    """All documents in block order, each cut to `doc_cap` chars, stopping after exactly `max_chars` in all."""
    total = 0
    for doc in itertools.chain.from_iterable(document_blocks(source, split, data_dir=data_dir)):
        if max_chars is not None and total >= max_chars:
            return
        doc = doc[:doc_cap][: None if max_chars is None else max_chars - total]
        total += len(doc)
        yield doc


def describe_source(source: str = "embedded", split: str = "train", *, data_dir=None) -> dict:
    """Blocks, docs and chars of a split, in all and per component (embedded component, file type or shard)."""
    blocks = document_blocks(source, split, data_dir=data_dir)
    comps: dict[str, Counter] = {}
    for spec, docs in zip(blocks.specs, blocks):
        comps.setdefault(spec[1], Counter()).update(blocks=1, docs=len(docs), chars=sum(map(len, docs)))
    total = {k: sum(c[k] for c in comps.values()) for k in ("blocks", "docs", "chars")}
    out = {"source": str(source), "split": split, **total, "components": dict(sorted(comps.items()))}
    if blocks.source.split(":")[0] == "embedded":  # its stdlib component depends on the Python version
        out["python"] = "%d.%d.%d" % sys.version_info[:3]
    return out


class DocumentBlocks(Sequence):
    """`blocks[i]` reads block i (a list of str); the index (`specs`, spec[1] its component) is built on first use."""

    def __init__(self, source="embedded", split: str = "train", *, data_dir=None):
        if split not in SPLITS:
            raise CorpusError(f"unknown split {split!r}; expected one of {SPLITS}")
        self.source, self.split = os.fspath(source), split
        if self.source.split(":")[0] == "embedded":
            self._build = functools.partial(_split_blocks, _embedded_groups, _embedded_roots(self.source), split)
        elif self.source in SHARD_SETS:  # listed now: see list_shards
            self._build = functools.partial(_shard_specs, _shard_split(self.source, data_dir, split))
        elif (path := Path(self.source).expanduser()).exists():
            self._build = functools.partial(_split_blocks, _user_groups, path, split)
        else:
            raise CorpusError(f"corpus path {str(path)!r} does not exist. A source is 'embedded[:<components>]', "
                              f"'fineweb', 'climbmix', or a path to a {'/'.join(USER_EXTENSIONS)} file or a "
                              "directory of them")

    @functools.cached_property
    def specs(self) -> list[tuple]:
        if not (specs := self._build()):
            raise CorpusError(f"source {self.source!r} has no {self.split} documents (it has too few "
                              "documents to split; the val split takes ~2%, at least one, of at least two)")
        return specs

    def __len__(self) -> int:
        return len(self.specs)

    def __getitem__(self, i: int) -> list[str]:
        return _read_block(self.specs[i])


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


def _split_blocks(make_groups, arg, split: str) -> list[tuple]:
    """One split's block specs from `make_groups(arg)`: (doc ids, sizes (None: one block), make_spec(indices)). A
    document is val when sha1(its id)[:8] < VAL_FRACTION·2**64 (none: the smallest hash); groups are packed in
    order and the blocks sorted by sha1 of their first id, so that any prefix of `iter_documents` mixes them all."""
    groups = make_groups(arg)
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


def _units_group(label: str, root: str, units: list[str], sizes, prefix: str = "") -> tuple:  # files or chitchat
    kind = "chitchat" if label == "chitchat" else "files"
    return [prefix + u for u in units], sizes, lambda b: (kind, label, root, tuple(units[j] for j in b))


def _read_block(spec: tuple) -> list[str]:
    kind, label, path, sel = spec[:4]
    if kind == "files":
        return [(Path(path) / rel).read_bytes().decode("utf-8", errors="replace") for rel in sel]
    if kind == "chitchat":
        return [_chitchat_texts(path)[c] for c in sel]
    if kind == "rowgroup":
        with pq.ParquetFile(path) as pf:
            col = pf.read_row_group(sel, columns=["text"]).column("text")
        return [t for t in (col if spec[4] is None else col.take(spec[4])).to_pylist() if t is not None]
    texts = []  # "spans": [start, end) byte ranges of paragraphs (txt) or lines (jsonl) of one file
    with open(path, "rb") as f:
        for s, e in sel.tolist():
            f.seek(s)
            if label == "txt":
                texts.append(f.read(e - s).decode("utf-8", errors="replace").strip("\r\n").rstrip())
                continue
            try:
                texts.append(json.loads(f.read(e - s))["text"])
            except (ValueError, TypeError, KeyError):  # not JSON (JSONDecodeError is a ValueError) or no object
                texts.append(None)
            if not isinstance(texts[-1], str):
                raise CorpusError(f'{path}: the line at byte {s} is not JSON or has no string "text" field')
    return texts


# embedded corpus
def _embedded_roots(source: str) -> tuple[tuple[str, str], ...]:
    """(component, root) of stdlib, chitchat (required) and each installed Debian one, or of the named ones."""
    if source == "embedded":
        names, required = EMBEDDED_COMPONENTS, ("stdlib", "chitchat")
    else:
        names = required = [n.strip() for n in source.split(":", 1)[1].split(",") if n.strip()]
        bad = [n for n in names if n not in EMBEDDED_COMPONENTS]
        if bad or not names:
            raise CorpusError(f"unknown embedded component(s) {bad or names} in {source!r}; "
                              f"choose from {', '.join(EMBEDDED_COMPONENTS)} (e.g. 'embedded:stdlib,chitchat')")
    roots = {c: _component_root(c) for c in EMBEDDED_COMPONENTS if c in names}
    if missing := [n for n in required if roots[n] is None]:
        raise CorpusError("embedded corpus component(s) not installed: "
                          + "; ".join(f"{m}: {_HINTS[m]}" for m in missing))
    return tuple((c, str(root)) for c, root in roots.items() if root is not None)


def _component_root(name: str) -> Path | None:
    """Where a component's text lives on this machine, or None when it is not installed (cheap)."""
    if name == "stdlib":
        root = Path(sysconfig.get_paths()["stdlib"])
        return root if (root / "os.py").is_file() else None
    if name == "chitchat":  # found without importing the package
        spec = importlib.util.find_spec("chitchat_dataset")
        path = Path(spec.origin).parent / "dataset.json" if spec and spec.origin else None
        return path if path and path.is_file() else None
    dirs, docs = _DEBIAN_DOCS[name]
    roots = [p for p in DEBIAN_ROOT.glob(dirs) if p.is_dir() and next(p.glob(docs), None)]
    # the highest version numbers in the path: python3.12 > python3.11, 5.36.0 > 5.36
    return max(roots, key=lambda p: ([int(x) for x in re.findall(r"\d+", p.as_posix())], p.as_posix()), default=None)


def _component_units(name: str, root: str) -> tuple[list[str], list[int]]:
    """A component's documents, sorted (POSIX paths relative to `root`; chitchat: conversation ids), and bytes."""
    if name == "chitchat":
        texts = _chitchat_texts(root)
        return sorted(texts), [len(texts[u].encode()) for u in sorted(texts)]
    if name != "stdlib":  # minus linux-doc's translations/
        rels = [p.relative_to(root).as_posix() for p in Path(root).glob(_DEBIAN_DOCS[name][1]) if p.is_file()]
    else:
        rels = []
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = [d for d in dirnames if not d.startswith(".") and d not in
                           {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__"}]
            rels += [(Path(dirpath) / fn).relative_to(root).as_posix() for fn in filenames
                     if fn.endswith(".py") and not fn.startswith("test_")]
    sized = [(r, (Path(root) / r).stat().st_size) for r in sorted(rels) if not r.startswith("translations/")]
    sized = [(r, n) for r, n in sized if name != "stdlib" or n <= STDLIB_MAX_BYTES]
    return [r for r, _ in sized], [n for _, n in sized]


def render_chitchat(conversation: dict) -> str:
    """'A: ...' / 'B: ...' lines, speakers lettered by first appearance, a speaker's consecutive messages joined."""
    messages = [m for turn in conversation.get("messages", []) for m in turn if str(m.get("text", "")).strip()]
    labels: dict[str, str] = {}
    lines = []
    for sender, group in itertools.groupby(messages, key=lambda m: m.get("sender")):
        n = len(labels)
        label = labels.setdefault(sender, chr(ord("A") + n) if n < 26 else f"S{n + 1}")
        lines.append(f"{label}: " + " ".join(" ".join(m["text"].split()) for m in group))
    return "\n".join(lines)


@functools.lru_cache(maxsize=None)
def _chitchat_texts(json_path: str) -> dict[str, str]:
    """Conversation id -> rendered text; conversations nobody answered (one speaker) are skipped."""
    with open(json_path, encoding="utf-8") as f:
        texts = {cid: render_chitchat(conv) for cid, conv in json.load(f).items()}
    return {cid: t for cid, t in texts.items() if "\nB: " in t}


@functools.lru_cache(maxsize=None)
def _embedded_groups(roots: tuple[tuple[str, str], ...]) -> list[tuple]:
    """One group per component: a document per file (chitchat: per conversation), id "<component>/<unit>"."""
    return [_units_group(c, root, *_component_units(c, root), prefix=f"{c}/") for c, root in roots]


# user files
def _user_groups(path: Path) -> list[tuple]:
    """A .txt of <= TXT_SPLIT_BYTES in a directory is one document (id: relative path; packed across files), a
    larger one or one given as the source one per paragraph between blank-line runs ("path#k", rstripped). A
    .jsonl line's "text" is one ("path:N", line N), as is a .parquet row's ("path:N", row N; its blocks are row
    groups, nanochat's unit: ~1,024 rows shuffle well). Directories: recursive, sorted, dot names skipped."""
    root = path.parent if path.is_file() else path
    rels = [path.name] if path.is_file() else sorted(
        r.as_posix() for r in (p.relative_to(path) for p in path.rglob("*") if p.is_file())
        if not any(s.startswith(".") for s in r.parts))
    if not (rels := [r for r in rels if Path(r).suffix.lower() in USER_EXTENSIONS]):
        raise CorpusError(f"no corpus files in {str(path)!r}; supported extensions: {'/'.join(USER_EXTENSIONS)} "
                          "(a directory is searched recursively)")
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
            if ext == ".txt":  # paragraphs: the text between runs of blank lines, unless all whitespace
                data = f.read_bytes()
                seps = itertools.chain.from_iterable(m.span() for m in re.finditer(rb"\n(?:[ \t\r\f\v]*\n)+", data))
                bounds = [0, *seps, len(data)]
                spans = [(s, e) for s, e in zip(bounds[::2], bounds[1::2]) if data[s:e].strip()]
                ids = [f"{rel}#{k}" for k in range(len(spans))]
            else:  # the non-blank lines
                with open(f, "rb") as fh:
                    lines = [(len(line), bool(line.strip())) for line in fh]
                ends = np.cumsum([n for n, _ in lines], dtype=np.int64).tolist()
                spans = [(e - n, e) for (n, keep), e in zip(lines, ends) if keep]
                ids = [f"{rel}:{k}" for k, (_, keep) in enumerate(lines, 1) if keep]
            ranges = np.array(spans, np.int64).reshape(-1, 2)
            groups.append((ids, (ranges[:, 1] - ranges[:, 0]).tolist(),
                           lambda b, f=str(f), fmt=ext[1:], ranges=ranges: ("spans", fmt, f, ranges[b])))
    if whole:
        groups.append(_units_group("txt", str(root), *map(list, zip(*whole))))
    return groups


# Pretraining shard sets: nanochat's shuffled parquet shards (~250M chars each, 1,024-document row groups, "text").
# title, URL, directory under base_dir(), files (shard_00000 ...), val pinned (nanochat master: `-n N` is N train
# shards plus the last shard, always val), chars per token (nanochat's tokenizer; sizes downloads).
ShardSet = namedtuple("ShardSet", "title url dirname files val_pinned chars_per_token")
_HF = "https://huggingface.co/datasets/karpathy/{}/resolve/main/"
SHARD_SETS = {
    "fineweb": ShardSet("FineWeb-edu", _HF.format("fineweb-edu-100b-shuffle"), "base_data", 1823, False, 4.8),
    # 6,543 shards of 250M chars hold ClimbMix's 400B GPT-2 tokens: 4.1 chars a token
    "climbmix": ShardSet("ClimbMix", _HF.format("climbmix-400b-shuffle"), "base_data_climbmix", 6543, True, 4.1),
}
BESTFIT_CROPPED = 0.35  # the share of tokens bos_bestfit packing drops at T=2048 (nanochat master's figure)


def _shard_set(source: str) -> ShardSet:
    if source not in SHARD_SETS:
        raise CorpusError(f"unknown shard set {source!r}; choose from {', '.join(SHARD_SETS)}")
    return SHARD_SETS[source]


def shard_dir(source: str = "fineweb", data_dir=None) -> Path:
    return Path(data_dir).expanduser() if data_dir is not None else base_dir() / _shard_set(source).dirname


def shard_name(index: int) -> str:
    return f"shard_{index:05d}.parquet"


def max_train_shards(source: str = "fineweb") -> int:
    """What `download -n -1` means: every shard (FineWeb: the last is val) or every train shard (ClimbMix)."""
    s = _shard_set(source)
    return s.files - s.val_pinned


def shard_names(source: str, num_shards: int) -> list[str]:
    """The shards a download of `num_shards` fetches: the first N, and the pinned val shard."""
    s = _shard_set(source)
    return [shard_name(i) for i in range(num_shards)] + [shard_name(s.files - 1)] * s.val_pinned


def downloaded_shards(source: str = "fineweb", data_dir=None) -> int | None:
    """How many shards the download's completion marker vouches for (None: no marker)."""
    with contextlib.suppress(FileNotFoundError):
        return int(json.loads((shard_dir(source, data_dir) / DOWNLOAD_MARKER).read_text())["num_shards"])


def list_shards(source: str = "fineweb", data_dir=None) -> list[Path]:
    """Shards on disk, sorted; with a completion marker those it vouches for (all hosts list the same set)."""
    d, done = shard_dir(source, data_dir), downloaded_shards(source, data_dir)
    shards = sorted(d.glob("*.parquet")) if done is None else [d / n for n in shard_names(source, done)]
    return [p for p in shards if p.is_file()]


def wait_for_download(num_shards: int, *, source: str = "fineweb", data_dir=None, timeout: float = 6 * 3600,
                      poll: float = 5.0) -> None:
    """Block until the completion marker vouches for `num_shards` (-1: all): other hosts wait for process 0's."""
    num_shards = max_train_shards(source) if num_shards == -1 else num_shards
    d, t0 = shard_dir(source, data_dir), time.time()
    while (downloaded_shards(source, d) or 0) < num_shards:
        if time.time() - t0 > timeout:
            raise CorpusError(f"waited {timeout:.0f} s for {d / DOWNLOAD_MARKER} to vouch for {num_shards} shards "
                              f"(it says {downloaded_shards(source, d)}): did process 0's download fail, or is {d} "
                              "not on a filesystem every host shares (set JAXCHAT_BASE_DIR to one)?")
        time.sleep(poll)


def _shard_split(source: str, data_dir, split: str) -> list[Path]:
    """nanochat's split: the last shard present is val (ClimbMix: shard_06542), all others train."""
    d, shards, need = shard_dir(source, data_dir), list_shards(source, data_dir), 2 if split == "train" else 1
    if len(shards) < need:
        raise CorpusError(f"{len(shards)} {SHARD_SETS[source].title} shard(s) in {d}, {split} needs at least {need} "
                          f"(the last shard present is the val split, the others train); run `python -m jaxchat."
                          f"corpus download --source {source} -n 8{'' if data_dir is None else f' --data-dir {d}'}` "
                          f"(needs network), or copy its {shard_name(0)}... files there")
    return shards[-1:] if split == "val" else shards[:-1]


def _row_groups(path: Path) -> list[int]:
    """Rows per row group of a parquet file with a "text" column (reads the footer only)."""
    with pq.ParquetFile(path) as pf:
        if "text" not in pf.schema_arrow.names:
            raise CorpusError(f"{path}: parquet file has no 'text' column (columns: {pf.schema_arrow.names})")
        return [pf.metadata.row_group(g).num_rows for g in range(pf.metadata.num_row_groups)]


def _shard_specs(shards: list[Path]) -> list[tuple]:
    """One block per row group (1,024 documents), in (shard, row group) order: the shards are already shuffled."""
    return [("rowgroup", p.name, str(p), g, None) for p in shards for g in range(len(_row_groups(p)))]


def download_shards(source: str, num_shards: int, *, data_dir=None, workers: int = 4, base_url: str | None = None,
                    retries: int = 5, backoff: float = 2.0, progress: bool = True) -> list[Path]:
    """Download shards 0 .. num_shards-1 (-1: all) and a pinned val shard on threads, skipping those present,
    then write the marker."""
    s, top = _shard_set(source), max_train_shards(source)
    num_shards = top if num_shards == -1 else num_shards
    if not 1 <= num_shards <= top:
        raise CorpusError(f"num_shards must be in 1..{top} (or -1 for all), got {num_shards}")
    d, base_url = shard_dir(source, data_dir), base_url or s.url
    d.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(OSError):  # temporary files of a download killed an hour ago or more
        for p in d.glob("shard_*.parquet.*.tmp"):
            if time.time() - p.stat().st_mtime > 3600:
                p.unlink()

    def fetch(name: str) -> str | None:
        """One shard to a temporary name, renamed once complete; retried after backoff·2^k s. Returns the error."""
        url, final, tmp = base_url.rstrip("/") + "/" + name, d / name, d / f"{name}.{os.getpid()}.tmp"
        for attempt in range(retries + 1):
            time.sleep(backoff * 2 ** (attempt - 1) if attempt else 0)
            if final.exists():  # present, or another process finished it meanwhile
                return None
            try:
                with urllib.request.urlopen(urllib.request.Request(url, headers={"User-Agent": "jaxchat-corpus"}),
                                            timeout=60) as resp:
                    tmp.write_bytes(resp.read())
                pq.read_metadata(tmp)  # a body that is not parquet (an HTML error page) has no parquet footer
                os.replace(tmp, final)
                return None
            except Exception as e:  # HTTP and URL errors, timeouts, a truncated or non-parquet body, ...
                err = f"{type(e).__name__}: {e}"
                if getattr(e, "code", None) in (400, 401, 403, 404, 410):  # an HTTP error retrying will not help
                    break
            finally:
                tmp.unlink(missing_ok=True)
        return f"could not download {url}: {err}"

    names = shard_names(source, num_shards)
    todo = [name for name in names if not (d / name).exists()]
    with ThreadPoolExecutor(max(1, workers)) as pool:
        errors = [e for e in tqdm(pool.map(fetch, todo), total=len(names), initial=len(names) - len(todo),
                                  unit="shard", desc=source, disable=not progress) if e]
    if errors:
        raise CorpusError(f"{len(errors)} of {len(names)} shard(s) failed (offline? the shards come from "
                          f"{base_url}; or copy them into {d} by other means):\n  " + "\n  ".join(errors))
    if num_shards > (downloaded_shards(source, d) or 0):  # written last and atomically: never a partial one
        tmp = d / f"{DOWNLOAD_MARKER}.{os.getpid()}.tmp"
        tmp.write_text(json.dumps({"num_shards": num_shards}) + "\n")
        os.replace(tmp, d / DOWNLOAD_MARKER)
    return [d / name for name in names]


def shards_for_chars(max_chars: float, kept: float = 0.8, source: str = "fineweb") -> int:
    """Train shards (~250M chars each) holding `max_chars` chars of which `kept` survive the tokenizer's 10,000-char
    doc_cap, plus FineWeb's val shard (the last downloaded; d20's 2B -> 11, d32's 4B -> 21; erring high costs
    seconds). ClimbMix's val shard comes on top of N (nanochat master's `-n 8` for 2B chars)."""
    return min(max_train_shards(source), math.ceil(max_chars / (250e6 * kept)) + (not SHARD_SETS[source].val_pinned))


def shards_needed(preset: str) -> int:
    """Shards of its shard set (FineWeb when its source is not one) a preset's base training reads, with 10%
    headroom; bos_bestfit packing drops ~35% of the tokens it reads (d24 on ClimbMix: ~150, master's count)."""
    from jaxchat import train  # start-up time: train imports jax, which nothing else here needs

    cfg = C.load(["model", "base"], [f"--preset={preset}"])
    source = cfg.base.source if cfg.base.source in SHARD_SETS else "fineweb"
    tc, _ = train.depth_dial(cfg.model, cfg.base)  # a speedrun-style preset's batch comes from its depth
    n, _ = train.horizon(cfg.model, tc, tc.total_batch_size)
    tokens = n * tc.total_batch_size / (1 - BESTFIT_CROPPED * (tc.packing == "bos_bestfit"))
    return shards_for_chars(1.1 * tokens * SHARD_SETS[source].chars_per_token, kept=1.0, source=source)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m jaxchat.corpus", description="Pretraining shards; corpus sources")
    ap.add_argument("cmd", choices=["download", "wait", "describe"])
    ap.add_argument("--source", default=None, help="download/wait: a shard set, " + " or ".join(SHARD_SETS) +
                    " (default fineweb); describe: the source (default embedded)")
    ap.add_argument("-n", "--num-shards", type=int, default=8,
                    help="download/wait: the first N shards (-1: all; ClimbMix: N train shards and its val shard)")
    ap.add_argument("--data-dir", default=None, help="the shards (default: $JAXCHAT_BASE_DIR/<base_data or "
                                                     "base_data_climbmix>)")
    ap.add_argument("--workers", type=int, default=4, help="download: parallel downloads")
    ap.add_argument("--retries", type=int, default=5, help="download: retries per shard")
    ap.add_argument("--base-url", default=None, help="download: where the shards are (default: the shard set's)")
    ap.add_argument("--timeout", type=float, default=6 * 3600, help="wait: give up after this many seconds")
    ap.add_argument("--split", choices=["train", "val", "both"], default="both", help="describe: the split(s)")
    ap.add_argument("--json", action="store_true", help="describe: print JSON instead of a table")
    args = ap.parse_args(argv)
    try:
        if args.cmd == "download":
            paths = download_shards(args.source or "fineweb", args.num_shards, data_dir=args.data_dir,
                                    workers=args.workers, base_url=args.base_url, retries=args.retries)
            print0(f"{len(paths)} shards in {paths[0].parent}")
        elif args.cmd == "wait":
            wait_for_download(args.num_shards, source=args.source or "fineweb", data_dir=args.data_dir,
                              timeout=args.timeout)
        else:
            descs = [describe_source(args.source or "embedded", s, data_dir=args.data_dir)
                     for s in (SPLITS if args.split == "both" else (args.split,))]
            if args.json:
                print0(json.dumps(descs, indent=2))
            for d in [] if args.json else descs:
                print0(f"{d['source']} [{d['split']}]" + (f" (Python {d['python']})" if "python" in d else ""))
                for name, c in [*d["components"].items(), ("total", d)]:
                    print0(f"  {name:<24} {c['docs']:>9,} docs {c['chars']:>14,} chars {c['blocks']:>7,} blocks")
    except CorpusError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
