"""The Flask app: the chat page, the streaming completions API, health and stats.

    app = create_app(engine_service)        # any object with submit / info / stats / ready (see service.py)

Endpoints
    GET  /                   the chat page (jinja2 template + static JS/CSS; no external resources)
    POST /chat/completions   {"messages": [...], "temperature"?, "top_k"?, "max_tokens"?, "seed"?, "stream"?: true}
                             → text/event-stream (below); errors → 4xx/503 JSON {"error": msg, "field": path}
    GET  /health             {"status": "ok"|"loading"|"error", "ready", "model": {...}, "limits": {...}}
    GET  /stats              {"queue_length", "max_queue", "active_rows", "max_batch", "tokens_per_second" (over
                             the last window_s seconds), "requests_served" / "_cancelled" / "_rejected",
                             "tokens_generated", "ttft_p50_s" (submit → first token, last 256 requests), ...}

Request. `messages` alternate user, assistant, ..., and end with a user message. A message is
{"role": "user"|"assistant", "content": str}; an assistant message may instead carry a list of parts
[{"type": "text"|"python"|"python_output", "text": str}] (what this stream produces, so a client can send a
reply with calculator calls back verbatim). Limits (nanochat's): ≤ 500 messages, ≤ 8,000 characters per
message, ≤ 32,000 in total, temperature ∈ [0, 2], top_k ∈ [1, 200], max_tokens ∈ [1, 4096], seed ∈ [0, 2³²).
Defaults come from the app (0.8 / 50 / 512). The rendered prompt plus max_tokens must fit the model's context:
an explicit max_tokens that does not fit is answered 413; the default max_tokens is lowered to what fits.

Status codes: 400 malformed or out-of-range input, 413 too many messages / characters, or prompt + max_tokens
over the model's context, 503 + Retry-After when max_queue requests already wait for a row (or the engine is
not available). Every error names the problem and the offending field.

Stream (Server-Sent Events; each event is one `data: <json>` line and a blank line; lines starting with ':'
are keep-alive comments):
    data: {"token": "Hel"}                              reply text, decoded incrementally (never half a
                                                        UTF-8 character); every "token" of every part,
                                                        concatenated, is the decoded reply (special tokens
                                                        are shown only as the part markers below)
    data: {"part_start": "python"}                      the model calls the calculator
    data: {"token": "12*34", "part": "python"}          ... the expression it wrote
    data: {"part_end": "python"}
    data: {"part_start": "python_output"}               the tool's result (forced into the reply)
    data: {"token": "408", "part": "python_output"}
    data: {"part_end": "python_output"}
    data: {"done": true, "finish_reason": "stop"|"length", "usage": {"prompt_tokens": P,
           "completion_tokens": C}, "id": "...", "seed": S, "time_to_first_token_s": x, "total_time_s": y}
    data: {"done": true, "error": "..."}                instead, if the engine failed mid-stream
completion_tokens counts every token the row produced: sampled text, calculator calls, forced results and
the closing <|assistant_end|>. A client that closes the connection stops its generation and frees its row.
"""
from __future__ import annotations

import json
import math
import queue
from dataclasses import asdict

from flask import Flask, Response, jsonify, render_template, request
from werkzeug.exceptions import HTTPException

from jaxchat.web.limits import SEED_LIMIT, Defaults, Limits
from jaxchat.web.service import ContextTooLong, QueueFull, Unavailable

KEEPALIVE_S = 1.0  # an SSE comment this often while a request waits: notices clients that left


class ApiError(Exception):
    def __init__(self, status: int, message: str, field: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.field, self.headers = status, message, field, headers or {}


ALLOWED_FIELDS = ("messages", "temperature", "top_k", "max_tokens", "seed", "stream")
PART_TYPES = ("text", "python", "python_output")


def _reject_constant(name):
    raise ValueError(f"{name} is not valid JSON")


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _type_name(x) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null",
            int: "integer", float: "number"}.get(type(x), type(x).__name__)


def parse_body(raw: bytes) -> dict:
    if not raw.strip():
        raise ApiError(400, "request body is empty; send a JSON object like {\"messages\": [...]}")
    try:
        body = json.loads(raw.decode("utf-8"), parse_constant=_reject_constant)
    except UnicodeDecodeError:
        raise ApiError(400, "request body is not valid UTF-8") from None
    except (ValueError, RecursionError) as e:
        raise ApiError(400, f"request body is not valid JSON: {e}") from None
    if not isinstance(body, dict):
        raise ApiError(400, f"request body must be a JSON object, got {_type_name(body)}")
    return body


def validate(body: dict, limits: Limits = Limits(), defaults: Defaults = Defaults()) -> tuple[list, dict]:
    """Check a completions request. Returns (messages, options); raises ApiError naming the problem.
    options: temperature, top_k, max_tokens, seed (None = random) and max_tokens_given (bool)."""
    unknown = [k for k in body if k not in ALLOWED_FIELDS]
    if unknown:
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
        extra = [k for k in m if k not in ("role", "content")]
        if extra:
            raise ApiError(400, f"{where} has unknown field {extra[0]!r} (only 'role' and 'content')",
                           f"{where}.{extra[0]}")
        for k in ("role", "content"):
            if k not in m:
                raise ApiError(400, f"{where} is missing {k!r}", f"{where}.{k}")
        role = m["role"]
        if role not in ("user", "assistant"):
            shown = repr(role) if isinstance(role, str) else _type_name(role)
            raise ApiError(400, f"{where}.role must be 'user' or 'assistant', got {shown}", f"{where}.role")
        n = _content_chars(m["content"], role, f"{where}.content")
        if n > limits.max_message_chars:
            raise ApiError(413, f"{where}.content is too long: {n} characters (at most {limits.max_message_chars})",
                           f"{where}.content")
        total += n
        want = "user" if i % 2 == 0 else "assistant"
        if role != want:
            raise ApiError(400, f"{where}.role is {role!r} but {want!r} was expected: messages alternate user, "
                                "assistant, user, ... starting with user", f"{where}.role")
    if total > limits.max_total_chars:
        raise ApiError(413, f"conversation is too long: {total} characters in total (at most "
                            f"{limits.max_total_chars})", "messages")
    if messages[-1]["role"] != "user":
        raise ApiError(400, "the conversation must end with a user message (the last one is from the assistant)",
                       f"messages[{len(messages) - 1}].role")
    opts = {"max_tokens_given": "max_tokens" in body and body["max_tokens"] is not None}
    opts["temperature"] = _number(body, "temperature", limits.min_temperature, limits.max_temperature,
                                  defaults.temperature)
    opts["top_k"] = _integer(body, "top_k", limits.min_top_k, limits.max_top_k, defaults.top_k)
    opts["max_tokens"] = _integer(body, "max_tokens", limits.min_max_tokens, limits.max_max_tokens,
                                  defaults.max_tokens)
    opts["seed"] = _integer(body, "seed", 0, SEED_LIMIT - 1, None)
    if body.get("stream", True) is not True:
        raise ApiError(400, "only streaming is supported: 'stream' must be true or absent", "stream")
    return messages, opts


def _content_chars(content, role: str, where: str) -> int:
    if isinstance(content, str):
        if not content.strip():
            raise ApiError(400, f"{where} is empty", where)
        return len(content)
    if role == "assistant" and isinstance(content, list):
        if not content:
            raise ApiError(400, f"{where} is an empty list of parts", where)
        n = 0
        for j, part in enumerate(content):
            pw = f"{where}[{j}]"
            if not isinstance(part, dict) or part.get("type") not in PART_TYPES or not isinstance(
                    part.get("text"), str) or set(part) - {"type", "text"}:
                raise ApiError(400, f"{pw} must be {{\"type\": \"text\"|\"python\"|\"python_output\", "
                                    "\"text\": string}", pw)
            n += len(part["text"])
        if n == 0 or not any(p["text"].strip() for p in content):
            raise ApiError(400, f"{where} is empty", where)
        return n
    kinds = "a string" if role == "user" else "a string or a list of parts"
    raise ApiError(400, f"{where} must be {kinds}, got {_type_name(content)}", where)


def _number(body, name, lo, hi, default):
    if name not in body or body[name] is None:
        return default
    x = body[name]
    if not _is_number(x):
        raise ApiError(400, f"'{name}' must be a number between {lo:g} and {hi:g}, got {_type_name(x)}", name)
    if not lo <= x <= hi:
        raise ApiError(400, f"'{name}' must be between {lo:g} and {hi:g}, got {x:g}", name)
    return float(x)


def _integer(body, name, lo, hi, default):
    if name not in body or body[name] is None:
        return default
    x = body[name]
    if isinstance(x, float) and x.is_integer():
        x = int(x)
    if not _is_int(x):
        raise ApiError(400, f"'{name}' must be an integer between {lo} and {hi}, got {_type_name(x)}", name)
    if not lo <= x <= hi:
        raise ApiError(400, f"'{name}' must be between {lo} and {hi}, got {x}", name)
    return x


# ----------------------------------------------------------------------------------------------------
# Streaming


class StreamDecoder:
    """Token ids → stream events: text decoded incrementally (a token that ends mid-character is held until
    the character completes), calculator calls and results as marked parts, end tokens dropped."""

    MAX_PENDING = 8  # a sequence that stays invalid this long is emitted with U+FFFD (the model's bytes)

    def __init__(self, tok):
        self.tok = tok
        sp = tok.encode_special
        self.marks = {sp("<|python_start|>"): ("part_start", "python"), sp("<|python_end|>"): ("part_end", "python"),
                      sp("<|output_start|>"): ("part_start", "python_output"),
                      sp("<|output_end|>"): ("part_end", "python_output")}
        self.special = set(tok.special_ids.values())
        self.part = "text"
        self.pending: list[int] = []

    def _event(self, text: str) -> dict:
        return {"token": text} if self.part == "text" else {"token": text, "part": self.part}

    def feed(self, ids) -> list[dict]:
        events = []
        for t in ids:
            t = int(t)
            if t in self.marks:
                events += self.flush()
                kind, part = self.marks[t]
                events.append({kind: part})
                self.part = part if kind == "part_start" else "text"
            elif t in self.special:  # <|assistant_end|>, <|bos|>, or a stray special: not text
                events += self.flush()
            else:
                self.pending.append(t)
                text = self.tok.decode(self.pending)
                if text.endswith("\ufffd") and len(self.pending) < self.MAX_PENDING:
                    continue
                self.pending = []
                if text:
                    events.append(self._event(text))
        return events

    def flush(self) -> list[dict]:
        text = self.tok.decode(self.pending) if self.pending else ""
        self.pending = []
        return [self._event(text)] if text else []


def sse(obj: dict) -> str:
    return "data: " + json.dumps(obj, ensure_ascii=False) + "\n\n"


class _EventStream:
    """The response body: iterates the SSE chunks; close() (the server calls it when the client leaves or the
    response ends — even before the first chunk) cancels the request."""

    def __init__(self, req, tok):
        self.req, self._gen = req, _events(req, tok)

    def __iter__(self):
        return self._gen

    def close(self):
        self._gen.close()
        self.req.cancel()


def _events(req, tok):
    dec = StreamDecoder(tok)
    try:
        yield ": stream open\n\n"
        while True:
            try:
                kind, payload = req.get(timeout=KEEPALIVE_S)
            except queue.Empty:
                yield ": keep-alive\n\n"
                continue
            if kind == "tokens":
                chunk = "".join(sse(e) for e in dec.feed(payload))
                if chunk:
                    yield chunk
            elif kind == "done":
                yield "".join(sse(e) for e in dec.flush()) + sse({"done": True, **payload})
                return
            else:
                yield sse({"done": True, "error": str(payload)})
                return
    finally:
        req.cancel()  # no-op when finished; stops the row when the client went away


# ----------------------------------------------------------------------------------------------------
# App


def create_app(engine_service, *, limits: Limits = Limits(), defaults: Defaults = Defaults(), log=None) -> Flask:
    """The web app around one engine service (jaxchat.web.service.EngineService or anything with the same
    submit / info / stats / ready / cache_len / max_tokens_limit / tokenizer). JAX runs only in the service's
    thread; request threads validate, render prompts, and decode streamed ids."""
    svc = engine_service
    tok = svc.tokenizer
    log = log or (lambda msg: None)
    app = Flask(__name__, template_folder="templates", static_folder="static")
    app.config["MAX_CONTENT_LENGTH"] = limits.max_body_bytes
    app.json.sort_keys = False
    app.extensions["jaxchat_service"] = svc

    def error(status: int, message: str, field: str | None = None, headers: dict | None = None):
        resp = jsonify({"error": message, "field": field})
        resp.status_code = status
        for k, v in (headers or {}).items():
            resp.headers[k] = v
        return resp

    @app.errorhandler(ApiError)
    def _api_error(e: ApiError):
        return error(e.status, e.message, e.field, e.headers)

    @app.errorhandler(HTTPException)
    def _http_error(e: HTTPException):
        msg = {413: f"request body too large (at most {limits.max_body_bytes} bytes)"}.get(e.code, e.description)
        return error(e.code or 500, f"{e.name}: {msg}" if e.code != 413 else msg)

    @app.errorhandler(Exception)
    def _unexpected(e: Exception):
        log(f"internal error: {type(e).__name__}: {e}")
        return error(500, f"internal error: {type(e).__name__}")

    @app.after_request
    def _cors(resp):
        resp.headers["Access-Control-Allow-Origin"] = "*"
        resp.headers["Access-Control-Allow-Headers"] = "Content-Type"
        resp.headers["Access-Control-Allow-Methods"] = "GET, POST, OPTIONS"
        return resp

    @app.get("/")
    def index():
        return render_template("index.html", info=svc.info(), defaults=asdict(defaults), limits=asdict(limits))

    @app.get("/health")
    def health():
        st = svc.stats()
        status = "error" if st.get("error") else ("ok" if svc.ready else "loading")
        return jsonify({"status": status, "ready": bool(svc.ready), "error": st.get("error"), "model": svc.info(),
                        "limits": {**asdict(limits), "max_tokens_limit": svc.max_tokens_limit},
                        "defaults": asdict(defaults)})

    @app.get("/stats")
    def stats():
        return jsonify(svc.stats())

    @app.post("/chat/completions")
    def completions():
        body = parse_body(request.get_data(cache=False))
        messages, opts = validate(body, limits, defaults)
        prompt = tok.render_for_completion({"messages": messages})
        max_tokens = opts["max_tokens"]
        if not opts["max_tokens_given"]:
            max_tokens = min(max_tokens, svc.cache_len - 1 - len(prompt))
            if max_tokens < 1:
                max_tokens = opts["max_tokens"]  # nothing fits: let check_fits say so
        try:
            req = svc.submit(prompt, max_tokens=max_tokens, temperature=opts["temperature"], top_k=opts["top_k"],
                             seed=opts["seed"])
        except ContextTooLong as e:
            raise ApiError(413, str(e), "messages" if not opts["max_tokens_given"] else "max_tokens") from None
        except QueueFull as e:
            raise ApiError(503, str(e), None, {"Retry-After": str(e.retry_after)}) from None
        except Unavailable as e:
            raise ApiError(503, f"model not available: {e}", None, {"Retry-After": "5"}) from None
        log(f"request {req.id}: {len(messages)} messages, {len(prompt)} prompt tokens, max_tokens {max_tokens}, "
            f"temperature {opts['temperature']:g}, top_k {opts['top_k']}")
        headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no", "X-Request-Id": req.id}
        return Response(_EventStream(req, tok), mimetype="text/event-stream", headers=headers)

    return app
