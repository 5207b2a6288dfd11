"""Configuration: frozen dataclasses, TOML presets in `configs/`, `--key=value` overrides on top.

A preset file (`configs/<name>.toml`) has one table per config section (`[model]`, `[mesh]`, `[base]`,
`[mid]`, `[sft]`, `[rl]`, `[eval]`, `[tokenizer]`, `[pipeline]`) and may start with `extends = "<other preset>"`.
A script asks for the sections it uses; every field of those sections becomes a CLI flag with nanochat's
key names (`--depth=20`, `--device_batch_size=16`, ...). An unknown key is an error naming the valid keys;
a value of the wrong type is an error naming the key and the expected type. `--section.key=value`
disambiguates a key that two of the script's sections share.
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import sys
import tomllib
import types
import typing
from dataclasses import dataclass
from pathlib import Path

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"


class ConfigError(ValueError):
    """A bad preset name, key or value. The message always says what would have been valid."""


def _choice(cfg, key: str, *options: str) -> None:
    if getattr(cfg, key) not in options:
        raise ConfigError(f"{key} must be {'|'.join(options)}, got {getattr(cfg, key)!r}")


# ----------------------------------------------------------------------------------------------------
# Sections


@dataclass(frozen=True)
class ModelConfig:
    """The GPT shape. Everything derives from `depth`, exactly as nanochat: width = 64·depth,
    head_dim 128, heads = ceil(width / 128), MLP 4× width."""

    depth: int = 4
    vocab_size: int = 8192
    max_seq_len: int = 512
    aspect_ratio: int = 64
    head_dim_target: int = 128
    n_kv_head: int = 0  # 0 = same as n_head (nanochat's default, GQA ratio 1:1)
    rope_theta: float = 10_000.0
    softcap: float = 15.0
    # nanochat master's architecture (all off = V1; `configs/master.toml` turns them on, as master has them)
    value_embeds: bool = False  # value embeddings on alternating layers (the last always), gated into v per head
    layer_lambdas: bool = False  # before each block x = resid_λ[i]·x + x0_λ[i]·x0 (x0: the normed embedding)
    smear: bool = False  # add a gated share of the previous token's embedding to each position
    backout: bool = False  # subtract backout_λ · (the residual after layer depth//2) before the final norm
    window_pattern: str = ""  # "" = full causal attention (V1); else S/L per layer, tiled, the last layer L
    qk_scale: float = 1.0  # q and k × this after QK-norm (master: 1.2)
    vocab_multiple: int = 1  # wte / lm_head rows padded to a multiple of this (master: 64); never predicted
    init: str = "v1"  # "v1" | "master" (uniform matrices, wte std 0.8, lm_head std 0.001, c_fc × 0.4)
    round_width: bool = False  # master: width = aspect_ratio·depth rounded up to head_dim_target (odd depths)
    # Numerics and implementation knobs (do not change the function the model computes).
    compute_dtype: str = "float32"  # "bfloat16" on GPU; params are always float32 (master weights)
    attn_impl: str = "xla"  # "xla" | "cudnn" | "auto" (cudnn on GPU, xla elsewhere)
    scan_layers: bool = False  # lax.scan over the stacked layers (O(1) compile time in depth)
    remat: str = "none"  # "none" | "full" | "dots" (save matmul outputs) | "minimal"
    loss_chunk: int = 0  # tokens per chunk for the fused lm_head+loss (0 = one chunk)

    def __post_init__(self):
        if self.depth < 1:
            raise ConfigError(f"depth must be >= 1, got {self.depth}")
        if self.n_kv_head and self.n_head % self.n_kv_head:
            raise ConfigError(f"n_kv_head={self.n_kv_head} must divide n_head={self.n_head}")
        _choice(self, "compute_dtype", "float32", "bfloat16", "float16")
        _choice(self, "attn_impl", "xla", "cudnn", "auto")
        _choice(self, "remat", "none", "full", "dots", "minimal")
        _choice(self, "init", "v1", "master")
        if set(self.window_pattern.upper()) - set("SL"):
            raise ConfigError(f"window_pattern takes S and L only (e.g. SSSL), got {self.window_pattern!r}")
        if self.scan_layers and (self.value_embeds or self.layer_lambdas or self.backout or self.window_pattern):
            raise ConfigError("scan_layers runs V1's uniform layers only: turn it off with value_embeds, "
                              "layer_lambdas, backout or window_pattern")

    @property
    def n_layer(self) -> int:
        return self.depth

    @property
    def n_embd(self) -> int:
        w = self.depth * self.aspect_ratio
        return -(-w // self.head_dim_target) * self.head_dim_target if self.round_width else w

    @property
    def n_head(self) -> int:
        return max(1, math.ceil(self.n_embd / self.head_dim_target))

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def kv_heads(self) -> int:
        return self.n_kv_head or self.n_head

    @property
    def mlp_dim(self) -> int:
        return 4 * self.n_embd

    @property
    def padded_vocab(self) -> int:
        return -(-self.vocab_size // self.vocab_multiple) * self.vocab_multiple

    @property
    def windows(self) -> tuple:
        """Each layer's attention window w (a query sees keys p-w..p) or None (full): master's S = T/4 rounded
        up to a multiple of 128, L = T (binds only past T, in decode); the last layer always L."""
        if not self.window_pattern:
            return (None,) * self.n_layer
        T = self.max_seq_len
        short = -(-T // 4 // 128) * 128
        pat = self.window_pattern.upper()
        return tuple(short if pat[i % len(pat)] == "S" and i < self.n_layer - 1 else T for i in range(self.n_layer))

    @property
    def ve_layers(self) -> tuple:
        """Layers with value embeddings: every other one, ending with the last."""
        L = self.n_layer
        return tuple(i for i in range(L) if self.value_embeds and i % 2 == (L - 1) % 2)


@dataclass(frozen=True)
class MeshConfig:
    """Device mesh. Axis sizes multiply to the device count; -1 means "all remaining devices".
    Default: every device on the FSDP axis (ZeRO-3 style), which is also data parallel for the batch."""

    data: int = 1
    fsdp: int = -1
    tensor: int = 1
    accelerator: bool = False  # a GPU/TPU preset: refuse to start on a CPU backend...
    allow_cpu: bool = False  # ...unless asked (a deliberate CPU dry run of a GPU preset)


@dataclass(frozen=True)
class TrainConfig:
    """Knobs of the shared training loop (jaxchat/train.py). Stage sections start from these defaults."""

    device_batch_size: int = 8  # rows per device per micro-step
    total_batch_size: int = -1  # tokens per optimizer step; -1 = one micro-step over all devices
    num_iterations: int = -1  # explicit horizon (wins over the two below)
    target_flops: float = -1.0
    target_param_data_ratio: float = 20.0  # Chinchilla: tokens = ratio x params
    matrix_lr: float = 0.02  # Muon
    embedding_lr: float = 0.2  # AdamW, x (width/768)^-0.5
    unembedding_lr: float = 0.004  # AdamW, x (width/768)^-0.5
    weight_decay: float = 0.0
    init_lr_frac: float = 1.0  # every LR x this (SFT 0.02, RL 0.05)
    warmup_ratio: float = 0.0
    warmdown_ratio: float = 0.2
    final_lr_frac: float = 0.0
    muon_momentum_start: float = 0.85
    muon_momentum_end: float = 0.95
    muon_momentum_warmup: int = 300
    # nanochat master's MuonAdamW (optimizer = "master"): Polar Express, NorMuon, cautious weight decay
    # (`weight_decay` is then Muon's, cosine to 0; the AdamW groups keep master's own), scalar params
    optimizer: str = "v1"  # "v1" | "master"
    scalar_lr: float = 0.5  # master: x0 λ at this LR, resid λ at 0.01× it
    warmup_steps: int = -1  # > 0: LR warmup over this many steps (master's 40), instead of warmup_ratio
    muon_momentum_warmdown: float = -1.0  # >= 0: momentum goes to this across the LR warmdown (master 0.90)
    grad_clip: float = 0.0  # 0 = off (nanochat V1's clip was a no-op in practice and was removed)
    eval_every: int = 250
    eval_tokens: int = 20 * 524_288
    sample_every: int = 2000
    save_every: int = -1  # -1 = only at the end
    keep_checkpoints: int = 2
    log_every: int = 1
    seed: int = 42
    resume: bool = False  # continue from the newest checkpoint in the stage's folder
    overwrite: bool = False  # without --resume: replace an earlier run's checkpoints (else: a clear error)
    run: str = "dummy"  # a Weights & Biases run name (nanochat's --run; the track extra); dummy: JSONL log only

    def __post_init__(self):
        _choice(self, "optimizer", "v1", "master")


@dataclass(frozen=True)
class BaseConfig(TrainConfig):
    source: str = "embedded"  # "embedded" | "fineweb" | "climbmix" | a path to your own .txt/.jsonl/.parquet files
    packing: str = "concat"  # "concat" (nanochat V1) | "bos_bestfit" (every row starts with BOS)
    model_tag: str = ""  # checkpoint folder name; default "d<depth>"
    core_metric_every: int = -1  # CORE every n steps and at the last step (> 0); -1 = never ([eval] core_bundle)
    core_max_per_task: int = 500  # CORE examples per task during training
    depth_dial: bool = False  # master's scaling from depth: batch, horizon (ratio × matrices + lm_head), LR, wd
    gpt2_core: float = 0.256525  # time to GPT-2: the CORE of GPT-2 1.6B (the report's threshold)


@dataclass(frozen=True)
class MidConfig(TrainConfig):
    source: str = "base"
    model_tag: str = ""
    online: bool = False  # use nanochat's real mixtures from the hub
    arithmetic_repeat: int = 1  # oversample the calculator-arithmetic task (offline mixture)
    eval_every: int = 150
    eval_tokens: int = 20 * 524_288
    warmdown_ratio: float = 0.2


@dataclass(frozen=True)
class SFTConfig(TrainConfig):
    source: str = "mid"
    model_tag: str = ""
    online: bool = False
    arithmetic_repeat: int = 1
    device_batch_size: int = 4
    target_examples_per_step: int = 32
    num_epochs: int = 1
    init_lr_frac: float = 0.02
    warmdown_ratio: float = 1.0  # linear decay from the first step to 0
    muon_momentum_start: float = 0.95
    eval_every: int = 100
    eval_steps: int = 100
    eval_metrics_every: int = 200
    eval_metrics_max_problems: int = 1024
    save_optimizer: bool = False
    mixture: str = "v1"  # "v1" | "master": SmolTalk + MMLU ×3 + GSM8K ×4 (offline: see jaxchat.tasks.sft_mixture)
    # nanochat master's SFT: the source run's LRs, batch (device_batch_size, total_batch_size; the command line may
    # override them) and optimizer state; conversations packed into rows of max_seq_len tokens (not one per row)
    inherit: bool = False

    def __post_init__(self):
        super().__post_init__()
        _choice(self, "mixture", "v1", "master")


@dataclass(frozen=True)
class RLConfig(TrainConfig):
    source: str = "sft"
    model_tag: str = ""
    task: str = "arithmetic"  # "arithmetic" (offline) | "gsm8k" (hub: GSM8K train)
    examples_per_step: int = 16
    num_samples: int = 16
    max_new_tokens: int = 256
    temperature: float = 1.0
    top_k: int = 50
    normalize_std: bool = False
    init_lr_frac: float = 0.05
    warmdown_ratio: float = 1.0
    muon_momentum_start: float = 0.95
    eval_every: int = 60
    eval_examples: int = 400
    save_every: int = 60


@dataclass(frozen=True)
class EvalConfig:
    max_per_task: int = -1  # CORE examples per task (-1 = all)
    core_bundle: str = "auto"  # CORE data (base_eval, base_train): "auto" | "download" (DCLM bundle) | "off"
    max_problems: int = -1  # chat_eval problems per task (-1 = all)
    max_problems_generative: int = -1  # for the sampled tasks (GSM8K, HumanEval, SpellingBee); -1 = max_problems
    arithmetic_problems: int = -1  # held-out calculator arithmetic problems; -1 = max_problems
    batch_size: int = 8
    num_samples: int = 1
    max_new_tokens: int = 512
    temperature: float = 0.0
    top_k: int = 50

    def __post_init__(self):
        _choice(self, "core_bundle", "auto", "download", "off")


@dataclass(frozen=True)
class TokenizerConfig:
    vocab_size: int = 8192
    max_chars: int = 20_000_000
    doc_cap: int = 10_000
    source: str = "embedded"
    digit_group: int = 2  # digits per number token: 2 = nanochat's \p{N}{1,2}, 1 = one token per digit


@dataclass(frozen=True)
class PipelineConfig:
    """Stages `run_all.sh` may leave out (read by scripts/pipeline.sh); midtraining runs when [sft] source = "mid"."""

    rl: bool = True  # chat RL and its chat evaluation (nanochat master keeps chat_rl.py; its speedrun skips it)


SECTIONS: dict[str, type] = {
    "model": ModelConfig,
    "mesh": MeshConfig,
    "train": TrainConfig,
    "base": BaseConfig,
    "mid": MidConfig,
    "sft": SFTConfig,
    "rl": RLConfig,
    "eval": EvalConfig,
    "tokenizer": TokenizerConfig,
    "pipeline": PipelineConfig,
}


# ----------------------------------------------------------------------------------------------------
# Loading


def available_presets() -> list[str]:
    return sorted(p.stem for p in CONFIG_DIR.glob("*.toml"))


def load_preset(name: str) -> dict[str, dict]:
    """Read `configs/<name>.toml` (following `extends`) into {section: {key: value}}."""
    path = Path(name) if name.endswith(".toml") else CONFIG_DIR / f"{name}.toml"
    if not path.exists():
        raise ConfigError(f"unknown preset {name!r}; available presets: {', '.join(available_presets())}")
    with open(path, "rb") as f:
        raw = tomllib.load(f)
    parent = raw.pop("extends", None)
    merged = load_preset(parent) if parent else {}
    for section, values in raw.items():
        if section not in SECTIONS:
            raise ConfigError(f"{path}: unknown section [{section}]; valid sections: {', '.join(SECTIONS)}")
        if not isinstance(values, dict):
            raise ConfigError(f"{path}: '{section}' must be a table ([{section}])")
        valid = {f.name for f in dataclasses.fields(SECTIONS[section])}
        for key in values:
            if key not in valid:
                raise ConfigError(
                    f"{path}: unknown key {key!r} in [{section}]; valid keys: {', '.join(sorted(valid))}"
                )
        merged.setdefault(section, {}).update(values)
    return merged


def _coerce(key: str, value, typ):
    """Convert a TOML or CLI value to the field's type, or raise a ConfigError naming key and type."""
    origin = typing.get_origin(typ)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(typ) if a is not type(None)]
        if value is None or (isinstance(value, str) and value.lower() == "none"):
            return None
        typ = args[0]
    tname = getattr(typ, "__name__", str(typ))
    try:
        if isinstance(value, bool) and typ is not bool:
            raise ValueError
        if typ is bool:
            if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on", "0", "false", "no", "off"):
                return value.lower() in ("1", "true", "yes", "on")
            if not isinstance(value, bool):
                raise ValueError
        elif typ is int:
            if isinstance(value, str) and "e" in value.lower():  # 1e6
                value = float(value)
            if isinstance(value, float) and value != int(value):
                raise ValueError
            return int(value)
        elif typ is float:
            return float(value)
        elif typ is str and not isinstance(value, str):
            raise ValueError
    except (TypeError, ValueError):
        raise ConfigError(f"--{key}: expected {tname}, got {value!r}") from None
    return value


def build(cls: type, values: dict, *, where: str = ""):
    """Instantiate a config dataclass from a dict, checking keys and types."""
    valid = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in values.items():
        if key not in valid:
            raise ConfigError(f"{where}unknown key {key!r}; valid keys: {', '.join(sorted(valid))}")
        kwargs[key] = _coerce(key, value, typing.get_type_hints(cls)[key])
    return cls(**kwargs)


def parse_overrides(argv: list[str]) -> tuple[str, dict[str, str], list[str]]:
    """Split argv into (preset, {key: value}, positional). Accepts --k=v, --k v, and bare --flag (= true)."""
    overrides, positional, i = {}, [], 0
    while i < len(argv):
        arg, i = argv[i], i + 1
        if not arg.startswith("--"):
            positional.append(arg)
            continue
        key, eq, value = arg[2:].partition("=")
        if not eq and i < len(argv) and not argv[i].startswith("--"):
            value, i = argv[i], i + 1
        elif not eq:
            value = "true"
        overrides[key.replace("-", "_")] = value
    return overrides.pop("preset", "tiny"), overrides, positional


def _fields(section: str) -> set[str]:
    return {f.name for f in dataclasses.fields(SECTIONS[section])}


def load(sections: list[str], argv: list[str] | None = None, *, extra: dict[str, object] | None = None):
    """The named sections from a preset plus CLI overrides, as a namespace with one attribute per section, plus
    `preset` and `extra` (script-only flags, declared by the caller as {name: default})."""
    preset, overrides, positional = parse_overrides(sys.argv[1:] if argv is None else argv)
    if positional:
        raise ConfigError(f"unexpected argument(s) {positional}; use --key=value")
    data = load_preset(preset)
    per_section = {s: dict(data.get(s, {})) for s in sections}
    extra = dict(extra or {})
    extras_out = dict(extra)
    valid = sorted({"preset", *extra}.union(*(_fields(s) for s in sections)))
    for key, value in overrides.items():
        section, dot, sub = key.partition(".")
        if dot:
            if section not in sections or sub not in _fields(section):
                raise ConfigError(f"unknown key --{key}; valid keys: {', '.join(valid)}")
            per_section[section][sub] = value
        elif key in extra:
            extras_out[key] = _coerce(key, value, type(extra[key])) if extra[key] is not None else value
        elif owners := [s for s in sections if key in _fields(s)]:
            for s in owners:  # a key two sections share (e.g. [sft] and [train]) goes to both
                per_section[s][key] = value
        else:
            hint = difflib.get_close_matches(key, valid, n=1)
            raise ConfigError(f"unknown key --{key}" + (f" (did you mean --{hint[0]}?)" if hint else "")
                              + f"; valid keys: {', '.join(valid)}")
    out = types.SimpleNamespace(preset=preset, extra=types.SimpleNamespace(**extras_out))
    for s in sections:
        setattr(out, s, build(SECTIONS[s], per_section[s], where=f"[{s}] "))
    return out
