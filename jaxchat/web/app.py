"""The Flask app around one engine service: GET / (the chat page, no external resources), POST /chat/completions
(streams the reply), GET /health (status, model, limits) and GET /stats (queue, rows, tokens/s, request counts).

A request: {"messages": [...], "temperature"?, "top_k"?, "max_tokens"?, "seed"?, "stream"?: true}; messages alternate
user, assistant, ... and end with a user message; an assistant's content may be a list of the stream's parts. Over a
limit (limits.py): 4xx, JSON {"error", "field"}; a full queue or no engine: 503 + Retry-After; a max_tokens given that
does not fit the context: 413 (the default is lowered to what fits). The reply is Server-Sent Events (`data: <json>`;
':' lines keep alive): {"token"} text, never half a character; a calculator call as {"part_start": "python"},
{"token", "part": "python"}, {"part_end": "python"}, its result the same with "python_output"; then {"done": true,
"finish_reason", "usage", "id", "seed", "time_to_first_token_s", "total_time_s"} (or {"done": true, "error"}). A
client that closes the connection frees its row."""
from __future__ import annotations

import json
import math
import queue
from dataclasses import asdict

from flask import Flask, Response, jsonify, render_template, request
from werkzeug.exceptions import HTTPException

from jaxchat.tasks.common import PART_TYPES
from jaxchat.web.limits import SEED_LIMIT, Defaults, Limits
from jaxchat.web.service import ApiError

KEEPALIVE_S = 1.0  # an SSE comment this often while a request waits: notices clients that left
ALLOWED_FIELDS = ("messages", "temperature", "top_k", "max_tokens", "seed", "stream")


def _type_name(x) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null",
            int: "integer", float: "number"}.get(type(x), type(x).__name__)


def parse_request(raw: bytes, limits: Limits = Limits(), defaults: Defaults = Defaults()) -> tuple[list, dict]:
    """Check a completions request. Returns (messages, options); raises ApiError naming the problem.
    options: temperature, top_k, max_tokens, seed (None = random) and max_tokens_given (bool)."""
    def reject_constant(name):
        raise ValueError(f"{name} is not valid JSON")

    if not raw.strip():
        raise ApiError(400, "request body is empty; send a JSON object like {\"messages\": [...]}")
    try:
        body = json.loads(raw.decode("utf-8"), parse_constant=reject_constant)
    except UnicodeDecodeError:
        raise ApiError(400, "request body is not valid UTF-8") from None
    except (ValueError, RecursionError) as e:
        raise ApiError(400, f"request body is not valid JSON: {e}") from None
    if not isinstance(body, dict):
        raise ApiError(400, f"request body must be a JSON object, got {_type_name(body)}")
    if unknown := [k for k in body if k not in ALLOWED_FIELDS]:
        raise ApiError(400, f"unknown field {unknown[0]!r}; allowed fields: {', '.join(ALLOWED_FIELDS)}", unknown[0])
    if "messages" not in body:
        raise ApiError(400, "missing field 'messages' (a list of {role, content} objects)", "messages")
    messages = body["messages"]
    if not isinstance(messages, list):
        raise ApiError(400, f"'messages' must be a list, got {_type_name(messages)}", "messages")
    if not messages:
        raise ApiError(400, "'messages' is empty; send at least one user message", "messages")
    if len(messages) > limits.max_messages:
        raise ApiError(413, f"too many messages: {len(messages)} (at most {limits.max_messages})", "messages")
    total = 0
    for i, m in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise ApiError(400, f"{where} must be an object with 'role' and 'content', got {_type_name(m)}", where)
        if extra := [k for k in m if k not in ("role", "content")]:
            raise ApiError(400, f"{where} has unknown field {extra[0]!r} (only 'role' and 'content')",
                           f"{where}.{extra[0]}")
        if missing := [k for k in ("role", "content") if k not in m]:
            raise ApiError(400, f"{where} is missing {missing[0]!r}", f"{where}.{missing[0]}")
        role = m["role"]
        if role not in ("user", "assistant"):
            shown = repr(role) if isinstance(role, str) else _type_name(role)
            raise ApiError(400, f"{where}.role must be 'user' or 'assistant', got {shown}", f"{where}.role")
        n = _content_chars(m["content"], role, f"{where}.content")
        if n > limits.max_message_chars:
            raise ApiError(413, f"{where}.content is too long: {n} characters (at most {limits.max_message_chars})",
                           f"{where}.content")
        total += n
        if role != (want := ("user", "assistant")[i % 2]):
            raise ApiError(400, f"{where}.role is {role!r} but {want!r} was expected: messages alternate user, "
                                "assistant, user, ... starting with user", f"{where}.role")
    if total > limits.max_total_chars:
        raise ApiError(413, f"conversation is too long: {total} characters in total (at most "
                            f"{limits.max_total_chars})", "messages")
    if messages[-1]["role"] != "user":
        raise ApiError(400, "the conversation must end with a user message (the last one is from the assistant)",
                       f"messages[{len(messages) - 1}].role")
    opts = {"max_tokens_given": body.get("max_tokens") is not None}
    for name in ("temperature", "top_k", "max_tokens"):
        lo, hi = getattr(limits, f"min_{name}"), getattr(limits, f"max_{name}")
        opts[name] = _option(body, name, lo, hi, getattr(defaults, name), integer=name != "temperature")
    opts["seed"] = _option(body, "seed", 0, SEED_LIMIT - 1, None, integer=True)
    if body.get("stream", True) is not True:
        raise ApiError(400, "only streaming is supported: 'stream' must be true or absent", "stream")
    return messages, opts


def _content_chars(content, role: str, where: str) -> int:
    if role == "assistant" and isinstance(content, list):  # the parts of an earlier reply
        if not content:
            raise ApiError(400, f"{where} is an empty list of parts", where)
        for j, part in enumerate(content):
            if not isinstance(part, dict) or part.get("type") not in PART_TYPES or not isinstance(
                    part.get("text"), str) or set(part) - {"type", "text"}:
                raise ApiError(400, f"{where}[{j}] must be {{\"type\": \"text\"|\"python\"|\"python_output\", "
                                    "\"text\": string}", f"{where}[{j}]")
        content = "".join(p["text"] for p in content)
    elif not isinstance(content, str):
        kinds = "a string" if role == "user" else "a string or a list of parts"
        raise ApiError(400, f"{where} must be {kinds}, got {_type_name(content)}", where)
    if not content.strip():
        raise ApiError(400, f"{where} is empty", where)
    return len(content)


def _option(body: dict, name: str, lo, hi, default, integer: bool):
    """A numeric option: absent or null → default; an integral float is an integer; else in [lo, hi]."""
    x = body.get(name)
    if x is None:
        return default
    if integer and isinstance(x, float) and x.is_integer():
        x = int(x)
    show = str if integer else (lambda v: f"{v:g}")  # noqa: E731
    if isinstance(x, bool) or not (isinstance(x, int) if integer else isinstance(x, (int, float)) and math.isfinite(x)):
        raise ApiError(400, f"'{name}' must be {'an integer' if integer else 'a number'} between {show(lo)} and "
                            f"{show(hi)}, got {_type_name(x)}", name)
    if not lo <= x <= hi:
        raise ApiError(400, f"'{name}' must be between {show(lo)} and {show(hi)}, got {show(x)}", name)
    return x if integer else float(x)


class StreamDecoder:
    """Token ids → stream events: text decoded incrementally (a token that ends mid-character is held until
    the character completes), calculator calls and results as marked parts, end tokens dropped."""

    MAX_PENDING = 8  # a sequence that stays invalid this long is emitted with U+FFFD (the model's bytes)

    def __init__(self, tok):
        self.tok, self.part, self.pending = tok, "text", []
        sp = tok.encode_special
        self.marks = {sp("<|python_start|>"): ("part_start", "python"), sp("<|python_end|>"): ("part_end", "python"),
                      sp("<|output_start|>"): ("part_start", "python_output"),
                      sp("<|output_end|>"): ("part_end", "python_output")}
        self.special = set(tok.special_ids.values())

    def feed(self, ids) -> list[dict]:
        events = []
        for t in map(int, ids):
            if t in self.marks:
                kind, part = self.marks[t]
                events += self.flush() + [{kind: part}]
                self.part = part if kind == "part_start" else "text"
            elif t in self.special:  # <|assistant_end|>, <|bos|>, or a stray special: not text
                events += self.flush()
            else:
                self.pending.append(t)
                if not self.tok.decode(self.pending).endswith("\ufffd") or len(self.pending) >= self.MAX_PENDING:
                    events += self.flush()
        return events

    def flush(self) -> list[dict]:
        text, self.pending = (self.tok.decode(self.pending) if self.pending else ""), []
        return [{"token": text, **({"part": self.part} if self.part != "text" else {})}] if text else []


def sse(obj: dict) -> str:
    return "data: " + json.dumps(obj, ensure_ascii=False) + "\n\n"


def _events(req, tok):
    """The response body: SSE chunks of the request's events (the response cancels the request when it closes)."""
    dec = StreamDecoder(tok)
    yield ": stream open\n\n"
    while True:
        try:
            kind, payload = req.events.get(timeout=KEEPALIVE_S)
        except queue.Empty:
            yield ": keep-alive\n\n"
            continue
        if kind == "tokens":
            yield "".join(map(sse, dec.feed(payload)))
        else:  # done (after what the decoder still holds) or error
            yield "".join(map(sse, dec.flush())) + sse({"done": True, **payload} if kind == "done" else
                                                       {"done": True, "error": str(payload)})
            return


def create_app(svc, *, limits: Limits = Limits(), defaults: Defaults = Defaults(), log=None) -> Flask:
    """The app around an engine service (or anything with its submit, info, stats, ready, cache_len and tokenizer).
    JAX runs only in the service's thread; request threads validate, render and decode."""
    tok, log = svc.tokenizer, log or (lambda msg: None)
    app = Flask(__name__, template_folder="templates", static_folder="static")
    app.config["MAX_CONTENT_LENGTH"] = limits.max_body_bytes
    app.json.sort_keys = False

    @app.errorhandler(Exception)  # every error is JSON: ours, HTTP's (404, 405, a body over the limit), and bugs
    def _error(e: Exception):
        if isinstance(e, HTTPException):
            e = ApiError(e.code or 500, f"request body too large (at most {limits.max_body_bytes} bytes)"
                         if e.code == 413 else f"{e.name}: {e.description}")
        elif not isinstance(e, ApiError):
            log(f"internal error: {type(e).__name__}: {e}")
            e = ApiError(500, f"internal error: {type(e).__name__}")
        return jsonify({"error": e.message, "field": e.field}), e.status, e.headers

    @app.after_request
    def _cors(resp):
        resp.headers.update({"Access-Control-Allow-Origin": "*", "Access-Control-Allow-Headers": "Content-Type",
                             "Access-Control-Allow-Methods": "GET, POST, OPTIONS"})
        return resp

    @app.get("/")
    def index():
        return render_template("index.html", info=svc.info, defaults=asdict(defaults), limits=asdict(limits))

    @app.get("/health")
    def health():
        err = svc.stats().get("error")
        return jsonify({"status": "error" if err else ("ok" if svc.ready else "loading"), "ready": bool(svc.ready),
                        "error": err, "model": svc.info,
                        "limits": {**asdict(limits), "max_tokens_limit": svc.cache_len - 2},  # a prompt has 1+ tokens
                        "defaults": asdict(defaults)})

    @app.get("/stats")
    def stats():
        return jsonify(svc.stats())

    @app.post("/chat/completions")
    def completions():
        messages, opts = parse_request(request.get_data(cache=False), limits, defaults)
        prompt = tok.render_for_completion({"messages": messages})
        max_tokens = opts["max_tokens"]
        if not opts["max_tokens_given"]:  # the default, lowered to what fits (if nothing does, submit says so)
            max_tokens = max(1, min(max_tokens, svc.cache_len - 1 - len(prompt)))
        try:
            req = svc.submit(prompt, max_tokens=max_tokens, temperature=opts["temperature"], top_k=opts["top_k"],
                             seed=opts["seed"])
        except ApiError as e:
            e.field = "max_tokens" if e.status == 413 and opts["max_tokens_given"] else e.field
            raise
        log(f"request {req.id}: {len(messages)} messages, {len(prompt)} prompt tokens, max_tokens {max_tokens}, "
            f"temperature {opts['temperature']:g}, top_k {opts['top_k']}")
        headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no", "X-Request-Id": req.id}
        resp = Response(_events(req, tok), mimetype="text/event-stream", headers=headers)
        resp.call_on_close(req.cancelled.set)  # the client left (even before the first chunk) or the reply ended
        return resp

    return app
