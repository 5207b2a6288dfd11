"""The API's limits (nanochat's) and sampling defaults; no JAX import, so the gunicorn master can check
command-line defaults before it forks the worker."""
from dataclasses import dataclass

SEED_LIMIT = 2**32  # seeds are uint32 (jax.random.key(seed))


@dataclass(frozen=True)
class Limits:
    max_messages: int = 500
    max_message_chars: int = 8_000
    max_total_chars: int = 32_000
    min_temperature: float = 0.0
    max_temperature: float = 2.0
    min_top_k: int = 1
    max_top_k: int = 200
    min_max_tokens: int = 1
    max_max_tokens: int = 4_096
    max_body_bytes: int = 1 << 20


@dataclass(frozen=True)
class Defaults:
    temperature: float = 0.8
    top_k: int = 50
    max_tokens: int = 512
