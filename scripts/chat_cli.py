"""Chat with a checkpoint in the terminal (nanochat's chat_cli.py).

    python -m scripts.chat_cli                         # the SFT model, multi-turn; 'clear' resets, 'quit' exits
    python -m scripts.chat_cli -i rl -p "What is 37*48?"  # one answer and exit
    python -m scripts.chat_cli --source=base --temperature=0.8 --top_k=50 --step=1000

Replies stream token by token; calculator calls show as [calculator: expr = result].
"""
from __future__ import annotations

import sys

from jaxchat import config as C
from jaxchat import stage
from jaxchat.checkpoint import load_model
from jaxchat.common import cli
from jaxchat.engine import Engine
from jaxchat.interop import load_any_tokenizer

SHORT = {"-i": "--source", "-p": "--prompt", "-t": "--temperature", "-k": "--top_k", "-s": "--step",
         "-g": "--model_tag", "-m": "--max_tokens"}


class Renderer:
    """Streamed token ids → terminal text: never half a UTF-8 character; tool calls shown distinctly."""

    def __init__(self, tok):
        self.tok, self.pending, sp = tok, [], tok.encode_special
        self.special = {sp("<|python_start|>"): "[calculator: ", sp("<|python_end|>"): "",
                        sp("<|output_start|>"): " = ", sp("<|output_end|>"): "]", sp("<|assistant_end|>"): ""}

    def feed(self, token: int) -> str:
        if token in self.special:
            return self.flush() + self.special[token]
        self.pending.append(token)
        return "" if self.tok.decode(self.pending).endswith("\ufffd") else self.flush()

    def flush(self) -> str:
        text, self.pending = (self.tok.decode(self.pending) if self.pending else ""), []
        return text


def main(argv=None):
    argv = [SHORT.get(a, a) for a in (sys.argv[1:] if argv is None else argv)]
    cfg = C.load(["mesh"], argv, extra={"source": "sft", "model_tag": "", "step": -1, "temperature": 0.6,
                                        "top_k": 50, "prompt": "", "max_tokens": 256, "seed": 42})
    x = cfg.extra
    ctx, tok = stage.init(cfg.mesh), load_any_tokenizer()
    params, mc, meta = load_model(x.source, x.model_tag or None, None if x.step < 0 else x.step, mesh=ctx.mesh)
    eng = Engine(params, mc, tok)
    bos, us, ue, as_, ae = map(tok.encode_special, ("<|bos|>", "<|user_start|>", "<|user_end|>",
                                                    "<|assistant_start|>", "<|assistant_end|>"))
    conversation, turn = [bos], 0
    if not x.prompt:
        print(f"jaxchat ({x.source} d{mc.depth}, step {meta.get('step')}). Type 'quit' to exit, 'clear' to start over.")
    while True:
        try:
            user = x.prompt or input("\nUser: ").strip()
        except (EOFError, KeyboardInterrupt):
            print()
            break
        cmd = "" if x.prompt else user.lower()  # a --prompt is always sent as it is
        if cmd in ("quit", "exit"):
            break
        if cmd == "clear" or not user:
            conversation = [bos] if cmd == "clear" else conversation
            continue
        conversation += [us, *tok.encode(user), ue, as_]
        print("\nAssistant: ", end="", flush=True)
        r, reply = Renderer(tok), []
        for cols, _ in eng.generate(conversation, max_tokens=x.max_tokens, temperature=x.temperature, top_k=x.top_k,
                                    seed=x.seed + turn):
            reply.append(cols[0])
            print(r.feed(cols[0]), end="", flush=True)
        print(r.flush())
        if reply[-1:] != [ae]:
            reply.append(ae)  # stopped at max_tokens: close the turn so the conversation stays well-formed
        conversation, turn = conversation + reply, turn + 1
        if x.prompt:
            break


if __name__ == "__main__":
    cli(main)
