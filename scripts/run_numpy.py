"""Run an exported jaxchat model with NumPy alone (in the spirit of llama2.c's run.c): no JAX, no jaxchat.

    python scripts/run_numpy.py model.safetensors -p "What is the capital of France?" --max_tokens 64 --temperature 0
    python scripts/run_numpy.py model.safetensors -p "def fibonacci(n):" --raw         # completion, no chat turn
    python scripts/run_numpy.py model.safetensors --ids 1,2,4,300,3,4 --max_tokens 16  # token ids in, ids out

The file comes from ``python -m scripts.convert to-safetensors``. The model (nanochat V1): x = norm(wte[ids]); per
layer x += Wo·attn(rope→norm(q), rope→norm(k), v), x += W_proj·relu(W_fc·norm(x))²; logits = 15·tanh(norm(x)·lm_head
/ 15), norm = parameter-free RMSNorm; a KV cache. Text needs sentencepiece (a nanochat model: tiktoken); --ids neither.
"""
from __future__ import annotations

import argparse
import base64
import json
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np

_DTYPES = {"F32": "<f4", "F16": "<f2", "F64": "<f8", "I64": "<i8", "I32": "<i4", "U8": "u1", "BF16": "<u2"}


def read_safetensors(path: str) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """(tensors, metadata): an 8-byte little-endian header length, a JSON header, raw buffers. BF16 → float32."""
    data = Path(path).read_bytes()
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + n])
    meta = header.pop("__metadata__", {}) or {}
    tensors = {}
    for name, info in header.items():
        start, end = info["data_offsets"]
        arr = np.frombuffer(data[8 + n + start:8 + n + end], dtype=_DTYPES[info["dtype"]]).reshape(info["shape"])
        tensors[name] = (arr.astype(np.uint32) << 16).view(np.float32) if info["dtype"] == "BF16" else arr
    return tensors, meta


class NumpyGPT:
    def __init__(self, tensors: dict[str, np.ndarray], shape: dict):
        self.s = shape
        self.wte, self.lm_head = (np.asarray(tensors[k], np.float32) for k in ("wte", "lm_head"))
        self.layers = [{k: np.asarray(tensors[f"blocks.{k}"][i], np.float32)
                        for k in ("wq", "wk", "wv", "wo", "w_fc", "w_proj")} for i in range(shape["n_layer"])]
        self.eps = np.float32(shape.get("rms_eps", np.finfo(np.float32).eps))
        dh = shape["head_dim"]
        self.inv_freq = 1.0 / np.float32(shape["rope_theta"]) ** (np.arange(0, dh, 2, dtype=np.float32) / dh)

    def norm(self, x):
        return x * (np.float32(1.0) / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + self.eps))

    def rope(self, x_TxNxDh, pos_T):
        freqs = pos_T.astype(np.float32)[:, None] * self.inv_freq  # [T, Dh/2]
        cos, sin = np.cos(freqs)[:, None, :], np.sin(freqs)[:, None, :]
        x1, x2 = np.split(x_TxNxDh, 2, axis=-1)
        return np.concatenate([x1 * cos + x2 * sin, x2 * cos - x1 * sin], axis=-1)

    def reset(self, max_len: int):
        s = self.s
        self.k_cache, self.v_cache = np.zeros((2, s["n_layer"], max_len, s["n_kv_head"], s["head_dim"]), np.float32)
        self.pos = 0

    def forward(self, ids) -> np.ndarray:
        """Feed tokens at the next cache positions; returns the logits of the last one ([V] float32)."""
        H, K, Dh = self.s["n_head"], self.s["n_kv_head"], self.s["head_dim"]
        T, p0, S = len(ids), self.pos, self.pos + len(ids)
        pos = np.arange(p0, S)
        visible_TxS = np.arange(S)[None, :] <= pos[:, None]
        x = self.norm(self.wte[np.asarray(ids, np.int64)])
        for li, w in enumerate(self.layers):
            h = self.norm(x)
            q = self.norm(self.rope((h @ w["wq"]).reshape(T, H, Dh), pos))
            self.k_cache[li, p0:S] = self.norm(self.rope((h @ w["wk"]).reshape(T, K, Dh), pos))
            self.v_cache[li, p0:S] = (h @ w["wv"]).reshape(T, K, Dh)
            kc, vc = self.k_cache[li, :S], self.v_cache[li, :S]  # [S, K, Dh]
            qg = q.reshape(T, K, H // K, Dh)  # query head h uses kv head h // (H / K)
            att = np.einsum("tkgd,skd->kgts", qg, kc) * np.float32(1.0 / np.sqrt(Dh))
            att = np.where(visible_TxS, att, np.float32(-np.inf))
            att = np.exp(att - att.max(axis=-1, keepdims=True))
            att /= att.sum(axis=-1, keepdims=True)
            x = x + np.einsum("kgts,skd->tkgd", att, vc).reshape(T, H * Dh) @ w["wo"]
            u = np.maximum(self.norm(x) @ w["w_fc"], 0)
            x = x + (u * u) @ w["w_proj"]
        self.pos = S
        cap = np.float32(self.s["softcap"])
        return (cap * np.tanh((self.norm(x[-1]) @ self.lm_head) / cap)).astype(np.float32)


def sample(logits: np.ndarray, rng: np.random.Generator, temperature: float, top_k: int) -> int:
    """Temperature 0: argmax; else softmax(logits / T) over the top-k (0: all)."""
    if temperature <= 0:
        return int(np.argmax(logits))
    z = logits.astype(np.float64) / temperature
    idx = np.argpartition(-z, top_k - 1)[:top_k] if 0 < top_k < len(z) else np.arange(len(z))
    p = np.exp(z[idx] - z[idx].max())
    return int(idx[rng.choice(len(idx), p=p / p.sum())])


def generate(model: NumpyGPT, prompt: list[int], *, max_tokens: int, temperature: float = 0.0, top_k: int = 0,
             seed: int = 42, stop: tuple[int, ...] = ()):
    """Yield up to max_tokens sampled after `prompt`; a stop token ends generation and is not yielded."""
    rng = np.random.default_rng(seed)
    model.reset(len(prompt) + max_tokens)
    logits = model.forward(prompt)
    for i in range(max_tokens):
        if (t := sample(logits, rng, temperature, top_k)) in stop:
            return
        yield t
        if i + 1 < max_tokens:
            logits = model.forward([t])


def text_tokenizer(meta: dict, path: str | None) -> SimpleNamespace:
    """tiktoken, or sentencepiece as jaxchat uses it (ids decode to their exact bytes; a literal ▁ is in bytes)."""
    kind = "sentencepiece" if path else meta.get("tokenizer_kind")
    if kind == "tiktoken":
        import tiktoken  # optional: only for a nanochat model's text in and out

        d = json.loads(meta["tokenizer"])
        enc = tiktoken.Encoding(d["name"], pat_str=d["pat_str"], special_tokens=d["special_tokens"],
                                mergeable_ranks={base64.b64decode(b): int(r) for b, r in d["mergeable_ranks"]})
        return SimpleNamespace(encode=enc.encode_ordinary, decode=lambda ids: enc.decode(list(ids)))
    if kind != "sentencepiece":
        sys.exit("no tokenizer embedded in the file: pass --tokenizer path/to/tokenizer.model, or use --ids")
    import sentencepiece as spm  # optional: only for text in and out

    proto = Path(path).read_bytes() if path else base64.b64decode(meta["tokenizer"])
    sp = spm.SentencePieceProcessor(model_proto=proto)
    table = [bytes([int(p[3:5], 16)]) if sp.is_byte(i) else
             (p if sp.is_control(i) or sp.is_unknown(i) else p.replace("\u2581", " ")).encode()
             for i, p in enumerate(map(sp.id_to_piece, range(sp.get_piece_size())))]
    marker = [sp.piece_to_id(f"<0x{b:02X}>") for b in "\u2581".encode("utf-8")]
    return SimpleNamespace(encode=lambda text: [i for j, part in enumerate(text.split("\u2581"))
                                                for i in (marker if j else []) + list(sp.encode(part))],
                           decode=lambda ids: b"".join(table[i] for i in ids).decode("utf-8", errors="replace"))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model", help="a .safetensors file exported by jaxchat")
    ap.add_argument("-p", "--prompt", default="", help="the user message (chat) or text to continue (--raw)")
    ap.add_argument("--ids", default="", help="comma-separated prompt token ids (used verbatim); prints ids")
    ap.add_argument("--raw", action="store_true", help="plain completion: <|bos|> + prompt, no chat turn")
    ap.add_argument("-m", "--max_tokens", type=int, default=64)
    ap.add_argument("-t", "--temperature", type=float, default=0.0)
    ap.add_argument("-k", "--top_k", type=int, default=50)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--tokenizer", default=None, help="a sentencepiece tokenizer.model (when none is embedded)")
    args = ap.parse_args(argv)

    tensors, meta = read_safetensors(args.model)
    if "jaxchat_shape" not in meta:
        sys.exit(f"{args.model}: no jaxchat_shape metadata (export it with jaxchat.interop.export_safetensors)")
    if extra := sorted(k for k in tensors if k not in ("wte", "lm_head") and not k.startswith("blocks.")):
        sys.exit(f"{args.model}: nanochat master's architecture ({', '.join(extra)}): this runner knows V1's only; "
                 "run it with jaxchat (python -m scripts.convert from-safetensors, then chat_cli)")
    model = NumpyGPT(tensors, json.loads(meta["jaxchat_shape"]))
    special = json.loads(meta.get("special_tokens", "{}"))
    stop = tuple(special[s] for s in ("<|assistant_end|>", "<|bos|>") if s in special)
    gen = dict(max_tokens=args.max_tokens, temperature=args.temperature, top_k=args.top_k, seed=args.seed, stop=stop)
    if args.ids:
        prompt = [int(t) for t in args.ids.replace(" ", "").split(",") if t]
        print(",".join(map(str, generate(model, prompt, **gen))))
        return 0
    tok = text_tokenizer(meta, args.tokenizer)
    if not special:
        sys.exit("the file records no special-token ids; use --ids")
    head, tail = ([], []) if args.raw else (["<|user_start|>"], ["<|user_end|>", "<|assistant_start|>"])
    prompt = [special[s] for s in ["<|bos|>", *head]] + tok.encode(args.prompt) + [special[s] for s in tail]
    pending = []
    for t in generate(model, prompt, **gen):  # printed as soon as the bytes form whole characters
        pending.append(t)
        if not (text := tok.decode(pending)).endswith("\ufffd"):
            print(text, end="", flush=True)
            pending.clear()
    print(tok.decode(pending))
    return 0


if __name__ == "__main__":
    sys.exit(main())
