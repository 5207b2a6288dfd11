"""Serving the app: gunicorn with ONE worker process and threads (gthread), or Flask's dev server (debug). One
process, because the model, its KV cache and the engine thread live in it (a second worker would load a second model
and batch apart); threads, because every Server-Sent-Events stream holds one while its reply lasts. The model loads
in the worker, after gunicorn forks: JAX must not start before a fork."""
from gunicorn.app.base import BaseApplication


class _Gunicorn(BaseApplication):
    def __init__(self, app_factory, options: dict):
        self.app_factory, self.options = app_factory, options
        super().__init__()

    def load_config(self):
        for k, v in self.options.items():
            if v is not None and k in self.cfg.settings:  # (settings differ across gunicorn versions)
                self.cfg.set(k, v)

    def load(self):
        return self.app_factory()


def serve(app_factory, *, host: str = "127.0.0.1", port: int = 8000, threads: int = 32, debug: bool = False,
          timeout: int = 900, access_log: bool = True) -> None:
    """Run `app_factory()` (loads the model, returns the WSGI app) under gunicorn, or Flask's server if debug."""
    if debug:
        app_factory().run(host=host, port=port, threaded=True, debug=False, use_reloader=False)
        return
    _Gunicorn(app_factory, {
        "bind": f"[{host}]:{port}" if ":" in host else f"{host}:{port}", "workers": 1, "worker_class": "gthread",
        "threads": threads, "preload_app": False,  # load the model in the worker, after the fork
        "timeout": timeout,  # loading a large checkpoint may take minutes before the worker reports in
        "graceful_timeout": 10, "keepalive": 5, "accesslog": "-" if access_log else None, "errorlog": "-",
        "loglevel": "info", "control_socket_disable": True,  # gunicorn >= 27: no runtime-control socket in $HOME
    }).run()
