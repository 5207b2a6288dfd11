"""notebooks/walkthrough.ipynb runs top to bottom without an error, on a kernel of this interpreter, in an empty base
directory (no pipeline run: its random-model branch); it is stored without outputs."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import nbclient
import nbformat
from ipykernel.kernelspec import write_kernel_spec

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "walkthrough.ipynb"


def test_walkthrough_notebook_runs(tmp_path, monkeypatch):
    nb = nbformat.read(NOTEBOOK, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and not any(c.outputs or c.execution_count for c in code), "store the notebook without outputs"
    # the "python3" kernel, written here for sys.executable: a user's own python3 kernelspec would otherwise win
    spec = write_kernel_spec(tmp_path / "jupyter" / "kernels" / "python3")
    assert json.loads((Path(spec) / "kernel.json").read_text())["argv"][0] == sys.executable
    for k, v in {"JUPYTER_PATH": tmp_path / "jupyter", "IPYTHONDIR": tmp_path / "ipython",
                 "JAXCHAT_BASE_DIR": tmp_path / "base"}.items():
        monkeypatch.setenv(k, str(v))
    nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                            resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute()  # raises on an error
    out = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert "no SFT checkpoint" in out and "<|output_start|>408<|output_end|>" in out  # the calculator's forced reply
    assert any("image/png" in o.get("data", {}) for c in code for o in c.outputs)  # the loss plot
