"""What a longer run buys: the course model's recipe trained for several step budgets, each measured alike.

    python benchmarks/bench_budget.py --steps 2000 4000 8000 12000
    python benchmarks/bench_budget.py --steps 2000 4000 8000 12000 --results curve.jsonl   # resumable

Each budget is one run of ``ds9_utils.budget_curve.measure_budget``: the course recipe (notebook 09's model,
the ``course`` preset) with its whole schedule over that many steps, then its bits per character on the whole
validation and test episodes, its margin over the best counting model, and a sample scene with its share of
real words. Minutes depend on the machine, so each point also prints its tokens per second and number format.

A point takes as long as its training: about 3 minutes per 2,000 steps on a 2-core CPU. With ``--results
FILE`` every finished point is appended to FILE as one JSON line; run the same command again after an
interruption and it skips the budgets already measured on this machine. The course's curve is kept in
``ds9_utils/measurements/budget_curve.jsonl``, which the main job, chapter 09 and the README print.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ds9_utils.budget_curve import counting_yardstick, curve_table, measure_budget, read_curve
from ds9_utils.course import load_course_data
from ds9_utils.runlog import append_result, machine


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, nargs="+", required=True, help="the step budgets to measure")
    parser.add_argument("--seed", type=int, help="the seed of every run (default: the course preset's)")
    parser.add_argument("--results", type=Path, help="a JSON-lines file to add each point to, and to resume from")
    args = parser.parse_args()
    if any(steps < 1 for steps in args.steps):
        parser.error("--steps takes positive numbers of steps, e.g. --steps 2000 4000 8000")
    data = load_course_data()
    here = machine()
    print(f"DS9 corpus: {data}; {here}")
    done = [p for p in read_curve(args.results) if p["machine"] == here] if args.results else []
    yardstick = counting_yardstick(data)
    print(f"best counting model: the {yardstick['order']}-gram, {yardstick['test']:.4f} bits per character on test")
    points = []
    for steps in args.steps:
        earlier = [p for p in done if p["steps"] == steps and (args.seed is None or p["seed"] == args.seed)]
        if earlier:
            print(f"{steps:,} steps: already in {args.results}, not run again")
            points.append(earlier[0])
            continue
        points.append(measure_budget(data, steps, yardstick, seed=args.seed))
        print(json.dumps(points[-1]), flush=True)
        if args.results:
            append_result(args.results, points[-1])
    print()
    print(curve_table(sorted(points, key=lambda p: p["steps"])))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
