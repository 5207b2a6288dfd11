"""Two processes x 4 CPU devices on 127.0.0.1 (jax.distributed, gloo) train a few steps and match one process
with 8 devices: data is split per process, the mesh spans both, and the losses agree. Two processes run
tok_train against one base dir: process 0 trains, the other waits and loads the same file."""
import hashlib
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _join(process_id: int, num_processes: int, port: int) -> None:
    os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={8 // num_processes}"
    if num_processes > 1:
        os.environ.update(JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES=str(num_processes),
                          JAX_PROCESS_ID=str(process_id))


def tok_worker(process_id: int, num_processes: int, port: int) -> None:
    _join(process_id, num_processes, port)
    from jaxchat import tokenizer
    from scripts import tok_train

    train = tokenizer.train_tokenizer  # count the trainings: print0 alone would hide one on process 1
    tokenizer.train_tokenizer = lambda *a, **k: print("TRAINING", flush=True) or train(*a, **k)
    summary = tok_train.main(["--vocab_size=512", "--max_chars=200000"])
    digest = hashlib.sha256((tokenizer.default_tokenizer_dir() / "tokenizer.model").read_bytes()).hexdigest()
    print("TOKENIZER " + json.dumps({"file": digest, "summary": summary["sha256"]}), flush=True)


def worker(process_id: int, num_processes: int, port: int) -> None:
    _join(process_id, num_processes, port)
    import jax
    import numpy as np

    from jaxchat import sharding as shd
    from jaxchat import train
    from jaxchat.config import MeshConfig, ModelConfig, TrainConfig

    assert shd.maybe_initialize_distributed() == (num_processes > 1)
    assert jax.process_count() == num_processes and len(jax.devices()) == 8
    cfg = ModelConfig(depth=2, vocab_size=128, max_seq_len=16, aspect_ratio=32, head_dim_target=16)
    setup = train.create_train_state(cfg, TrainConfig(), shd.make_mesh(MeshConfig()), 10)
    step = train.jit_train_step(setup)
    seq = np.random.default_rng(0).integers(0, 128, (1, 8, 17), dtype=np.int32)
    per = 8 // num_processes
    local = seq[:, process_id * per:(process_id + 1) * per]  # this process's rows of the global batch
    state, losses = setup.state, []
    for _ in range(3):
        state, m = step(state, train.put_batch(setup, {"inputs": local[..., :-1], "targets": local[..., 1:]}))
        losses.append(float(m["loss"]))
    print("LOSSES " + json.dumps(losses), flush=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(n: int, mode: str = "train", **env) -> list[str]:
    port = _free_port()
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("JAX_") or k == "JAX_PLATFORMS"}, **env}
    procs = [subprocess.Popen([sys.executable, __file__, mode, str(i), str(n), str(port)], cwd=ROOT, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(n)]
    outs = [p.communicate(timeout=240)[0] for p in procs]
    for p, out in zip(procs, outs):
        assert p.returncode == 0, out[-3000:]
    return outs


def _line(out: str, tag: str):
    return json.loads(next(line for line in out.splitlines() if line.startswith(tag + " "))[len(tag) + 1:])


@pytest.mark.slow
def test_two_processes_match_one():
    one = _line(_run(1)[0], "LOSSES")
    two = [_line(out, "LOSSES") for out in _run(2)]
    assert two[0] == two[1]  # every process sees the same global loss
    assert two[0] == pytest.approx(one, rel=1e-5)
    assert one[-1] < one[0]


def test_tokenizer_trained_once_and_shared(tmp_path):
    outs = _run(2, "tok", JAXCHAT_BASE_DIR=str(tmp_path))
    assert [out.count("TRAINING") for out in outs] == [1, 0]  # only process 0 trained
    assert "uses the tokenizer process 0 trained" in outs[1], outs[1][-2000:]
    seen = [_line(out, "TOKENIZER") for out in outs]
    assert seen[0]["file"] == seen[1]["file"] == seen[0]["summary"] == seen[1]["summary"]
    assert json.loads((tmp_path / "report" / "tokenizer-training.json").read_text())["sha256"] == seen[0]["file"]


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    {"train": worker, "tok": tok_worker}[sys.argv[1]](int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]))
