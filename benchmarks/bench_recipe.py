"""What each change of the modern recipe buys, alone and all together, at the same time budget and seeds.

    python benchmarks/bench_recipe.py --seconds 120 --seeds 3                         # DS9, every variant
    python benchmarks/bench_recipe.py --text input.txt --seconds 120 --seeds 3        # another text
    python benchmarks/bench_recipe.py --variants classic modern --seconds 540 --seeds 3
    python benchmarks/bench_recipe.py --seconds 120 --seeds 3 --results runs.jsonl    # resumable

Every run trains a GPT of the course model's shape (4 layers, 4 heads, 128 wide, block 128, batches of 8) with
``ds9_utils.train.train`` for the same seconds of training, then measures it by one function on one held-out
text: the mean loss over a fixed set of 200 batches of random windows, in float32. "classic" is the GPT-2
recipe of chapters 05-08 (the ``classic`` preset: LayerNorm, learned positions, GELU, tied head, AdamW,
cosine); each other variant adds one change to it; "modern" has them all (the ``cpu`` preset, the course
model). The runs go round-robin (every
variant once with seed 0, then every variant with seed 1...), so a machine that slows down for a while slows
all variants alike. A seed sets the initial weights and the batches. Printed per variant: held-out nats, mean
± standard deviation over the seeds, the difference to classic, and each run's steps and tokens per second
with the precision it ran in, since a time budget's result depends on the machine's speed.

The whole table takes hours on a 2-core CPU (10 variants x 3 seeds x 120 s is an hour per text). With
``--results FILE`` every finished run is appended to FILE as one JSON line, with the text, the budget and the
machine it ran on; run the same command again after an interruption and it skips the runs already there and
goes on. Only runs of this machine (processor, cores, torch, number format) are reused and summarised: a
time-budgeted result measured on another machine is not comparable.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
from dataclasses import replace
from pathlib import Path

import torch

from ds9_utils.course import CourseData, load_course_data, text_file_data
from ds9_utils.evaluate import bits_per_char
from ds9_utils.model import GPT, GPTConfig
from ds9_utils.precision import device_precision
from ds9_utils.presets import MODERN_ARCHITECTURE, MODERN_TRAINING, get_preset
from ds9_utils.train import estimate_loss, set_seed, train
from ds9_utils.train_config import TrainConfig

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


def variant(name: str, vocab_size: int, seconds: float) -> tuple[GPTConfig, TrainConfig]:
    """The model's shape and the recipe of one variant, trained for ``seconds``."""
    if name == "modern":
        preset = get_preset("cpu")
        model_kwargs, recipe = preset.model_kwargs, preset.train_config
    else:
        classic = get_preset("classic")
        model_changes, recipe_changes = CHANGES.get(name, ({}, {}))
        model_kwargs = {**classic.model_kwargs, **model_changes}
        recipe = replace(classic.train_config, **recipe_changes)
    recipe = replace(recipe, max_seconds=seconds, device="cpu", eval_interval=10**9)
    return GPTConfig(vocab_size=vocab_size, **model_kwargs), recipe


def run(name: str, data: CourseData, seconds: float, seed: int) -> dict:
    config, recipe = variant(name, data.tokenizer.vocab_size, seconds)
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


def machine() -> dict:
    """What a time-budgeted result depends on: the processor, its cores, torch and the number format."""
    processor = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            processor = next(line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {
        "processor": processor,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "precision": device_precision("cpu", get_preset("cpu").train_config.autocast),
    }


def load_results(path: Path, text: str, seconds: float, here: dict) -> list[dict]:
    """The runs already in ``path`` for this text, budget and machine; a line cut short by an interruption is
    skipped (its run is simply made again)."""
    if not path.exists():
        return []
    runs = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            run = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(run, dict) and (run.get("text"), run.get("seconds"), run.get("machine")) == (text, seconds, here):
            runs.append(run)
    return runs


def append_result(path: Path, run: dict) -> None:
    """Add one run as one line, on disk before the next run starts: an interruption loses at most that run."""
    cut_short = path.exists() and path.stat().st_size > 0 and not path.read_bytes().endswith(b"\n")
    with open(path, "a", encoding="utf-8") as results:
        results.write(("\n" if cut_short else "") + json.dumps(run) + "\n")  # never glued to a cut line
        results.flush()
        os.fsync(results.fileno())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--text", type=Path, help="a UTF-8 text file (default: the DS9 corpus, by episode)")
    parser.add_argument("--seconds", type=float, default=120.0, help="training time of every run (default 120)")
    parser.add_argument("--seeds", type=int, default=3, help="runs per variant (default 3)")
    parser.add_argument(
        "--variants",
        nargs="+",
        default=["classic", *CHANGES, "modern"],
        choices=["classic", *CHANGES, "modern"],
        help="which variants to run (default: all)",
    )
    parser.add_argument("--results", type=Path, help="a JSON-lines file to add each run to, and to resume from")
    args = parser.parse_args()
    data = text_file_data(args.text) if args.text else load_course_data()
    text = args.text.name if args.text else "DS9"
    here = machine()
    print(f"{args.text or 'DS9 corpus'}: {data}; {args.seconds:.0f} s a run; {here}")
    done = load_results(args.results, text, args.seconds, here) if args.results else []
    if done:
        print(f"{len(done)} runs of this text, budget and machine already in {args.results}: not run again")
    runs: list[dict] = []
    for seed in range(args.seeds):
        for name in args.variants:
            earlier = [r for r in done if (r["variant"], r["seed"]) == (name, seed)]
            if earlier:
                runs.append(earlier[0])
                continue
            runs.append({"text": text, "seconds": args.seconds, **run(name, data, args.seconds, seed), "machine": here})
            print(json.dumps(runs[-1]), flush=True)
            if args.results:
                append_result(args.results, runs[-1])
    by_variant = {name: [r["held_out_nats"] for r in runs if r["variant"] == name] for name in args.variants}
    baseline = statistics.mean(by_variant["classic"]) if "classic" in by_variant else None
    print(f"\n{'variant':<10} {'held-out nats':>20} {'bits/char':>9} {'vs classic':>10} {'steps':>14} {'tokens/s':>9}")
    for name, losses in by_variant.items():
        mean = statistics.mean(losses)
        spread = statistics.stdev(losses) if len(losses) > 1 else 0.0
        own = [r for r in runs if r["variant"] == name]
        steps = statistics.mean(r["steps"] for r in own)
        speed = statistics.mean(r["tokens_per_second"] for r in own)
        delta = f"{mean - baseline:+.3f}" if baseline is not None else "-"
        print(
            f"{name:<10} {mean:>12.3f} ± {spread:.3f} {bits_per_char(mean):>9.3f} {delta:>10} "
            f"{steps:>14,.0f} {speed:>9,.0f}  ({own[0]['precision']}, {len(losses)} seeds)"
        )
    sys.stdout.flush()


if __name__ == "__main__":
    main()
