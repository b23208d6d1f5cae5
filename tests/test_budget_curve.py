"""The budget curve: a step budget lays the whole schedule over its steps, a point is measured alike every time,
and the stored curve (the one the main job, chapter 09 and the README print) is whole and consistent."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ds9_utils import budget_curve, course
from ds9_utils.presets import COURSE_PRESET, COURSE_STEPS, PRESETS, get_preset

ROOT = Path(__file__).resolve().parents[1]
LINES = "[Quark's]\nQUARK: The bar is open.\nODO: (gruffly) It is always open.\n(Quark grins)\n\n"


@pytest.fixture()
def data():
    text = LINES * 60
    tokenizer = course.CharTokenizer.from_text(text)
    ids = torch.tensor(tokenizer.encode(text), dtype=torch.long)
    return course.CourseData(tokenizer, ids[:3000], ids[3000:4000], ids[4000:])


def test_a_step_budget_is_a_whole_run_of_that_many_steps_with_no_time_budget():
    config = course.run_config(COURSE_PRESET, device="cpu", step_budget=12)
    assert config.max_steps == 12 and config.max_seconds is None and config.lr_decay_steps == 12
    main_job = course.run_config("cpu", device="cpu", step_budget=12)
    assert main_job.max_seconds is None, "a step budget replaces the main job's time budget too"
    assert get_preset(COURSE_PRESET).train_config.max_steps == COURSE_STEPS


def test_a_point_is_measured_on_the_whole_splits_against_the_counting_yardstick(data, monkeypatch):
    monkeypatch.setitem(PRESETS, COURSE_PRESET, get_preset("quick"))  # a tiny model, the same code path
    yardstick = budget_curve.counting_yardstick(data)
    assert yardstick["order"] in range(1, 9) and set(yardstick) == {"order", "val", "test"}
    point = budget_curve.measure_budget(data, 6, yardstick, seed=3)
    assert point["steps"] == 6 and point["seed"] == 3 and point["precision"] in ("bf16", "fp32")
    assert math.isclose(point["margin_bits"], yardstick["test"] - point["test_bits"], abs_tol=2e-4)
    assert point["sample"].startswith(budget_curve.SAMPLE_PROMPT) and "\n\n[" not in point["sample"]
    assert 0 <= point["real_words"] <= 1 and point["machine"]["threads"] >= 1
    again = budget_curve.measure_budget(data, 6, yardstick, seed=3)
    assert again["test_bits"] == point["test_bits"] and again["sample"] == point["sample"], "a seed fixes the run"


def test_the_table_reads_the_points_fewest_steps_first_and_skips_cut_lines(tmp_path):
    machine = {"processor": "Test CPU", "threads": 2, "torch": "2.13.0", "precision": "bf16"}
    point = dict(seed=0, training_seconds=180.0, tokens_per_second=11_000, precision="bf16", val_bits=1.8,
                 test_bits=1.75, counting_order=6, counting_test_bits=1.832, margin_bits=0.082, real_words=0.9,
                 sample="[Quark's]\nQUARK: Welcome to Quark's.\nODO: Hm.", machine=machine)  # fmt: skip
    path = tmp_path / "curve.jsonl"
    path.write_text(json.dumps({**point, "steps": 4000}) + "\n" + json.dumps({**point, "steps": 2000}) + '\n{"st')
    points = budget_curve.read_curve(path)
    assert [p["steps"] for p in points] == [2000, 4000]
    table = budget_curve.curve_table(points).splitlines()
    assert table[1].split()[:6] == ["2,000", "3.0", "11,000", "1.750", "+0.082", "90.0%"]
    assert table[1].endswith("QUARK: Welcome to Quark's.") and "the 6-gram at 1.832" in table[-1]
    assert budget_curve.curve_table([]) == "no points measured"


def test_the_stored_curve_covers_the_course_models_steps_on_one_machine():
    points = budget_curve.read_curve()
    assert len(points) >= 3, "the curve needs several budgets: run benchmarks/bench_budget.py"
    assert COURSE_STEPS in [p["steps"] for p in points], "the course model's own budget is on the curve"
    assert len({json.dumps(p["machine"], sort_keys=True) for p in points}) == 1, "one machine: comparable minutes"
    assert len({(p["counting_order"], p["counting_test_bits"]) for p in points}) == 1, "one yardstick"
    margins = [p["margin_bits"] for p in points]
    assert margins == sorted(margins), "a longer run should never have measured worse"


def test_the_benchmark_says_what_to_pass_when_a_budget_is_nonsense():
    run = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_budget.py"), "--steps", "0"],
        capture_output=True, text=True, cwd=ROOT,
    )  # fmt: skip
    assert run.returncode == 2 and "--steps takes positive numbers of steps" in run.stderr
