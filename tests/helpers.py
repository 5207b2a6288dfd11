"""Shared test fixtures: a tiny tokenizer trained in a second, a small text corpus on disk, tiny model configs,
a loopback HTTP file server (downloads tested offline), a miniature DCLM eval bundle."""
from __future__ import annotations

import collections
import contextlib
import io
import json
import sysconfig
import threading
import zipfile
from functools import lru_cache
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from jaxchat.config import ModelConfig


def stdlib_texts(n: int = 40) -> list[str]:
    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted((root / "json").glob("*.py")) + sorted((root / "email").glob("*.py"))
    return [f.read_text() for f in files[:n]]


@lru_cache(maxsize=None)
def tiny_tokenizer(vocab_size: int = 512):
    from jaxchat.tokenizer import train_tokenizer

    chat = ["Hello! How are you today?\nI am fine, thanks. What is 12 * 34? It is 408.\n"] * 20
    return train_tokenizer(stdlib_texts() + chat, vocab_size)


def tiny_model(vocab_size: int, **kw) -> ModelConfig:
    base = dict(depth=2, vocab_size=vocab_size, max_seq_len=64, aspect_ratio=32, head_dim_target=32)
    base.update(kw)
    return ModelConfig(**base)


def write_corpus(directory: Path, n_docs: int = 60) -> Path:
    """A directory of .txt documents (a user corpus source)."""
    directory.mkdir(parents=True, exist_ok=True)
    texts = stdlib_texts(n_docs)
    for i, t in enumerate(texts):
        (directory / f"doc{i:03d}.txt").write_text(t[:6000])
    return directory


class FileServer:
    """Serves `files` ({name: bytes}) over HTTP on 127.0.0.1 at `url` + name; names in fail_once answer 500
    once, names in truncate_once send a short body under a full Content-Length once. Tests using it set
    no_proxy=* so that urllib does not route 127.0.0.1 through a proxy."""

    def __init__(self, files):
        self.files, self.requests = dict(files), collections.Counter()
        self.fail_once, self.truncate_once = set(), set()
        lock, server = threading.Lock(), self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                name = self.path.rsplit("/", 1)[-1]
                with lock:
                    server.requests[name] += 1
                    fail = name in server.fail_once and not server.fail_once.discard(name)
                    trunc = name in server.truncate_once and not server.truncate_once.discard(name)
                if fail:
                    return self.send_error(500, "transient")
                if name not in server.files:
                    return self.send_error(404)
                body = server.files[name]
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body[: len(body) // 2] if trunc else body)
                self.close_connection = True

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/files/"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def write_eval_bundle(d: Path, copa_items: list[dict] | None = None) -> Path:
    """A miniature DCLM eval bundle in the real one's layout: core.yaml (task list), eval_meta_data.csv (random
    baselines), eval_data/<uri>.jsonl; two tasks, copa (multiple choice) and lambada_openai (LM, own delimiter)."""
    copa = copa_items or [{"query": f"The glass fell {i}, therefore", "choices": ["it broke.", "it sang."],
                           "gold": 0} for i in range(8)]
    (d / "eval_data" / "lu").mkdir(parents=True)
    (d / "core.yaml").write_text(
        "icl_tasks:\n"
        "- label: copa\n  dataset_uri: lu/copa.jsonl\n  num_fewshot: [0]\n  icl_task_type: multiple_choice\n"
        "- label: lambada_openai\n  dataset_uri: lu/lambada.jsonl\n  num_fewshot: [0]\n"
        "  icl_task_type: language_modeling\n  continuation_delimiter: \"\\nA: \"\n")
    (d / "eval_meta_data.csv").write_text("Eval Task,Task Category,Random baseline\ncopa,x,50.0\n"
                                          "lambada_openai,y,0.0\n")
    (d / "eval_data" / "lu" / "copa.jsonl").write_text("\n".join(json.dumps(x) for x in copa))
    (d / "eval_data" / "lu" / "lambada.jsonl").write_text(json.dumps({"context": "Hi", "continuation": "there"}))
    return d


def zip_dir(src: Path, top: str) -> bytes:
    """`src`'s files zipped under the folder name `top` (as `zip -r top.zip top` would)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for f in sorted(src.rglob("*")):
            z.write(f, f"{top}/{f.relative_to(src)}")
    return buf.getvalue()


@contextlib.contextmanager
def core_bundle_base(tmp_path: Path, monkeypatch):
    """A base dir with the tiny tokenizer, and the miniature eval bundle served from a loopback server (what
    `core_bundle = "download"` fetches) for the duration of the block."""
    monkeypatch.setenv("JAXCHAT_BASE_DIR", str(tmp_path))
    monkeypatch.setenv("no_proxy", "*")
    monkeypatch.setenv("NO_PROXY", "*")
    tiny_tokenizer().save(tmp_path / "tokenizer" / "tokenizer.model")
    server = FileServer({"eval_bundle.zip": zip_dir(write_eval_bundle(tmp_path / "src"), "eval_bundle")})
    monkeypatch.setenv("JAXCHAT_EVAL_BUNDLE_URL", server.url + "eval_bundle.zip")
    try:
        yield server
    finally:
        server.close()
