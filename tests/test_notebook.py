"""docs/how-networks-learn.ipynb runs from top to bottom on the shipped photos, in well under a
minute, so it can never rot. Its cells check their own claims (a gradient by hand equals
autograd's, one SGD step by hand equals the optimizer's, ...): a failed check fails the run."""

import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

NOTEBOOK = Path(__file__).resolve().parents[1] / "docs" / "how-networks-learn.ipynb"


def test_the_notebook_runs_top_to_bottom(real_data, monkeypatch):
    monkeypatch.setenv("CATSDOGS_DATA", str(real_data))
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    assert not any(cell.get("outputs") for cell in notebook.cells), "commit the notebook with its outputs cleared"
    started = time.perf_counter()
    NotebookClient(notebook, timeout=120, kernel_name="python3",
                   resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute()
    seconds = time.perf_counter() - started
    printed = "".join(output.get("text", "") for cell in notebook.cells for output in cell.get("outputs", []))
    assert "every gradient by hand matches autograd" in printed and "python train.py --resume" in printed
    pictures = sum("image/png" in output.get("data", {}) for cell in notebook.cells for output in cell.get("outputs", []))
    assert pictures >= 10
    assert seconds < 60, f"the notebook took {seconds:.0f} s"
