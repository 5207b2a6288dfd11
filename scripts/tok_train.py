"""Train the tokenizer (sentencepiece BPE, see jaxchat/tokenizer.py and tokenizer/README.md) into
base_dir()/tokenizer/{tokenizer.model, token_bytes.npy, tok_train.json}. Multi-host (jaxchat/sharding.py's
environment): process 0 trains; the others wait for it, then check that the shared base_dir shows them its file.

    python -m scripts.tok_train                      # tiny preset: vocab 8192 on 20M chars of the embedded corpus
    python -m scripts.tok_train --vocab_size=65536 --max_chars=2000000000 --source=fineweb
"""
from __future__ import annotations

import hashlib
import json
import os
import time

import numpy as np

from jaxchat import config as C
from jaxchat.common import base_dir, cli, print0, process_index
from jaxchat.tokenizer import SPECIAL_TOKENS, TOKEN_BYTES_FILENAME, TOKENIZER_FILENAME, Tokenizer, default_tokenizer_dir


def _sha256(path) -> str | None:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None


def _wait_for_process0(summary: dict | None) -> dict:
    """Every process gets process 0's summary at a barrier; the others check that they see its file (sha256)."""
    from jax._src import distributed  # the coordination service's client (orbax uses it the same way)

    client = distributed.global_state.client
    if summary is not None:
        client.key_value_set("jaxchat/tok_train", json.dumps(summary))
    client.wait_at_barrier("jaxchat_tok_train", 6 * 3600 * 1000)  # 6 h: 4B chars may train for an hour+
    summary = json.loads(client.blocking_key_value_get("jaxchat/tok_train", 60_000))
    if process_index() == 0:
        return summary
    path = default_tokenizer_dir() / TOKENIZER_FILENAME
    for _ in range(30):  # a shared filesystem (NFS) may show another host's new file a few seconds late
        if _sha256(path) == summary["sha256"]:
            break
        time.sleep(2)
    else:
        raise C.ConfigError(f"process {process_index()} finds {'no' if _sha256(path) is None else 'another'} "
                            f"tokenizer at {path} after process 0 trained one: JAXCHAT_BASE_DIR ({base_dir()}) must "
                            "be a directory every host shares")
    print(f"tok_train: process {process_index()} uses the tokenizer process 0 trained (vocab "
          f"{Tokenizer.load().vocab_size:,}, sha256 {summary['sha256'][:16]})", flush=True)
    return summary


def main(argv=None) -> dict:
    """`--preset NAME` plus [tokenizer] keys (vocab_size, max_chars, doc_cap, source, digit_group), --num_threads."""
    cfg = C.load(["tokenizer"], argv, extra={"num_threads": 0})
    if multi := bool(os.environ.get("JAX_COORDINATOR_ADDRESS") or os.environ.get("SLURM_JOB_ID")):
        os.environ.setdefault("JAX_PLATFORMS", "cpu")  # process_index() starts a backend: the CPU's is enough
        from jaxchat.sharding import maybe_initialize_distributed  # only now, after JAX_PLATFORMS

        multi = maybe_initialize_distributed()
    summary = _train(cfg.tokenizer, cfg.extra.num_threads or None) if process_index() == 0 else None
    if multi:
        summary = _wait_for_process0(summary)
    from jaxchat import stage  # only now: once JAX is imported, print0 starts a backend (the accelerator)

    # only after the barrier: a late host must not find this stage's section, skip it, and leave process 0 waiting
    return stage.finish("tokenizer-training", summary)


def _train(t, num_threads) -> dict:
    from jaxchat.corpus import iter_documents  # looked up when called: tests stand in a small corpus module,
    from jaxchat.tokenizer import train_tokenizer  # and count the trainings

    doc_cap, t0 = t.doc_cap or None, time.time()
    print0(f"tok_train: vocab_size={t.vocab_size:,} max_chars={t.max_chars:,} doc_cap={doc_cap} "
           f"source={t.source} digit_group={t.digit_group}")
    tok = train_tokenizer(iter_documents(t.source, "train", max_chars=t.max_chars, doc_cap=doc_cap), t.vocab_size,
                          max_chars=t.max_chars, doc_cap=doc_cap, num_threads=num_threads, digit_group=t.digit_group)
    train_time, chars, docs = time.time() - t0, tok.train_info["chars"], tok.train_info["documents"]
    print0(f"trained on {chars:,} chars ({docs:,} documents) in {train_time:.2f}s (reading the corpus included)")
    if chars < t.max_chars:
        print0(f"note: the {t.source} train split holds only {chars:,} of the {t.max_chars:,} chars asked for")
    out_dir = default_tokenizer_dir()
    model_path = tok.save(out_dir / TOKENIZER_FILENAME)
    np.save(out_dir / TOKEN_BYTES_FILENAME, token_bytes := tok.token_bytes())
    sample = "Hello world! def f(x):\n\treturn x ** 2  # 12345 \u2581 h\u00e9llo \U0001F600 <|assistant_end|>\r\n"
    ids = tok.encode(sample)  # sanity: a round trip; specials are single ids that plain text cannot produce
    assert tok.decode(ids) == sample, "round trip failed"
    assert not set(ids) & set(tok.special_ids.values()), "plain text produced a special token"
    assert int(token_bytes[ids].sum()) == len(sample.encode("utf-8")), "token_bytes disagree with the text"
    print0(f"round trip OK: {len(sample.encode('utf-8'))} bytes -> {len(ids)} tokens")
    print0("specials: " + ", ".join(f"{s}={tok.special_ids[s]}" for s in SPECIAL_TOKENS))
    nz = token_bytes[token_bytes > 0]
    stats = dict(min=int(nz.min()), max=int(nz.max()), mean=round(float(nz.mean()), 3), std=round(float(nz.std()), 3))
    summary = dict(vocab_size=tok.vocab_size, source=t.source, max_chars=t.max_chars, doc_cap=doc_cap,
                   digit_group=t.digit_group, train_chars=chars, train_documents=docs,
                   train_time_s=round(train_time, 3), num_special_tokens=len(SPECIAL_TOKENS),
                   special_ids=tok.special_ids, **{f"token_bytes_{k}": v for k, v in stats.items()},
                   model_path=str(model_path), sha256=_sha256(model_path))
    (out_dir / "tok_train.json").write_text(json.dumps(summary, indent=2) + "\n")
    print0("token_bytes (non-special): " + " ".join(f"{k} {v}" for k, v in stats.items()))
    print0(f"saved {model_path}, {out_dir / TOKEN_BYTES_FILENAME}, {out_dir / 'tok_train.json'}")
    return summary


if __name__ == "__main__":
    cli(main)
