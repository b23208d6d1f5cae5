"""The set-up cell's install branch works: where ``ds9_utils`` is missing, it pip-installs it and carries on.

That branch is what runs on Colab and Kaggle, so it is tested as they run it, offline:

- a fresh virtual environment in which ``ds9_utils`` is NOT installed. It reuses this environment's packages
  (torch and the rest) through a ``.pth`` file that lists a folder of links to them, leaving out ds9_utils
  and its metadata, so pip sees the dependencies as installed and ds9-utils as missing;
- ``DS9_PACKAGE_SOURCE`` pointing at a git clone of this repository's HEAD (as a fork would point it at its
  own repository), and ``PIP_NO_INDEX=1`` so that pip can download nothing: it must build the package from
  the clone, with this environment's setuptools (build isolation would fetch setuptools from the index);
- an empty working folder, as after uploading one notebook, and the loopback mirror of the site.

It runs notebook 00's set-up cell and the cell after it (which loads the corpus with ``ds9_utils``) in that
environment's Python, as one kernel would run them one after the other.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import site
import subprocess
import venv
from importlib.metadata import version
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK = PROJECT_ROOT / "notebooks" / "00_introduction.ipynb"


def code_cells(path: Path) -> list[str]:
    return ["".join(cell["source"]) for cell in json.loads(path.read_text())["cells"] if cell["cell_type"] == "code"]


def environment_without_ds9_utils(folder: Path) -> Path:
    """A virtual environment that sees this one's packages except ds9_utils; returns its Python."""
    venv.create(folder / "venv", with_pip=False)
    python = folder / "venv" / "bin" / "python"
    shared = folder / "shared-packages"  # links to every installed package but ds9_utils
    shared.mkdir()
    for packages in map(Path, site.getsitepackages()):
        for entry in packages.iterdir() if packages.is_dir() else ():
            name = entry.name.lower()
            if "ds9_utils" not in name and "ds9-utils" not in name and not (shared / entry.name).exists():
                (shared / entry.name).symlink_to(entry, target_is_directory=entry.is_dir())
    own_packages = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    (Path(own_packages) / "shared_packages.pth").write_text(f"{shared}\n")
    return python


def test_the_set_up_cell_installs_ds9_utils_where_it_is_missing(tmp_path, mirror_url):
    if shutil.which("git") is None or not (PROJECT_ROOT / ".git").exists():
        pytest.skip("needs git and a git checkout of the course")
    if int(version("setuptools").split(".")[0]) < 77:
        pytest.skip("building ds9-utils offline needs setuptools>=77 installed (pyproject.toml's build-system)")
    source = tmp_path / "fork"  # what DS9_PACKAGE_SOURCE points at: the repository as committed
    subprocess.run(["git", "clone", "--quiet", str(PROJECT_ROOT), str(source)], check=True)
    python = environment_without_ds9_utils(tmp_path)
    # Nothing of ours leaks in: no DS9_/PIP_ settings and no PYTHONPATH (which could point at a checkout).
    environment = {key: value for key, value in os.environ.items() if not key.startswith(("DS9_", "PIP_"))}
    environment.pop("PYTHONPATH", None)
    missing = subprocess.run(
        [python, "-c", "import ds9_utils"], cwd=tmp_path, env=environment, capture_output=True, text=True
    )
    assert "No module named 'ds9_utils'" in missing.stderr, "the new environment must not see ds9_utils yet"

    work = tmp_path / "kaggle-working"  # empty, as after uploading one notebook: the data goes in ./data
    work.mkdir()
    environment.update(
        DS9_PACKAGE_SOURCE=f"git+{source.as_uri()}",
        DS9_BASE_URL=mirror_url,
        DS9_QUICK="1",
        DS9_DOWNLOAD_DELAY="0",
        MPLBACKEND="agg",
        PIP_NO_INDEX="1",  # offline: nothing may come from PyPI
        PIP_NO_BUILD_ISOLATION="0",  # pip's inverted spelling of --no-build-isolation
        PIP_DISABLE_PIP_VERSION_CHECK="1",
        PIP_CACHE_DIR=str(tmp_path / "pip-cache"),
    )
    set_up, next_cell = code_cells(NOTEBOOK)[:2]
    run = subprocess.run(
        [python, "-c", f"{set_up}\n\n{next_cell}"],
        cwd=work,
        env=environment,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]

    installed = subprocess.run(
        [
            python,
            "-c",
            "import ds9_utils, importlib.metadata as m; from ds9_utils.recipe_changes import MEASURED_RUNS; "
            "print(ds9_utils.__file__); print(m.distribution('ds9-utils').read_text('direct_url.json')); "
            "print(MEASURED_RUNS.is_file())",
        ],
        cwd=tmp_path,
        env=environment,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    venv_dir = (tmp_path / "venv").resolve()
    assert venv_dir in Path(installed[0]).resolve().parents, f"ds9_utils imported from {installed[0]}"
    assert json.loads(installed[1])["url"] == source.as_uri(), "installed from DS9_PACKAGE_SOURCE"
    assert installed[2] == "True", "the recipe measurements that chapter 09 prints are installed with the package"

    assert "data folder: data/\n" in run.stdout, run.stdout
    assert re.search(r"corpus: +downloaded \d+ transcript pages from 127\.0\.0\.1:\d+ in ", run.stdout), run.stdout
    assert (work / "data" / "corpus" / "train.txt").exists()
    assert re.search(r"^\d+ episodes, [\d,]+ characters", run.stdout, re.M), "the next cell loads the corpus"
    assert sorted(path.name for path in work.iterdir()) == ["data"]
