"""The notebooks in notebooks/ run top to bottom (nbclient, a fresh python3 kernel, working directory notebooks/)
and are stored without outputs. On a GPU machine they pick the GPU themselves (torch.cuda / JAX's backend)."""

import json
import pathlib
import time

import nbclient
import nbformat
import pytest

NOTEBOOK_DIR = pathlib.Path(__file__).resolve().parent.parent / "notebooks"
NOTEBOOKS = ["01_quickstart", "02_jax_inference_loop", "03_rope_and_norm_explorer", "04_performance"]


def test_the_notebook_list_is_complete():
    assert sorted(p.stem for p in NOTEBOOK_DIR.glob("*.ipynb")) == sorted(NOTEBOOKS)


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_is_stored_without_outputs(name):
    nb = json.loads((NOTEBOOK_DIR / f"{name}.ipynb").read_text())
    for cell in nb["cells"]:
        if cell["cell_type"] == "code":
            assert cell["outputs"] == [] and cell["execution_count"] is None, f"{name}: outputs not stripped"


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs(name, record_property):
    nb = nbformat.read(NOTEBOOK_DIR / f"{name}.ipynb", as_version=4)
    start = time.perf_counter()
    nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(NOTEBOOK_DIR)}}).execute()
    record_property("seconds", round(time.perf_counter() - start, 1))
    shown = sum("image/png" in out.get("data", {}) for cell in nb.cells for out in cell.get("outputs", []))
    assert shown >= 1, f"{name}: no figure was drawn"
