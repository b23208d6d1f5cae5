"""The notebooks stand on their own, as they must on Kaggle or Colab.

A user there uploads one ``.ipynb`` file and runs it: there is no checkout around it and no data folder.
``test_a_notebook_runs_alone_in_an_empty_folder`` copies a notebook into an empty folder and executes it
there with a fresh, empty data folder, so its set-up cell has to download the transcripts (from the loopback
mirror that conftest.py serves, in place of chakoteya.net) and build the corpus by itself.

``test_every_notebook_starts_with_the_same_set_up_cell`` keeps the first code cell identical everywhere, so
that fixing it once (in 00) and copying it is the only way it ever changes.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import nbformat
import pytest

PROJECT_ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = PROJECT_ROOT / "notebooks"
REFERENCE = NOTEBOOKS / "00_introduction.ipynb"
# The chapter whose quick run is shortest: it reads the pages and the corpus, and trains nothing.
PORTABLE = NOTEBOOKS / "00_introduction.ipynb"


def first_code_cell(path: Path) -> str:
    notebook = nbformat.read(path, as_version=4)
    return next(cell.source for cell in notebook.cells if cell.cell_type == "code")


def test_every_notebook_starts_with_the_same_set_up_cell():
    if not REFERENCE.exists():
        pytest.skip(f"{REFERENCE.name} is not written yet")
    expected = first_code_cell(REFERENCE)
    assert "setup_notebook()" in expected
    notebooks = sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))
    different = [path.name for path in notebooks if first_code_cell(path) != expected]
    assert not different, f"the first code cell of {different} differs from the set-up cell of {REFERENCE.name}"


def test_a_notebook_runs_alone_in_an_empty_folder(tmp_path, monkeypatch, mirror_url):
    nbclient = pytest.importorskip("nbclient")
    if not PORTABLE.exists():
        pytest.skip(f"{PORTABLE.name} is not written yet")
    work = tmp_path / "kaggle-working"  # the notebook and nothing else, as after an upload
    work.mkdir()
    copy = work / PORTABLE.name
    shutil.copy(PORTABLE, copy)
    data = tmp_path / "fresh-data"  # empty: the set-up cell must download and build everything
    monkeypatch.setenv("DS9_DATA_DIR", str(data))
    monkeypatch.setenv("DS9_BASE_URL", mirror_url)
    monkeypatch.setenv("DS9_QUICK", "1")
    monkeypatch.setenv("DS9_DOWNLOAD_DELAY", "0")
    monkeypatch.setenv("MPLBACKEND", "agg")
    # On Kaggle the set-up cell pip-installs ds9_utils; here it must already be importable (installed with
    # ``pip install -e .``, or via PYTHONPATH), because the loopback test machine cannot reach GitHub.
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(PROJECT_ROOT), os.environ.get("PYTHONPATH")])))

    notebook = nbformat.read(copy, as_version=4)
    client = nbclient.NotebookClient(
        notebook, kernel_name="python3", timeout=600, resources={"metadata": {"path": str(work)}}
    )
    client.execute()  # raises CellExecutionError, naming the cell, if any cell raised

    errors = [
        output
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.get("outputs", [])
        if output.get("output_type") == "error"
    ]
    assert not errors
    setup = next(cell for cell in notebook.cells if cell.cell_type == "code")
    printed = "".join(output.get("text", "") for output in setup.outputs if output.get("output_type") == "stream")
    assert f"data folder: {data.resolve()}" in printed
    assert (data / "corpus" / "train.txt").exists()
    assert (data / "chakoteya" / "DS9" / "episodes.htm").exists()
    assert sorted(path.name for path in work.iterdir()) == [copy.name]  # nothing written beside the notebook
