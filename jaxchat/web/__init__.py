"""Web chat: a Flask app (app.py: the page, the streaming API and its limits) around one batched engine service
(service.py: continuous batching), served by gunicorn (server.py, which imports no JAX: the master forks first)."""
