"""What each change of the modern recipe buys, alone and all together, at the same budget and seeds.

    python benchmarks/bench_recipe.py --seconds 120 --seeds 3                         # DS9, every variant
    python benchmarks/bench_recipe.py --text kjv.txt --seconds 120 --seeds 3          # another text
    python benchmarks/bench_recipe.py --variants classic modern --seconds 660 --seeds 3   # the course budget
    python benchmarks/bench_recipe.py --steps 8000 --seeds 3 --results runs.jsonl         # its steps, any machine
    python benchmarks/bench_recipe.py --seconds 120 --seeds 3 --results runs.jsonl    # resumable
    python benchmarks/bench_recipe.py --variants modern modern-rmsnorm modern-untied  # modern without one change

The variants, the measurement and the table are ``ds9_utils.recipe_changes``: a GPT of the course model's shape
(4 layers, 4 heads, 128 wide, block 128, batches of 8) trained with ``ds9_utils.train.train`` for the same
seconds (or steps); "classic" is the GPT-2 recipe of chapters 05-08, each other variant adds one change to it,
"modern" has them all (the course model). The runs go round-robin (every variant once with seed 0, then every
variant with seed 1...), so a machine that slows down for a while slows all variants alike. A seed sets the
initial weights and the batches. Each run's steps and tokens per second are printed with the number format it
ran in, since a time budget's result depends on the machine's speed.

The whole table takes hours on a 2-core CPU (10 variants x 3 seeds x 120 s is an hour per text). With
``--results FILE`` every finished run is appended to FILE as one JSON line, with the text, the budget and the
machine it ran on; run the same command again after an interruption and it skips the runs already there and
goes on. Only runs of this machine (processor, cores, torch, number format) are reused and summarised: a
time-budgeted result measured on another machine is not comparable, and even on one machine it moves with the
hour, so a time-budgeted table is fair only when its runs share a sitting. With ``--steps N`` every run trains N
steps instead: the same model on any machine in the same number format, so a table too long for one sitting
(every variant at the course model's 8,000 steps) can be gathered over several. The course's runs are kept in
``ds9_utils/measurements/recipe_changes.jsonl``, which chapter 09 prints.

The course's second text is the King James Bible, from Debian's ``bible-kjv`` package, verse numbers removed
(4.1 M characters): ``bible -f "Gen1:1-Rev22:21" | sed 's/^[^ ]* //' > kjv.txt``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ds9_utils.course import load_course_data, text_file_data
from ds9_utils.recipe_changes import (
    VARIANTS,
    WITHOUT,
    budget_fields,
    budget_label,
    measure_variant,
    read_runs,
    recipe_table,
)
from ds9_utils.runlog import append_result, machine


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--text", type=Path, help="a UTF-8 text file (default: the DS9 corpus, by episode)")
    budget_options = parser.add_mutually_exclusive_group()
    budget_options.add_argument("--seconds", type=float, help="training time of every run (default 120)")
    budget_options.add_argument("--steps", type=int, help="train every run for this many steps instead of a time")
    parser.add_argument("--seeds", type=int, default=3, help="runs per variant (default 3)")
    parser.add_argument(
        "--variants",
        nargs="+",
        default=list(VARIANTS),
        choices=VARIANTS + WITHOUT,
        help="which variants to run (default: classic, each change alone, modern; modern-X is modern without X)",
    )
    parser.add_argument("--results", type=Path, help="a JSON-lines file to add each run to, and to resume from")
    args = parser.parse_args()
    if args.steps is None and args.seconds is None:
        args.seconds = 120.0
    if any(budget is not None and budget <= 0 for budget in (args.steps, args.seconds)):
        parser.error("--seconds and --steps take a positive number, e.g. --steps 8000")
    data = text_file_data(args.text) if args.text else load_course_data()
    text = args.text.name if args.text else "DS9"
    here = machine()
    print(f"{args.text or 'DS9 corpus'}: {data}; {budget_label(args.seconds, args.steps)} a run; {here}")
    done = read_runs(args.results, text, args.seconds, here, args.steps) if args.results else []
    if done:
        print(f"{len(done)} runs of this text, budget and machine already in {args.results}: not run again")
    runs: list[dict] = []
    for seed in range(args.seeds):
        for name in args.variants:
            earlier = [r for r in done if (r["variant"], r["seed"]) == (name, seed)]
            if earlier:
                runs.append(earlier[0])
                continue
            runs.append(
                {
                    "text": text,
                    **budget_fields(args.seconds, args.steps),
                    **measure_variant(name, data, seed, args.seconds, args.steps),
                    "machine": here,
                }
            )
            print(json.dumps(runs[-1]), flush=True)
            if args.results:
                append_result(args.results, runs[-1])
    print()
    baseline = "classic" if "classic" in args.variants else "modern"
    print(recipe_table([run for name in args.variants for run in runs if run["variant"] == name], baseline))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
