"""Convert models between nanochat (PyTorch), jaxchat checkpoints and safetensors (needs `pip install -e '.[interop]'`).

    # a nanochat checkpoint folder (latest step unless --step) → a jaxchat checkpoint chat_cli can load
    python -m scripts.convert from-nanochat ~/.cache/nanochat/chatsft_checkpoints/d20 --stage=sft --model_tag=d20 \\
        --tokenizer ~/.cache/nanochat/tokenizer        # also install nanochat's tokenizer.pkl (see below)
    JAXCHAT_BASE_DIR=... python -m scripts.chat_cli --source=sft --model_tag=d20

    # a jaxchat checkpoint → nanochat's layout (model_XXXXXX.pt + meta_XXXXXX.json)
    python -m scripts.convert to-nanochat --source=sft --model_tag=d4 --out /tmp/nanochat/chatsft_checkpoints/d4

    # a jaxchat checkpoint → one .safetensors file (tokenizer embedded) → run it with NumPy alone
    python -m scripts.convert to-safetensors --source=sft --out d4.safetensors
    python scripts/run_numpy.py d4.safetensors -p "hi" --max_tokens 64 --temperature 0

    # a .safetensors file (or a nanochat folder, --safetensors on from-nanochat) → a jaxchat checkpoint
    python -m scripts.convert from-safetensors d4.safetensors --stage=sft --model_tag=d4copy

Checkpoints go to ``$JAXCHAT_BASE_DIR/<stage>_checkpoints/<model_tag>/<step>`` (nanochat's stage folders).
A nanochat model also needs nanochat's tokenizer: ``--tokenizer`` copies ``tokenizer.pkl`` into
``$JAXCHAT_BASE_DIR/tokenizer/`` with a marker file (refused if a jaxchat ``tokenizer.model`` is already there:
use a separate JAXCHAT_BASE_DIR for nanochat models).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from jaxchat import interop


def _from_nanochat(a) -> int:
    params, cfg, meta = interop.load_nanochat(a.path, a.step)
    src = interop.find_nanochat_dir(a.path)
    step = int(meta["step"])
    tag = a.model_tag or src.name
    print(f"nanochat {src} step {step}: depth {cfg.depth}, width {cfg.n_embd}, heads {cfg.n_head}/{cfg.kv_heads} "
          f"(head_dim {cfg.head_dim}), vocab {cfg.vocab_size}, seq {cfg.max_seq_len}")
    if a.tokenizer:
        interop.NanochatTokenizer.from_file(_pkl(a.tokenizer))  # fail before writing anything
    out = interop.save_jaxchat(params, cfg, a.stage, tag, step, overwrite=a.force,
                               meta={"converted_from": {"format": "nanochat", "path": str(src), "step": step},
                                     "tokenizer": "nanochat" if a.tokenizer else None,
                                     "nanochat_meta": {k: v for k, v in meta.items() if k != "model_config"}})
    print(f"saved jaxchat checkpoint {out}/{step}  (load with --source={a.stage} --model_tag={tag})")
    if a.tokenizer:
        print(f"nanochat tokenizer installed in {interop.install_nanochat_tokenizer(a.tokenizer, force=a.force)}")
    else:
        guess = src.parent.parent / "tokenizer" / interop.NANOCHAT_TOKENIZER_FILENAME
        if guess.is_file():
            print(f"note: this model's tokenizer is probably {guess}; pass --tokenizer {guess.parent} to install it")
    if a.safetensors:
        try:
            tok = interop.load_any_tokenizer()
        except FileNotFoundError:
            tok = None
        if tok is not None and tok.vocab_size != cfg.vocab_size:
            print(f"warning: the installed tokenizer has {tok.vocab_size} tokens, the model {cfg.vocab_size}; "
                  "not embedding it")
            tok = None
        print(f"wrote {interop.export_safetensors(params, cfg, a.safetensors, tokenizer=tok)}")
    return 0


def _pkl(path) -> Path:
    p = Path(path)
    return p / interop.NANOCHAT_TOKENIZER_FILENAME if p.is_dir() else p


def _load_source(a):
    params, cfg, meta = interop.load_jaxchat(a.source, a.model_tag or None, a.step)
    return params, cfg, int(meta.get("step", a.step or 0))


def _to_nanochat(a) -> int:
    params, cfg, step = _load_source(a)
    mp, jp = interop.save_nanochat(params, cfg, a.out, step, pad_vocab_to=a.pad_vocab_to)
    print(f"wrote {mp} and {jp}")
    return 0


def _to_safetensors(a) -> int:
    params, cfg, _ = _load_source(a)
    tok = None
    if not a.no_tokenizer:
        try:
            tok = interop.load_any_tokenizer(a.tokenizer)
        except FileNotFoundError as e:
            print(f"warning: {e}; exporting without a tokenizer (run_numpy will need --ids or --tokenizer)")
    print(f"wrote {interop.export_safetensors(params, cfg, a.out, tokenizer=tok)}")
    return 0


def _from_safetensors(a) -> int:
    params, cfg = interop.import_safetensors(a.path)
    tag = a.model_tag or Path(a.path).stem
    out = interop.save_jaxchat(params, cfg, a.stage, tag, a.step, overwrite=a.force,
                               meta={"converted_from": {"format": "safetensors", "path": str(a.path)}})
    print(f"saved jaxchat checkpoint {out}/{a.step}  (load with --source={a.stage} --model_tag={tag})")
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    sub = ap.add_subparsers(dest="cmd", required=True)
    stages = ["base", "mid", "sft", "rl"]

    p = sub.add_parser("from-nanochat", help="nanochat checkpoint folder → jaxchat checkpoint")
    p.add_argument("path", help="folder with model_XXXXXX.pt/meta_XXXXXX.json (or a stage folder of tags)")
    p.add_argument("--step", type=int, default=None, help="default: the latest")
    p.add_argument("--stage", choices=stages, default="sft")
    p.add_argument("--model_tag", default="", help="default: the nanochat folder's name (e.g. d20)")
    p.add_argument("--tokenizer", default="", help="nanochat tokenizer.pkl (or its folder) to install")
    p.add_argument("--safetensors", default="", help="also write this .safetensors file")
    p.add_argument("--force", action="store_true", help="overwrite an existing tag / tokenizer")
    p.set_defaults(fn=_from_nanochat)

    for name, fn, helptext in (("to-nanochat", _to_nanochat, "jaxchat checkpoint → nanochat layout"),
                               ("to-safetensors", _to_safetensors, "jaxchat checkpoint → .safetensors")):
        p = sub.add_parser(name, help=helptext)
        p.add_argument("--source", choices=stages, default="sft")
        p.add_argument("--model_tag", default="")
        p.add_argument("--step", type=int, default=None)
        p.add_argument("--out", required=True)
        if name == "to-nanochat":
            p.add_argument("--pad_vocab_to", type=int, default=64, help="1 for pre-Dec-2025 nanochat (no padding)")
        else:
            p.add_argument("--tokenizer", default=None, help="tokenizer folder (default: $JAXCHAT_BASE_DIR/tokenizer)")
            p.add_argument("--no_tokenizer", action="store_true")
        p.set_defaults(fn=fn)

    p = sub.add_parser("from-safetensors", help=".safetensors → jaxchat checkpoint")
    p.add_argument("path")
    p.add_argument("--stage", choices=stages, default="sft")
    p.add_argument("--model_tag", default="")
    p.add_argument("--step", type=int, default=0)
    p.add_argument("--force", action="store_true")
    p.set_defaults(fn=_from_safetensors)

    a = ap.parse_args(argv)
    try:
        return a.fn(a)
    except (interop.InteropError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
