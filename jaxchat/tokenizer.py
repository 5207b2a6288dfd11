"""The tokenizer: sentencepiece BPE set up to act byte-level, with nanochat's special tokens and chat rendering.

nanochat's rustbpe/tiktoken cannot be built offline, so sentencepiece stands in: byte fallback (no `<unk>`, any
UTF-8 round-trips), no normalisation (whitespace and newlines survive), digits split (pairs "00".."99" as symbols
with digit_group=2, as nanochat's `\\p{N}{1,2}`; single digits in the tiny preset), and the 9 specials as CONTROL
symbols so typed "<|assistant_end|>" text never becomes the real token. Ids: 0 `<unk>`, 1..9 specials (bos = 1),
then digit pieces, 256 byte pieces, merges. A literal "▁" (sentencepiece's space marker) is spelled in bytes, and
`decode` maps ids to their exact bytes, so `token_bytes()` sums to the UTF-8 length and bits per byte are exact.
Each training document (cut to `doc_cap` chars) is one sentence, so pieces may span newlines; training is
deterministic for any thread count. tokenizer/README.md says more.
"""
from __future__ import annotations

import io
import os
import time
from pathlib import Path
from typing import Iterable, Iterator, Mapping, Sequence

import numpy as np
import sentencepiece as spm

from jaxchat.common import base_dir
from jaxchat.tasks.common import PART_TYPES

SPECIAL_TOKENS = ["<|bos|>", "<|user_start|>", "<|user_end|>", "<|assistant_start|>", "<|assistant_end|>",
                  "<|python_start|>", "<|python_end|>", "<|output_start|>", "<|output_end|>"]
SP_SPACE = "\u2581"  # sentencepiece's whitespace marker "▁"
UNK_PIECE = "<unk>"
_N_BYTE_PIECES = 256
# digit_group=2: "0".."9" then "00".."99". The singles are symbols too, so a digit never falls back to byte
# pieces however rare lone digits become once pairs take most of them.
DIGIT_PIECES = [str(a) for a in range(10)] + [f"{a}{b}" for a in range(10) for b in range(10)]
_MIN_VOCAB = 1 + len(SPECIAL_TOKENS) + _N_BYTE_PIECES  # unk + specials + bytes (+ 110 digit pieces for pairs)
_MAX_SENTENCE_CHARS = 16_384  # longest training "sentence"; longer documents are cut at newlines
TOKENIZER_FILENAME = "tokenizer.model"
TOKEN_BYTES_FILENAME = "token_bytes.npy"


def default_tokenizer_dir() -> Path:
    return base_dir() / "tokenizer"


# ----------------------------------------------------------------------------------------------------------
# training


def _chunks(doc: str, limit: int) -> Iterator[str]:
    """Cut ``doc`` into pieces of at most ``limit`` chars, preferring to cut right after a newline."""
    while len(doc) > limit:
        cut = doc.rfind("\n", 0, limit) + 1
        if cut <= limit // 2:  # no newline in the second half: cut hard
            cut = limit
        yield doc[:cut]
        doc = doc[cut:]
    if doc:
        yield doc


def _training_sentences(texts: Iterable[str], max_chars: int | None, doc_cap: int | None, info: dict) -> Iterator[str]:
    total = 0
    for doc in texts:
        if max_chars is not None and total >= max_chars:
            break
        if not isinstance(doc, str):
            raise TypeError(f"training texts must be str, got {type(doc).__name__}")
        if doc_cap is not None:
            doc = doc[:doc_cap]
        if max_chars is not None:
            doc = doc[: max_chars - total]
        # lone surrogates cannot reach sentencepiece (it needs valid UTF-8): replace them
        doc = doc.encode("utf-8", "replace").decode("utf-8")
        if not doc:
            continue
        total += len(doc)
        info["documents"] += 1
        info["chars"] = total
        for chunk in _chunks(doc, _MAX_SENTENCE_CHARS):
            info["sentences"] += 1
            yield chunk


def train_tokenizer(texts: Iterable[str], vocab_size: int, *, max_chars: int | None = None,
                    doc_cap: int | None = 10_000, num_threads: int | None = None, character_coverage: float = 0.9995,
                    digit_group: int = 2) -> "Tokenizer":
    """Train in-process from documents. `vocab_size` counts everything (unk, specials, digits, bytes); each
    document is cut to `doc_cap` chars, training stops after `max_chars`. The result carries `train_info`."""
    if digit_group not in (1, 2):
        raise ValueError(f"digit_group must be 1 (one token per digit) or 2 (pairs, as nanochat), got {digit_group!r}")
    digit_pieces = DIGIT_PIECES if digit_group == 2 else []
    min_vocab = _MIN_VOCAB + len(digit_pieces)
    if vocab_size <= min_vocab:
        raise ValueError(f"vocab_size must exceed {min_vocab} (unk + {len(SPECIAL_TOKENS)} specials + "
                         f"{len(digit_pieces)} digit pieces + 256 bytes)")
    if num_threads is None:
        num_threads = max(1, min(os.cpu_count() or 1, 16))
    info = {"documents": 0, "sentences": 0, "chars": 0}
    writer = io.BytesIO()
    t0 = time.time()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=_training_sentences(texts, max_chars, doc_cap, info), model_writer=writer,
            model_type="bpe", vocab_size=int(vocab_size), byte_fallback=True, split_digits=True,
            character_coverage=character_coverage, normalization_rule_name="identity",
            remove_extra_whitespaces=False, add_dummy_prefix=False, allow_whitespace_only_pieces=True,
            max_sentence_length=4 * _MAX_SENTENCE_CHARS + 16,  # bytes; 4 = longest UTF-8 char
            input_sentence_size=0,  # use every sentence
            control_symbols=SPECIAL_TOKENS, user_defined_symbols=digit_pieces, unk_id=0, unk_piece=UNK_PIECE,
            bos_id=-1, eos_id=-1, pad_id=-1, num_threads=int(num_threads), minloglevel=2)
    except RuntimeError as e:
        raise RuntimeError(
            f"sentencepiece training failed ({e}); with {info['chars']:,} chars of text, vocab_size={vocab_size} "
            "may be too large (more text) or too small (fewer distinct characters)"
        ) from e
    tok = Tokenizer(writer.getvalue())
    if tok.vocab_size != vocab_size:  # hard_vocab_limit makes sentencepiece fail instead; keep the promise
        raise RuntimeError(f"trained vocab {tok.vocab_size} != requested {vocab_size}")
    tok.train_info = dict(info, seconds=round(time.time() - t0, 3), vocab_size=int(vocab_size),
                          doc_cap=doc_cap, max_chars=max_chars, num_threads=int(num_threads),
                          digit_group=int(digit_group))
    return tok


# ----------------------------------------------------------------------------------------------------------
# the tokenizer


class Tokenizer:
    """A trained sentencepiece model plus jaxchat's conventions (see the module docstring)."""

    def __init__(self, model_proto: bytes):
        self._proto = bytes(model_proto)
        self.sp = spm.SentencePieceProcessor(model_proto=self._proto)
        self.train_info: dict | None = None
        sp = self.sp
        n = sp.get_piece_size()
        self.special_ids: dict[str, int] = {}
        for name in SPECIAL_TOKENS:
            i = sp.piece_to_id(name)
            if sp.id_to_piece(i) != name or not sp.is_control(i):
                raise ValueError(f"not a jaxchat tokenizer: special token {name!r} is missing or not a control symbol")
            self.special_ids[name] = i
        self._byte_ids = [0] * _N_BYTE_PIECES
        table: list[bytes] = []  # the exact bytes each id decodes to
        lengths = np.zeros(n, dtype=np.int32)  # bytes each id contributes to the text (0: specials, unk)
        for i in range(n):
            piece = sp.id_to_piece(i)
            if sp.is_control(i) or sp.is_unknown(i):
                table.append(piece.encode("utf-8"))  # decodes to its literal text, counts 0 bytes
                continue
            if sp.is_byte(i):
                b = bytes([int(piece[3:5], 16)])
                self._byte_ids[b[0]] = i
            else:
                b = piece.replace(SP_SPACE, " ").encode("utf-8")
            table.append(b)
            lengths[i] = len(b)
        if not all(self._byte_ids):
            raise ValueError("not a jaxchat tokenizer: the model lacks byte-fallback pieces")
        self._table = table
        self._token_bytes = lengths
        self._space_ids = [self._byte_ids[b] for b in SP_SPACE.encode("utf-8")]
        self.bos_id = self.special_ids["<|bos|>"]

    # --- construction / persistence ---------------------------------------------------------------------
    @classmethod
    def from_file(cls, path: str | os.PathLike) -> "Tokenizer":
        return cls(Path(path).read_bytes())

    def save(self, path: str | os.PathLike) -> Path:
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_name(p.name + ".tmp")
        tmp.write_bytes(self._proto)
        os.replace(tmp, p)
        return p

    @classmethod
    def load(cls, name_or_dir: str | os.PathLike | None = None) -> "Tokenizer":
        """Load a trained tokenizer: None → ``base_dir()/tokenizer/tokenizer.model``; a directory → its
        ``tokenizer.model``; a file → that file. A relative name is looked up under ``base_dir()`` first."""
        if name_or_dir is None:
            path = default_tokenizer_dir() / TOKENIZER_FILENAME
        else:
            p = Path(name_or_dir).expanduser()
            if not p.is_absolute() and (base_dir() / p).exists():  # base_dir() wins over the cwd
                p = base_dir() / p
            path = p / TOKENIZER_FILENAME if p.is_dir() else p
        if not path.is_file():
            raise FileNotFoundError(
                f"no tokenizer at {path}: train one first with `python -m scripts.tok_train` "
                "(set JAXCHAT_BASE_DIR to use another base directory)"
            )
        return cls.from_file(path)

    @property
    def model_proto(self) -> bytes:
        return self._proto

    def __getstate__(self):  # picklable (data-loader worker processes)
        return {"proto": self._proto, "train_info": self.train_info}

    def __setstate__(self, state):
        self.__init__(state["proto"])
        self.train_info = state.get("train_info")

    # --- vocabulary ---------------------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        return len(self._table)

    def __len__(self) -> int:
        return len(self._table)

    def id_to_token(self, i: int) -> str:
        """The sentencepiece piece for id ``i`` ("▁" = space, "<0x0A>" = a byte, "<|bos|>" = a special)."""
        if not 0 <= int(i) < len(self._table):
            raise IndexError(f"token id {i} out of range [0, {len(self._table)})")
        return self.sp.id_to_piece(int(i))

    def encode_special(self, name: str) -> int:
        try:
            return self.special_ids[name]
        except KeyError:
            raise KeyError(f"unknown special token {name!r}; known: {SPECIAL_TOKENS}") from None

    def token_bytes(self) -> np.ndarray:
        """int32 [vocab]: UTF-8 bytes each token adds to the decoded text (0 for specials and ``<unk>``)."""
        return self._token_bytes.copy()

    # --- encode / decode ----------------------------------------------------------------------------------
    def _resolve(self, tok: int | str | None) -> int | None:
        if tok is None:
            return None
        if isinstance(tok, str):
            return self.encode_special(tok)
        tok = int(tok)
        if not 0 <= tok < self.vocab_size:
            raise ValueError(f"token id {tok} out of range [0, {self.vocab_size})")
        return tok

    def _sp_encode(self, texts: list[str], num_threads: int | None) -> list[list[int]]:
        try:
            if len(texts) <= 8 or num_threads == 1:  # a thread pool costs more than it saves here
                enc = self.sp.encode
                return [enc(t) for t in texts]
            if num_threads is None:
                return self.sp.encode(texts)
            return self.sp.encode(texts, num_threads=int(num_threads))
        except (TypeError, RuntimeError, UnicodeError):
            for t in texts:  # name the culprit
                if not isinstance(t, str):
                    raise TypeError(f"encode expects str, got {type(t).__name__}") from None
                if t.encode("utf-8", "replace").decode("utf-8") != t:
                    raise ValueError("cannot encode text that is not valid Unicode (lone surrogates)") from None
            raise

    def _encode_many(self, texts: list[str], num_threads: int | None) -> list[list[int]]:
        if not any(SP_SPACE in t for t in texts if isinstance(t, str)):
            return self._sp_encode(texts, num_threads)
        # a literal "▁" would decode as a space: encode around it and spell it with byte pieces
        parts: list[str] = []
        counts: list[int] = []
        for t in texts:
            if not isinstance(t, str):
                raise TypeError(f"encode expects str, got {type(t).__name__}")
            ps = t.split(SP_SPACE)
            parts.extend(ps)
            counts.append(len(ps))
        enc = self._sp_encode(parts, num_threads)
        out, k = [], 0
        for c in counts:
            ids = list(enc[k])
            for j in range(1, c):
                ids.extend(self._space_ids)
                ids.extend(enc[k + j])
            out.append(ids)
            k += c
        return out

    def encode(self, text: str | Sequence[str], prepend: int | str | None = None, append: int | str | None = None,
               num_threads: int | None = None) -> list[int] | list[list[int]]:
        """Encode a string (→ list of ids) or a list of strings (→ list of lists, multi-threaded).
        ``prepend``/``append``: a token id or a special token's name, e.g. ``prepend="<|bos|>"``.
        Text is always ordinary text: special-token strings in it are encoded as plain characters."""
        pre, app = self._resolve(prepend), self._resolve(append)
        if isinstance(text, str):
            batch, single = [text], True
        elif isinstance(text, (list, tuple)):
            batch, single = list(text), False
        else:
            raise TypeError(f"encode expects str or list of str, got {type(text).__name__}")
        out = self._encode_many(batch, None if single else num_threads)
        if pre is not None or app is not None:
            head = [pre] if pre is not None else []
            tail = [app] if app is not None else []
            out = [head + ids + tail for ids in out]
        else:
            out = [list(ids) for ids in out]
        return out[0] if single else out

    def decode(self, ids: Iterable[int]) -> str:
        """Ids → text. Nothing is skipped: specials (and ``<unk>``) appear as their literal text; ids that end
        mid-character give U+FFFD."""
        if hasattr(ids, "tolist"):  # numpy / jax arrays
            ids = ids.tolist()
        ids = ids if isinstance(ids, list) else list(ids)
        table = self._table
        if ids and min(ids) < 0:
            raise IndexError(f"negative token id {min(ids)}")
        try:
            data = b"".join([table[i] for i in ids])
        except IndexError:
            raise IndexError(f"token id {max(ids)} out of range [0, {len(table)})") from None
        return data.decode("utf-8", errors="replace")

    # --- chat rendering -----------------------------------------------------------------------------------
    def render_conversation(self, conversation, max_tokens: int | None = 2048) -> tuple[list[int], list[int]]:
        """Conversation → (ids, mask), nanochat's layout. mask 1 = trained (assistant text, python calls incl.
        their delimiters, ``<|assistant_end|>``); 0 = BOS, user turns, ``<|assistant_start|>``, tool output
        incl. its delimiters. Both lists are cut to ``max_tokens`` (None: no cut)."""
        messages = _messages_of(conversation)
        S = self.special_ids
        # segments: (special id | None, text | None, mask)
        segs: list[tuple[int | None, str | None, int]] = [(S["<|bos|>"], None, 0)]
        for role, content, mi in _normalized_turns(messages):
            if role == "user":
                segs += [(S["<|user_start|>"], None, 0), (None, content, 0), (S["<|user_end|>"], None, 0)]
                continue
            segs.append((S["<|assistant_start|>"], None, 0))
            if isinstance(content, str):
                segs.append((None, content, 1))
            else:
                for pi, part in enumerate(content):
                    kind, text = _part(part, mi, pi)
                    if kind == "text":
                        segs.append((None, text, 1))
                    elif kind == "python":
                        segs += [(S["<|python_start|>"], None, 1), (None, text, 1), (S["<|python_end|>"], None, 1)]
                    else:  # python_output: produced by the tool at inference time, never trained
                        segs += [(S["<|output_start|>"], None, 0), (None, text, 0), (S["<|output_end|>"], None, 0)]
            segs.append((S["<|assistant_end|>"], None, 1))
        texts = [t for sid, t, _ in segs if sid is None]
        encoded = iter(self._encode_many(texts, 1)) if texts else iter(())
        ids: list[int] = []
        mask: list[int] = []
        for sid, _, m in segs:
            new = [sid] if sid is not None else next(encoded)
            ids.extend(new)
            mask.extend([m] * len(new))
        if max_tokens is not None:
            ids, mask = ids[:max_tokens], mask[:max_tokens]
        return ids, mask

    def render_for_completion(self, conversation) -> list[int]:
        """Prompt ids for sampling the assistant's reply: drops a final assistant message (if any) and ends
        with ``<|assistant_start|>``. Not truncated (a cut prompt would be malformed; callers crop)."""
        messages = list(_messages_of(conversation))
        if messages and isinstance(messages[-1], Mapping) and messages[-1].get("role") == "assistant":
            messages.pop()
        ids, _ = self.render_conversation({"messages": messages}, max_tokens=None)
        ids.append(self.special_ids["<|assistant_start|>"])
        return ids


def _messages_of(conversation) -> list:
    if isinstance(conversation, Mapping):
        if "messages" not in conversation:
            raise ValueError("conversation has no 'messages'")
        messages = conversation["messages"]
    else:
        messages = conversation
    if not isinstance(messages, (list, tuple)):
        raise ValueError("conversation['messages'] must be a list of messages")
    return list(messages)


def _normalized_turns(messages: list) -> Iterator[tuple[str, object, int]]:
    """Validate roles/alternation and merge a leading system message into the first user message.
    Yields (role, content, original message index)."""
    if not messages:
        raise ValueError("conversation has no messages")
    for i, m in enumerate(messages):
        if not isinstance(m, Mapping) or "role" not in m or "content" not in m:
            raise ValueError(f"message {i} must be a dict with 'role' and 'content'")
        if m["role"] not in ("system", "user", "assistant"):
            raise ValueError(f"message {i} has unknown role {m['role']!r} (system, user or assistant)")
    start, system = 0, None
    if messages[0]["role"] == "system":
        system = messages[0]["content"]
        if not isinstance(system, str):
            raise ValueError("message 0 (system) content must be a string")
        if len(messages) < 2 or messages[1]["role"] != "user":
            raise ValueError("message 1 must be a user message (a system message must be followed by one)")
        start = 1
    for k, i in enumerate(range(start, len(messages))):
        m = messages[i]
        want = "user" if k % 2 == 0 else "assistant"
        if m["role"] != want:
            raise ValueError(f"message {i} has role {m['role']!r} but a {want!r} message was expected "
                             "(after an optional system message, turns alternate user, assistant, ...)")
        content = m["content"]
        if want == "user":
            if not isinstance(content, str):
                raise ValueError(f"message {i} (user) content must be a string")
            if system is not None and i == start:
                content = system + "\n\n" + content
        elif not isinstance(content, (str, list, tuple)):
            raise ValueError(f"message {i} (assistant) content must be a string or a list of parts")
        yield want, content, i


def _part(part, mi: int, pi: int) -> tuple[str, str]:
    if not isinstance(part, Mapping) or part.get("type") not in PART_TYPES:
        raise ValueError(f"message {mi} part {pi}: expected {{'type': 'text'|'python'|'python_output', 'text': str}}")
    text = part.get("text")
    if not isinstance(text, str):
        raise ValueError(f"message {mi} part {pi}: 'text' must be a string")
    return part["type"], text

