"""Two processes x 4 CPU devices on 127.0.0.1 (jax.distributed, gloo) train a few steps and match one process
with 8 devices: data is split per process, the mesh spans both, and the losses agree."""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def worker(process_id: int, num_processes: int, port: int) -> None:
    os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={8 // num_processes}"
    if num_processes > 1:
        os.environ.update(JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES=str(num_processes),
                          JAX_PROCESS_ID=str(process_id))
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


def _run(n: int) -> list[list[float]]:
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_") or k == "JAX_PLATFORMS"}
    procs = [subprocess.Popen([sys.executable, __file__, str(i), str(n), str(port)], cwd=ROOT, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(n)]
    outs = [p.communicate(timeout=240)[0] for p in procs]
    for p, out in zip(procs, outs):
        assert p.returncode == 0, out[-3000:]
    return [json.loads(next(line for line in out.splitlines() if line.startswith("LOSSES "))[7:]) for out in outs]


@pytest.mark.slow
def test_two_processes_match_one():
    one = _run(1)[0]
    two = _run(2)
    assert two[0] == two[1]  # every process sees the same global loss
    assert two[0] == pytest.approx(one, rel=1e-5)
    assert one[-1] < one[0]


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    worker(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]))
