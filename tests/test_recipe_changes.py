"""The recipe table: its arithmetic, the variants it measures, and the stored runs that chapter 09 prints."""

from __future__ import annotations

import json
import math

import pytest

from ds9_utils.course import text_data
from ds9_utils.presets import COURSE_STEPS, get_preset
from ds9_utils.recipe_changes import (
    CHANGES,
    COURSE_BUDGET_SECONDS,
    MEASURED_RUNS,
    VARIANTS,
    WITHOUT,
    budget_label,
    measure_variant,
    read_runs,
    recipe_table,
    variant_recipe,
)

MACHINE = {"processor": "Test CPU", "threads": 2, "torch": "2.13.0+cpu", "precision": "bf16"}


def _run(variant: str, seed: int, nats: float, steps: int = 100) -> dict:
    return {
        "text": "t.txt",
        "seconds": 60.0,
        "variant": variant,
        "seed": seed,
        "held_out_nats": nats,
        "steps": steps,
        "tokens_per_second": 1000 * steps // 60,
        "precision": "bf16",
        "machine": MACHINE,
    }


def test_the_table_gives_mean_spread_difference_and_its_standard_errors():
    runs = [_run("classic", 0, 1.0), _run("classic", 1, 1.2), _run("muon", 0, 0.8, 60), _run("muon", 1, 0.8, 80)]
    table = recipe_table(runs).splitlines()
    assert table[0] == "t.txt, 60 s of training a run (Test CPU, 2 threads, torch 2.13.0+cpu, bf16)"
    classic, muon = table[2].split(), table[3].split()
    assert classic[:4] == ["classic", "1.100", "±", f"{math.sqrt(0.02):.3f}"]
    assert classic[5:7] == ["-", "-"]
    # -0.300 nats; its standard error sqrt(0.02 / 2 + 0 / 2) = 0.1, so 3.0 of them; two seeds; 70 steps on average
    assert muon[:4] == ["muon", "0.800", "±", "0.000"]
    assert muon[4] == f"{0.8 / math.log(2):.3f}"
    assert muon[5:9] == ["-0.300", "3.0", "2", "70"]


def test_variants_change_one_thing_each_and_modern_is_the_course_model():
    classic = variant_recipe("classic", 81, 30.0)
    for name in CHANGES:
        config, recipe = variant_recipe(name, 81, 30.0)
        changed = {key for key, value in vars(config).items() if vars(classic[0])[key] != value}
        changed |= {key for key, value in vars(recipe).items() if vars(classic[1])[key] != value}
        assert changed and changed <= set(CHANGES[name][0]) | set(CHANGES[name][1]), name
    config, recipe = variant_recipe("modern", 81, 30.0)
    course = get_preset("cpu")
    assert config == course.gpt_config(81)
    assert (recipe.optimizer, recipe.schedule, recipe.max_seconds) == (course.train_config.optimizer, "wsd", 30.0)


def test_modern_without_a_change_differs_from_modern_in_that_change_alone():
    modern = variant_recipe("modern", 81, 30.0)
    classic = variant_recipe("classic", 81, 30.0)
    for name in WITHOUT:
        config, recipe = variant_recipe(name, 81, 30.0)
        changed = {key for key, value in vars(config).items() if vars(modern[0])[key] != value}
        changed |= {key for key, value in vars(recipe).items() if vars(modern[1])[key] != value}
        change = name.removeprefix("modern-")
        assert changed and changed <= set(CHANGES[change][0]) | set(CHANGES[change][1]), name
        assert all(
            vars(config).get(key, vars(recipe).get(key)) == vars(classic[0]).get(key, vars(classic[1]).get(key))
            for key in changed
        ), f"{name} takes the classic recipe's value"
    with pytest.raises(ValueError, match="unknown variant 'modern-dropout'"):
        variant_recipe("modern-dropout", 81, 30.0)


def test_the_table_compares_with_the_baseline_it_is_given():
    runs = [
        _run("modern", 0, 1.3),
        _run("modern", 1, 1.3),
        _run("modern-rmsnorm", 0, 1.2),
        _run("modern-rmsnorm", 1, 1.2),
    ]
    table = recipe_table(runs, baseline="modern").splitlines()
    assert "vs modern" in table[1]
    assert table[3].split()[:6] == ["modern-rmsnorm", "1.200", "±", "0.000", f"{1.2 / math.log(2):.3f}", "-0.100"]


def test_read_runs_skips_other_texts_budgets_machines_and_cut_lines(tmp_path):
    path = tmp_path / "runs.jsonl"
    ours = _run("muon", 0, 1.3)
    lines = [ours, {**ours, "seconds": 540.0}, {**ours, "text": "DS9"}, {**ours, "machine": {**MACHINE, "threads": 4}}]
    path.write_text("".join(json.dumps(run) + "\n" for run in lines) + json.dumps(ours)[:30], encoding="utf-8")
    assert read_runs(path, "t.txt", 60.0, MACHINE) == [ours]
    assert len(read_runs(path, "t.txt", 60.0)) == 2  # any machine
    assert read_runs(tmp_path / "missing.jsonl", "t.txt", 60.0) == []


def _assert_every_seed_on_one_machine(runs: list[dict], label: str) -> None:
    """A table chapter 09 prints shows each variant with all three seeds, never one or two, from one machine."""
    for name in {run["variant"] for run in runs}:
        seeds = sorted(run["seed"] for run in runs if run["variant"] == name)
        assert seeds == [0, 1, 2], f"{label} {name}: seeds {seeds}"
    assert len({json.dumps(run["machine"], sort_keys=True) for run in runs}) == 1, f"{label}: one machine per table"
    assert all(math.isfinite(run["held_out_nats"]) and run["steps"] > 0 for run in runs)


@pytest.mark.parametrize("text", ["DS9", "kjv.txt"])
def test_the_stored_measurements_hold_every_variant_with_three_seeds_on_one_machine(text):
    runs = read_runs(MEASURED_RUNS, text, 120.0)
    assert {run["variant"] for run in runs} == set(VARIANTS), f"{text}: {MEASURED_RUNS.name} lacks variants"
    _assert_every_seed_on_one_machine(runs, f"{text} at {budget_label(120.0, None)}")


def test_the_stored_runs_at_the_course_budget_compare_classic_and_modern_with_three_seeds_on_one_machine():
    runs = read_runs(MEASURED_RUNS, "DS9", COURSE_BUDGET_SECONDS)
    variants = {run["variant"] for run in runs}
    assert {"classic", "modern"} <= variants, f"{MEASURED_RUNS.name} lacks classic or modern at the course budget"
    _assert_every_seed_on_one_machine(runs, f"DS9 at {budget_label(COURSE_BUDGET_SECONDS, None)}")


@pytest.mark.parametrize("text", ["DS9", "kjv.txt"])
def test_the_stored_runs_at_the_course_steps_hold_every_variant_with_three_seeds_on_one_machine(text):
    runs = read_runs(MEASURED_RUNS, text, None, steps=COURSE_STEPS)
    assert {run["variant"] for run in runs} == set(VARIANTS), f"{text}: {MEASURED_RUNS.name} lacks variants"
    _assert_every_seed_on_one_machine(runs, f"{text} at {budget_label(None, COURSE_STEPS)}")
    assert all(run["steps"] == COURSE_STEPS for run in runs), "a step-budgeted run trains all its steps"


def test_a_variant_trains_for_a_time_or_a_step_budget_never_both():
    _, timed = variant_recipe("muon", 81, seconds=30.0)
    assert timed.max_seconds == 30.0
    _, stepped = variant_recipe("muon", 81, steps=8000)
    assert (stepped.max_seconds, stepped.max_steps) == (None, 8000)
    assert stepped.optimizer == timed.optimizer  # the budget is the only difference
    for budgets in ({}, {"seconds": 30.0, "steps": 8000}):
        with pytest.raises(ValueError, match="exactly one of them"):
            variant_recipe("muon", 81, **budgets)


def test_a_step_budget_gives_the_same_measurement_twice():
    data = text_data("QUARK: Root beer. It's so bubbly and cloying and happy. Just like the Federation.\n" * 60)
    first, again = (measure_variant("modern", data, seed=3, steps=3) for _ in range(2))
    assert first["steps"] == again["steps"] == 3
    assert first["held_out_nats"] == again["held_out_nats"]  # a step budget does not depend on the machine's speed


def test_step_budgeted_runs_are_read_and_shown_apart_from_timed_ones(tmp_path):
    path = tmp_path / "runs.jsonl"
    timed = _run("classic", 0, 1.3)
    stepped = {**timed, "seconds": None, "max_steps": 8000, "steps": 8000}
    path.write_text("".join(json.dumps(run) + "\n" for run in (timed, stepped)), encoding="utf-8")
    assert read_runs(path, "t.txt", 60.0) == [timed]
    assert read_runs(path, "t.txt", None, steps=8000) == [stepped]
    assert read_runs(path, "t.txt", None, steps=4000) == []
    assert recipe_table([stepped]).splitlines()[0].startswith("t.txt, 8,000 steps of training a run (Test CPU")
