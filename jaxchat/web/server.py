"""Serving the app: gunicorn with ONE worker process and threads (gthread), or Flask's dev server (debug).

One process, because the model, its KV cache and the engine thread live in it (a second worker would load a
second copy of the model and batch separately). Threads, because every Server-Sent-Events stream holds a
thread for as long as its reply lasts while the engine thread batches all of them. The model is loaded
inside the worker, after gunicorn forks it (`preload_app` off): JAX must not be initialised before a fork.
"""
from __future__ import annotations

from typing import Callable


def threads_for(max_batch: int, max_queue: int) -> int:
    """A thread per streaming row and per waiting request, plus a few for the page, /health and /stats."""
    return max_batch + max_queue + 8


def serve(app_factory: Callable[[], object], *, host: str = "127.0.0.1", port: int = 8000, threads: int = 32,
          debug: bool = False, timeout: int = 900, access_log: bool = True) -> None:
    """Run `app_factory()` (which loads the model and returns the WSGI app) under gunicorn (gthread, 1 worker)
    — or, with debug=True, in this process under Flask's development server."""
    if debug:
        app = app_factory()
        app.run(host=host, port=port, threaded=True, debug=False, use_reloader=False)
        return
    from gunicorn.app.base import BaseApplication

    class _App(BaseApplication):
        def __init__(self):
            self.options = {
                "bind": f"[{host}]:{port}" if ":" in host else f"{host}:{port}",
                "workers": 1,
                "worker_class": "gthread",
                "threads": threads,
                "preload_app": False,  # load the model in the worker, after the fork
                "timeout": timeout,  # loading a large checkpoint may take minutes before the worker reports in
                "graceful_timeout": 10,
                "keepalive": 5,
                "accesslog": "-" if access_log else None,
                "errorlog": "-",
                "loglevel": "info",
                "control_socket_disable": True,  # gunicorn >= 27: no runtime-control socket in $HOME
            }
            super().__init__()

        def load_config(self):
            for k, v in self.options.items():
                if v is not None and k in self.cfg.settings:  # (settings differ across gunicorn versions)
                    self.cfg.set(k, v)

        def load(self):
            return app_factory()

    _App().run()
