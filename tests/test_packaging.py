"""The project's set-up files agree with each other."""

from __future__ import annotations

import json
import re
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parent.parent
CONDA_NAMES = {"pytorch": "torch"}  # conda-forge names that differ from PyPI's


def requirement(spec: str) -> tuple[str, str]:
    name, constraint = re.match(r"^\s*([A-Za-z0-9_.\-]+)\s*(.*)$", spec).groups()
    return name.lower(), constraint.replace(" ", "")


def test_environment_yml_lists_the_same_dependencies_as_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = dict(requirement(spec) for spec in project["dependencies"])
    for extra in project["optional-dependencies"].values():
        wanted.update(requirement(spec) for spec in extra)

    conda = {}
    listing = (ROOT / "environment.yml").read_text().split("\ndependencies:\n", 1)[1]
    for line in listing.splitlines():
        item = re.match(r"^  - ([A-Za-z][^#]*)$", line)
        if item and not item.group(1).startswith(("python", "pip")):
            name, constraint = requirement(item.group(1))
            conda[CONDA_NAMES.get(name, name)] = constraint
    assert conda == wanted


def test_ci_installs_torch_then_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    test_command = re.search(r"^(pip install -e \S+ && pytest.*)$", readme, re.M).group(1)
    assert "pip install torch==2.13.0" in ci
    assert ci.index("torch==2.13.0") < ci.index(test_command)


def test_readme_links_every_notebook_and_names_the_repository_the_set_up_cell_installs():
    readme = (ROOT / "README.md").read_text()
    notebooks = sorted(path.name for path in (ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    linked = re.findall(r"\(notebooks/([0-9][0-9]_\w+\.ipynb)\)", readme)
    assert linked == notebooks, "the syllabus table links each notebook once, in order"
    set_up = json.loads((ROOT / "notebooks" / "00_introduction.ipynb").read_text())["cells"]
    first_code = "".join(next(cell["source"] for cell in set_up if cell["cell_type"] == "code"))
    repository = re.search(r"git\+(https://github\.com/[\w.-]+/[\w.-]+)", first_code).group(1)
    assert repository in readme
