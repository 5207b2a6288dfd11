"""Interop: nanochat PyTorch checkpoints (V1, and master's architecture: its meta has a window_pattern; the switches
follow the checkpoint's keys) and tiktoken tokenizers, and self-contained safetensors files (torch, tiktoken and
safetensors, the `interop` extra, are imported only when needed). Since Dec 2025 nanochat pads the vocab rows of
wte / lm_head to a multiple of 64 (never used): a V1 import drops them, a master import keeps them (vocab_multiple
64), the export pads with zeros. nanochat V1 rounds its rotary tables to bfloat16, jaxchat keeps float32: logits
agree to ~5e-4 relative (~1e-6 in float32).
"""
from __future__ import annotations

import base64
import contextlib
import dataclasses
import importlib
import io
import json
import pickle
import re
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jaxchat import config as C
from jaxchat import model as gpt
from jaxchat.checkpoint import Checkpoints, load_model, stage_dir
from jaxchat.config import ConfigError, ModelConfig
from jaxchat.tokenizer import SPECIAL_TOKENS, TOKENIZER_FILENAME, Tokenizer, default_tokenizer_dir

NANOCHAT_TOKENIZER_FILENAME = "tokenizer.pkl"
NANOCHAT_TOKENIZER_MARKER = "nanochat_tokenizer.json"  # written next to a copied tokenizer.pkl
# jaxchat blocks.<name> [layer, in, out]  ←→  nanochat transformer.h.{i}.<key> [out, in]
LAYER_KEYS = {"wq": "attn.c_q.weight", "wk": "attn.c_k.weight", "wv": "attn.c_v.weight", "wo": "attn.c_proj.weight",
              "w_fc": "mlp.c_fc.weight", "w_proj": "mlp.c_proj.weight"}
# nanochat master's architecture: the switches of configs/master.toml that a checkpoint's keys do not show
MASTER_CONSTANTS = ("qk_scale", "rope_theta", "vocab_multiple")


def master_keys(cfg: ModelConfig) -> dict:
    """jaxchat's extra params → the nanochat master key (or keys, stacked) each comes from. Linear weights
    ("…gate.weight", [out, in]) are transposed; embeddings and raw parameters are not."""
    keys = {}
    if cfg.ve_layers:
        keys["value_embeds"] = [f"value_embeds.{i}.weight" for i in cfg.ve_layers]
        keys["ve_gate"] = [f"transformer.h.{i}.attn.ve_gate.weight" for i in cfg.ve_layers]
    if cfg.layer_lambdas:
        keys.update(resid_lambdas="resid_lambdas", x0_lambdas="x0_lambdas")
    if cfg.smear:
        keys.update(smear_gate="smear_gate.weight", smear_lambda="smear_lambda")
    if cfg.backout:
        keys["backout_lambda"] = "backout_lambda"
    return keys


def _torch_layout(key: str, w):  # jaxchat [in, out] ↔ torch Linear [out, in] (its own inverse)
    return np.ascontiguousarray(w.T) if key.endswith("gate.weight") else w


class InteropError(ValueError):
    """A checkpoint/tokenizer that cannot be converted; the message says why and what would work."""


def _require(module: str):  # an optional dependency (the interop extra): imported here, with how to install it
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ImportError(f"{module} is needed for nanochat/safetensors interop: pip install -e '.[interop]'  "
                          "(torch==2.13.0, tiktoken==0.14.0, safetensors==0.8.0)") from e


def _master_arch(window_pattern: str) -> dict:
    m = C.load_preset("master")["model"]
    return {k: m[k] for k in ("value_embeds", "layer_lambdas", "smear", "backout", "init", "round_width", *MASTER_CONSTANTS)} | {
        "window_pattern": window_pattern}


def nanochat_model_config(cfg: ModelConfig) -> dict:
    """jaxchat ModelConfig → nanochat's GPTConfig kwargs (V1's six fields; master's add window_pattern). A mix of
    the two architectures has no nanochat layout: an error says which switches differ from master's."""
    mc = {"sequence_len": cfg.max_seq_len, "vocab_size": cfg.vocab_size, "n_layer": cfg.n_layer,
          "n_head": cfg.n_head, "n_kv_head": cfg.kv_heads, "n_embd": cfg.n_embd}
    master = _master_arch(cfg.window_pattern or "L")
    free = ("init", "round_width")  # how the weights were drawn and the width derived: no layout of their own
    v1 = {k: f.default for f in dataclasses.fields(ModelConfig) if (k := f.name) in master and k not in free}
    if all(getattr(cfg, k) == v for k, v in v1.items()):
        return mc
    if diff := [f"{k}={getattr(cfg, k)!r} (master: {v!r})" for k, v in master.items()
                if k not in free and getattr(cfg, k) != v]:
        raise InteropError(f"no nanochat layout for this mix of V1 and master switches: {', '.join(diff)}")
    return {**mc, "window_pattern": cfg.window_pattern}


def config_from_nanochat(mc: dict, sd_keys=()) -> ModelConfig:
    """nanochat model_config → a depth-derived ModelConfig of exactly that shape (nanochat's defaults first);
    with a window_pattern (master) the switches follow the state dict's keys."""
    fields = ("n_layer", "n_embd", "n_head", "vocab_size", "sequence_len")
    if missing := [k for k in fields if k not in mc]:
        raise InteropError(f"nanochat model_config lacks {missing}: {mc}")
    L, D, H, V, T = (int(mc[k]) for k in fields)
    K = int(mc.get("n_kv_head") or H)
    if D % L:
        raise InteropError(f"n_embd={D} is not a multiple of n_layer={L}: jaxchat derives the width as "
                           f"aspect_ratio·depth, so this shape cannot be expressed")
    arch = {}
    if "window_pattern" in mc:
        arch = _master_arch(mc["window_pattern"] or "L")
        for switch, key in (("value_embeds", "value_embeds."), ("layer_lambdas", "resid_lambdas"),
                            ("smear", "smear_gate"), ("backout", "backout_lambda")):
            arch[switch] = any(k.removeprefix("_orig_mod.").startswith(key) for k in sd_keys)
    for ar, hdt in [(64, 128), (D // L, 128), (64, D // H), (D // L, D // H)]:
        try:
            cfg = ModelConfig(depth=L, vocab_size=V, max_seq_len=T, aspect_ratio=ar, head_dim_target=hdt,
                              n_kv_head=0 if K == H else K, **arch)
        except ConfigError:  # e.g. n_kv_head does not divide this candidate's head count
            continue
        if (cfg.n_layer, cfg.n_embd, cfg.n_head, cfg.head_dim, cfg.kv_heads) == (L, D, H, D // H, K):
            return cfg
    raise InteropError(f"no depth-derived jaxchat config reproduces {mc}")


def check_params(params: dict, cfg: ModelConfig) -> None:
    want, got = (jax.tree.map(lambda x: tuple(np.shape(x)), tree) for tree in (gpt.param_shapes(cfg), params))
    if got != want:
        raise InteropError(f"params do not match the config: expected {want}, got {got}")


def state_dict_to_params(sd: dict[str, np.ndarray], cfg: ModelConfig) -> dict:
    """nanochat state dict (numpy; torch.compile's `_orig_mod.` prefixes allowed) → jaxchat params (numpy
    float32). Rotary cos/sin buffers are ignored; any other unknown key (another architecture) is an error."""
    sd = {k.removeprefix("_orig_mod."): v for k, v in sd.items()}
    extra = master_keys(cfg)
    keys = ["transformer.wte.weight", "lm_head.weight",
            *(f"transformer.h.{i}.{key}" for i in range(cfg.n_layer) for key in LAYER_KEYS.values()),
            *(k for ks in extra.values() for k in ([ks] if isinstance(ks, str) else ks))]
    if missing := [k for k in keys if k not in sd]:
        raise InteropError(f"state dict lacks {missing[:4]} (has {sorted(sd)[:8]}...)")
    if unknown := [k for k in sd if k not in keys and not k.endswith(("cos", "sin"))]:
        raise InteropError(f"unexpected state-dict keys (not nanochat V1's or master's architecture?): {unknown[:10]}")
    w = {k: _torch_layout(k, np.asarray(sd[k], np.float32)) for k in keys}
    V = cfg.padded_vocab  # V1: nanochat's padding rows (never used) are dropped; check_params catches too few
    params = {"wte": np.ascontiguousarray(w["transformer.wte.weight"][:V]),
              "lm_head": np.ascontiguousarray(w["lm_head.weight"][:V].T),
              "blocks": {name: np.stack([w[f"transformer.h.{i}.{key}"].T for i in range(cfg.n_layer)])
                         for name, key in LAYER_KEYS.items()},
              **{name: w[ks] if isinstance(ks, str) else np.stack([w[k][:V] for k in ks])
                 for name, ks in extra.items()}}
    check_params(params, cfg)
    return params


def params_to_state_dict(params: dict, cfg: ModelConfig, *, pad_vocab_to: int = 64) -> dict[str, np.ndarray]:
    """jaxchat params → nanochat state dict (numpy float32, [out, in], vocab rows zero-padded to a multiple
    of `pad_vocab_to`: 64 for nanochat V1, 1 for pre-Dec-2025 nanochat)."""
    check_params(params, cfg)
    nanochat_model_config(cfg)  # a mix of V1 and master switches has no nanochat layout: say so
    rows = -cfg.padded_vocab % max(1, pad_vocab_to)  # zero rows up to a multiple of pad_vocab_to
    pad = lambda w_VxD: np.pad(np.asarray(w_VxD, np.float32), ((0, rows), (0, 0)))  # noqa: E731
    blocks = jax.tree.map(np.asarray, params["blocks"])
    sd = {"transformer.wte.weight": pad(params["wte"]),
          **{f"transformer.h.{i}.{key}": np.ascontiguousarray(blocks[name][i].T, np.float32)
             for i in range(cfg.n_layer) for name, key in LAYER_KEYS.items()},
          "lm_head.weight": pad(np.asarray(params["lm_head"]).T)}
    for name, ks in master_keys(cfg).items():
        w = np.asarray(params[name], np.float32)
        sd.update({ks: _torch_layout(ks, w)} if isinstance(ks, str) else
                  {k: _torch_layout(k, pad(x) if name == "value_embeds" else x) for k, x in zip(ks, w)})
    return sd


# ----------------------------------------------------------------------------------------------------
# checkpoint folders: nanochat's (model_{step:06d}.pt, torch.save of the state dict, + meta_{step:06d}.json), ours


def nanochat_steps(directory: str | Path) -> list[int]:
    matches = (re.match(r"^model_(\d+)\.pt$", p.name) for p in Path(directory).glob("model_*.pt"))
    return sorted(int(m[1]) for m in matches if m)


def find_nanochat_dir(path: str | Path) -> Path:
    """A folder holding model_*.pt, or a stage folder of tags (→ the largest ``d<N>``, then the newest)."""
    p = Path(path).expanduser()
    if not p.is_dir():
        raise InteropError(f"no nanochat checkpoint folder at {p}")
    if nanochat_steps(p):
        return p
    if not (tags := [t for t in p.iterdir() if t.is_dir() and nanochat_steps(t)]):
        raise InteropError(f"{p} has no model_XXXXXX.pt files (nor model-tag folders holding them)")
    depth = lambda t: int(m[1]) if (m := re.match(r"^d(\d+)$", t.name)) else -1  # noqa: E731
    return max(tags, key=lambda t: (depth(t), t.stat().st_mtime))


def load_nanochat(path: str | Path, step: int | None = None) -> tuple[dict, ModelConfig, dict]:
    """A nanochat checkpoint (latest step unless `step`) → (numpy params, ModelConfig, meta). A meta written by
    `save_nanochat` gives back its jaxchat config (when the shape agrees): the round trip keeps the config."""
    d = find_nanochat_dir(path)
    steps = nanochat_steps(d)
    step = steps[-1] if step is None else int(step)
    if step not in steps:
        raise InteropError(f"{d} has no step {step}; steps: {steps}")
    meta_path = d / f"meta_{step:06d}.json"
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    if "model_config" not in meta:
        raise InteropError(f"{meta_path} is missing or has no model_config (nanochat writes model_ and meta_ files "
                           "together)")
    torch = _require("torch")
    sd = torch.load(str(d / f"model_{step:06d}.pt"), map_location="cpu", weights_only=True)
    sd = {k: v.detach().to(torch.float32).numpy() for k, v in sd.items()}  # bf16 (nanochat on CUDA) upcast exactly
    cfg = config_from_nanochat(meta["model_config"], sd)
    with contextlib.suppress(Exception):  # no jaxchat block, or a foreign or stale one: the nanochat fields rule
        mine = C.build(ModelConfig, meta["jaxchat"]["model"])
        cfg = mine if nanochat_model_config(mine) == nanochat_model_config(cfg) and (
            master_keys(mine) == master_keys(cfg)) else cfg
    return state_dict_to_params(sd, cfg), cfg, dict(meta, step=meta.get("step", step))


def save_nanochat(params: dict, cfg: ModelConfig, directory: str | Path, step: int, *, meta: dict | None = None,
                  pad_vocab_to: int = 64) -> tuple[Path, Path]:
    """Write model_{step:06d}.pt + meta_{step:06d}.json, loadable by nanochat V1 (strict=True)."""
    torch = _require("torch")
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    mp, jp = d / f"model_{step:06d}.pt", d / f"meta_{step:06d}.json"
    sd = params_to_state_dict(params, cfg, pad_vocab_to=pad_vocab_to)
    torch.save({k: torch.from_numpy(v) for k, v in sd.items()}, str(mp))
    jp.write_text(json.dumps({"step": int(step), "model_config": nanochat_model_config(cfg), "user_config": {},
                              "jaxchat": {"model": dataclasses.asdict(cfg), "pad_vocab_to": pad_vocab_to},
                              **(meta or {})}, indent=2))
    return mp, jp


def save_jaxchat(params: dict, cfg: ModelConfig, stage: str, model_tag: str, step: int, *, meta: dict | None = None,
                 overwrite: bool = False) -> Path:
    """Save params as the jaxchat checkpoint that ``--source=<stage> --model_tag=<model_tag>`` loads."""
    check_params(params, cfg)
    d = stage_dir(stage, model_tag)
    with contextlib.closing(Checkpoints(d, keep=0, async_save=False)) as ck:
        if ck.steps() and not overwrite:
            raise InteropError(f"{d} already holds checkpoints {ck.steps()}; pick another model tag or "
                               "overwrite (--force)")
        ck.delete_after(-1)  # --force replaces the tag's old steps (orbax refuses to write over a step)
        ck.save(int(step), params=jax.tree.map(jnp.asarray, params),
                meta=dict(meta or {}, model=dataclasses.asdict(cfg)))
    return d


def load_jaxchat(stage: str, model_tag: str | None = None, step: int | None = None) -> tuple[dict, ModelConfig, dict]:
    """A jaxchat checkpoint → (params as numpy, ModelConfig, meta) on one host."""
    params, cfg, meta = load_model(stage, model_tag, step)
    return jax.tree.map(np.asarray, params), cfg, meta


# ----------------------------------------------------------------------------------------------------
# safetensors: tensors wte, lm_head, blocks.<name> (+ master's extras), jaxchat's layout, and metadata jaxchat_config,
# jaxchat_shape and (optionally) tokenizer_kind, tokenizer, special_tokens: self-contained, its tensors are the params


def export_safetensors(params: dict, cfg: ModelConfig, path: str | Path, tokenizer=None) -> Path:
    """One self-contained .safetensors file (see above) that ``scripts/run_numpy.py`` runs with NumPy alone."""
    st = _require("safetensors.numpy")
    check_params(params, cfg)
    shape = {"n_layer": cfg.n_layer, "n_embd": cfg.n_embd, "n_head": cfg.n_head, "n_kv_head": cfg.kv_heads,
             "head_dim": cfg.head_dim, "mlp_dim": cfg.mlp_dim, "vocab_size": cfg.vocab_size,
             "max_seq_len": cfg.max_seq_len, "rope_theta": cfg.rope_theta, "softcap": cfg.softcap,
             "rms_eps": float(np.finfo(np.float32).eps)}
    meta = {"format": "np", "jaxchat_config": json.dumps(dataclasses.asdict(cfg)), "jaxchat_shape": json.dumps(shape)}
    if isinstance(tokenizer, NanochatTokenizer):  # tiktoken's ranks as JSON
        enc = tokenizer.enc
        ranks = [[base64.b64encode(b).decode("ascii"), r] for b, r in enc._mergeable_ranks.items()]
        blob = dict(name=enc.name, pat_str=enc._pat_str, special_tokens=enc._special_tokens, mergeable_ranks=ranks)
        meta.update(tokenizer_kind="tiktoken", tokenizer=json.dumps(blob))
    elif tokenizer:  # the sentencepiece proto
        meta.update(tokenizer_kind="sentencepiece", tokenizer=base64.b64encode(tokenizer.model_proto).decode("ascii"))
    if tokenizer:
        meta["special_tokens"] = json.dumps({name: int(tokenizer.encode_special(name)) for name in SPECIAL_TOKENS})
    flat = {**{k: v for k, v in params.items() if k != "blocks"},
            **{f"blocks.{k}": v for k, v in params["blocks"].items()}}
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    st.save_file({k: np.ascontiguousarray(np.asarray(v)) for k, v in flat.items()}, str(p), metadata=meta)
    return p


def safetensors_metadata(path: str | Path) -> dict[str, str]:
    with _require("safetensors").safe_open(str(path), framework="np") as f:
        return dict(f.metadata() or {})


def import_safetensors(path: str | Path) -> tuple[dict, ModelConfig]:
    """A file written by `export_safetensors` → (params as numpy arrays, ModelConfig)."""
    meta = safetensors_metadata(path)
    if "jaxchat_config" not in meta:
        raise InteropError(f"{path} has no jaxchat_config metadata (not exported by jaxchat)")
    cfg = C.build(ModelConfig, json.loads(meta["jaxchat_config"]), where="jaxchat_config: ")
    flat = _require("safetensors.numpy").load_file(str(path))
    params = {k: v for k, v in flat.items() if not k.startswith("blocks.")}
    params["blocks"] = {k.removeprefix("blocks."): v for k, v in flat.items() if k.startswith("blocks.")}
    check_params(params, cfg)
    return params, cfg


def safetensors_tokenizer(path: str | Path):
    """The tokenizer embedded in an exported file (Tokenizer or NanochatTokenizer), or None."""
    meta = safetensors_metadata(path)
    kind = meta.get("tokenizer_kind")
    if kind == "sentencepiece":
        return Tokenizer(base64.b64decode(meta["tokenizer"]))
    if kind == "tiktoken":
        d = json.loads(meta["tokenizer"])
        ranks = {base64.b64decode(b): int(r) for b, r in d["mergeable_ranks"]}
        return NanochatTokenizer(_require("tiktoken").Encoding(d["name"], pat_str=d["pat_str"], mergeable_ranks=ranks,
                                                               special_tokens=d["special_tokens"]))
    if kind is not None:
        raise InteropError(f"unknown tokenizer_kind {kind!r} in {path}")


# ----------------------------------------------------------------------------------------------------
# nanochat's tokenizer: tokenizer/tokenizer.pkl, a pickled tiktoken.Encoding (ranks, split pattern, 9 specials)


class _EncodingUnpickler(pickle.Unpickler):
    """Only what a pickled tiktoken.Encoding needs: a tokenizer file cannot run arbitrary code."""

    ALLOWED = {("tiktoken.core", "Encoding"), ("copyreg", "_reconstructor"), ("builtins", "object"),
               ("_codecs", "encode")}

    def find_class(self, module, name):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name} from a tokenizer file")
        return super().find_class(module, name)


class NanochatTokenizer:
    """nanochat's tiktoken tokenizer behind the part of jaxchat's Tokenizer interface that the engine, chat_cli,
    chat_web, evals and data rendering use. Text is always ordinary text (typed special-token strings stay text)."""

    def __init__(self, encoding):
        self.enc = encoding
        if missing := [s for s in SPECIAL_TOKENS if s not in encoding.special_tokens_set]:
            raise InteropError(f"not a nanochat tokenizer: special tokens {missing} are missing")
        self.special_ids = {s: int(encoding.encode_single_token(s)) for s in SPECIAL_TOKENS}
        self.bos_id, self.vocab_size = self.special_ids["<|bos|>"], int(encoding.n_vocab)
        self._token_bytes = np.zeros(self.vocab_size, np.int32)  # UTF-8 bytes per token, 0 for specials and holes
        for i in set(range(self.vocab_size)) - {encoding.encode_single_token(s) for s in encoding.special_tokens_set}:
            with contextlib.suppress(KeyError):  # a hole in the id space
                self._token_bytes[i] = len(encoding.decode_single_token_bytes(i))

    @classmethod
    def from_file(cls, path: str | Path) -> "NanochatTokenizer":
        """A pickled tiktoken.Encoding, or a pickled dict of mergeable_ranks, pat_str / pattern, special_tokens."""
        tiktoken = _require("tiktoken")
        obj = _EncodingUnpickler(io.BytesIO(Path(path).read_bytes())).load()
        if isinstance(obj, tiktoken.Encoding):
            return cls(obj)
        if isinstance(obj, dict) and "mergeable_ranks" in obj:
            n = len(obj["mergeable_ranks"])  # nanochat's specials follow the merges
            specials = obj.get("special_tokens") or {s: n + i for i, s in enumerate(SPECIAL_TOKENS)}
            return cls(tiktoken.Encoding(obj.get("name", "nanochat"), pat_str=obj.get("pat_str", obj.get("pattern")),
                                         mergeable_ranks=obj["mergeable_ranks"], special_tokens=specials))
        raise InteropError(f"{path}: not a tiktoken Encoding or a mergeable-ranks dict ({type(obj).__name__})")

    def _encode_many(self, texts: list[str], num_threads: int | None) -> list[list[int]]:
        if len(texts) <= 8 or num_threads == 1:
            return [self.enc.encode_ordinary(t) for t in texts]
        return self.enc.encode_ordinary_batch(texts, num_threads=num_threads or 8)

    def decode(self, ids) -> str:
        return self.enc.decode([int(i) for i in (ids.tolist() if hasattr(ids, "tolist") else ids)])

    # jaxchat's own code: it reads only `special_ids`, `vocab_size`, `_token_bytes` and `_encode_many`
    token_bytes, encode, _resolve = Tokenizer.token_bytes, Tokenizer.encode, Tokenizer._resolve
    encode_special = Tokenizer.encode_special
    render_conversation, render_for_completion = Tokenizer.render_conversation, Tokenizer.render_for_completion


def install_nanochat_tokenizer(src: str | Path, directory: str | Path | None = None, *, force: bool = False) -> Path:
    """Copy nanochat's tokenizer.pkl (a file, or its folder) into `directory` (default base_dir()/tokenizer) with
    a marker file, so `load_any_tokenizer` picks it; never over a jaxchat tokenizer.model unless `force`."""
    src = Path(src) / NANOCHAT_TOKENIZER_FILENAME if Path(src).is_dir() else Path(src)
    tok = NanochatTokenizer.from_file(src)  # validate before copying
    d = Path(directory) if directory is not None else default_tokenizer_dir()
    if (d / TOKENIZER_FILENAME).exists() and not force:
        raise InteropError(f"{d} already holds a jaxchat tokenizer ({TOKENIZER_FILENAME}); point JAXCHAT_BASE_DIR at "
                           f"another folder for the nanochat model, or pass force")
    d.mkdir(parents=True, exist_ok=True)
    (d / NANOCHAT_TOKENIZER_FILENAME).write_bytes(src.read_bytes())
    np.save(d / "token_bytes.npy", tok.token_bytes())
    marker = {"format": "nanochat-tiktoken", "file": NANOCHAT_TOKENIZER_FILENAME, "source": str(src.resolve()),
              "vocab_size": tok.vocab_size}
    (d / NANOCHAT_TOKENIZER_MARKER).write_text(json.dumps(marker, indent=2))
    return d


def load_any_tokenizer(directory: str | Path | None = None):
    """The tokenizer in `directory` (default base_dir()/tokenizer): nanochat's if installed (the marker), else
    jaxchat's tokenizer.model, else nanochat's tokenizer.pkl."""
    d = Path(directory) if directory is not None else default_tokenizer_dir()
    ours, theirs = d / TOKENIZER_FILENAME, d / NANOCHAT_TOKENIZER_FILENAME
    if (d / NANOCHAT_TOKENIZER_MARKER).is_file() or (theirs.is_file() and not ours.is_file()):
        return NanochatTokenizer.from_file(theirs)
    if ours.is_file():
        return Tokenizer.from_file(ours)
    raise FileNotFoundError(f"no tokenizer in {d}: expected {TOKENIZER_FILENAME} (jaxchat) or "
                            f"{NANOCHAT_TOKENIZER_FILENAME} (nanochat)")
