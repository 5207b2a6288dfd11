"""Chat with a checkpoint in the terminal (nanochat's chat_cli.py).

    python -m scripts.chat_cli                         # the SFT model, multi-turn; 'clear' resets, 'quit' exits
    python -m scripts.chat_cli -i rl -p "What is 37*48?"  # one answer and exit
    python -m scripts.chat_cli --source=base --temperature=0.8 --top_k=50 --step=1000

Replies stream token by token; calculator calls show as [calculator: expr = result].
"""
from __future__ import annotations

from jaxchat.common import cli

import sys

from jaxchat import config as C
from jaxchat import stage
from jaxchat.checkpoint import load_model
from jaxchat.engine import Engine
from jaxchat.interop import load_any_tokenizer

SHORT = {"-i": "--source", "-p": "--prompt", "-t": "--temperature", "-k": "--top_k", "-s": "--step", "-g": "--model_tag",
         "-m": "--max_tokens"}


class Renderer:
    """Turns streamed token ids into terminal text: decodes incrementally (never printing half a UTF-8
    character) and shows tool calls distinctly."""

    def __init__(self, tok, out=sys.stdout):
        self.tok, self.out = tok, out
        sp = tok.encode_special
        self.special = {sp("<|python_start|>"): "[calculator: ", sp("<|python_end|>"): "",
                        sp("<|output_start|>"): " = ", sp("<|output_end|>"): "]"}
        self.pending: list[int] = []

    def feed(self, token: int) -> str:
        if token in self.special:
            text = self.flush() + self.special[token]
        else:
            self.pending.append(token)
            text = self.tok.decode(self.pending)
            if text.endswith("\ufffd"):
                return ""
            self.pending = []
        self.out.write(text)
        self.out.flush()
        return text

    def flush(self) -> str:
        text = self.tok.decode(self.pending) if self.pending else ""
        self.pending = []
        return text


def main(argv=None):
    argv = [SHORT.get(a, a) for a in (sys.argv[1:] if argv is None else argv)]
    cfg = C.load(["mesh"], argv, extra={"source": "sft", "model_tag": "", "step": -1, "temperature": 0.6,
                                        "top_k": 50, "prompt": "", "max_tokens": 256, "seed": 42})
    x = cfg.extra
    ctx = stage.init(cfg.mesh)
    tok = load_any_tokenizer()
    params, mc, meta = load_model(x.source, x.model_tag or None, None if x.step < 0 else x.step, mesh=ctx.mesh)
    eng = Engine(params, mc, tok)
    sp = tok.encode_special
    bos, us, ue, as_, ae = (sp(s) for s in ("<|bos|>", "<|user_start|>", "<|user_end|>", "<|assistant_start|>",
                                            "<|assistant_end|>"))
    conversation = [bos]
    if not x.prompt:
        print(f"jaxchat ({x.source} d{mc.depth}, step {meta.get('step')}). Type 'quit' to exit, 'clear' to start over.")
    turn = 0
    while True:
        if x.prompt:
            user = x.prompt
        else:
            try:
                user = input("\nUser: ").strip()
            except (EOFError, KeyboardInterrupt):
                print()
                break
            if user.lower() in ("quit", "exit"):
                break
            if user.lower() == "clear":
                conversation = [bos]
                continue
            if not user:
                continue
        conversation += [us, *tok.encode(user), ue, as_]
        print("\nAssistant: ", end="", flush=True)
        r = Renderer(tok)
        reply = []
        for cols, _ in eng.generate(conversation, max_tokens=x.max_tokens, temperature=x.temperature, top_k=x.top_k,
                                    seed=x.seed + turn):
            t = cols[0]
            reply.append(t)
            if t == ae:
                break
            r.feed(t)
        sys.stdout.write(r.flush() + "\n")
        if not reply or reply[-1] != ae:
            reply.append(ae)  # stopped at max_tokens: close the turn so the conversation stays well-formed
        conversation += reply
        turn += 1
        if x.prompt:
            break
    return 0


if __name__ == "__main__":
    cli(main)
