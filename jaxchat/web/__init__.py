"""Web chat: a Flask app (app.py) around one batched engine service (service.py), served by gunicorn (server.py)."""
