"""Shared test fixtures: a tiny tokenizer trained in a second, a small text corpus on disk, tiny model configs."""
from __future__ import annotations

import sysconfig
from functools import lru_cache
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
