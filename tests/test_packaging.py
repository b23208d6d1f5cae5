"""The project's set-up files agree with each other.

The course's repository is named once, as ``Repository`` in pyproject.toml's ``[project.urls]``; the tests at
the end keep every other mention of it equal: what the notebooks' set-up cell installs, the README, and the
"Open in Colab / Kaggle" badges of every notebook.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import sys
import textwrap
from pathlib import Path

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli", reason="reading pyproject.toml on Python 3.10 needs tomli")

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
CONDA_NAMES = {"pytorch": "torch"}  # conda-forge names that differ from PyPI's
COLAB = "https://colab.research.google.com/github/{slug}/blob/main/notebooks/{name}"
KAGGLE = "https://kaggle.com/kernels/welcome?src={repository}/blob/main/notebooks/{name}"


def project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def repository() -> str:
    """The course's home, as pyproject.toml names it: https://github.com/OWNER/NAME."""
    url = project()["urls"]["Repository"]
    assert re.fullmatch(r"https://github\.com/[\w.-]+/[\w.-]+", url), f"{url} is not a GitHub repository's address"
    return url


def open_links(name: str) -> tuple[str, str]:
    """The Colab and Kaggle addresses that open notebook ``name`` from the repository."""
    url = repository()
    return COLAB.format(slug=url.removeprefix("https://github.com/"), name=name), KAGGLE.format(
        repository=url, name=name
    )


def cells(path: Path) -> list[dict]:
    return [{**cell, "source": "".join(cell["source"])} for cell in json.loads(path.read_text())["cells"]]


def set_up_cell(path: Path) -> str:
    return next(cell["source"] for cell in cells(path) if cell["cell_type"] == "code")


def requirement(spec: str) -> tuple[str, str]:
    """Name and version constraint of a requirement; an environment marker (``; python_version < ...``) is
    dropped, because conda installs the package whatever the Python (harmless where it is not needed)."""
    spec = spec.split(";", 1)[0]
    name, constraint = re.match(r"^\s*([A-Za-z0-9_.\-]+)\s*(.*)$", spec).groups()
    return name.lower(), constraint.replace(" ", "")


def test_environment_yml_lists_the_same_dependencies_as_pyproject():
    wanted = dict(requirement(spec) for spec in project()["dependencies"])
    for extra in project()["optional-dependencies"].values():
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


def test_the_set_up_cell_installs_the_repository_or_DS9_PACKAGE_SOURCE():
    set_up = set_up_cell(ROOT / "notebooks" / "00_introduction.ipynb")
    assert 'os.environ.get("DS9_PACKAGE_SOURCE"' in set_up
    assert f'"ds9-utils @ git+{repository()}"' in set_up
    assert re.findall(r"git\+\S+", set_up) == [f'git+{repository()}")'], "the set-up cell names one repository"


@pytest.mark.parametrize("source", [None, "", "  "])
def test_an_unset_or_empty_ds9_package_source_installs_the_course_repository(source, monkeypatch):
    """DS9_PACKAGE_SOURCE="" must not send pip an empty requirement (and the learner to switch the Internet on)."""
    set_up = set_up_cell(ROOT / "notebooks" / "00_introduction.ipynb")
    choice = re.search(r"^\s*(package = \(.*?\))$", set_up, re.M | re.S).group(1)
    if source is None:
        monkeypatch.delenv("DS9_PACKAGE_SOURCE", raising=False)
    else:
        monkeypatch.setenv("DS9_PACKAGE_SOURCE", source)
    namespace = {"os": os}
    exec(textwrap.dedent(choice), namespace)
    assert namespace["package"] == f"ds9-utils @ git+{repository()}"


def test_readme_links_every_notebook_and_names_the_repository_the_set_up_cell_installs():
    readme = (ROOT / "README.md").read_text()
    linked = re.findall(r"\(notebooks/([0-9][0-9]_\w+\.ipynb)\)", readme)
    assert linked == [path.name for path in NOTEBOOKS], "the syllabus table links each notebook once, in order"
    assert f"ds9-utils @ git+{repository()}" in readme
    github = set(re.findall(r"https://github\.com/[\w.-]+/[\w.-]+", readme)) - {
        "https://github.com/computationalmodelling/nbval",
        "https://github.com/you/your-fork",
    }
    assert github == {repository()}, "the README names the repository of pyproject.toml's [project.urls] only"


def test_every_notebook_opens_in_colab_and_kaggle_from_the_readme_and_from_its_title():
    readme_rows = {
        re.search(r"\(notebooks/(\w+\.ipynb)\)", line).group(1): line
        for line in (ROOT / "README.md").read_text().splitlines()
        if re.match(r"^\| \d\d \| \[", line)
    }
    for path in NOTEBOOKS:
        colab, kaggle = open_links(path.name)
        title = cells(path)[0]
        assert title["cell_type"] == "markdown" and title["source"].startswith("# "), f"{path.name} has no title"
        assert path.name in readme_rows, f"the README's syllabus has no row for {path.name}"
        for place, text in ((f"{path.name}'s title cell", title["source"]), ("its README row", readme_rows[path.name])):
            assert f"[![Open in Colab](https://colab.research.google.com/assets/colab-badge.svg)]({colab})" in text, (
                f"{place} lacks the Colab badge"
            )
            assert f"[![Open in Kaggle](https://kaggle.com/static/images/open-in-kaggle.svg)]({kaggle})" in text, (
                f"{place} lacks the Kaggle badge"
            )
            opened = set(re.findall(r"/blob/main/notebooks/(\w+\.ipynb)", text))
            assert opened == {path.name}, f"{place} opens {sorted(opened)} in Colab or Kaggle"


def test_the_ds9_console_script_is_the_same_main_as_python_m_ds9_utils(monkeypatch, capsys):
    from ds9_utils import __main__ as cli

    target = project()["scripts"]["ds9"]
    module, _, function = target.partition(":")
    entry_point = importlib.metadata.EntryPoint(name="ds9", value=target, group="console_scripts")
    assert (module, function) == ("ds9_utils.__main__", "main") and entry_point.load() is cli.main
    monkeypatch.setattr(sys, "argv", [str(Path("bin") / "ds9"), "--help"])  # as the installed script starts
    with pytest.raises(SystemExit) as exited:
        cli.main()
    help_text = capsys.readouterr().out
    assert exited.value.code == 0 and help_text.startswith("usage: ds9 ")
    assert all(command in help_text for command in ("download", "corpus", "train", "generate"))


def test_the_readme_shows_the_ds9_command_for_every_subcommand():
    readme = (ROOT / "README.md").read_text()
    for command in ("download", "corpus", "train", "generate"):
        assert re.search(rf"^ds9 {command}\b", readme, flags=re.MULTILINE), f"the README shows no `ds9 {command}`"
