"""nanochat master's recipe: the depth dial gives master's batch, steps, LR scale and weight decay (numbers computed by
master's own scripts/base_train.py formulas on its GPT, built on torch's meta device, commit 92d63d4); the speedrun
preset keeps master.toml's switches; base_train records time to GPT-2 and the report shows it."""
from __future__ import annotations

import json
import math
import tomllib

import pytest

from jaxchat import config as C
from jaxchat import train

MODEL = ["--depth=1", "--aspect_ratio=64", "--head_dim_target=32", "--max_seq_len=128"]

# master, vocab 32,768, T 2,048: params, FLOPs/token, batch, steps, tokens, LR scale, Muon weight decay
MASTER = {
    "d12": (["--preset=d12"], 286_261_730, 759_696_048, 524_288, 2_520, 1_321_205_760, 1.0, 0.28),
    "d24 (speedrun)": (["--preset=speedrun"], 1_384_122_122, 4_775_225_616, 1_048_576, 5_568, 5_838_471_168,
                       math.sqrt(2), 0.05973842446340308),
    "d26": (["--preset=speedrun", "--depth=26", "--target_param_data_ratio=12"], 1_681_786_938, 5_991_051_288,
            1_048_576, 10_510, 11_020_533_760, math.sqrt(2), 0.04747018702740847),
    "d6": (["--preset=d12", "--depth=6", "--device_batch_size=16"], 73_531_538, 167_510_808, 262_144, 1_062,
           278_396_928, math.sqrt(0.5), 0.9396123913724335),
    "d13": (["--preset=d12", "--depth=13"], 389_481_088, 1_065_225_816, 524_288, 3_538, 1_854_930_944, 1.0,
            0.199406552180604),  # odd depth: width 13·64 = 832 rounded up to 896
    # an explicit batch wins over the dial's (and still scales LR and weight decay); so does an explicit horizon
    "d24 batch 524,288": (["--preset=speedrun", "--total_batch_size=524288"], 1_384_122_122, 4_775_225_616, 524_288,
                          11_136, 5_838_471_168, 1.0, 0.042241445035472655),
    "d24 1e19 FLOPs": (["--preset=speedrun", "--target_flops=1e19"], 1_384_122_122, 4_775_225_616, 1_048_576, 1_997,
                       1_997 * 1_048_576, math.sqrt(2), 0.05973842446340308),
}


@pytest.mark.parametrize("name", MASTER)
def test_depth_dial_gives_masters_numbers(name):
    from scripts import base_train

    args, params, fpt, batch, steps, tokens, lr_scale, wd = MASTER[name]
    plan = base_train.main([*args, "--dry_run", "--devices=8"])
    assert (plan["params"], plan["flops_per_token"], plan["tokens_per_step"], plan["steps"], plan["tokens"]) == (
        params, fpt, batch, steps, tokens)
    assert plan["lr_scale"] == pytest.approx(lr_scale, rel=1e-12)
    assert plan["weight_decay"] == pytest.approx(wd, rel=1e-12)
    mc, tc = (c := C.load(["model", "base"], args)).model, c.base
    scaled, _ = train.depth_dial(mc, tc)  # every LR (AdamW's and Muon's) by the same factor
    for key in ("embedding_lr", "unembedding_lr", "matrix_lr", "scalar_lr"):
        assert getattr(scaled, key) == pytest.approx(getattr(tc, key) * lr_scale, rel=1e-12)


def test_v1_presets_keep_their_recipe():
    for preset in ("tiny", "tiny_v1", "d20", "d26", "d32", "master"):
        tc = (c := C.load(["model", "base"], [f"--preset={preset}"])).base
        assert not tc.depth_dial and train.depth_dial(c.model, tc) == (tc, {"lr_scale": 1.0,
                                                                           "weight_decay": tc.weight_decay})
    with pytest.raises(C.ConfigError, match="set target_param_data_ratio > 0"):
        train.depth_dial(c.model, C.BaseConfig(depth_dial=True, target_param_data_ratio=-1))


def test_speedrun_keeps_master_toml_switches():
    """speedrun.toml extends d20 (the GPU setup) and repeats master.toml's model and optimizer switches."""
    master = tomllib.loads((C.CONFIG_DIR / "master.toml").read_text())
    speedrun = C.load_preset("speedrun")
    for section, values in master.items():
        if isinstance(values, dict):
            assert {k: speedrun[section].get(k) for k in values} == values, f"[{section}]: copy master.toml's"
    assert speedrun["mesh"]["accelerator"] and speedrun["eval"]["core_bundle"] == "download"
    tiny = C.load_preset("tiny")  # the default: V1's stages with master's model, the same switches
    assert {k: tiny["model"].get(k) for k in master["model"]} == master["model"], "[model]: copy master.toml's"
    assert C.load_preset("d12")["base"]["depth_dial"]


def _train(*args):
    from scripts import base_train

    # on the dial with an explicit batch (one micro-step of 8 x 128 tokens): LRs x sqrt(1024 / 2^19)
    return base_train.main([*MODEL, "--num_iterations=4", "--device_batch_size=1", "--eval_every=-1",
                            "--sample_every=-1", "--save_every=-1", "--core_metric_every=2", "--core_max_per_task=2",
                            "--core_bundle=download", "--depth_dial", "--total_batch_size=1024", *args])


def test_time_to_gpt2(tmp_path, monkeypatch):
    """CORE at steps 2 and 4 with a GPT-2 bar every model clears (-1: the first evaluation crosses), then, resumed at
    the end (CORE once more), with one none can (1.5 > CORE's maximum 1): the training time at each evaluation is
    the log's, across the resume too, and the report shows the crossing or its absence. The checkpoint keeps the
    scaled LRs it trained with and, as master's user_config (which master's SFT inherits), the configured ones."""
    from helpers import core_bundle_base

    from jaxchat import report

    with core_bundle_base(tmp_path, monkeypatch):
        low = _train("--gpt2_core=-1")
        log = [json.loads(ln) for ln in (tmp_path / "base_checkpoints" / "d1" / "log.jsonl").read_text().splitlines()]
        md_low = report.generate().read_text()
        high = _train("--gpt2_core=1.5", "--resume")
    elapsed = {r["step"]: r["elapsed"] for r in log if r["kind"] == "train"}
    core = {r["step"]: r["core_metric"] for r in log if "core_metric" in r}
    assert low["core_history"] == [[2, elapsed[1], core[2]], [4, elapsed[3], core[4]]]
    assert 0 < elapsed[1] < elapsed[3] <= low["train_time_s"] and low["core_metric"] == core[4]
    assert low["gpt2_core"] == -1.0 and low["time_to_gpt2_s"] == elapsed[1]
    assert f"final CORE {core[4]:.4f} against GPT-2 (1.6B)'s -1: reached after" in md_low and "(step 2)" in md_low
    assert "**core_history**" in md_low and "| step | train_time_s | core |" in md_low

    assert high["core_history"] == low["core_history"] and high["time_to_gpt2_s"] is None
    meta = json.loads((tmp_path / "base_checkpoints" / "d1" / "4" / "meta" / "metadata").read_text())
    assert meta["user_config"]["matrix_lr"] == 0.02  # the tiny preset's
    assert meta["train"]["matrix_lr"] == pytest.approx(0.02 * math.sqrt(1024 / 2**19), rel=1e-12)
    md_high = report.generate().read_text()
    assert "against GPT-2 (1.6B)'s 1.5: not reached; training time" in md_high
