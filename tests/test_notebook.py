"""Executes docs/walkthrough.ipynb end to end.

With nbclient, ipykernel and a ``python3`` kernel spec available (the ``dev`` extra), the notebook
runs in a real Jupyter kernel and its outputs are checked. Otherwise its code cells run in this
process with ``exec`` (same order, one namespace), so the test never depends on a kernel being
registered on the machine.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
from pathlib import Path

import pytest

NOTEBOOK = Path(__file__).resolve().parents[1] / "docs" / "walkthrough.ipynb"
METHODS = ("dino", "pca", "rp", "stego")
#: How the tables name them for the descriptor backbone (stego_probe.plots.method_label).
METHOD_LABELS = ("descriptor (raw)", "PCA", "RP", "STEGO")


def _kernel_available() -> bool:
    try:
        import ipykernel  # noqa: F401
        import nbclient  # noqa: F401
        import nbformat  # noqa: F401
        from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel
    except ImportError:
        return False
    try:
        KernelSpecManager().get_kernel_spec("python3")
    except NoSuchKernel:
        return False
    return True


def _code_cells() -> list[str]:
    nb = json.loads(NOTEBOOK.read_text())
    return [
        "".join(c["source"]) if isinstance(c["source"], list) else c["source"]
        for c in nb["cells"]
        if c["cell_type"] == "code"
    ]


#: Text that would tie stored outputs to one machine (temporary folders, home directories).
MACHINE_PATHS = ("/tmp/", "/work/", "/home/", "/root/", "/Users/", "\\Users\\", "site-packages")


def _stored_outputs() -> list[dict]:
    nb = json.loads(NOTEBOOK.read_text())
    return [out for c in nb["cells"] if c["cell_type"] == "code" for out in c["outputs"]]


def test_notebook_is_stored_with_its_outputs():
    """Committed executed (it reads on GitHub without running): every code cell ran once, in
    order, without an error, its figures are inline, and no output names this machine."""
    nb = json.loads(NOTEBOOK.read_text())
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert code and [c["execution_count"] for c in code] == list(range(1, len(code) + 1))
    outputs = _stored_outputs()
    assert all(out["output_type"] != "error" for out in outputs)
    text = "".join("".join(out["text"]) for out in outputs if out["output_type"] == "stream")
    _check_text(text)
    assert sum("image/png" in out.get("data", {}) for out in outputs) == 2  # world, Figure 4
    for out in outputs:
        for marker in MACHINE_PATHS:
            assert marker not in json.dumps(out.get("text", "")), (marker, out)
    assert nb["metadata"]["kernelspec"]["name"] == "python3"


def _check_text(text: str) -> None:
    # the sweep's summary table lists every method, and the last cell reports completion
    assert "mIoU (%) on the val split" in text and "synthetic world" in text
    for label in METHOD_LABELS:  # methods named after the backbone, never "dino" for it
        assert f"\n{label} " in text
    assert "\ndino " not in text
    assert "walkthrough done in" in text
    for claim in range(1, 6):  # one verdict line per claim of stego_probe.claims
        assert f"claim {claim} " in text


@pytest.mark.slow
def test_walkthrough_notebook_runs(tmp_path, monkeypatch):
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv("TMPDIR", str(tmp_path))  # the notebook works in a tempfile.mkdtemp()
    if _kernel_available():
        import nbclient
        import nbformat

        nb = nbformat.read(NOTEBOOK, as_version=4)
        client = nbclient.NotebookClient(
            nb,
            timeout=300,
            kernel_name="python3",
            resources={"metadata": {"path": str(tmp_path)}},
        )
        client.execute()
        texts, images = [], 0
        for cell in nb.cells:
            for out in cell.get("outputs", []):
                assert out["output_type"] != "error", out
                if out["output_type"] == "stream" and out["name"] == "stdout":
                    texts.append(out["text"])
                images += "image/png" in out.get("data", {})
        _check_text("".join(texts))
        assert images == 2  # the world and Figure 4, inline
    else:
        import tempfile

        monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
        monkeypatch.chdir(tmp_path)
        namespace: dict = {"__name__": "__walkthrough__"}
        stdout = io.StringIO()
        with contextlib.redirect_stdout(stdout):
            for i, source in enumerate(_code_cells()):
                exec(compile(source, f"{NOTEBOOK.name}[cell {i}]", "exec"), namespace)
        _check_text(stdout.getvalue())
        df = namespace["df"]
        assert set(df["method"]) == set(METHODS)
        assert (namespace["work"] / "figure4_synthetic.png").stat().st_size > 0
    # everything the notebook wrote stays in its temporary folder
    made = [p for p in tmp_path.iterdir() if p.name.startswith("stego_probe_walkthrough_")]
    assert len(made) == 1 and (made[0] / "sweep" / "results.csv").exists()
    assert (made[0] / "figure4_synthetic.png").stat().st_size > 0
    assert not os.path.exists(tmp_path / "runs")
