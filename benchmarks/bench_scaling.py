"""Data-parallel throughput: training tokens per second with 1, 2, ... ranks started by torchrun.

    python benchmarks/bench_scaling.py                          # 1 and 2 CPU ranks, quick preset, DS9 corpus
    python benchmarks/bench_scaling.py --ranks 1 2 4 --preset small --steps 100
    python benchmarks/bench_scaling.py --device cuda --ranks 1 2 4 8 --preset gpu   # one rank per GPU, NCCL

Each run is ``torchrun --standalone --nproc_per_node N -m ds9_utils.distributed`` with the same global batch,
so N ranks do the same work as one; the speed-up is what the extra processes (cores or GPUs) buy once the
gradients have been averaged. The numbers include the all-reduce; they exclude start-up and evaluation.
On a machine with fewer idle cores than ranks, expect no speed-up at all.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def run_ranks(ranks: int, preset: str, steps: int, device: str, text: Path | None, out: Path) -> dict:
    """One torchrun launch; returns rank 0's JSON summary."""
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        str(ranks),
        "-m",
        "ds9_utils.distributed",
        "--preset",
        preset,
        "--max-steps",
        str(steps),
        "--out",
        str(out),
        "--device",
        device,
    ]
    if text is not None:
        command += ["--text", str(text)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(PROJECT_ROOT), os.environ.get("PYTHONPATH")]))}
    finished = subprocess.run(command, capture_output=True, text=True, env=env)
    if finished.returncode != 0:
        raise SystemExit(f"torchrun with {ranks} ranks failed:\n{finished.stderr[-3000:]}")
    return json.loads(finished.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--preset", default="quick")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--text", type=Path, help="train on this UTF-8 file instead of the DS9 corpus")
    args = parser.parse_args()

    print(f"preset {args.preset}, {args.steps} steps, device {args.device}, {os.cpu_count()} CPU cores")
    baseline = None
    with tempfile.TemporaryDirectory(prefix="ds9-bench-scaling-") as folder:
        for ranks in args.ranks:
            summary = run_ranks(ranks, args.preset, args.steps, args.device, args.text, Path(folder) / f"ranks{ranks}")
            rate = summary["tokens_per_second"]
            baseline = baseline or rate
            print(
                f"{ranks:>3} ranks ({summary['backend'] or 'single process'}): {rate:10,.0f} tokens/s  "
                f"speed-up {rate / baseline:4.2f}x  val loss {summary['val_loss']:.4f}"
            )


if __name__ == "__main__":
    main()
