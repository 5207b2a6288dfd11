"""Tokenizer: round trips on arbitrary text, specials, token_bytes, chat rendering and masks, persistence.

One small tokenizer (vocab 1024, ~300 KB of stdlib source + generated prose) is trained per session.
"""
from __future__ import annotations

import glob
import json
import os
import pickle
import random
import re
import sys
import sysconfig
import types

import numpy as np
import pytest

from jaxchat.tasks.common import render_mc
from jaxchat.tokenizer import DIGIT_PIECES, SPECIAL_TOKENS, SP_SPACE, Tokenizer, train_tokenizer

VOCAB = 1024

WORDS = ("the a of and to in is it you that he was for on are with as I his they be at one have this from or "
         "had by hot word but what some we can out other were all there when up use your how said an each she "
         "café naïve über straße 日本語 中文 한국어 привет 🙂 42 3.14 1999").split()


def _training_texts(budget: int = 300_000) -> list[str]:
    rng = random.Random(0)
    texts, n = [], 0
    lib = sysconfig.get_paths()["stdlib"]
    for path in sorted(glob.glob(os.path.join(lib, "*.py"))):
        with open(path, encoding="utf-8", errors="replace") as f:
            src = f.read()[:20_000]
        texts.append(src)
        n += len(src)
        if n >= budget * 2 // 3:
            break
    while n < budget:  # chat-like prose with some non-ASCII
        para = " ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 60)))
        text = f"User: {para.capitalize()}?\nAssistant: {para[::-1]}.\n\n"
        texts.append(text)
        n += len(text)
    return texts


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return train_tokenizer(_training_texts(), VOCAB, num_threads=2)


# ---------------------------------------------------------------------------------------------------------
# vocabulary layout


def test_layout(tok):
    assert tok.vocab_size == len(tok) == VOCAB
    assert [tok.special_ids[s] for s in SPECIAL_TOKENS] == list(range(1, 10))
    assert tok.bos_id == tok.encode_special("<|bos|>") == 1
    for s in SPECIAL_TOKENS:
        assert tok.id_to_token(tok.encode_special(s)) == s
    assert [tok.id_to_token(i) for i in range(10, 120)] == DIGIT_PIECES
    assert DIGIT_PIECES == [str(n) for n in range(10)] + [f"{n:02d}" for n in range(100)]
    assert tok.id_to_token(120) == "<0x00>" and tok.id_to_token(375) == "<0xFF>"
    with pytest.raises(KeyError, match="unknown special"):
        tok.encode_special("<|nope|>")
    with pytest.raises(IndexError):
        tok.id_to_token(VOCAB)
    assert tok.train_info["chars"] > 200_000 and tok.train_info["vocab_size"] == VOCAB


def test_token_bytes_table(tok):
    tb = tok.token_bytes()
    assert tb.dtype == np.int32 and tb.shape == (VOCAB,)
    assert tb[0] == 0 and all(tb[i] == 0 for i in tok.special_ids.values())
    assert all(tb[i] == 1 for i in range(10, 20)) and all(tb[i] == 2 for i in range(20, 120))  # digits, pairs
    assert all(tb[i] == 1 for i in range(120, 376))  # byte pieces
    for i in range(376, VOCAB):
        piece = tok.id_to_token(i)
        assert tb[i] == len(piece.replace(SP_SPACE, " ").encode("utf-8")) >= 1
    assert tb.max() >= 2
    tb[:] = 0  # a copy: the tokenizer's table is unchanged
    assert tok.token_bytes()[300] > 0


# ---------------------------------------------------------------------------------------------------------
# round trips

SPECIAL_CASES = [
    "", " ", "  ", "\t", "\n", "\r\n", "\r", "\x00", "a\x00b", "\x00\x01\x02\x1f\x7f",
    "   leading and trailing   ", "\n\n\nx\n\n\n", "\t\tdef f():\n\t\treturn 1\r\n",
    "def f(x):\n    if x:\n        return x  # comment\n    return None\n",
    SP_SPACE, SP_SPACE * 3, f"a{SP_SPACE}b", f" {SP_SPACE} ", f"{SP_SPACE}start", f"end{SP_SPACE}", "▁▁ ▁ ▁▁",
    "emoji 🙂👍🏽 👩‍👩‍👧‍👦 🇯🇵", "日本語のテキスト、中文文本，한국어 텍스트", "e\u0301 a\u0308 \u200b\u200d\ufeff",
    "\u00a0\u2028\u2029\u3000\u0085\x0b\x0c", "\ufffd\ufffe\uffff\U0010ffff\ue000",
    "<|bos|>", "<|assistant_end|>", "".join(SPECIAL_TOKENS), "x<|user_start|>y<|user_end|>",
    "<0x41><0xE2><unk><s></s><pad>", "1234567890 3.14159 -42 1e10",
    "\xff\xfe\x80 latin-1 bytes", b"\xe2\x96\x81\xf0\x9f\x99\x82".decode("latin-1"),
    b"\xc3\x28 \xa0\xa1 \xf0\x28\x8c\xbc".decode("utf-8", "replace"),
    b"\xc3\x28\xe2\x96".decode("utf-8", "backslashreplace"),
]


def _random_strings(n: int, seed: int = 1234) -> list[str]:
    rng = random.Random(seed)

    def any_codepoint() -> str:
        while True:
            c = rng.randrange(0x110000)
            if not 0xD800 <= c <= 0xDFFF:  # lone surrogates are not text
                return chr(c)

    pools = [
        lambda: "".join(rng.choice("abcdefghijklmnopqrstuvwxyzABC XYZ.,;:!?'\"()[]{}<>|/\\-_=+*&^%$#@~`")
                        for _ in range(rng.randint(1, 12))),
        lambda: rng.choice([" ", "  ", "    ", "\t", "\n", "\r\n", "\r", "\n    ", "\x0b", "\x0c", "\u00a0", "\u3000"]),
        lambda: chr(rng.choice(list(range(32)) + [127, 0x85])),
        lambda: rng.choice([SP_SPACE, SP_SPACE * 2, f" {SP_SPACE}", f"{SP_SPACE} "]),
        lambda: rng.choice(SPECIAL_TOKENS + ["<0x0A>", "<unk>", "<|", "|>", "<|bos"]),
        lambda: rng.choice(["🙂", "👍🏽", "👩‍💻", "🇫🇷", "🎉🎉", "\U0001f9d1\u200d\U0001f680"]),
        lambda: "".join(chr(rng.randint(0x4E00, 0x9FFF)) for _ in range(rng.randint(1, 5))),
        lambda: "".join(chr(rng.randint(0xAC00, 0xD7A3)) for _ in range(rng.randint(1, 5))),
        lambda: "".join(any_codepoint() for _ in range(rng.randint(1, 6))),
        lambda: rng.randbytes(rng.randint(1, 8)).decode("latin-1"),
        lambda: rng.randbytes(rng.randint(1, 8)).decode("utf-8", "replace"),
        lambda: str(rng.randint(0, 10**12)),
        lambda: rng.choice(WORDS),
    ]
    out = []
    for _ in range(n):
        out.append("".join(rng.choice(pools)() for _ in range(rng.randint(0, 14))))
    return out


@pytest.mark.parametrize("text", SPECIAL_CASES)
def test_round_trip_cases(tok, text):
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert not set(ids) & set(tok.special_ids.values())
    assert 0 not in ids  # byte fallback: never <unk>
    assert int(tok.token_bytes()[ids].sum()) == len(text.encode("utf-8"))


@pytest.mark.parametrize("text, pieces", [
    ("12345", ["12", "34", "5"]),  # left to right, at most two digits, like nanochat's \p{N}{1,2}
    ("x=7", None),
    ("(3 + 33) * 0.05", None),
    ("1999 and 2024", None),
    ("a1b22c333", None),
])
def test_numbers_in_digit_pairs(tok, text, pieces):
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    toks = [tok.id_to_token(i) for i in ids]
    if pieces is not None:
        assert toks == pieces
    # digits never merge with other text, and every run of digits is cut into pairs from its left end
    digit_toks = [t for t in toks if any(c.isdigit() for c in t)]
    assert digit_toks == [run[i:i + 2] for run in re.findall(r"\d+", text) for i in range(0, len(run), 2)], toks


def test_round_trip_random(tok):
    texts = _random_strings(600)
    tb = tok.token_bytes()
    specials = set(tok.special_ids.values())
    batch = tok.encode(texts, num_threads=2)
    for text, ids in zip(texts, batch):
        assert ids == tok.encode(text)  # batched == per item
        assert tok.decode(ids) == text, repr(text)
        assert not specials & set(ids) and 0 not in ids
        assert int(tb[ids].sum()) == len(text.encode("utf-8"))  # bits-per-byte is exact
    long_text = "".join(texts)
    assert tok.decode(tok.encode(long_text)) == long_text


def test_sp_space_marker_survives(tok):
    ids = tok.encode(f"a{SP_SPACE}b c")
    assert tok.decode(ids) == f"a{SP_SPACE}b c"
    assert tok.decode(tok.encode(" ")) == " "  # and a real space is still a space


def test_specials_unreachable_from_text(tok):
    text = " ".join(SPECIAL_TOKENS) + "".join(SPECIAL_TOKENS)
    assert not set(tok.encode(text)) & set(tok.special_ids.values())
    for s in SPECIAL_TOKENS:
        assert len(tok.encode(s)) > 1
        assert tok.decode([tok.encode_special(s)]) == s  # decodes to its literal text, not ""


def test_encode_types_and_errors(tok):
    assert tok.encode("") == [] and tok.encode([]) == [] and tok.encode(["", "a"])[0] == []
    assert tok.encode(("ab", "cd")) == [tok.encode("ab"), tok.encode("cd")]
    with pytest.raises(TypeError):
        tok.encode(b"bytes")
    with pytest.raises(TypeError):
        tok.encode(["ok", 3])
    with pytest.raises(ValueError, match="not valid Unicode"):
        tok.encode("lone \ud800 surrogate")
    with pytest.raises(ValueError, match="not valid Unicode"):
        tok.encode(["fine", "bad \udfff"])


def test_prepend_append(tok):
    base = tok.encode("hello world")
    bos, end = tok.bos_id, tok.encode_special("<|assistant_end|>")
    assert tok.encode("hello world", prepend=bos) == [bos] + base
    assert tok.encode("hello world", prepend="<|bos|>", append="<|assistant_end|>") == [bos] + base + [end]
    assert tok.encode("hello world", append=end) == base + [end]
    assert tok.encode(["hello world", ""], prepend="<|bos|>") == [[bos] + base, [bos]]
    with pytest.raises(KeyError):
        tok.encode("x", prepend="<|nope|>")
    with pytest.raises(ValueError):
        tok.encode("x", append=VOCAB)


def test_decode_inputs(tok):
    ids = tok.encode("decode me ▁ 🙂")
    assert tok.decode(np.array(ids, dtype=np.int32)) == "decode me ▁ 🙂"
    assert tok.decode(iter(ids)) == "decode me ▁ 🙂"
    assert tok.decode([tok.bos_id] + ids) == "<|bos|>decode me ▁ 🙂"
    assert tok.decode([0]) == "<unk>"
    emoji = tok.encode("🙂")
    assert tok.decode(emoji[:-1]) == "\ufffd" * len(tok.decode(emoji[:-1]))  # cut mid-character: visible
    with pytest.raises(IndexError):
        tok.decode([VOCAB])
    with pytest.raises(IndexError):
        tok.decode([-1])


# ---------------------------------------------------------------------------------------------------------
# chat rendering


def _conv():
    return {"messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is 12*34?"},
        {"role": "assistant", "content": [
            {"type": "text", "text": "Let me compute. "},
            {"type": "python", "text": "12*34"},
            {"type": "python_output", "text": "408"},
            {"type": "text", "text": "It is 408."},
        ]},
        {"role": "user", "content": "Thanks!"},
        {"role": "assistant", "content": "You're welcome."},
    ]}


def test_render_conversation_golden(tok):
    ids, mask = tok.render_conversation(_conv())
    S = tok.special_ids
    # exact layout, independent of the learned merges
    assert tok.decode(ids) == (
        "<|bos|><|user_start|>Be brief.\n\nWhat is 12*34?<|user_end|>"
        "<|assistant_start|>Let me compute. <|python_start|>12*34<|python_end|>"
        "<|output_start|>408<|output_end|>It is 408.<|assistant_end|>"
        "<|user_start|>Thanks!<|user_end|><|assistant_start|>You're welcome.<|assistant_end|>"
    )
    # exact ids and mask, segment by segment
    E = tok.encode
    segments = [
        ([S["<|bos|>"], S["<|user_start|>"]], 0), (E("Be brief.\n\nWhat is 12*34?"), 0),
        ([S["<|user_end|>"], S["<|assistant_start|>"]], 0),
        (E("Let me compute. "), 1), ([S["<|python_start|>"]], 1), (E("12*34"), 1), ([S["<|python_end|>"]], 1),
        ([S["<|output_start|>"]], 0), (E("408"), 0), ([S["<|output_end|>"]], 0),
        (E("It is 408."), 1), ([S["<|assistant_end|>"]], 1),
        ([S["<|user_start|>"]], 0), (E("Thanks!"), 0), ([S["<|user_end|>"], S["<|assistant_start|>"]], 0),
        (E("You're welcome."), 1), ([S["<|assistant_end|>"]], 1),
    ]
    assert ids == [i for seg, _ in segments for i in seg]
    assert mask == [m for seg, m in segments for _ in seg]
    assert len(ids) == len(mask)
    # what is trained, as text: assistant text, python calls with delimiters, assistant_end; never output/user
    trained = tok.decode([i for i, m in zip(ids, mask) if m])
    assert trained == ("Let me compute. <|python_start|>12*34<|python_end|>It is 408.<|assistant_end|>"
                       "You're welcome.<|assistant_end|>")
    for name in ("<|bos|>", "<|user_start|>", "<|user_end|>", "<|assistant_start|>", "<|output_start|>",
                 "<|output_end|>"):
        assert all(m == 0 for i, m in zip(ids, mask) if i == S[name])


def test_render_without_system_and_string_content(tok):
    conv = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
    ids, mask = tok.render_conversation(conv)
    S = tok.special_ids
    assert ids == [S["<|bos|>"], S["<|user_start|>"], *tok.encode("hi"), S["<|user_end|>"],
                   S["<|assistant_start|>"], *tok.encode("hello"), S["<|assistant_end|>"]]
    n_hi = len(tok.encode("hi"))
    assert mask == [0] * (4 + n_hi) + [1] * (len(tok.encode("hello")) + 1)
    assert tok.render_conversation(conv["messages"]) == (ids, mask)  # a bare message list works too


def test_render_truncation(tok):
    full_ids, full_mask = tok.render_conversation(_conv(), max_tokens=None)
    ids, mask = tok.render_conversation(_conv(), max_tokens=10)
    assert ids == full_ids[:10] and mask == full_mask[:10] and len(ids) == 10
    assert tok.render_conversation(_conv()) == (full_ids, full_mask)  # 2048 > length: no cut


def test_render_for_completion(tok):
    conv = _conv()
    ids = tok.render_for_completion(conv)
    assert ids[-1] == tok.encode_special("<|assistant_start|>")
    prefix, _ = tok.render_conversation({"messages": conv["messages"][:-1]})
    assert ids == prefix + [tok.encode_special("<|assistant_start|>")]
    assert "You're welcome." not in tok.decode(ids)
    assert len(conv["messages"]) == 5  # the caller's conversation is not modified
    # a conversation that already ends with the user: nothing dropped
    ids2 = tok.render_for_completion({"messages": conv["messages"][:-1]})
    assert ids2 == ids


@pytest.mark.parametrize("messages, match", [
    ([], "no messages"),
    ([{"role": "assistant", "content": "hi"}], "message 0"),
    ([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}], "message 1"),
    ([{"role": "system", "content": "s"}, {"role": "user", "content": "a"}, {"role": "user", "content": "b"}],
     "message 2"),
    ([{"role": "system", "content": "s"}], "message 1"),
    ([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}, {"role": "system", "content": "c"}],
     "message 2"),
    ([{"role": "user", "content": "a"}, {"role": "tool", "content": "b"}], "message 1 has unknown role"),
    ([{"role": "user", "content": ["a"]}], "message 0"),
    ([{"role": "user", "content": "a"}, {"role": "assistant", "content": [{"type": "image", "text": "x"}]}],
     "message 1 part 0"),
    ([{"role": "user", "content": "a"}, {"role": "assistant", "content": [{"type": "text", "text": 3}]}],
     "message 1 part 0"),
    ([{"content": "a"}], "message 0"),
])
def test_render_errors(tok, messages, match):
    with pytest.raises(ValueError, match=match):
        tok.render_conversation({"messages": messages})


def test_render_mc_golden():
    s = render_mc("What color is the sky?", ["A", "B", "C"], ["red", "blue", "green"])
    assert s == ("Multiple Choice question: What color is the sky?\n"
                 "- red=A\n- blue=B\n- green=C\n"
                 "\nRespond only with the letter of the correct answer.")
    with pytest.raises(ValueError):
        render_mc("q", ["A"], ["x", "y"])


def test_mc_answer_is_bare_letter(tok):
    conv = {"messages": [{"role": "user", "content": render_mc("Q?", "AB", ["x", "y"])},
                         {"role": "assistant", "content": "B"}]}
    ids, mask = tok.render_conversation(conv)
    trained = [i for i, m in zip(ids, mask) if m]
    assert trained == tok.encode("B") + [tok.encode_special("<|assistant_end|>")]


# ---------------------------------------------------------------------------------------------------------
# persistence, loading, training arguments


def test_missing_tokenizer_message(tmp_path, monkeypatch):
    monkeypatch.setenv("JAXCHAT_BASE_DIR", str(tmp_path))
    with pytest.raises(FileNotFoundError, match=r"python -m scripts\.tok_train"):
        Tokenizer.load()
    with pytest.raises(FileNotFoundError, match=r"python -m scripts\.tok_train"):
        Tokenizer.load(tmp_path / "nowhere")


def test_save_load(tok, tmp_path, monkeypatch):
    monkeypatch.setenv("JAXCHAT_BASE_DIR", str(tmp_path))
    path = tok.save(tmp_path / "tokenizer" / "tokenizer.model")
    texts = _random_strings(50, seed=7)
    for t2 in (Tokenizer.load(), Tokenizer.load(tmp_path / "tokenizer"), Tokenizer.load(path),
               Tokenizer.load("tokenizer"), Tokenizer.from_file(path), pickle.loads(pickle.dumps(tok))):
        assert t2.model_proto == tok.model_proto
        assert t2.vocab_size == tok.vocab_size and t2.special_ids == tok.special_ids
        assert np.array_equal(t2.token_bytes(), tok.token_bytes())
        assert t2.encode(texts) == tok.encode(texts)
        assert t2.render_conversation(_conv()) == tok.render_conversation(_conv())


def test_rejects_foreign_model(tmp_path):
    import io

    import sentencepiece as spm

    w = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(_training_texts(30_000)), model_writer=w,
                                   model_type="bpe", vocab_size=300, minloglevel=2)
    with pytest.raises(ValueError, match="not a jaxchat tokenizer"):
        Tokenizer(w.getvalue())


def test_training_chunks():
    from jaxchat.tokenizer import _chunks

    doc = "".join(f"line {i} " * (i % 7) + "\n" for i in range(3000)) + "x" * 5000
    chunks = list(_chunks(doc, 1000))
    assert "".join(chunks) == doc and all(len(c) <= 1000 for c in chunks)
    assert all(c.endswith("\n") for c in chunks[:-6])  # cut after newlines where there are any


def test_train_arguments():
    with pytest.raises(ValueError, match="vocab_size"):
        train_tokenizer(["abc"], 200)
    texts = _training_texts(60_000)
    t = train_tokenizer(iter(texts), 500, max_chars=40_000, doc_cap=5_000, num_threads=1)
    assert t.vocab_size == 500
    assert t.train_info["chars"] == 40_000
    assert t.train_info["documents"] >= 40_000 // 5_000
    # deterministic, whatever the thread count (the proto differs only in the recorded trainer settings)
    t2 = train_tokenizer(iter(texts), 500, max_chars=40_000, doc_cap=5_000, num_threads=2)
    assert [t.id_to_token(i) for i in range(500)] == [t2.id_to_token(i) for i in range(500)]
    with pytest.raises(ValueError, match="digit_group must be 1"):
        train_tokenizer(iter(texts), 500, digit_group=3)


def test_one_token_per_digit():
    """digit_group=1 (the tiny preset): no digit symbols, bytes right after the specials, every digit alone."""
    t = train_tokenizer(iter(_training_texts(60_000)), 400, max_chars=40_000, num_threads=1, digit_group=1)
    assert t.id_to_token(10) == "<0x00>" and t.id_to_token(265) == "<0xFF>"
    assert t.train_info["digit_group"] == 1
    for text in ["12345", "x = 1999 + 3.14", "a22b"]:
        ids = t.encode(text)
        assert t.decode(ids) == text
        digit_toks = [t.id_to_token(i) for i in ids if any(c.isdigit() for c in t.id_to_token(i))]
        assert digit_toks == [c for c in text if c.isdigit()]


def test_scripts_end_to_end(tmp_path, monkeypatch, capsys):
    """tok_train + tok_eval run as entry points, on a stand-in corpus module."""
    texts = _training_texts(120_000)
    fake = types.ModuleType("jaxchat.corpus")

    def iter_documents(source="embedded", split="train", *, max_chars=None, doc_cap=None):
        docs = texts if split == "train" else texts[-5:]
        yield from (d[:doc_cap] if doc_cap else d for d in docs)

    fake.iter_documents = iter_documents
    monkeypatch.setitem(sys.modules, "jaxchat.corpus", fake)
    monkeypatch.setenv("JAXCHAT_BASE_DIR", str(tmp_path))
    from scripts import tok_eval, tok_train

    summary = tok_train.main(["--vocab_size=600", "--max_chars=1e5", "--doc_cap=20_000", "--num_threads=1"])
    d = tmp_path / "tokenizer"
    assert (d / "tokenizer.model").exists() and (d / "token_bytes.npy").exists()
    assert json.loads((d / "tok_train.json").read_text())["vocab_size"] == 600 == summary["vocab_size"]
    assert summary["train_chars"] == 100_000 and summary["digit_group"] == 1  # the tiny preset (the default)
    assert np.array_equal(np.load(d / "token_bytes.npy"), Tokenizer.load().token_bytes())
    result = tok_eval.main([])
    kinds = {r["kind"] for r in result["rows"]}
    assert {"code", "numbers", "chat", "embedded-train", "embedded-val"} <= kinds
    assert all(r["ours"] > 0.9 for r in result["rows"])
    assert json.loads((d / "tok_eval.json").read_text())["vocab_size"] == 600
    out = capsys.readouterr().out
    assert "round trip OK" in out and "bytes/token" in out
