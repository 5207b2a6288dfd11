"""Presets, overrides and the errors a person gets for typos and wrong types."""
import pytest

from jaxchat import config as C


def test_presets_derive_nanochats_shapes():
    tiny = C.load(["model"], ["--preset", "tiny"]).model
    assert (tiny.depth, tiny.n_embd, tiny.n_head, tiny.head_dim, tiny.vocab_size, tiny.max_seq_len) == (
        4, 256, 2, 128, 8192, 512)
    d20 = C.load(["model", "base"], ["--preset=d20"])
    assert (d20.model.n_embd, d20.model.n_head, d20.model.mlp_dim, d20.model.vocab_size) == (1280, 10, 5120, 65536)
    assert (d20.base.device_batch_size, d20.base.total_batch_size, d20.base.target_param_data_ratio) == (32, 524288, 20)
    d26 = C.load(["model", "base"], ["--preset", "d26"])  # extends d20
    assert (d26.model.depth, d26.model.n_head, d26.base.device_batch_size, d26.model.vocab_size) == (26, 13, 16, 65536)
    d32 = C.load(["model", "base"], ["--preset", "d32"])
    assert (d32.model.n_embd, d32.base.device_batch_size) == (2048, 8)


def test_cli_overrides_with_nanochat_names():
    c = C.load(["model", "base"], ["--depth=6", "--device_batch_size", "3", "--resume", "--matrix_lr=0.01"])
    assert c.model.depth == 6 and c.model.n_embd == 384
    assert c.base.device_batch_size == 3 and c.base.resume is True and c.base.matrix_lr == 0.01
    c = C.load(["model", "base"], ["--total_batch_size=5e5"])
    assert c.base.total_batch_size == 500000
    c = C.load(["base", "sft"], ["--sft.eval_every=7"])
    assert c.sft.eval_every == 7 and c.base.eval_every != 7


def test_unknown_key_names_the_valid_keys():
    with pytest.raises(C.ConfigError) as e:
        C.load(["model", "base"], ["--deptth=3"])
    msg = str(e.value)
    assert "--deptth" in msg and "did you mean --depth" in msg and "device_batch_size" in msg and "vocab_size" in msg


def test_wrong_type_names_key_and_type():
    with pytest.raises(C.ConfigError, match=r"--depth: expected int, got 'abc'"):
        C.load(["model"], ["--depth=abc"])
    with pytest.raises(C.ConfigError, match=r"--resume: expected bool"):
        C.load(["base"], ["--resume=maybe"])
    with pytest.raises(C.ConfigError, match=r"--depth: expected int, got '2.5'"):
        C.load(["model"], ["--depth=2.5"])


def test_bad_preset_and_bad_file(tmp_path):
    with pytest.raises(C.ConfigError, match="available presets: .*tiny"):
        C.load(["model"], ["--preset=d99"])
    bad = tmp_path / "bad.toml"
    bad.write_text("[model]\ndepht = 3\n")
    with pytest.raises(C.ConfigError, match="unknown key 'depht' in \\[model\\]; valid keys: .*depth"):
        C.load(["model"], [f"--preset={bad}"])
    bad.write_text("[modle]\ndepth = 3\n")
    with pytest.raises(C.ConfigError, match="unknown section \\[modle\\]"):
        C.load(["model"], [f"--preset={bad}"])
    bad.write_text('[model]\ndepth = "three"\n')
    with pytest.raises(C.ConfigError, match="--depth: expected int"):
        C.load(["model"], [f"--preset={bad}"])


def test_invalid_values_are_refused():
    with pytest.raises(C.ConfigError, match="compute_dtype"):
        C.load(["model"], ["--compute_dtype=float8"])
    with pytest.raises(C.ConfigError, match="n_kv_head"):
        C.load(["model"], ["--n_kv_head=3"])
    with pytest.raises(C.ConfigError, match="unexpected argument"):
        C.load(["model"], ["depth=3"])


def test_script_extras():
    c = C.load(["model"], ["--steps=5", "--depth=2"], extra={"steps": 10, "dry_run": False})
    assert c.extra.steps == 5 and c.extra.dry_run is False and c.model.depth == 2
