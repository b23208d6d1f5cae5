"""The recipe benchmark's results file: an interrupted table resumes from the runs already on disk, and only
runs of the same text, budget and machine are reused."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

from ds9_utils.recipe_changes import read_runs

BENCH = Path(__file__).resolve().parent.parent / "benchmarks" / "bench_recipe.py"


def _bench():
    spec = importlib.util.spec_from_file_location("bench_recipe", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_results_resume_only_this_text_budget_and_machine(tmp_path):
    bench = _bench()
    here = bench.machine()
    assert here["processor"] and here["threads"] >= 1 and here["precision"] in ("fp32", "bf16")
    path = tmp_path / "runs.jsonl"
    ours = {"text": "DS9", "seconds": 120.0, "variant": "muon", "seed": 0, "held_out_nats": 1.3, "machine": here}
    bench.append_result(path, ours)
    bench.append_result(path, {**ours, "seconds": 540.0})
    bench.append_result(path, {**ours, "text": "shakespeare.txt"})
    bench.append_result(path, {**ours, "machine": {**here, "processor": "another processor"}})
    with open(path, "a", encoding="utf-8") as results:
        results.write(json.dumps({**ours, "seed": 1})[:40])  # a line cut short by an interruption
    assert read_runs(path, "DS9", 120.0, here) == [ours]
    assert read_runs(tmp_path / "missing.jsonl", "DS9", 120.0, here) == []
    bench.append_result(path, {**ours, "seed": 2})  # after the cut line: still one run per line
    assert [run["seed"] for run in read_runs(path, "DS9", 120.0, here)] == [0, 2]


def test_a_budget_that_is_not_positive_or_not_one_budget_gets_one_line(tmp_path):
    for arguments, message in (
        (["--steps", "0"], "--seconds and --steps take a positive number"),
        (["--seconds", "60", "--steps", "8000"], "not allowed with argument"),
    ):
        run = subprocess.run(
            [sys.executable, str(BENCH), *arguments], capture_output=True, text=True, cwd=tmp_path, timeout=120
        )
        assert run.returncode == 2 and message in run.stderr, run.stderr
