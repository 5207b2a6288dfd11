"""Interop: nanochat (V1) PyTorch checkpoints and tokenizers, and safetensors files.

Everything here that needs torch, tiktoken or safetensors imports it lazily; without them the error says
``pip install -e '.[interop]'``. The core of jaxchat never needs them.

nanochat checkpoints (``reference/nanochat.md`` §1–2)
-----------------------------------------------------
A nanochat checkpoint folder (e.g. ``~/.cache/nanochat/chatsft_checkpoints/d20/``) holds
``model_{step:06d}.pt`` (``torch.save`` of the state dict) and ``meta_{step:06d}.json`` whose
``model_config`` is ``{sequence_len, vocab_size, n_layer, n_head, n_kv_head, n_embd}``. Key mapping
(torch ``nn.Linear`` weights are ``[out, in]``; jaxchat matrices are ``[in, out]`` with layers stacked on
a leading axis, so every Linear is transposed and layer ``i`` goes to index ``i``):

    nanochat state-dict key                   shape (torch)      jaxchat param          shape
    transformer.wte.weight                    [V_pad, D]         wte                    [V, D]
    transformer.h.{i}.attn.c_q.weight         [H·Dh, D]          blocks.wq[i]           [D, H·Dh]
    transformer.h.{i}.attn.c_k.weight         [K·Dh, D]          blocks.wk[i]           [D, K·Dh]
    transformer.h.{i}.attn.c_v.weight         [K·Dh, D]          blocks.wv[i]           [D, K·Dh]
    transformer.h.{i}.attn.c_proj.weight      [D, H·Dh]          blocks.wo[i]           [H·Dh, D]
    transformer.h.{i}.mlp.c_fc.weight         [4D, D]            blocks.w_fc[i]         [D, 4D]
    transformer.h.{i}.mlp.c_proj.weight       [D, 4D]            blocks.w_proj[i]       [4D, D]
    lm_head.weight                            [V_pad, D]         lm_head                [D, V]

* ``_orig_mod.`` (torch.compile) prefixes are stripped. Rotary ``cos``/``sin`` buffers are not persistent
  in nanochat, but are ignored if present. Any other key (e.g. nanochat HEAD's value embeddings or
  per-layer scalars) is an error: only the V1 architecture is supported.
* Vocab padding: since Dec 2025 nanochat pads the rows of ``wte`` and ``lm_head`` up to a multiple of 64
  and slices the logits back to ``vocab_size``; the padded rows are never used. On import we keep the first
  ``vocab_size`` rows (so older unpadded checkpoints load too). On export we pad with zero rows to a
  multiple of ``pad_vocab_to`` (default 64, as nanochat V1 expects; pass 1 for pre-Dec-2025 nanochat).
* dtypes: nanochat on CUDA keeps ``wte`` in bfloat16; every tensor is upcast to float32 (exact).
* Shape: jaxchat derives the model from ``depth`` (width = aspect_ratio·depth, heads =
  ceil(width / head_dim_target)). The import uses nanochat's defaults (64, 128) when they reproduce the
  checkpoint's shape and otherwise ``aspect_ratio = n_embd / n_layer`` and ``head_dim_target = n_embd /
  n_head``; a width that ``n_layer`` does not divide is refused with an error.
* Numerics: nanochat V1 rounds its rotary cos/sin tables to bfloat16 (even on CPU); jaxchat computes them
  in float32. The converted model is therefore the same function up to that rounding: its logits match a
  float32-table implementation of the spec to ~1e-6 relative, nanochat's own bf16-table forward to ~5e-4
  relative (~2e-3 absolute on tiny random models; greedy argmax agreed on every position measured).

Tokenizers
----------
nanochat's ``tokenizer/tokenizer.pkl`` is a pickled ``tiktoken.Encoding`` (mergeable ranks + split pattern
+ the 9 specials). `NanochatTokenizer` wraps it with the part of ``jaxchat.tokenizer.Tokenizer``'s interface
the engine, chat_cli, chat_web and evals use. The pickle is read with a restricted unpickler (only
``tiktoken.Encoding`` can be constructed), so a tokenizer file cannot run arbitrary code. `load_any_tokenizer`
picks ours (``tokenizer.model``) or nanochat's (``tokenizer.pkl``) from a directory.

safetensors
-----------
`export_safetensors` writes one file: tensors named ``wte``, ``lm_head``, ``blocks.wq``, … (jaxchat's
layout, layers stacked, float32) and string metadata ``jaxchat_config`` (JSON of the ModelConfig),
``jaxchat_shape`` (derived dims: n_layer, n_embd, n_head, n_kv_head, head_dim, mlp_dim, vocab_size,
max_seq_len, rope_theta, softcap, rms_eps) and, when a tokenizer is given, ``tokenizer_kind``
(``sentencepiece`` | ``tiktoken``), ``tokenizer`` (the sentencepiece model proto base64-encoded, or a JSON
of the tiktoken ranks/pattern/specials) and ``special_tokens`` (JSON name → id). The tokenizer is embedded
in the *metadata* (not a sidecar file, not a tensor) so the file is self-contained and its tensors are
exactly the params. ``scripts/run_numpy.py`` runs such a file with NumPy alone.
"""
from __future__ import annotations

import base64
import dataclasses
import io
import json
import pickle
import re
from pathlib import Path
from typing import Any

import numpy as np

from jaxchat.config import ConfigError, ModelConfig
from jaxchat.tokenizer import SPECIAL_TOKENS, TOKENIZER_FILENAME, Tokenizer

INSTALL_HINT = "pip install -e '.[interop]'  (torch==2.13.0, tiktoken==0.14.0, safetensors==0.8.0)"
ORIG_MOD = "_orig_mod."
NANOCHAT_TOKENIZER_FILENAME = "tokenizer.pkl"
NANOCHAT_TOKENIZER_MARKER = "nanochat_tokenizer.json"  # written next to a copied tokenizer.pkl
LAYER_KEYS = {  # jaxchat blocks.<name>  ←→  nanochat transformer.h.{i}.<key>   (transposed)
    "wq": "attn.c_q.weight",
    "wk": "attn.c_k.weight",
    "wv": "attn.c_v.weight",
    "wo": "attn.c_proj.weight",
    "w_fc": "mlp.c_fc.weight",
    "w_proj": "mlp.c_proj.weight",
}
_IGNORED_SUFFIXES = ("cos", "sin")  # rotary buffers (non-persistent in nanochat; tolerated)


class InteropError(ValueError):
    """A checkpoint/tokenizer that cannot be converted; the message says why and what would work."""


def _require(module: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ImportError(f"{module} is needed for nanochat/safetensors interop: {INSTALL_HINT}") from e


def _np(x) -> np.ndarray:
    return np.asarray(x)


# ----------------------------------------------------------------------------------------------------
# Config mapping


def nanochat_model_config(cfg: ModelConfig) -> dict:
    """jaxchat ModelConfig → nanochat's GPTConfig kwargs (exactly its six fields)."""
    return {"sequence_len": cfg.max_seq_len, "vocab_size": cfg.vocab_size, "n_layer": cfg.n_layer,
            "n_head": cfg.n_head, "n_kv_head": cfg.kv_heads, "n_embd": cfg.n_embd}


def config_from_nanochat(mc: dict, **overrides) -> ModelConfig:
    """nanochat model_config → a depth-derived ModelConfig with exactly that shape (or InteropError)."""
    try:
        L, D, H = int(mc["n_layer"]), int(mc["n_embd"]), int(mc["n_head"])
        V, T = int(mc["vocab_size"]), int(mc["sequence_len"])
        K = int(mc.get("n_kv_head") or H)
    except KeyError as e:
        raise InteropError(f"nanochat model_config lacks {e.args[0]!r}: {mc}") from None
    if D % H:
        raise InteropError(f"n_embd={D} is not a multiple of n_head={H}")
    if H % K:
        raise InteropError(f"n_kv_head={K} must divide n_head={H}")
    if D % L:
        raise InteropError(f"n_embd={D} is not a multiple of n_layer={L}: jaxchat derives the width as "
                           f"aspect_ratio·depth, so this shape cannot be expressed")
    want = (L, D, H, D // H, K)
    candidates = [(64, 128), (D // L, 128), (64, D // H), (D // L, D // H)]  # nanochat defaults first
    for ar, hdt in candidates:
        try:
            cfg = ModelConfig(depth=L, vocab_size=V, max_seq_len=T, aspect_ratio=ar, head_dim_target=hdt,
                              n_kv_head=0 if K == H else K, **overrides)
        except ConfigError:  # e.g. n_kv_head does not divide this candidate's head count
            continue
        if (cfg.n_layer, cfg.n_embd, cfg.n_head, cfg.head_dim, cfg.kv_heads) == want:
            return cfg
    raise InteropError(f"no depth-derived jaxchat config reproduces {mc}")  # unreachable for valid shapes


def shape_summary(cfg: ModelConfig) -> dict:
    """The derived dimensions a standalone runner needs (no jaxchat import required to read them)."""
    return {"n_layer": cfg.n_layer, "n_embd": cfg.n_embd, "n_head": cfg.n_head, "n_kv_head": cfg.kv_heads,
            "head_dim": cfg.head_dim, "mlp_dim": cfg.mlp_dim, "vocab_size": cfg.vocab_size,
            "max_seq_len": cfg.max_seq_len, "rope_theta": cfg.rope_theta, "softcap": cfg.softcap,
            "rms_eps": float(np.finfo(np.float32).eps)}


def config_from_dict(d: dict) -> ModelConfig:
    from jaxchat import config as C

    return C.build(ModelConfig, d, where="jaxchat_config: ")


def _expected_shapes(cfg: ModelConfig) -> dict:
    L, D, V, F = cfg.n_layer, cfg.n_embd, cfg.vocab_size, cfg.mlp_dim
    HD, KD = cfg.n_head * cfg.head_dim, cfg.kv_heads * cfg.head_dim
    return {"wte": (V, D), "lm_head": (D, V),
            "blocks": {"wq": (L, D, HD), "wk": (L, D, KD), "wv": (L, D, KD), "wo": (L, HD, D),
                       "w_fc": (L, D, F), "w_proj": (L, F, D)}}


def check_params(params: dict, cfg: ModelConfig) -> None:
    exp = _expected_shapes(cfg)
    got = {"wte": tuple(np.shape(params["wte"])), "lm_head": tuple(np.shape(params["lm_head"])),
           "blocks": {k: tuple(np.shape(v)) for k, v in params["blocks"].items()}}
    if got != exp:
        raise InteropError(f"params do not match the config: expected {exp}, got {got}")


# ----------------------------------------------------------------------------------------------------
# State dicts (numpy, nanochat key names, torch [out, in] layout)


def state_dict_to_params(sd: dict[str, np.ndarray], cfg: ModelConfig) -> dict:
    """nanochat state dict (numpy float32 values; `_orig_mod.` prefixes allowed) → jaxchat params (numpy)."""
    sd = {k.removeprefix(ORIG_MOD): v for k, v in sd.items()}
    L, V = cfg.n_layer, cfg.vocab_size
    used = set()

    def take(key):
        if key not in sd:
            raise InteropError(f"state dict lacks {key!r} (has {sorted(sd)[:8]}...)")
        used.add(key)
        return np.asarray(sd[key], np.float32)

    def vocab_rows(key):
        w = take(key)
        if w.ndim != 2 or w.shape[0] < V:
            raise InteropError(f"{key} has shape {w.shape}; expected [>= vocab_size={V}, n_embd]")
        return w[:V]  # drop nanochat's padding rows (unused: logits are sliced to vocab_size)

    params = {"wte": np.ascontiguousarray(vocab_rows("transformer.wte.weight")),
              "lm_head": np.ascontiguousarray(vocab_rows("lm_head.weight").T),
              "blocks": {}}
    for name, key in LAYER_KEYS.items():
        params["blocks"][name] = np.stack([take(f"transformer.h.{i}.{key}").T for i in range(L)])
    extra = [k for k in sd if k not in used and not k.endswith(_IGNORED_SUFFIXES)]
    if extra:
        raise InteropError(f"unexpected state-dict keys (not nanochat V1's architecture?): {extra[:10]}")
    check_params(params, cfg)
    return params


def params_to_state_dict(params: dict, cfg: ModelConfig, *, pad_vocab_to: int = 64) -> dict[str, np.ndarray]:
    """jaxchat params → nanochat state dict (numpy float32, [out, in], vocab rows zero-padded to a multiple
    of `pad_vocab_to`)."""
    check_params(params, cfg)
    V, D = cfg.vocab_size, cfg.n_embd
    Vp = -(-V // max(1, pad_vocab_to)) * max(1, pad_vocab_to)

    def pad(w_VxD):
        out = np.zeros((Vp, D), np.float32)
        out[:V] = w_VxD
        return out

    sd = {"transformer.wte.weight": pad(_np(params["wte"]))}
    blocks = {k: _np(v) for k, v in params["blocks"].items()}
    for i in range(cfg.n_layer):
        for name, key in LAYER_KEYS.items():
            sd[f"transformer.h.{i}.{key}"] = np.ascontiguousarray(blocks[name][i].T, np.float32)
    sd["lm_head.weight"] = pad(_np(params["lm_head"]).T)
    return sd


# ----------------------------------------------------------------------------------------------------
# nanochat checkpoint folders


_STEP_RE = re.compile(r"^model_(\d+)\.pt$")


def nanochat_steps(directory: str | Path) -> list[int]:
    d = Path(directory)
    return sorted(int(m.group(1)) for p in d.glob("model_*.pt") if (m := _STEP_RE.match(p.name)))


def find_nanochat_dir(path: str | Path) -> Path:
    """A folder holding model_*.pt, or a stage folder of tags (→ the largest ``d<N>``, then the newest)."""
    p = Path(path).expanduser()
    if not p.is_dir():
        raise InteropError(f"no nanochat checkpoint folder at {p}")
    if nanochat_steps(p):
        return p
    tags = [t for t in p.iterdir() if t.is_dir() and nanochat_steps(t)]
    if not tags:
        raise InteropError(f"{p} has no model_XXXXXX.pt files (nor model-tag folders holding them)")

    def depth(t):
        m = re.match(r"^d(\d+)$", t.name)
        return int(m.group(1)) if m else -1

    return max(tags, key=lambda t: (depth(t), t.stat().st_mtime))


def read_nanochat_state_dict(path: str | Path) -> dict[str, np.ndarray]:
    """torch.load (weights only, CPU) → numpy float32 arrays (bf16 tensors upcast exactly)."""
    torch = _require("torch")
    sd = torch.load(str(path), map_location="cpu", weights_only=True)
    if not isinstance(sd, dict):
        raise InteropError(f"{path} is not a state dict (got {type(sd).__name__})")
    out = {}
    for k, v in sd.items():
        if not hasattr(v, "detach"):
            raise InteropError(f"{path}: entry {k!r} is not a tensor ({type(v).__name__})")
        out[k] = v.detach().to(torch.float32).cpu().numpy()
    return out


def load_nanochat(path: str | Path, step: int | None = None) -> tuple[dict, ModelConfig, dict]:
    """Read a nanochat checkpoint → (params as numpy float32, ModelConfig, meta). `step=None` takes the
    latest ``model_XXXXXX.pt``. When the meta was written by `save_nanochat` its ``jaxchat.model`` config is
    used (if it has the same shape), so jaxchat → nanochat → jaxchat returns the identical config."""
    d = find_nanochat_dir(path)
    steps = nanochat_steps(d)
    step = steps[-1] if step is None else int(step)
    if step not in steps:
        raise InteropError(f"{d} has no step {step}; steps: {steps}")
    meta_path = d / f"meta_{step:06d}.json"
    if not meta_path.is_file():
        raise InteropError(f"{meta_path} is missing (nanochat writes model_ and meta_ files together)")
    meta = json.loads(meta_path.read_text())
    if "model_config" not in meta:
        raise InteropError(f"{meta_path} has no model_config")
    cfg = config_from_nanochat(meta["model_config"])
    saved = (meta.get("jaxchat") or {}).get("model")
    if saved:
        try:
            mine = config_from_dict(saved)
            if nanochat_model_config(mine) == nanochat_model_config(cfg):
                cfg = mine
        except Exception:  # a foreign or stale block: the nanochat fields rule
            pass
    params = state_dict_to_params(read_nanochat_state_dict(d / f"model_{step:06d}.pt"), cfg)
    meta = dict(meta, step=meta.get("step", step))
    return params, cfg, meta


def save_nanochat(params: dict, cfg: ModelConfig, directory: str | Path, step: int, *, meta: dict | None = None,
                  pad_vocab_to: int = 64) -> tuple[Path, Path]:
    """Write ``model_{step:06d}.pt`` + ``meta_{step:06d}.json`` in nanochat's layout (loadable by nanochat V1's
    checkpoint manager with strict=True). Returns the two paths."""
    torch = _require("torch")
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    sd = {k: torch.from_numpy(v) for k, v in params_to_state_dict(params, cfg, pad_vocab_to=pad_vocab_to).items()}
    mp, jp = d / f"model_{step:06d}.pt", d / f"meta_{step:06d}.json"
    torch.save(sd, str(mp))
    m = {"step": int(step), "model_config": nanochat_model_config(cfg), "user_config": {},
         "jaxchat": {"model": dataclasses.asdict(cfg), "pad_vocab_to": pad_vocab_to}}
    m.update(meta or {})
    jp.write_text(json.dumps(m, indent=2))
    return mp, jp


# ----------------------------------------------------------------------------------------------------
# jaxchat checkpoint folders


def save_jaxchat(params: dict, cfg: ModelConfig, stage: str, model_tag: str, step: int, *, meta: dict | None = None,
                 overwrite: bool = False) -> Path:
    """Save params as a jaxchat checkpoint under ``base_dir()/<stage>_checkpoints/<model_tag>/<step>`` so
    chat_cli/chat_web/chat_eval load it with ``--source=<stage> --model_tag=<model_tag>``."""
    import jax.numpy as jnp

    from jaxchat.checkpoint import Checkpoints, stage_dir

    check_params(params, cfg)
    d = stage_dir(stage, model_tag)
    ck = Checkpoints(d, keep=0, async_save=False)
    try:
        if ck.steps() and not overwrite:
            raise InteropError(f"{d} already holds checkpoints {ck.steps()}; pick another model tag or "
                               "overwrite (--force)")
        arrays = {"wte": jnp.asarray(params["wte"]), "lm_head": jnp.asarray(params["lm_head"]),
                  "blocks": {k: jnp.asarray(v) for k, v in params["blocks"].items()}}
        ck.save(int(step), params=arrays, meta=dict(meta or {}, model=dataclasses.asdict(cfg)))
    finally:
        ck.close()
    return d


def load_jaxchat(stage: str, model_tag: str | None = None, step: int | None = None) -> tuple[dict, ModelConfig, dict]:
    """A jaxchat checkpoint → (params as numpy, ModelConfig, meta) on one host."""
    from jaxchat.checkpoint import load_model

    params, cfg, meta = load_model(stage, model_tag, step)
    return _to_numpy(params), cfg, meta


def _to_numpy(params: dict) -> dict:
    return {"wte": _np(params["wte"]), "lm_head": _np(params["lm_head"]),
            "blocks": {k: _np(v) for k, v in params["blocks"].items()}}


# ----------------------------------------------------------------------------------------------------
# safetensors


def flatten_params(params: dict) -> dict[str, np.ndarray]:
    flat = {"wte": params["wte"], "lm_head": params["lm_head"]}
    flat.update({f"blocks.{k}": v for k, v in params["blocks"].items()})
    return {k: np.ascontiguousarray(_np(v)) for k, v in flat.items()}


def unflatten_params(flat: dict[str, np.ndarray]) -> dict:
    params: dict[str, Any] = {"blocks": {}}
    for k, v in flat.items():
        if k.startswith("blocks."):
            params["blocks"][k[len("blocks."):]] = v
        else:
            params[k] = v
    return params


def tokenizer_metadata(tokenizer) -> dict[str, str]:
    """String metadata that embeds a tokenizer (ours or nanochat's) in a safetensors header."""
    special = {name: int(tokenizer.encode_special(name)) for name in SPECIAL_TOKENS}
    if isinstance(tokenizer, NanochatTokenizer):
        enc = tokenizer.enc
        ranks = [[base64.b64encode(b).decode("ascii"), r] for b, r in enc._mergeable_ranks.items()]
        blob = json.dumps({"name": enc.name, "pat_str": enc._pat_str, "special_tokens": enc._special_tokens,
                           "mergeable_ranks": ranks})
        kind = "tiktoken"
    elif hasattr(tokenizer, "model_proto"):
        blob, kind = base64.b64encode(tokenizer.model_proto).decode("ascii"), "sentencepiece"
    else:
        raise InteropError(f"cannot embed a {type(tokenizer).__name__}; pass a jaxchat Tokenizer or NanochatTokenizer")
    return {"tokenizer_kind": kind, "tokenizer": blob, "special_tokens": json.dumps(special)}


def export_safetensors(params: dict, cfg: ModelConfig, path: str | Path, tokenizer=None) -> Path:
    """One .safetensors file: float32 tensors ``wte``, ``lm_head``, ``blocks.<name>`` (jaxchat layout) with
    metadata ``jaxchat_config`` / ``jaxchat_shape`` (JSON) and, optionally, the tokenizer (see module doc)."""
    st = _require("safetensors.numpy")
    check_params(params, cfg)
    meta = {"format": "np", "jaxchat_config": json.dumps(dataclasses.asdict(cfg)),
            "jaxchat_shape": json.dumps(shape_summary(cfg))}
    if tokenizer is not None:
        meta.update(tokenizer_metadata(tokenizer))
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    st.save_file(flatten_params(params), str(p), metadata=meta)
    return p


def safetensors_metadata(path: str | Path) -> dict[str, str]:
    safetensors = _require("safetensors")
    with safetensors.safe_open(str(path), framework="np") as f:
        return dict(f.metadata() or {})


def import_safetensors(path: str | Path) -> tuple[dict, ModelConfig]:
    """A file written by `export_safetensors` → (params as numpy arrays, ModelConfig)."""
    st = _require("safetensors.numpy")
    meta = safetensors_metadata(path)
    if "jaxchat_config" not in meta:
        raise InteropError(f"{path} has no jaxchat_config metadata (not exported by jaxchat)")
    cfg = config_from_dict(json.loads(meta["jaxchat_config"]))
    params = unflatten_params(st.load_file(str(path)))
    check_params(params, cfg)
    return params, cfg


def safetensors_tokenizer(path: str | Path):
    """The tokenizer embedded in an exported file (Tokenizer or NanochatTokenizer), or None."""
    meta = safetensors_metadata(path)
    kind = meta.get("tokenizer_kind")
    if kind is None:
        return None
    if kind == "sentencepiece":
        return Tokenizer(base64.b64decode(meta["tokenizer"]))
    if kind == "tiktoken":
        tiktoken = _require("tiktoken")
        d = json.loads(meta["tokenizer"])
        ranks = {base64.b64decode(b): int(r) for b, r in d["mergeable_ranks"]}
        return NanochatTokenizer(tiktoken.Encoding(d["name"], pat_str=d["pat_str"], mergeable_ranks=ranks,
                                                   special_tokens=d["special_tokens"]))
    raise InteropError(f"unknown tokenizer_kind {kind!r} in {path}")


# ----------------------------------------------------------------------------------------------------
# nanochat's tokenizer


class _EncodingUnpickler(pickle.Unpickler):
    """Only what a pickled tiktoken.Encoding needs; anything else in the file is refused."""

    ALLOWED = {("tiktoken.core", "Encoding"), ("copyreg", "_reconstructor"), ("builtins", "object"),
               ("_codecs", "encode")}

    def find_class(self, module, name):
        if (module, name) in self.ALLOWED:
            if module == "tiktoken.core":
                _require("tiktoken")
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name} from a tokenizer file")


class NanochatTokenizer:
    """nanochat's tiktoken tokenizer behind jaxchat's Tokenizer interface (the subset the engine, chat_cli,
    chat_web, evals and data rendering use): ``vocab_size``, ``bos_id``, ``special_ids``, ``encode``,
    ``decode``, ``encode_special``, ``token_bytes``, ``render_conversation``, ``render_for_completion``.
    Text is always encoded as ordinary text (special-token strings typed by a user stay plain text)."""

    def __init__(self, encoding):
        self.enc = encoding
        self.special_ids: dict[str, int] = {}
        for name in SPECIAL_TOKENS:
            try:
                self.special_ids[name] = int(encoding.encode_single_token(name))
            except KeyError:
                raise InteropError(f"not a nanochat tokenizer: special token {name!r} is missing") from None
        self.bos_id = self.special_ids["<|bos|>"]
        self._token_bytes: np.ndarray | None = None

    # --- construction
    @classmethod
    def from_file(cls, path: str | Path) -> "NanochatTokenizer":
        """Load ``tokenizer.pkl``: a pickled tiktoken.Encoding, or a pickled dict with mergeable_ranks,
        pat_str (or pattern) and special_tokens."""
        tiktoken = _require("tiktoken")
        obj = _EncodingUnpickler(io.BytesIO(Path(path).read_bytes())).load()
        if isinstance(obj, tiktoken.Encoding):
            return cls(obj)
        if isinstance(obj, dict) and "mergeable_ranks" in obj:
            pat = obj.get("pat_str", obj.get("pattern"))
            specials = obj.get("special_tokens") or {}
            if not specials:  # nanochat appends its specials after the merges
                n = len(obj["mergeable_ranks"])
                specials = {s: n + i for i, s in enumerate(SPECIAL_TOKENS)}
            return cls(tiktoken.Encoding(obj.get("name", "nanochat"), pat_str=pat,
                                         mergeable_ranks=obj["mergeable_ranks"], special_tokens=specials))
        raise InteropError(f"{path}: not a tiktoken Encoding or a mergeable-ranks dict ({type(obj).__name__})")

    @classmethod
    def from_directory(cls, directory: str | Path) -> "NanochatTokenizer":
        return cls.from_file(Path(directory) / NANOCHAT_TOKENIZER_FILENAME)

    def save(self, path: str | Path) -> Path:
        """Pickle the Encoding (nanochat's own format)."""
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(pickle.dumps(self.enc))
        return p

    # --- vocabulary
    @property
    def vocab_size(self) -> int:
        return int(self.enc.n_vocab)

    def __len__(self) -> int:
        return self.vocab_size

    encode_special = Tokenizer.encode_special  # same lookup and error over self.special_ids

    def token_bytes(self) -> np.ndarray:
        """int32 [vocab]: UTF-8 bytes per token, 0 for specials (nanochat's token_bytes)."""
        if self._token_bytes is None:
            special = {int(self.enc.encode_single_token(s)) for s in self.enc.special_tokens_set}
            out = np.zeros(self.vocab_size, np.int32)
            for i in range(self.vocab_size):
                if i in special:
                    continue
                try:
                    out[i] = len(self.enc.decode_single_token_bytes(i))
                except KeyError:  # a hole in the id space
                    pass
            self._token_bytes = out
        return self._token_bytes.copy()

    # --- encode / decode
    def _resolve(self, tok):
        if tok is None:
            return None
        return self.encode_special(tok) if isinstance(tok, str) else int(tok)

    def _encode_many(self, texts: list[str], num_threads: int | None) -> list[list[int]]:
        if len(texts) <= 8 or num_threads == 1:
            return [self.enc.encode_ordinary(t) for t in texts]
        return self.enc.encode_ordinary_batch(texts, num_threads=num_threads or 8)

    def encode(self, text, prepend=None, append=None, num_threads: int | None = None):
        pre, app = self._resolve(prepend), self._resolve(append)
        single = isinstance(text, str)
        if not single and not isinstance(text, (list, tuple)):
            raise TypeError(f"encode expects str or list of str, got {type(text).__name__}")
        out = self._encode_many([text] if single else list(text), None if single else num_threads)
        head = [pre] if pre is not None else []
        tail = [app] if app is not None else []
        out = [head + list(ids) + tail for ids in out]
        return out[0] if single else out

    def decode(self, ids) -> str:
        if hasattr(ids, "tolist"):
            ids = ids.tolist()
        return self.enc.decode([int(i) for i in ids])  # errors="replace" (half characters → U+FFFD)

    # --- chat rendering: jaxchat's own code (it reads only `special_ids` and `_encode_many`)
    render_conversation = Tokenizer.render_conversation
    render_for_completion = Tokenizer.render_for_completion


def install_nanochat_tokenizer(src: str | Path, directory: str | Path | None = None, *, force: bool = False) -> Path:
    """Copy nanochat's tokenizer.pkl (a file, or a folder holding it) into `directory` (default
    ``base_dir()/tokenizer``) with a marker file, so `load_any_tokenizer` picks it. Refuses to shadow an
    existing jaxchat ``tokenizer.model`` unless `force` (use a separate JAXCHAT_BASE_DIR instead)."""
    from jaxchat.tokenizer import default_tokenizer_dir

    src = Path(src)
    if src.is_dir():
        src = src / NANOCHAT_TOKENIZER_FILENAME
    tok = NanochatTokenizer.from_file(src)  # validate before copying
    d = Path(directory) if directory is not None else default_tokenizer_dir()
    if (d / TOKENIZER_FILENAME).exists() and not force:
        raise InteropError(f"{d} already holds a jaxchat tokenizer ({TOKENIZER_FILENAME}); point JAXCHAT_BASE_DIR at "
                           f"another folder for the nanochat model, or pass force")
    d.mkdir(parents=True, exist_ok=True)
    (d / NANOCHAT_TOKENIZER_FILENAME).write_bytes(src.read_bytes())
    np.save(d / "token_bytes.npy", tok.token_bytes())
    (d / NANOCHAT_TOKENIZER_MARKER).write_text(json.dumps(
        {"format": "nanochat-tiktoken", "file": NANOCHAT_TOKENIZER_FILENAME, "source": str(src.resolve()),
         "vocab_size": tok.vocab_size}, indent=2))
    return d


def load_any_tokenizer(directory: str | Path | None = None):
    """The tokenizer in `directory` (default ``base_dir()/tokenizer``): nanochat's when the marker written by
    `install_nanochat_tokenizer` is there, else jaxchat's ``tokenizer.model``, else nanochat's
    ``tokenizer.pkl``."""
    from jaxchat.tokenizer import default_tokenizer_dir

    d = Path(directory) if directory is not None else default_tokenizer_dir()
    if (d / NANOCHAT_TOKENIZER_MARKER).is_file() or (
            not (d / TOKENIZER_FILENAME).is_file() and (d / NANOCHAT_TOKENIZER_FILENAME).is_file()):
        return NanochatTokenizer.from_directory(d)
    if (d / TOKENIZER_FILENAME).is_file():
        return Tokenizer.from_file(d / TOKENIZER_FILENAME)
    raise FileNotFoundError(f"no tokenizer in {d}: expected {TOKENIZER_FILENAME} (jaxchat) or "
                            f"{NANOCHAT_TOKENIZER_FILENAME} (nanochat)")


__all__ = [
    "InteropError", "LAYER_KEYS", "NanochatTokenizer", "check_params", "config_from_nanochat", "export_safetensors",
    "find_nanochat_dir", "import_safetensors", "install_nanochat_tokenizer", "load_any_tokenizer", "load_jaxchat",
    "load_nanochat", "nanochat_model_config", "nanochat_steps", "params_to_state_dict", "safetensors_tokenizer",
    "save_jaxchat", "save_nanochat", "shape_summary", "state_dict_to_params",
]
