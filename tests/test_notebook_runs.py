"""The committed runs of the notebooks: made one at a time, and each chapter states how long its run took.

nbconvert records when every cell started and finished (``metadata.execution``). Two notebooks run side by
side on a 2-core machine slow each other down, and every time either quotes means nothing; so a committed run
must not overlap another's. And the time a chapter promises at its top ("*Full run: about 22 minutes ...*")
must be the time its saved run took.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from itertools import combinations
from pathlib import Path

import nbformat
import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("[0-9][0-9]_*.ipynb"))

#: Pairs whose saved runs overlap and have not been rerun alone yet. Each is a debt: rerun one of the two
#: alone, then remove the pair (the test below fails when a listed pair no longer overlaps).
KNOWN_OVERLAPS: set[frozenset[str]] = set()

#: The statement at the top of every chapter: "*Full run: under a minute ..." or "*Full run: about 22 minutes ...".
FULL_RUN = re.compile(r"\*Full run: (?:(?P<under>under a minute)|about (?P<minutes>\d+) minutes?)")


def run_interval(path: Path) -> tuple[datetime, datetime]:
    """When the saved run's first cell started and its last cell finished."""
    starts, ends = [], []
    for cell in nbformat.read(path, as_version=4).cells:
        execution = cell.get("metadata", {}).get("execution", {})
        if "iopub.execute_input" in execution:
            starts.append(datetime.fromisoformat(execution["iopub.execute_input"].replace("Z", "+00:00")))
        if "shell.execute_reply" in execution:
            ends.append(datetime.fromisoformat(execution["shell.execute_reply"].replace("Z", "+00:00")))
    if not starts or not ends:
        raise AssertionError(f"{path.name} has no execution times: commit it from a full nbconvert run")
    return min(starts), max(ends)


def overlapping_pairs(intervals: dict[str, tuple[datetime, datetime]]) -> set[frozenset[str]]:
    return {
        frozenset({a, b})
        for (a, (a_start, a_end)), (b, (b_start, b_end)) in combinations(sorted(intervals.items()), 2)
        if a_start < b_end and b_start < a_end
    }


def test_the_overlap_check_finds_two_runs_that_shared_the_machine():
    t = datetime(2026, 1, 1)
    intervals = {
        "a": (t, t + timedelta(minutes=10)),
        "b": (t + timedelta(minutes=9), t + timedelta(minutes=12)),  # starts before a ends
        "c": (t + timedelta(minutes=12), t + timedelta(minutes=13)),  # starts when b ends: no overlap
    }
    assert overlapping_pairs(intervals) == {frozenset({"a", "b"})}


def test_committed_runs_were_made_one_at_a_time():
    overlaps = overlapping_pairs({path.stem: run_interval(path) for path in NOTEBOOKS})
    new = sorted(sorted(pair) for pair in overlaps - KNOWN_OVERLAPS)
    assert not new, f"these committed runs overlap; rerun one of each pair alone: {new}"
    settled = sorted(sorted(pair) for pair in KNOWN_OVERLAPS - overlaps)
    assert not settled, f"these pairs no longer overlap: remove them from KNOWN_OVERLAPS: {settled}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.stem)
def test_each_chapter_states_the_time_its_saved_run_took(path: Path):
    top = nbformat.read(path, as_version=4).cells[0].source
    stated = FULL_RUN.search(top)
    assert stated, f"{path.name}: say at the top how long the full run takes, e.g. '*Full run: about 5 minutes ...'"
    start, end = run_interval(path)
    minutes = (end - start).total_seconds() / 60
    if stated["under"]:
        assert minutes < 1, f"{path.name} says 'under a minute', but its saved run took {minutes:.1f} minutes"
    else:
        claimed = int(stated["minutes"])
        assert abs(minutes - claimed) <= max(0.5, 0.1 * claimed), (
            f"{path.name} says 'about {claimed} minutes', but its saved run took {minutes:.1f} minutes"
        )


def stated_minutes(path: Path) -> str:
    """The chapter's own statement, as the README's syllabus writes it: '< 1' or the minutes."""
    stated = FULL_RUN.search(nbformat.read(path, as_version=4).cells[0].source)
    assert stated, f"{path.name} does not say how long its full run takes"
    return "< 1" if stated["under"] else stated["minutes"]


def test_the_readme_syllabus_gives_each_chapter_its_full_run_time():
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    rows = {match[1]: match[2] for match in re.finditer(r"^\| (\d\d) \| .*?\| (?:[^|]*)\| ([^|]*?) \|", readme, re.M)}
    for path in NOTEBOOKS:
        number = path.stem[:2]
        assert number in rows, f"the README's syllabus has no row for chapter {number}"
        stated = stated_minutes(path)
        assert rows[number].strip() == stated, (
            f"README: chapter {number}'s full run takes {rows[number].strip()!r} minutes, the notebook says {stated!r}"
        )
