"""Web chat: a Flask app (page + streaming API) around one batched engine service.

    from jaxchat.web import EngineService, create_app
    svc = EngineService(params, model_cfg, tokenizer, max_batch=8).start()
    app = create_app(svc)          # WSGI app: serve it with jaxchat.web.server.serve (gunicorn, gthread)

See app.py for the HTTP API and the Server-Sent-Events format, service.py for continuous batching.
Names are imported lazily, so `jaxchat.web.server` (the gunicorn master) does not import JAX before it forks.
"""
from importlib import import_module

_NAMES = {"Defaults": "limits", "Limits": "limits", "StreamDecoder": "app", "create_app": "app",
          "ContextTooLong": "service", "EngineService": "service", "QueueFull": "service", "Request": "service",
          "Unavailable": "service"}
__all__ = sorted(_NAMES)


def __getattr__(name):
    if name in _NAMES:
        return getattr(import_module(f"jaxchat.web.{_NAMES[name]}"), name)
    raise AttributeError(f"module 'jaxchat.web' has no attribute {name!r}")
