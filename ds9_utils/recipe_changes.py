"""What each change of the modern recipe buys: the variants, one measured run, and the table of many runs.

The speedruns (modded-nanogpt, nanochat) changed eight things at once. To know what each one buys at the
course model's size on a CPU, we add it alone to the classic GPT-2 recipe of chapters 05-08 and train for the
same seconds (or the same steps), with several seeds; "modern" has all of them (the ``cpu`` preset, the course
model). Every run is measured by one function on one held-out text: the mean loss over a fixed set of
``EVAL_BATCHES`` batches of random windows, in float32.

A table takes about an hour per text on a 2-core CPU, far too long for a chapter, so
``benchmarks/bench_recipe.py`` runs it and keeps each run as one JSON line. The runs made for the course are
stored with the package (``MEASURED_RUNS``), with the text, budget and machine of each, and chapter 09 prints
them with ``recipe_table``.
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import replace
from pathlib import Path

from .course import CourseData
from .evaluate import bits_per_char
from .model import GPT, GPTConfig
from .precision import device_precision
from .presets import MODERN_ARCHITECTURE, MODERN_TRAINING, get_preset
from .runlog import read_results
from .train import estimate_loss, set_seed, train
from .train_config import TrainConfig

EVAL_BATCHES = 200

#: One change to the classic recipe each: (GPTConfig changes, TrainConfig changes), with the course model's
#: values, so that "modern" is every row at once.
CHANGES: dict[str, tuple[dict, dict]] = {
    "muon": ({}, {key: MODERN_TRAINING[key] for key in ("optimizer", "muon_lr")}),
    "rotary": ({"positional": MODERN_ARCHITECTURE["positional"]}, {}),
    "qk_norm": ({"qk_norm": MODERN_ARCHITECTURE["qk_norm"]}, {}),
    "relu2": ({"activation": MODERN_ARCHITECTURE["activation"]}, {}),
    "rmsnorm": ({"norm": MODERN_ARCHITECTURE["norm"]}, {}),
    "zero_init": ({"zero_init": MODERN_ARCHITECTURE["zero_init"]}, {}),
    "untied": ({"tie_embeddings": MODERN_ARCHITECTURE["tie_embeddings"]}, {}),
    "wsd": ({}, {"schedule": MODERN_TRAINING["schedule"]}),
}
VARIANTS = ("classic", *CHANGES, "modern")
#: The other way round: the course model with one change taken out (back to the classic recipe's value), to see
#: what each change is worth inside the whole recipe, where changes can need each other.
WITHOUT = tuple(f"modern-{name}" for name in CHANGES)

#: The course model's budget in seconds: its 8,000 steps took about 11 minutes on the 2-core reference machine
#: (the budget curve), so a variant trained this long learns from about as much compute as the course model.
COURSE_BUDGET_SECONDS = 660.0

#: The runs that ``benchmarks/bench_recipe.py`` made for the course (one JSON object a line).
MEASURED_RUNS = Path(__file__).resolve().parent / "measurements" / "recipe_changes.jsonl"


def budget_fields(seconds: float | None, steps: int | None) -> dict:
    """How a run's budget is kept in the results file: its ``seconds``, or no seconds and its ``max_steps``."""
    return {"seconds": seconds} if steps is None else {"seconds": None, "max_steps": steps}


def budget_label(seconds: float | None, steps: int | None) -> str:
    """A budget as the benchmark and the table print it: "660 s" or "8,000 steps"."""
    return f"{seconds:.0f} s" if steps is None else f"{steps:,} steps"


def variant_recipe(
    name: str, vocab_size: int, seconds: float | None = None, steps: int | None = None
) -> tuple[GPTConfig, TrainConfig]:
    """The model's shape and the recipe of one variant, trained on the CPU for ``seconds`` or for ``steps``.

    A time budget asks what a recipe learns per second, but its result moves with the machine's speed, so a
    table of time-budgeted runs is only fair when they ran side by side. A step budget gives the same model on
    any machine in the same number format, so its runs can be gathered over several sittings; each run's
    tokens per second then say what its steps cost.
    """
    if (seconds is None) == (steps is None):
        raise ValueError("give a variant a time budget (seconds) or a step budget (steps): exactly one of them")
    classic, modern = get_preset("classic"), get_preset("cpu")
    if name == "modern" or name in WITHOUT:
        model_changes, recipe_changes = CHANGES.get(name.removeprefix("modern-"), ({}, {}))
        classic_model = vars(GPTConfig(vocab_size=vocab_size, **classic.model_kwargs))
        model_kwargs = {**modern.model_kwargs, **{key: classic_model[key] for key in model_changes}}
        taken_out = {key: getattr(classic.train_config, key) for key in recipe_changes}
        recipe = replace(modern.train_config, **taken_out)
    elif name == "classic" or name in CHANGES:
        model_changes, recipe_changes = CHANGES.get(name, ({}, {}))
        model_kwargs = {**classic.model_kwargs, **model_changes}
        recipe = replace(classic.train_config, **recipe_changes)
    else:
        raise ValueError(f"unknown variant {name!r}; choose from {', '.join(VARIANTS + WITHOUT)}")
    budget = {"max_seconds": seconds} if steps is None else {"max_seconds": None, "max_steps": steps}
    recipe = replace(recipe, **budget, device="cpu", eval_interval=10**9)
    return GPTConfig(vocab_size=vocab_size, **model_kwargs), recipe


def measure_variant(
    name: str, data: CourseData, seed: int, seconds: float | None = None, steps: int | None = None
) -> dict:
    """Train one variant for ``seconds`` or ``steps`` with ``seed`` (the initial weights and the batches), then
    measure it."""
    config, recipe = variant_recipe(name, data.tokenizer.vocab_size, seconds, steps)
    recipe = replace(recipe, seed=seed)
    set_seed(seed)
    model = GPT(config)
    result = train(model, data.train, data.val, recipe, progress=False)
    held_out = estimate_loss(model, {"val": data.val}, eval_iters=EVAL_BATCHES, batch_size=8, autocast=False)["val"]
    return {
        "variant": name,
        "seed": seed,
        "held_out_nats": held_out,
        "steps": result.steps,
        "tokens_per_second": round(result.tokens_per_second),
        "precision": device_precision("cpu", recipe.autocast),
    }


def read_runs(
    path: Path, text: str, seconds: float | None, machine: dict | None = None, steps: int | None = None
) -> list[dict]:
    """The runs in ``path`` of this text and budget, ``seconds`` or ``steps`` (and machine, if given); see
    ``runlog.read_results``. A run trained for a step budget keeps it as ``max_steps``, with no seconds."""
    return [
        run
        for run in read_results(path)
        if run.get("text") == text
        and all(run.get(key) == value for key, value in budget_fields(seconds, steps).items())
        and (machine is None or run.get("machine") == machine)
    ]


def _mean_sd(values: list[float]) -> tuple[float, float]:
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def recipe_table(runs: list[dict], baseline: str = "classic") -> str:
    """The runs of one text and budget as a table: per variant, the held-out loss's mean ± standard deviation
    over the seeds, the difference to ``baseline`` and that difference in its standard errors (how many times
    larger it is than the seeds' luck could make it), and the steps and tokens per second the budget gave."""
    if not runs:
        return "no runs"
    first = runs[0]
    machines = {json.dumps(run.get("machine"), sort_keys=True) for run in runs}
    machine = first.get("machine") or {}
    where = (
        f"{machine.get('processor')}, {machine.get('threads')} threads, torch {machine.get('torch')}, "
        f"{machine.get('precision')}"
        if len(machines) == 1
        else "several machines"
    )
    lines = [f"{first['text']}, {budget_label(first['seconds'], first.get('max_steps'))} of training a run ({where})"]
    lines.append(
        f"{'variant':<18}{'held-out nats':>17}{'bits/char':>11}{'vs ' + baseline:>12}{'/ its SE':>10}{'seeds':>7}"
        f"{'steps':>8}{'tokens/s':>10}"
    )
    by_variant = {name: [run for run in runs if run["variant"] == name] for name in VARIANTS + WITHOUT}
    base = [run["held_out_nats"] for run in by_variant.get(baseline, [])]
    for name, own in by_variant.items():
        if not own:
            continue
        mean, sd = _mean_sd([run["held_out_nats"] for run in own])
        delta, in_errors = "-", "-"
        if name != baseline and base:
            base_mean, base_sd = _mean_sd(base)
            delta = f"{mean - base_mean:+.3f}"
            error = math.sqrt(sd**2 / len(own) + base_sd**2 / len(base))
            in_errors = f"{abs(mean - base_mean) / error:.1f}" if error > 0 else "-"
        steps = statistics.mean(run["steps"] for run in own)
        speed = statistics.mean(run["tokens_per_second"] for run in own)
        lines.append(
            f"{name:<18}{mean:>9.3f} ± {sd:.3f}{bits_per_char(mean):>11.3f}{delta:>12}{in_errors:>10}{len(own):>7}"
            f"{steps:>8,.0f}{speed:>10,.0f}"
        )
    return "\n".join(lines)
