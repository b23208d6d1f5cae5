"""What a longer training run buys: the course model's recipe at several step budgets, each measured the same way.

The main job trains for 9 minutes so that ``python -m ds9_utils`` is done in 10; notebook 09 trains the course
model for ``COURSE_STEPS`` steps. How much better does more training make it? Each point of the curve is one
run of the course recipe with the whole schedule (warm-up, stable stretch, decay) laid over its steps, then:

- its bits per character on the whole validation and test episodes (``evaluate.bits_per_character``);
- its margin over the best counting model (the course's yardstick, ``ngram.counting_baselines``: the order
  chosen on validation, its score on test), the number chapter 11 quotes;
- a sample scene from one fixed prompt and seed, and the share of its words found in the training text.

A point takes as long as its training (3 to 20 minutes on a 2-core CPU), so ``benchmarks/bench_budget.py``
measures the curve and keeps each point as one JSON line with the machine it ran on; the course's curve is
stored with the package (``MEASURED_CURVE``) and printed by the main job, chapter 09 and the README.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from .course import CourseData, train_course_model
from .evaluate import bits_per_character, real_words_share, words
from .generate import generate_text, stop_at_text
from .ngram import best_counting_order, counting_baselines
from .precision import device_precision
from .presets import COURSE_PRESET, get_preset
from .runlog import machine, read_results

#: The points ``benchmarks/bench_budget.py`` measured for the course (one JSON object a line).
MEASURED_CURVE = Path(__file__).resolve().parent / "measurements" / "budget_curve.jsonl"

SAMPLE_PROMPT = "[Quark's]\nQUARK:"
SAMPLE_SEED = 1337
SAMPLE_CHARACTERS = 500


def counting_yardstick(data: CourseData) -> dict:
    """The best counting model: its order (chosen on the validation episodes) and its bits per character on the
    validation and test episodes."""
    texts = {"val": data.val.numpy(), "test": data.test.numpy()}
    baselines = counting_baselines(data.train.numpy(), texts, data.tokenizer.vocab_size)
    order = best_counting_order(baselines, "val")
    return {"order": order, **baselines[order]}


def sample_scene(model: torch.nn.Module, data: CourseData) -> str:
    """The model's scene from ``SAMPLE_PROMPT`` with ``SAMPLE_SEED``, up to the next scene heading."""
    generator = torch.Generator().manual_seed(SAMPLE_SEED)
    stop = stop_at_text(data.tokenizer, "\n\n[")
    text = generate_text(
        model, data.tokenizer, SAMPLE_PROMPT, SAMPLE_CHARACTERS, temperature=0.8, generator=generator, stop=stop
    )
    return text.removesuffix("\n\n[")


def measure_budget(
    data: CourseData, steps: int, yardstick: dict, *, seed: int | None = None, progress: bool = False
) -> dict:
    """Train the course recipe for ``steps`` steps (the whole schedule over them) on the CPU, and measure it."""
    with tempfile.TemporaryDirectory() as scratch:
        model, result = train_course_model(
            data,
            preset=COURSE_PRESET,
            checkpoint_path=Path(scratch) / "model.pt",
            resume=False,
            step_budget=steps,
            device="cpu",
            seed=seed,
            progress=progress,
        )
    block_size = model.config.block_size
    val, test = (bits_per_character(model, ids, block_size) for ids in (data.val, data.test))
    scene = sample_scene(model, data)
    recipe = get_preset(COURSE_PRESET).train_config
    return {
        "steps": result.steps,
        "seed": recipe.seed if seed is None else seed,
        "training_seconds": round(result.history["seconds"][-1], 1),
        "tokens_per_second": round(result.tokens_per_second),
        "precision": device_precision("cpu", recipe.autocast),
        "val_bits": round(val, 4),
        "test_bits": round(test, 4),
        "counting_order": yardstick["order"],
        "counting_test_bits": round(yardstick["test"], 4),
        "margin_bits": round(yardstick["test"] - test, 4),
        "real_words": round(real_words_share(scene, set(words(data.tokenizer.decode(data.train.tolist())))), 4),
        "sample": scene,
        "machine": machine(),
    }


def read_curve(path: Path = MEASURED_CURVE) -> list[dict]:
    """The measured points in ``path``, fewest steps first."""
    return sorted((run for run in read_results(path) if "margin_bits" in run), key=lambda run: run["steps"])


def first_line(scene: str) -> str:
    """The first line the model wrote after the prompt (the prompt's speaker included)."""
    written = scene.removeprefix(SAMPLE_PROMPT.rsplit("\n", 1)[0] + "\n")
    return next((line for line in written.splitlines() if line.strip()), "")


def curve_table(points: list[dict], width: int = 60) -> str:
    """The curve as a table: steps, training minutes (and tokens per second, since minutes depend on the
    machine), test bits per character, the margin over the best counting model, real words, and a sample line."""
    if not points:
        return "no points measured"
    lines = [
        f"{'steps':>7} {'minutes':>8} {'tokens/s':>9} {'test bits':>10} {'margin':>7} {'real words':>11}  sample",
    ]
    for point in points:
        line = first_line(point["sample"])
        line = line if len(line) <= width else line[: width - 3] + "..."
        lines.append(
            f"{point['steps']:>7,} {point['training_seconds'] / 60:>8.1f} {point['tokens_per_second']:>9,} "
            f"{point['test_bits']:>10.3f} {point['margin_bits']:>+7.3f} {point['real_words']:>11.1%}  {line}"
        )
    first = points[0]
    lines.append(
        f"(margin: bits per character below the best counting model, the {first['counting_order']}-gram at "
        f"{first['counting_test_bits']:.3f} on the test episodes; {first['precision']}, "
        f"{first['machine']['threads']} threads, {first['machine']['processor']})"
    )
    return "\n".join(lines)
