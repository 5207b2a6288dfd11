"""Convert models between nanochat (PyTorch), jaxchat checkpoints and safetensors (needs `pip install -e '.[interop]'`).

    # a nanochat checkpoint folder (latest step unless --step) → a jaxchat checkpoint, + nanochat's tokenizer
    python -m scripts.convert from-nanochat ~/.cache/nanochat/chatsft_checkpoints/d20 --stage=sft --model_tag=d20 \\
        --tokenizer ~/.cache/nanochat/tokenizer     # then: python -m scripts.chat_cli --source=sft --model_tag=d20
    # a jaxchat checkpoint → nanochat's layout (model_XXXXXX.pt + meta_XXXXXX.json), or → one .safetensors file
    python -m scripts.convert to-nanochat --source=sft --model_tag=d4 --out /tmp/nanochat/chatsft_checkpoints/d4
    python -m scripts.convert to-safetensors --source=sft --out d4.safetensors       # tokenizer embedded
    python scripts/run_numpy.py d4.safetensors -p "hi" --max_tokens 64 --temperature 0   # NumPy alone
    python -m scripts.convert from-safetensors d4.safetensors --stage=sft --model_tag=d4copy   # and back

Checkpoints go to $JAXCHAT_BASE_DIR/<stage>_checkpoints/<model_tag>/<step>. A nanochat model needs nanochat's
tokenizer: --tokenizer copies it to $JAXCHAT_BASE_DIR/tokenizer/ (use a separate JAXCHAT_BASE_DIR for them).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from jaxchat import interop


def _tokenizer_to_embed(directory=None, vocab_size=None):
    try:
        tok = interop.load_any_tokenizer(directory)
    except FileNotFoundError as e:
        print(f"warning: {e}; exporting without a tokenizer (run_numpy will need --ids or --tokenizer)")
        return None
    if vocab_size is None or tok.vocab_size == vocab_size:
        return tok
    print(f"warning: the installed tokenizer has {tok.vocab_size} tokens, the model {vocab_size}; not embedding it")


def _from_nanochat(a):
    params, cfg, meta = interop.load_nanochat(a.path, a.step)
    src, step = interop.find_nanochat_dir(a.path), int(meta["step"])
    print(f"nanochat {src} step {step}: depth {cfg.depth}, width {cfg.n_embd}, heads {cfg.n_head}/{cfg.kv_heads} "
          f"(head_dim {cfg.head_dim}), vocab {cfg.vocab_size}, seq {cfg.max_seq_len}")
    if a.tokenizer:
        pkl = Path(a.tokenizer) / interop.NANOCHAT_TOKENIZER_FILENAME if Path(a.tokenizer).is_dir() else a.tokenizer
        interop.NanochatTokenizer.from_file(pkl)  # fail before writing anything
    tag = a.model_tag or src.name
    out = interop.save_jaxchat(params, cfg, a.stage, tag, step, overwrite=a.force,
                               meta={"converted_from": {"format": "nanochat", "path": str(src), "step": step},
                                     "tokenizer": "nanochat" if a.tokenizer else None,
                                     "nanochat_meta": {k: v for k, v in meta.items() if k != "model_config"}})
    print(f"saved jaxchat checkpoint {out}/{step}  (load with --source={a.stage} --model_tag={tag})")
    if a.tokenizer:
        print(f"nanochat tokenizer installed in {interop.install_nanochat_tokenizer(pkl, force=a.force)}")
    elif (guess := src.parent.parent / "tokenizer" / interop.NANOCHAT_TOKENIZER_FILENAME).is_file():
        print(f"note: this model's tokenizer is probably {guess}; pass --tokenizer {guess.parent} to install it")
    if a.safetensors:
        tok = _tokenizer_to_embed(vocab_size=cfg.vocab_size)
        print(f"wrote {interop.export_safetensors(params, cfg, a.safetensors, tokenizer=tok)}")


def _from_safetensors(a):
    (params, cfg), tag = interop.import_safetensors(a.path), a.model_tag or Path(a.path).stem
    out = interop.save_jaxchat(params, cfg, a.stage, tag, a.step, overwrite=a.force,
                               meta={"converted_from": {"format": "safetensors", "path": str(a.path)}})
    print(f"saved jaxchat checkpoint {out}/{a.step}  (load with --source={a.stage} --model_tag={tag})")


def _export(a):  # to-nanochat, to-safetensors
    params, cfg, meta = interop.load_jaxchat(a.source, a.model_tag or None, a.step)
    if a.cmd == "to-nanochat":
        step = int(meta.get("step", a.step or 0))
        print("wrote {} and {}".format(*interop.save_nanochat(params, cfg, a.out, step, pad_vocab_to=a.pad_vocab_to)))
    else:
        tok = None if a.no_tokenizer else _tokenizer_to_embed(a.tokenizer)
        print(f"wrote {interop.export_safetensors(params, cfg, a.out, tokenizer=tok)}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub, stages = ap.add_subparsers(dest="cmd", required=True), ["base", "mid", "sft", "rl"]
    p = sub.add_parser("from-nanochat", help="nanochat checkpoint folder → jaxchat checkpoint")
    p.add_argument("path", help="folder with model_XXXXXX.pt/meta_XXXXXX.json (or a stage folder of tags)")
    p.add_argument("--tokenizer", default="", help="nanochat tokenizer.pkl (or its folder) to install")
    p.add_argument("--safetensors", default="", help="also write this .safetensors file")
    q = sub.add_parser("from-safetensors", help=".safetensors → jaxchat checkpoint")
    q.add_argument("path")
    for sp in (p, q):
        sp.add_argument("--stage", choices=stages, default="sft")
        sp.add_argument("--force", action="store_true", help="overwrite an existing tag / tokenizer")
    n = sub.add_parser("to-nanochat", help="jaxchat checkpoint → nanochat layout")
    n.add_argument("--pad_vocab_to", type=int, default=64, help="1 for pre-Dec-2025 nanochat (no padding)")
    e = sub.add_parser("to-safetensors", help="jaxchat checkpoint → .safetensors")
    e.add_argument("--tokenizer", default=None, help="tokenizer folder (default: $JAXCHAT_BASE_DIR/tokenizer)")
    e.add_argument("--no_tokenizer", action="store_true")
    for sp in (n, e):
        sp.add_argument("--source", choices=stages, default="sft")
        sp.add_argument("--out", required=True)
    for sp in sub.choices.values():  # from-*: the source's name and step (0 for safetensors); to-*: the latest
        sp.add_argument("--model_tag", default="")
        sp.add_argument("--step", type=int, default=0 if sp is q else None)
    a = ap.parse_args(argv)
    try:
        {"from-nanochat": _from_nanochat, "from-safetensors": _from_safetensors}.get(a.cmd, _export)(a)
        return 0
    except (interop.InteropError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
