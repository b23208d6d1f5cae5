"""The exercise sections of chapters 08-15 run on their own: the starters are valid code, every check reports
"not yet" on them without raising, and each chapter ends with a summary and a next step."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import nbformat
import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("[0-9][0-9]_*.ipynb"))
LATE = [path for path in NOTEBOOKS if "08" <= path.name[:2] <= "15"]
CHECK_CALL = re.compile(r"""\bcheck\(\s*["'](\d\d\.\d+)["']""")
NEXT_HEADINGS = ("## Next", "## What next", "## Where next")


def _cells(notebook: Path) -> list[nbformat.NotebookNode]:
    return nbformat.read(notebook, as_version=4).cells


@pytest.mark.parametrize("notebook", LATE, ids=lambda path: path.stem)
def test_the_exercise_section_runs_on_its_own_and_the_starters_are_not_yet_right(notebook):
    cells = _cells(notebook)
    start = next(i for i, cell in enumerate(cells) if cell.source.startswith("## Exercises"))
    end = next(i for i, cell in enumerate(cells) if i > start and cell.source.startswith(NEXT_HEADINGS))
    section = [cell for cell in cells[start:end] if cell.cell_type == "code"]
    namespace: dict = {}
    output = io.StringIO()
    with contextlib.redirect_stdout(output):
        for cell in section:
            exec(compile(cell.source, f"{notebook.name} cell {cell.get('id')}", "exec"), namespace)
    ids = [exercise_id for cell in section for exercise_id in CHECK_CALL.findall(cell.source)]
    assert len(ids) >= 3
    assert ids == [f"{notebook.name[:2]}.{n}" for n in range(1, len(ids) + 1)]
    assert [line.split(":")[0] for line in output.getvalue().splitlines()] == ["❌ not yet"] * len(ids)


@pytest.mark.parametrize("notebook", LATE, ids=lambda path: path.stem)
def test_the_chapter_has_a_summary_exercises_and_a_next_step_in_that_order(notebook):
    headings = [
        line
        for cell in _cells(notebook)
        if cell.cell_type == "markdown"
        for line in cell.source.splitlines()
        if line.startswith("## ")
    ]
    summary = headings.index("## Summary")
    exercises = headings.index("## Exercises")
    next_step = next(i for i, heading in enumerate(headings) if heading.startswith(NEXT_HEADINGS))
    assert summary < exercises < next_step == len(headings) - 1


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda path: path.stem)
def test_no_code_cell_is_longer_than_about_thirty_lines(notebook):
    long_cells = {
        cell.get("id"): len(cell.source.splitlines())
        for cell in _cells(notebook)
        if cell.cell_type == "code" and len(cell.source.splitlines()) > 30
    }
    assert not long_cells, f"split these cells or move their machinery into ds9_utils: {long_cells}"
