"""Chat with a checkpoint in the browser (nanochat's chat_web.py): one batched engine for all users.

    python -m scripts.chat_web                              # the SFT model on http://127.0.0.1:8000/
    python -m scripts.chat_web --source=rl --port=8080 --host=0.0.0.0 --max_batch=16
    python -m scripts.chat_web --debug                      # Flask's development server (one process)

gunicorn: one worker, a thread per streamed or waiting reply (+8: the page, /health, /stats; jaxchat/web/server.py).
"""
import sys

from jaxchat import config as C
from jaxchat.common import cli, print0
from jaxchat.web.limits import Defaults, Limits
from jaxchat.web.server import serve

EXTRA = {"source": "sft", "model_tag": "", "step": -1, "port": 8000, "host": "127.0.0.1", "max_batch": 8,
         "max_queue": 64, "temperature": 0.8, "top_k": 50, "max_tokens": 512, "cache_len": 0, "steps_per_iter": 2,
         "debug": False}


def build_app(cfg):
    """Load the checkpoint, start the engine service, return the Flask app: in the worker (JAX after the fork)."""
    from jaxchat import stage
    from jaxchat.checkpoint import load_model
    from jaxchat.tokenizer import Tokenizer
    from jaxchat.web.app import create_app
    from jaxchat.web.service import EngineService

    x = cfg.extra
    ctx, tok = stage.init(cfg.mesh), Tokenizer.load()
    params, mc, meta = load_model(x.source, x.model_tag or None, None if x.step < 0 else x.step, mesh=ctx.mesh)
    info = {"source": x.source, "model_tag": x.model_tag or f"d{mc.depth}", "step": meta.get("step"),
            "devices": f"{ctx.n_devices}x {ctx.mesh.devices.flat[0].device_kind}"}
    svc = EngineService(params, mc, tok, max_batch=x.max_batch, max_queue=x.max_queue, cache_len=x.cache_len or None,
                        steps_per_iter=x.steps_per_iter, mesh=ctx.mesh, info=info, log=print0).start()
    svc.warmup(tok.render_for_completion({"messages": [{"role": "user", "content": "Hello!"}]}))
    app = create_app(svc, defaults=Defaults(x.temperature, x.top_k, x.max_tokens), log=print0)
    print0(f"jaxchat: {x.source} d{mc.depth} step {meta.get('step')} ready on http://{url_host(x.host)}:{x.port}/")
    return app


def url_host(host: str) -> str:
    return "127.0.0.1" if host in ("0.0.0.0", "") else (f"[{host}]" if ":" in host else host)


def main(argv=None):
    cfg = C.load(["mesh"], sys.argv[1:] if argv is None else argv, extra=dict(EXTRA))
    x, lim = cfg.extra, Limits()
    for name in ("temperature", "top_k", "max_tokens"):
        lo, hi = getattr(lim, f"min_{name}"), getattr(lim, f"max_{name}")
        if not lo <= getattr(x, name) <= hi:
            raise SystemExit(f"--{name} must be between {lo} and {hi}, got {getattr(x, name)}")
    if x.source not in ("base", "mid", "sft", "rl"):
        raise SystemExit(f"--source must be base, mid, sft or rl, got {x.source!r}")
    print(f"jaxchat web: loading the {x.source} model; then open http://{url_host(x.host)}:{x.port}/", flush=True)
    serve(lambda: build_app(cfg), host=x.host, port=x.port, debug=x.debug, threads=x.max_batch + x.max_queue + 8)


if __name__ == "__main__":
    cli(main)
