"""The notebooks stand on their own, as they must on Kaggle or Colab.

A user there uploads one ``.ipynb`` file and runs it: there is no checkout around it and no data folder.
``test_a_notebook_runs_alone_in_an_empty_folder`` copies a notebook into an empty folder and executes it
there with a fresh, empty data folder, so its set-up cell has to download the transcripts (from the loopback
mirror that conftest.py serves, in place of chakoteya.net) and build the corpus by itself.

Its set-up cell's output says where the data is and what was downloaded and built, and how long that took,
without this machine's absolute paths (the output is saved in the notebook and read on GitHub):
``test_the_set_up_output_shows_paths_a_reader_can_use`` checks how each kind of data folder is shown.

``test_every_notebook_starts_with_the_same_set_up_cell`` keeps the first code cell identical everywhere, so
that fixing it once (in 00) and copying it is the only way it ever changes.
"""

from __future__ import annotations

import os
import re
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
    printed = "".join(output.get("text", "") for output in setup.outputs if output.get("name") == "stdout")
    # The data went where DS9_DATA_DIR says, and the output says so without this machine's absolute path.
    assert "data folder: $DS9_DATA_DIR/\n" in printed
    assert re.search(
        r"corpus: +downloaded \d+ transcript pages from 127\.0\.0\.1:\d+ in [\d.]+ s; "
        r"built the corpus \([\d,]+ characters\) in [\d.]+ s\n",
        printed,
    ), printed
    assert str(tmp_path) not in printed
    assert (data / "corpus" / "train.txt").exists()
    assert (data / "chakoteya" / "DS9" / "episodes.htm").exists()
    assert sorted(path.name for path in work.iterdir()) == [copy.name]  # nothing written beside the notebook


def test_the_set_up_output_shows_paths_a_reader_can_use(tmp_path, monkeypatch):
    from ds9_utils.settings import PROJECT_ROOT as package_root
    from ds9_utils.workspace import CORPUS_FILES, display_path, setup_notebook

    work = tmp_path / "kaggle-working"
    (work / "data" / "corpus").mkdir(parents=True)
    for name in CORPUS_FILES:  # a built corpus: set-up finds it and downloads nothing
        (work / "data" / "corpus" / name).write_text("x")
    monkeypatch.chdir(work)
    monkeypatch.setenv("DS9_DATA_DIR", str(work / "data"))
    workspace = setup_notebook(progress=False)
    import matplotlib.pyplot as plt

    assert plt.rcParams["figure.dpi"] == 150, "figures sharp enough for GitHub's page width"
    assert workspace.corpus_dir == (work / "data" / "corpus").resolve()
    assert str(workspace).splitlines()[:2] == ["data folder: data/", "corpus:      found in data/corpus/ (cached)"]

    assert display_path(work) == "./"
    if Path.home() not in tmp_path.parents:  # a path outside every known folder is shown as it is
        assert display_path(tmp_path / "elsewhere" / "model.pt") == str(tmp_path / "elsewhere" / "model.pt")
    monkeypatch.setenv("DS9_DATA_DIR", str(tmp_path / "elsewhere"))
    assert display_path(tmp_path / "elsewhere" / "model.pt") == "$DS9_DATA_DIR/model.pt"
    assert display_path(Path.home() / "course-data" / "x.pt") == "~/course-data/x.pt"
    if (package_root / "pyproject.toml").exists():  # ds9_utils runs from a clone: as seen from notebooks/
        monkeypatch.chdir(package_root / "notebooks")
        assert display_path(package_root / "data" / "corpus" / "train.txt") == "../data/corpus/train.txt"
        monkeypatch.chdir(tmp_path)
        assert display_path(package_root / "data" / "x.pt") == "the course's data/x.pt"


SAVED_PROGRESS_WIDGET = re.compile(r"\d+%\|")  # a tqdm widget saved mid-run: "training: 0%| 0/4000"
#: What a text renderer must never show of a saved output: a widget's or a display object's repr, the loopback
#: mirror the tests serve, the course's old name.
UNREADABLE = ("VBox(", "HBox(", "<IPython.core.display", "127.0.0.1", "lets-build-an-llm")
MACHINE_PATH = re.compile(r"(?<![\w.])/(?:work|tmp|root|home|Users)/|[A-Z]:\\\\")


@pytest.mark.parametrize("path", sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb")), ids=lambda path: path.name[:2])
def test_committed_outputs_read_well_without_a_kernel(path: Path):
    """GitHub, nbviewer and Colab's preview show saved outputs as they are: no dead progress widget, no
    path of the machine that made the run."""
    notebook = nbformat.read(path, as_version=4)
    for number, cell in enumerate(notebook.cells):
        for output in cell.get("outputs", []):
            data = output.get("data", {})
            if "application/vnd.jupyter.widget-view+json" in data:
                fallback = data.get("text/plain", "")
                assert not SAVED_PROGRESS_WIDGET.search(fallback), f"cell {number}: a progress widget: {fallback!r}"
            text = output.get("text", "") + "".join(v for k, v in data.items() if k.startswith("text/"))
            found = MACHINE_PATH.search(text)
            assert not found, f"cell {number} prints a path of the machine: ...{text[found.start() - 40 :][:120]!r}"
            unreadable = [marker for marker in UNREADABLE if marker in text]
            assert not unreadable, f"cell {number} saves {unreadable[0]!r} for text renderers: {text[:160]!r}"
