"""Measurements kept as JSON lines, one run a line: the machine that made them, and appending a run safely.

The benchmarks that take an hour or more (``bench_recipe.py``, ``bench_budget.py``) append each finished run to a
file at once and skip the runs already there when started again, so an interruption loses at most one run. A
time-budgeted or timed result depends on the machine, so every run records which one made it.
"""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path

import torch

from .precision import device_precision


def machine() -> dict:
    """What a time-budgeted result depends on: the processor, its cores, torch and the number format."""
    from .presets import MAIN_JOB_PRESET, get_preset  # presets import the training recipe; keep this module light

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
        "precision": device_precision("cpu", get_preset(MAIN_JOB_PRESET).train_config.autocast),
    }


def append_result(path: Path, run: dict) -> None:
    """Add one run as one line, on disk before the next run starts: an interruption loses at most that run."""
    cut_short = path.exists() and path.stat().st_size > 0 and not path.read_bytes().endswith(b"\n")
    with open(path, "a", encoding="utf-8") as results:
        results.write(("\n" if cut_short else "") + json.dumps(run) + "\n")  # never glued to a cut line
        results.flush()
        os.fsync(results.fileno())


def read_results(path: Path) -> list[dict]:
    """Every run in ``path`` (none if it is missing). A line cut short by an interruption is skipped: its run is
    simply made again."""
    if not path.exists():
        return []
    runs = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            run = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(run, dict):
            runs.append(run)
    return runs
