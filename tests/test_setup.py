"""run_all.sh's install decisions (extras per preset and NVIDIA driver, Python via uv), run against fake
nvidia-smi / python3 / uv on a PATH that holds nothing else, so nothing is ever installed."""
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BASH = shutil.which("bash")


def fake(bin_dir: Path, name: str, body: str):
    p = bin_dir / name
    p.write_text("#!/bin/sh\n" + body + "\n")
    p.chmod(0o755)


def run_all(tmp_path: Path, *args: str, fakes: dict[str, str] = {}):
    """`bash run_all.sh ARGS` with PATH = the fakes plus the two tools the script needs here."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for tool in ("dirname", "date"):
        (bin_dir / tool).symlink_to(shutil.which(tool))
    for name, body in fakes.items():
        fake(bin_dir, name, body)
    env = {"PATH": str(bin_dir), "HOME": str(tmp_path), "CALLS": str(tmp_path / "calls")}
    return subprocess.run([BASH, str(ROOT / "run_all.sh"), *args], env=env, capture_output=True, text=True,
                          timeout=30)


def smi(version: str) -> str:
    return f'echo "{version}"; echo "{version}"'  # one line per GPU


@pytest.mark.parametrize("driver, extra", [("535.104.05", "gpu"), ("580.65.06", "gpu13")])
@pytest.mark.parametrize("preset", ["--preset d20", "--preset=d32"])
def test_gpu_preset_gets_hub_and_the_cuda_build_the_driver_runs(tmp_path, driver, extra, preset):
    p = run_all(tmp_path, "_extras", *preset.split(), fakes={"nvidia-smi": smi(driver)})
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == f"dev,hub,{extra}"
    assert driver in p.stderr


def test_too_old_driver_is_refused(tmp_path):
    p = run_all(tmp_path, "_extras", "--preset", "d20", fakes={"nvidia-smi": smi("470.256.02")})
    assert p.returncode != 0 and p.stdout == ""
    assert "470.256.02" in p.stderr and ">= 525" in p.stderr


def test_no_gpu_installs_cpu_jax_and_warns(tmp_path):
    p = run_all(tmp_path, "_extras", "--preset", "d20")
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "dev,hub"
    assert "no NVIDIA GPU" in p.stderr and "--allow_cpu" in p.stderr


@pytest.mark.parametrize("args", [(), ("--preset", "tiny"), ("--preset", "d20", "--dry-run")])
def test_tiny_and_dry_runs_need_no_cuda(tmp_path, args):
    p = run_all(tmp_path, "_extras", *args, fakes={"nvidia-smi": smi("580.65.06")})
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "dev"


def test_unknown_preset_is_refused_before_installing(tmp_path):
    p = run_all(tmp_path, "_extras", "--preset", "d99")
    assert p.returncode != 0 and "configs/d99.toml" in p.stderr


PY310 = 'echo "python3 $*" >> "$CALLS"; exit 1'  # `-c 'sys.version_info >= (3, 11)'` fails as on 3.10
UV = 'echo "uv $*" >> "$CALLS"; [ "$1 $2" = "python find" ] && echo /uv/python/cpython-3.11/bin/python3.11; exit 0'


def test_no_python_311_uses_uv(tmp_path):
    p = run_all(tmp_path, "_python", fakes={"python3": PY310, "uv": UV})
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "/uv/python/cpython-3.11/bin/python3.11"
    calls = (tmp_path / "calls").read_text().splitlines()
    assert "uv python install 3.11" in calls and "uv python find 3.11" in calls
    assert "python install 3.11" in p.stderr  # says what it does


def test_no_uv_installs_it_with_pip_user(tmp_path):
    user_bin = tmp_path / "user" / "bin"
    user_bin.mkdir(parents=True)
    fake(user_bin, "uv", UV)  # where the fake `pip install --user uv` "puts" it: not on PATH
    py = (f'echo "python3 $*" >> "$CALLS"; case "$*" in "-m pip install"*) exit 0 ;;'
          f' "-m site --user-base") echo {tmp_path / "user"}; exit 0 ;; esac; exit 1')
    p = run_all(tmp_path, "_python", fakes={"python3": py})
    assert p.returncode == 0, p.stderr
    calls = (tmp_path / "calls").read_text().splitlines()
    assert "python3 -m pip install -q --user uv" in calls and "uv python install 3.11" in calls
    assert p.stdout.strip() == "/uv/python/cpython-3.11/bin/python3.11"


def test_a_good_python_is_used_as_before(tmp_path):
    # passes only the version check, so that code without `_python` stops before it touches .venv
    py = 'echo "python3 $*" >> "$CALLS"; case "$*" in *"sys.exit(0 if"*) exit 0 ;; esac; exit 1'
    p = run_all(tmp_path, "_python", fakes={"python3": py, "uv": UV})
    assert p.returncode == 0 and p.stdout.strip() == "python3"
    assert "uv" not in (tmp_path / "calls").read_text()
