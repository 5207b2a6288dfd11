"""Run an exported jaxchat model with NumPy alone (in the spirit of llama2.c's run.c): no JAX, no jaxchat.

    python scripts/run_numpy.py model.safetensors -p "What is the capital of France?" --max_tokens 64 --temperature 0
    python scripts/run_numpy.py model.safetensors -p "def fibonacci(n):" --raw         # completion, no chat turn
    python scripts/run_numpy.py model.safetensors --ids 1,2,4,300,3,4 --max_tokens 16  # token ids in, ids out

The file is what ``jaxchat.interop.export_safetensors`` (or ``python -m scripts.convert to-safetensors``) writes:
float32 tensors ``wte [V,D]``, ``lm_head [D,V]``, ``blocks.{wq,wk,wv,wo,w_fc,w_proj}`` (layers stacked,
[in, out]) and metadata ``jaxchat_shape`` (the derived dims) plus, optionally, the tokenizer. It is read
by the ~25-line reader below (8-byte little-endian header length, a JSON header, raw little-endian
buffers), not by the safetensors package.

The model math (nanochat V1): x = norm(wte[ids]); per layer x += Wo·attn(rope→norm(q), rope→norm(k), v),
x += W_proj·relu(W_fc·norm(x))²; logits = 15·tanh((norm(x)·lm_head)/15). norm is parameter-free RMSNorm with
eps = float32 machine epsilon; rotary θ from the file, split halves, absolute positions; GQA. The prompt is
prefilled in one causal pass into a KV cache, then one token at a time. Sampling: temperature 0 → argmax;
else softmax(logits/T) over the top-k (0 = all) drawn with ``numpy.random.default_rng(seed)``.

Tokenization: a sentencepiece tokenizer embedded by jaxchat needs the ``sentencepiece`` package (the one
non-NumPy dependency); an embedded nanochat (tiktoken) tokenizer needs ``tiktoken``. ``--ids`` needs neither.
Chat mode (default) wraps the prompt as <|bos|><|user_start|>prompt<|user_end|><|assistant_start|> and stops
at <|assistant_end|> or <|bos|>, which are not printed.
"""
from __future__ import annotations

import argparse
import base64
import json
import sys

import numpy as np

_DTYPES = {"F32": "<f4", "F16": "<f2", "F64": "<f8", "I64": "<i8", "I32": "<i4", "U8": "u1", "BF16": "<u2"}


def read_safetensors(path: str) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """(tensors, metadata) from a .safetensors file. BF16 is widened to float32 exactly."""
    with open(path, "rb") as f:
        data = f.read()
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + n])
    meta = header.pop("__metadata__", {}) or {}
    base = 8 + n
    tensors = {}
    for name, info in header.items():
        start, end = info["data_offsets"]
        arr = np.frombuffer(data, dtype=_DTYPES[info["dtype"]], count=(end - start) // np.dtype(
            _DTYPES[info["dtype"]]).itemsize, offset=base + start).reshape(info["shape"])
        if info["dtype"] == "BF16":
            arr = (arr.astype(np.uint32) << 16).view(np.float32)
        tensors[name] = arr
    return tensors, meta


# ----------------------------------------------------------------------------------------------------
# The model


class NumpyGPT:
    def __init__(self, tensors: dict[str, np.ndarray], shape: dict):
        self.s = shape
        f32 = lambda a: np.asarray(a, np.float32)  # noqa: E731
        self.wte, self.lm_head = f32(tensors["wte"]), f32(tensors["lm_head"])
        self.layers = [{k: f32(tensors[f"blocks.{k}"][i]) for k in ("wq", "wk", "wv", "wo", "w_fc", "w_proj")}
                       for i in range(shape["n_layer"])]
        self.eps = np.float32(shape.get("rms_eps", np.finfo(np.float32).eps))
        dh = shape["head_dim"]
        self.inv_freq = (1.0 / (np.float32(shape["rope_theta"]) ** (np.arange(0, dh, 2, dtype=np.float32) / dh))
                         ).astype(np.float32)
        self.k_cache = self.v_cache = None
        self.pos = 0

    def norm(self, x):
        return x * (np.float32(1.0) / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + self.eps))

    def rope(self, x_TxNxDh, pos_T):
        freqs = pos_T.astype(np.float32)[:, None] * self.inv_freq  # [T, Dh/2]
        cos, sin = np.cos(freqs)[:, None, :], np.sin(freqs)[:, None, :]
        h = x_TxNxDh.shape[-1] // 2
        x1, x2 = x_TxNxDh[..., :h], x_TxNxDh[..., h:]
        return np.concatenate([x1 * cos + x2 * sin, x2 * cos - x1 * sin], axis=-1)

    def reset(self, max_len: int):
        s = self.s
        shape = (s["n_layer"], max_len, s["n_kv_head"], s["head_dim"])
        self.k_cache, self.v_cache = np.zeros(shape, np.float32), np.zeros(shape, np.float32)
        self.pos = 0

    def forward(self, ids) -> np.ndarray:
        """Feed tokens at the next cache positions; returns the logits of the last one ([V] float32)."""
        s = self.s
        H, K, Dh = s["n_head"], s["n_kv_head"], s["head_dim"]
        G = H // K
        ids = np.asarray(ids, np.int64)
        T, p0 = len(ids), self.pos
        if p0 + T > self.k_cache.shape[1]:
            raise ValueError(f"sequence of {p0 + T} tokens exceeds the cache ({self.k_cache.shape[1]})")
        pos = np.arange(p0, p0 + T)
        S = p0 + T
        visible_TxS = np.arange(S)[None, :] <= pos[:, None]
        x = self.norm(self.wte[ids])
        for li, w in enumerate(self.layers):
            h = self.norm(x)
            q = self.norm(self.rope((h @ w["wq"]).reshape(T, H, Dh), pos))
            k = self.norm(self.rope((h @ w["wk"]).reshape(T, K, Dh), pos))
            v = (h @ w["wv"]).reshape(T, K, Dh)
            self.k_cache[li, p0:S], self.v_cache[li, p0:S] = k, v
            kc, vc = self.k_cache[li, :S], self.v_cache[li, :S]  # [S, K, Dh]
            qg = q.reshape(T, K, G, Dh)  # query head h uses kv head h // G
            att = np.einsum("tkgd,skd->kgts", qg, kc) * np.float32(1.0 / np.sqrt(Dh))
            att = np.where(visible_TxS, att, np.float32(-np.inf))
            att = np.exp(att - att.max(axis=-1, keepdims=True))
            att /= att.sum(axis=-1, keepdims=True)
            o = np.einsum("kgts,skd->tkgd", att, vc).reshape(T, H * Dh)
            x = x + o @ w["wo"]
            u = np.maximum(self.norm(x) @ w["w_fc"], 0)
            x = x + (u * u) @ w["w_proj"]
        self.pos = S
        logits = self.norm(x[-1]) @ self.lm_head
        cap = np.float32(s["softcap"])
        return (cap * np.tanh(logits / cap)).astype(np.float32)


def sample(logits: np.ndarray, rng: np.random.Generator, temperature: float, top_k: int) -> int:
    if temperature <= 0:
        return int(np.argmax(logits))
    z = logits.astype(np.float64) / temperature
    idx = np.arange(len(z))
    if 0 < top_k < len(z):
        idx = np.argpartition(-z, top_k - 1)[:top_k]
        z = z[idx]
    p = np.exp(z - z.max())
    return int(idx[rng.choice(len(z), p=p / p.sum())])


def generate(model: NumpyGPT, prompt: list[int], *, max_tokens: int, temperature: float = 0.0, top_k: int = 0,
             seed: int = 42, stop: tuple[int, ...] = (), stream=None) -> list[int]:
    """Sample up to max_tokens after `prompt`; a stop token ends generation and is not returned."""
    if not prompt:
        raise ValueError("the prompt needs at least one token")
    rng = np.random.default_rng(seed)
    model.reset(len(prompt) + max_tokens)
    logits = model.forward(prompt)
    out: list[int] = []
    for i in range(max_tokens):
        t = sample(logits, rng, temperature, top_k)
        if t in stop:
            break
        out.append(t)
        if stream is not None:
            stream(t)
        if i + 1 < max_tokens:
            logits = model.forward([t])
    return out


# ----------------------------------------------------------------------------------------------------
# Tokenizers (optional)


class SentencePieceText:
    """jaxchat's sentencepiece conventions: ids decode to their exact bytes (▁ = space, <0xNN> = a byte);
    a literal ▁ in the input is spelled with byte pieces."""

    def __init__(self, proto: bytes):
        import sentencepiece as spm

        self.sp = spm.SentencePieceProcessor(model_proto=proto)
        table = []
        for i in range(self.sp.get_piece_size()):
            piece = self.sp.id_to_piece(i)
            if self.sp.is_byte(i):
                table.append(bytes([int(piece[3:5], 16)]))
            elif self.sp.is_control(i) or self.sp.is_unknown(i):
                table.append(piece.encode("utf-8"))
            else:
                table.append(piece.replace("\u2581", " ").encode("utf-8"))
        self.table = table
        self.marker = [self.sp.piece_to_id(f"<0x{b:02X}>") for b in "\u2581".encode("utf-8")]

    def encode(self, text: str) -> list[int]:
        parts = text.split("\u2581")
        ids = list(self.sp.encode(parts[0]))
        for part in parts[1:]:
            ids += self.marker + list(self.sp.encode(part))
        return ids

    def decode(self, ids) -> str:
        return b"".join(self.table[i] for i in ids).decode("utf-8", errors="replace")


class TiktokenText:
    def __init__(self, blob: str):
        import tiktoken

        d = json.loads(blob)
        ranks = {base64.b64decode(b): int(r) for b, r in d["mergeable_ranks"]}
        self.enc = tiktoken.Encoding(d["name"], pat_str=d["pat_str"], mergeable_ranks=ranks,
                                     special_tokens=d["special_tokens"])

    def encode(self, text: str) -> list[int]:
        return self.enc.encode_ordinary(text)

    def decode(self, ids) -> str:
        return self.enc.decode(list(ids))


def load_text_tokenizer(meta: dict, override: str | None):
    if override:
        with open(override, "rb") as f:
            return SentencePieceText(f.read())
    kind = meta.get("tokenizer_kind")
    if kind == "sentencepiece":
        return SentencePieceText(base64.b64decode(meta["tokenizer"]))
    if kind == "tiktoken":
        return TiktokenText(meta["tokenizer"])
    return None


# ----------------------------------------------------------------------------------------------------
# CLI


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
    model = NumpyGPT(tensors, json.loads(meta["jaxchat_shape"]))
    special = json.loads(meta.get("special_tokens", "{}"))
    stop = tuple(special[s] for s in ("<|assistant_end|>", "<|bos|>") if s in special)
    gen = dict(max_tokens=args.max_tokens, temperature=args.temperature, top_k=args.top_k, seed=args.seed, stop=stop)

    if args.ids:
        prompt = [int(t) for t in args.ids.replace(" ", "").split(",") if t]
        print(",".join(str(t) for t in generate(model, prompt, **gen)))
        return 0
    tok = load_text_tokenizer(meta, args.tokenizer)
    if tok is None:
        sys.exit("no tokenizer embedded in the file: pass --tokenizer path/to/tokenizer.model, or use --ids")
    if not special:
        sys.exit("the file records no special-token ids; use --ids")
    if args.raw:
        prompt = [special["<|bos|>"]] + tok.encode(args.prompt)
    else:
        prompt = [special["<|bos|>"], special["<|user_start|>"], *tok.encode(args.prompt), special["<|user_end|>"],
                  special["<|assistant_start|>"]]
    pending: list[int] = []

    def stream(t):  # print as soon as the bytes form whole characters
        pending.append(t)
        text = tok.decode(pending)
        if not text.endswith("\ufffd"):
            sys.stdout.write(text)
            sys.stdout.flush()
            pending.clear()

    generate(model, prompt, stream=stream, **gen)
    sys.stdout.write((tok.decode(pending) if pending else "") + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
