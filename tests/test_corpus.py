"""jaxchat.corpus: embedded corpus, user files, FineWeb / ClimbMix shard download (offline, loopback server)."""
import ast
import functools
import hashlib
import json
import os
import pickle
import subprocess
import sys
import threading
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from helpers import FileServer
from jaxchat import corpus
from jaxchat.corpus import CorpusError, describe_source, document_blocks, iter_documents

ROOT = Path(__file__).resolve().parents[1]
download_fineweb = functools.partial(corpus.download_shards, "fineweb")


# ----------------------------------------------------------------------------------------------
# embedded corpus (built once per session)


def _units(blocks):
    """(component, unit id) of every document, from the block index."""
    return [(s[1], u) for s in blocks.specs for u in s[3]]


@pytest.fixture(scope="session")
def embedded():
    out = {}
    for split in ("train", "val"):
        b = document_blocks("embedded", split)
        docs = [b[i] for i in range(len(b))]
        out[split] = {"blocks": b, "docs": docs, "labels": [spec[1] for spec in b.specs]}
    return out


def test_embedded_split_disjoint_and_complete(embedded):
    train, val = _units(embedded["train"]["blocks"]), _units(embedded["val"]["blocks"])
    assert len(set(train)) == len(train) and len(set(val)) == len(val)
    assert not set(train) & set(val)
    assert val, "val split must not be empty"
    every = {(comp, u) for comp, root in corpus._embedded_roots("embedded")
             for u in corpus._component_units(comp, root)[0]}
    assert {c for c, _ in every} >= {"stdlib", "chitchat"}
    assert set(train) | set(val) == every
    assert 0.005 < len(val) / len(every) < 0.05
    # blocks respect the packing limits
    for split in ("train", "val"):
        assert all(1 <= len(d) <= corpus.BLOCK_DOCS for d in embedded[split]["docs"])


def test_embedded_content(embedded):
    units = _units(embedded["train"]["blocks"]) + _units(embedded["val"]["blocks"])
    stdlib = [u for c, u in units if c == "stdlib"]
    assert "os.py" in stdlib and "json/decoder.py" in stdlib
    assert not [u for u in stdlib if {"test", "tests", "idle_test", "site-packages"} & set(u.split("/"))]
    assert not [u for u in stdlib if u.split("/")[-1].startswith("test_")]
    docs = [d for split in ("train", "val") for blk, lab in zip(embedded[split]["docs"], embedded[split]["labels"])
            for d in blk if lab == "stdlib"]
    for src in docs[::25]:  # a sample of real, parseable Python source
        ast.parse(src)
    assert max(len(d.encode()) for d in docs) <= corpus.STDLIB_MAX_BYTES
    chat = [d for blk, lab in zip(embedded["train"]["docs"], embedded["train"]["labels"]) for d in blk
            if lab == "chitchat"]
    assert len(chat) > 3500
    assert all(d.startswith("A: ") for d in chat)
    assert all("\nB: " in d for d in chat)  # unanswered one-speaker conversations are skipped
    # no eval benchmark text leaks in: a HumanEval prompt signature never appears
    everything = [d for split in ("train", "val") for blk in embedded[split]["docs"] for d in blk]
    assert not any("def has_close_elements(" in d for d in everything)


def test_embedded_deterministic_and_picklable(embedded):
    before = embedded["train"]["blocks"].specs
    corpus._embedded_groups.cache_clear()  # rebuild the index from scratch
    again = document_blocks("embedded", "train")
    assert again.specs == before
    i = len(before) // 2
    assert again[i] == embedded["train"]["docs"][i]
    clone = pickle.loads(pickle.dumps(again))
    assert len(clone) == len(again) and clone[i] == again[i] and clone[-1] == again[-1]
    # a fresh construction is cheap: the index is only built on first use
    fresh = pickle.loads(pickle.dumps(document_blocks("embedded", "val")))
    assert "specs" not in vars(fresh) and len(fresh) == len(embedded["val"]["blocks"])


def test_embedded_same_index_in_another_process(embedded):
    digest = hashlib.sha1(repr(embedded["train"]["blocks"].specs).encode()).hexdigest()
    code = ("import hashlib; from jaxchat.corpus import document_blocks as d; "
            "print(hashlib.sha1(repr(d('embedded','train').specs).encode()).hexdigest())")
    env = dict(os.environ, PYTHONHASHSEED="12345")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=120, check=True)
    assert out.stdout.strip() == digest


def test_describe_embedded_consistent(embedded):
    for split in ("train", "val"):
        desc = describe_source("embedded", split)
        docs, labels = embedded[split]["docs"], embedded[split]["labels"]
        assert desc["blocks"] == len(docs)
        assert desc["docs"] == sum(map(len, docs))
        assert desc["chars"] == sum(len(d) for blk in docs for d in blk)
        assert desc["docs"] == sum(c["docs"] for c in desc["components"].values())
        assert desc["chars"] == sum(c["chars"] for c in desc["components"].values())
        assert {"stdlib", "chitchat"} <= set(desc["components"]) <= set(corpus.EMBEDDED_COMPONENTS)
        for name, c in desc["components"].items():
            assert c["chars"] == sum(len(d) for blk, lab in zip(docs, labels) if lab == name for d in blk)


def test_embedded_component_selection_and_errors(monkeypatch, tmp_path):
    b = document_blocks("embedded:chitchat", "val")
    assert {spec[1] for spec in b.specs} == {"chitchat"}
    with pytest.raises(CorpusError, match="unknown embedded component"):
        document_blocks("embedded:stdlib,olmo_eval")
    monkeypatch.setattr(corpus, "DEBIAN_ROOT", tmp_path)  # nothing installed there
    with pytest.raises(CorpusError, match="apt-get install python3-doc"):
        document_blocks("embedded:pydoc")
    real_find_spec = corpus.importlib.util.find_spec
    monkeypatch.setattr(corpus.importlib.util, "find_spec",
                        lambda name, *a: None if name == "chitchat_dataset" else real_find_spec(name, *a))
    with pytest.raises(CorpusError, match=r"pip install --no-deps chitchat-dataset==0\.9\.0"):
        document_blocks("embedded")


def test_debian_components_from_a_fake_tree(monkeypatch, tmp_path):
    files = {
        "usr/share/doc/python3.11/html/_sources/library/os.rst.txt": ":mod:`os` --- operating system",
        "usr/share/doc/python3.12/html/_sources/library/os.rst.txt": "newer python docs win",
        "usr/share/doc/python3.12/html/_sources/tutorial/index.rst.txt": "The Python Tutorial",
        "usr/share/perl/5.36.0/pod/perlintro.pod": "=head1 NAME\n\nperlintro",
        "usr/share/doc/linux-doc-6.1/html/_sources/admin-guide/README.rst.txt": "Linux kernel release 6.x",
        "usr/share/doc/linux-doc-6.1/html/_sources/translations/zh_CN/index.rst.txt": "中文",
    }
    for rel, text in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    monkeypatch.setattr(corpus, "DEBIAN_ROOT", tmp_path)
    docs = sorted(d for s in ("train", "val") for d in iter_documents("embedded:pydoc,perldoc,linuxdoc", s))
    assert docs == sorted(["newer python docs win", "The Python Tutorial", "=head1 NAME\n\nperlintro",
                           "Linux kernel release 6.x"])
    assert "linuxdoc" in dict(corpus._embedded_roots("embedded"))  # installed components join the default


def test_render_chitchat():
    conv = {"messages": [[{"text": "Hello", "sender": "x"}, {"text": "How are  you?", "sender": "x"}],
                         [{"text": "fine", "sender": "y"}], [{"text": " ", "sender": "x"}],
                         [{"text": "and you", "sender": "y"}], [{"text": "good", "sender": "x"}]]}
    assert corpus.render_chitchat(conv) == "A: Hello How are you?\nB: fine and you\nA: good"


# ----------------------------------------------------------------------------------------------
# user files


def _write_parquet(path, texts, row_group_size):
    pq.write_table(pa.table({"text": texts, "id": list(range(len(texts)))}), path, row_group_size=row_group_size)


@pytest.fixture
def user_dir(tmp_path):
    d = tmp_path / "mydata"
    (d / "sub").mkdir(parents=True)
    expected = {}
    (d / "a.txt").write_text("A small text file.\n\nIt is one document.\n")
    expected["a.txt"] = "A small text file.\n\nIt is one document.\n"
    paras = [f"Paragraph {k}: " + "lorem ipsum dolor " * 12 for k in range(1500)]
    (d / "big.txt").write_text("\n\n\n".join(paras) + "\n \n")  # > 256 KiB: split at blank-line runs
    assert (d / "big.txt").stat().st_size > corpus.TXT_SPLIT_BYTES
    expected.update({f"big.txt#{k}": p.rstrip() for k, p in enumerate(paras)})  # trailing space dropped
    rows = [{"text": f"jsonl doc {k} é"} for k in range(90)]
    (d / "sub" / "b.jsonl").write_text("\n".join(json.dumps(r) for r in rows[:50]) + "\n\n"
                                       + "\n".join(json.dumps(r) for r in rows[50:]) + "\n")
    expected.update({f"jsonl{k}": r["text"] for k, r in enumerate(rows)})
    texts = [f"parquet doc {k}" for k in range(250)]
    _write_parquet(d / "sub" / "c.parquet", texts, row_group_size=100)
    expected.update({f"pq{k}": t for k, t in enumerate(texts)})
    (d / "notes.md").write_text("ignored: unsupported extension")
    (d / ".hidden.txt").write_text("ignored: hidden")
    return d, expected


def test_user_directory(user_dir):
    d, expected = user_dir
    got = {s: [doc for blk in document_blocks(str(d), s) for doc in blk] for s in ("train", "val")}
    assert got["val"], "val split must not be empty"
    assert sorted(got["train"] + got["val"]) == sorted(expected.values())
    assert not set(got["train"]) & set(got["val"])
    # deterministic, independent of construction, and picklable
    b = document_blocks(str(d), "train")
    assert [b[i] for i in range(len(b))] == [blk for blk in pickle.loads(pickle.dumps(b))]
    desc = describe_source(str(d), "train")
    assert set(desc["components"]) == {"txt", "jsonl", "parquet"}
    assert desc["docs"] == len(got["train"]) and desc["chars"] == sum(map(len, got["train"]))
    # parquet blocks are row groups (100 rows each, minus the val rows)
    pq_blocks = [len(b[i]) for i in range(len(b)) if b.specs[i][1] == "parquet"]
    assert len(pq_blocks) == 3 and max(pq_blocks) <= 100


def test_iter_documents_caps(user_dir):
    d, _ = user_dir
    docs = list(iter_documents(str(d), "train"))
    capped = list(iter_documents(str(d), "train", doc_cap=20))
    assert capped == [x[:20] for x in docs]
    limited = list(iter_documents(str(d), "train", max_chars=1000))
    assert sum(map(len, limited)) == 1000 and "".join(limited) == "".join(docs)[:1000]


def test_single_txt_file_is_split_into_paragraphs(tmp_path):
    f = tmp_path / "book.txt"
    paras = [f"Chapter {k}.\n  Indented line {k}." for k in range(200)]
    f.write_text("\r\n\r\n".join(p.replace("\n", "\r\n") for p in paras))
    got = [x for s in ("train", "val") for x in iter_documents(str(f), s)]
    assert sorted(got) == sorted(p.replace("\n", "\r\n") for p in paras)


def test_user_path_errors(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(CorpusError, match="nope.*does not exist"):
        document_blocks(str(missing))
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "x.csv").write_text("a,b")
    with pytest.raises(CorpusError, match=r"no corpus files in .*empty.*\.txt/\.jsonl/\.parquet"):
        len(document_blocks(str(tmp_path / "empty")))
    with pytest.raises(CorpusError, match=r"no corpus files in .*x\.csv.*\.txt/\.jsonl/\.parquet"):
        len(document_blocks(str(tmp_path / "empty" / "x.csv")))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{"body": "no text"}\n{"text": "ok2"}\n')
    with pytest.raises(CorpusError, match="bad.jsonl.*no string \"text\""):
        [blk for s in ("train", "val") for blk in document_blocks(str(bad), s)]
    one = tmp_path / "one"
    one.mkdir()
    (one / "only.txt").write_text("just one document")
    assert list(iter_documents(str(one), "train")) == ["just one document"]
    with pytest.raises(CorpusError, match="no val documents"):
        len(document_blocks(str(one), "val"))
    pq.write_table(pa.table({"body": ["x", "y"]}), tmp_path / "notext.parquet")
    with pytest.raises(CorpusError, match="no 'text' column"):
        len(document_blocks(str(tmp_path / "notext.parquet")))


def test_cli_describe(user_dir, capsys):
    d, _ = user_dir
    assert corpus.main(["describe", "--source", str(d), "--json"]) == 0
    descs = json.loads(capsys.readouterr().out)
    assert [x["split"] for x in descs] == ["train", "val"]
    assert sum(x["docs"] for x in descs) == 1500 + 1 + 90 + 250
    assert corpus.main(["describe", "--source", str(d), "--split", "val"]) == 0
    table = capsys.readouterr().out
    assert "[val]" in table and "[train]" not in table and f"{descs[1]['docs']:>9,} docs" in table.split("total")[1]
    assert corpus.main(["describe", "--source", str(d / "nope")]) == 2
    assert "does not exist" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------
# FineWeb and ClimbMix: missing shards, download against a loopback HTTP server


def test_fineweb_missing_shards_error(tmp_path):
    with pytest.raises(CorpusError, match=r"0 FineWeb-edu shard\(s\) in .*python -m jaxchat\.corpus download "
                                          r"--source fineweb -n 8"):
        document_blocks("fineweb", data_dir=tmp_path)
    _write_parquet(tmp_path / "shard_00000.parquet", ["a", "b"], 1)
    assert list(iter_documents("fineweb", "val", data_dir=tmp_path)) == ["a", "b"]
    with pytest.raises(CorpusError, match="train needs at least 2"):
        document_blocks("fineweb", "train", data_dir=tmp_path)


@pytest.fixture
def shards(tmp_path, monkeypatch):
    monkeypatch.setenv("no_proxy", "*")
    monkeypatch.setenv("NO_PROXY", "*")
    src = tmp_path / "src"
    src.mkdir()
    docs, files = {}, {}
    for i in range(4):
        name = corpus.shard_name(i)
        docs[name] = [f"shard {i} document {j}: " + "text " * (j % 5) for j in range(7)]
        _write_parquet(src / name, docs[name], row_group_size=3)  # 3 row groups
        files[name] = (src / name).read_bytes()
    server = FileServer(files)
    yield server, docs, tmp_path / "base_data"
    server.close()


def test_download_retry_truncation_skip_and_split(shards):
    server, docs, out = shards
    names = [corpus.shard_name(i) for i in range(3)]
    server.fail_once.add(names[1])
    server.truncate_once.add(names[2])
    paths = download_fineweb(3, data_dir=out, workers=2, base_url=server.url, backoff=0.01, progress=False)
    assert [p.name for p in paths] == names
    assert dict(server.requests) == {names[0]: 1, names[1]: 2, names[2]: 2}  # one retry each
    for n in names:
        assert (out / n).read_bytes() == server.files[n]
    assert sorted(p.name for p in out.iterdir()) == sorted([*names, corpus.DOWNLOAD_MARKER])  # no temporary files left
    # re-running skips complete shards: no new requests
    download_fineweb(3, data_dir=out, workers=2, base_url=server.url, backoff=0.01, progress=False)
    assert sum(server.requests.values()) == 5
    # nanochat's split: the last shard on disk is val; blocks are row groups, documents read back equal
    train = document_blocks("fineweb", "train", data_dir=out)
    val = document_blocks("fineweb", "val", data_dir=out)
    assert len(train) == 6 and len(val) == 3 and [len(b) for b in val] == [3, 3, 1]
    assert [d for b in train for d in b] == docs[names[0]] + docs[names[1]]
    assert list(iter_documents("fineweb", "val", data_dir=out)) == docs[names[2]]
    assert pickle.loads(pickle.dumps(train))[4] == train[4]
    # a 4th shard makes shard 2 training data and shard 3 val
    corpus.main(["download", "-n", "4", "--data-dir", str(out), "--base-url", server.url, "--workers", "1"])
    assert list(iter_documents("fineweb", "val", data_dir=out)) == docs[corpus.shard_name(3)]


def test_download_truncated_or_corrupt_never_kept(shards):
    server, _, out = shards
    name = corpus.shard_name(0)
    server.truncate_once.add(name)
    with pytest.raises(CorpusError, match="IncompleteRead.*more expected"):
        download_fineweb(1, data_dir=out, base_url=server.url, retries=0, progress=False)
    assert list(out.iterdir()) == []  # neither the shard nor a temporary file (nor a completion marker)
    download_fineweb(1, data_dir=out, base_url=server.url, retries=0, progress=False)
    assert (out / name).read_bytes() == server.files[name]
    # a body of the announced length that is not a parquet file (e.g. an HTML error page)
    server.files[corpus.shard_name(1)] = b"<html>rate limited</html>"
    with pytest.raises(CorpusError, match="not a parquet file"):
        download_fineweb(2, data_dir=out, base_url=server.url, retries=1, backoff=0.01, progress=False)
    assert server.requests[corpus.shard_name(1)] == 2 and not (out / corpus.shard_name(1)).exists()
    # a missing shard (404) is reported without retrying; bad shard counts are rejected
    del server.files[corpus.shard_name(1)]
    with pytest.raises(CorpusError, match="404"):
        download_fineweb(2, data_dir=out, base_url=server.url, retries=3, backoff=0.01, progress=False)
    assert server.requests[corpus.shard_name(1)] == 3
    for bad in (0, corpus.max_train_shards("fineweb") + 1):
        with pytest.raises(CorpusError, match="num_shards"):
            download_fineweb(bad, data_dir=out, base_url=server.url, progress=False)
    assert sorted(p.name for p in out.iterdir()) == [corpus.DOWNLOAD_MARKER, name]
    assert corpus.downloaded_shards("fineweb", out) == 1  # the failed downloads of 2 never vouched for shard 1


def test_listing_follows_the_completion_marker(shards):
    """Shards only count once a finished download vouches for them: a larger download still running (or a
    shard copied in by hand) does not move the val split, and other hosts wait for the marker."""
    server, docs, out = shards
    download_fineweb(2, data_dir=out, base_url=server.url, progress=False)
    (out / corpus.shard_name(2)).write_bytes(server.files[corpus.shard_name(2)])  # "still downloading"
    assert [p.name for p in corpus.list_shards("fineweb", out)] == [corpus.shard_name(i) for i in range(2)]
    assert list(iter_documents("fineweb", "val", data_dir=out)) == docs[corpus.shard_name(1)]
    corpus.wait_for_download(2, data_dir=out, timeout=0)  # already there: returns at once
    with pytest.raises(CorpusError, match="vouch for 3 shards .*it says 2.*shares"):
        corpus.wait_for_download(3, data_dir=out, timeout=0.05, poll=0.01)
    done = threading.Timer(0.2, download_fineweb, (3,), dict(data_dir=out, base_url=server.url, progress=False))
    done.start()
    assert corpus.main(["wait", "-n", "3", "--data-dir", str(out), "--timeout", "30"]) == 0
    done.join()
    assert len(corpus.list_shards("fineweb", out)) == 3


def test_climbmix_layout_and_pinned_val_shard(shards, monkeypatch, tmp_path):
    """Master's ClimbMix: its URL, base_data_climbmix/, shard_00000 ... shard_06542; `-n N` fetches N train shards
    and shard_06542, which stays the val split however many train shards follow."""
    server, docs, _ = shards
    val, names = corpus.shard_name(6542), [corpus.shard_name(i) for i in range(3)]
    server.files[val], docs[val] = server.files.pop(corpus.shard_name(3)), docs.pop(corpus.shard_name(3))
    assert corpus.SHARD_SETS["climbmix"].url == ("https://huggingface.co/datasets/karpathy/climbmix-400b-shuffle/"
                                                 "resolve/main/")
    assert corpus.max_train_shards("climbmix") == 6542  # master's MAX_SHARD: the val shard's index
    monkeypatch.setenv("JAXCHAT_BASE_DIR", str(tmp_path / "base"))
    assert corpus.shard_dir("climbmix") == tmp_path / "base" / "base_data_climbmix"
    with pytest.raises(CorpusError, match=r"0 ClimbMix shard\(s\) in .*base_data_climbmix.*download --source climbmix"):
        document_blocks("climbmix", "train")
    paths = corpus.download_shards("climbmix", 2, base_url=server.url, backoff=0.01, progress=False)
    assert [p.name for p in paths] == [*names[:2], val] and set(server.requests) == {*names[:2], val}
    assert list(iter_documents("climbmix", "val")) == docs[val]
    assert list(iter_documents("climbmix", "train")) == docs[names[0]] + docs[names[1]]
    assert corpus.main(["download", "--source", "climbmix", "-n", "3", "--base-url", server.url]) == 0
    assert [p.name for p in corpus.list_shards("climbmix")] == [*names, val]
    assert list(iter_documents("climbmix", "val")) == docs[val]
    assert [d for b in document_blocks("climbmix", "train") for d in b] == [d for n in names for d in docs[n]]
    with pytest.raises(CorpusError, match=r"offline\? the shards come from http://127\.0\.0\.1:9/"):
        corpus.download_shards("climbmix", 4, base_url="http://127.0.0.1:9/", retries=0, progress=False)
    assert corpus.main(["wait", "--source", "climbmix", "-n", "3", "--timeout", "0"]) == 0
    assert corpus.main(["download", "--source", "dclm"]) == 2


def test_shards_for_chars():
    """Tokenizer shards: max_chars over the ~200M chars a shard keeps under doc_cap, plus the val shard (the
    tokenizer reads the train split only). nanochat's 8 (d20) and 16 (d32) leave its 7 and 15 train shards
    short of the 2B and 4B chars asked."""
    from jaxchat import config as C

    want = {"d20": 11, "d26": 11, "d32": 21}
    for preset, n in want.items():
        assert corpus.shards_for_chars(C.load(["tokenizer"], [f"--preset={preset}"]).tokenizer.max_chars) == n
    assert corpus.shards_for_chars(1) == 2 and corpus.shards_for_chars(10**15) == corpus.max_train_shards("fineweb")
    assert [corpus.shards_needed(p) for p in ("d20", "d26", "d32")] == [238, 459, 795]  # base training, +10%
    # ClimbMix: master's `-n 8` for the tokenizer's 2B chars (ours: 10, the doc_cap's losses counted); master's d24
    # speedrun (5,568 steps of 2**20 tokens, bos_bestfit) needs "~150" shards, it downloads 170 (shards_needed's sum)
    assert corpus.shards_for_chars(2e9, kept=1.0, source="climbmix") == 8
    tokens_read = 5568 * 2**20 / (1 - corpus.BESTFIT_CROPPED)
    assert 150 <= corpus.shards_for_chars(1.1 * tokens_read * 4.1, kept=1.0, source="climbmix") <= 170
    for n in (11, 21):  # the train split holds what is asked, with each shard's 250M chars cut to 80%
        assert (n - 1) * 250e6 * 0.8 >= {11: 2e9, 21: 4e9}[n]
