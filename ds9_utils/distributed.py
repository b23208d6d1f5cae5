"""Data parallelism: several processes train one model together, each reading its own share of every batch.

This is how training scales out past one machine's worth of speed, with PyTorch's own engine rather than
code of ours. ``torchrun`` starts one process per worker (a *rank*) and tells each its number; they find
each other through a rendezvous address and open a *process group* over a communication backend: gloo on
CPUs, NCCL between GPUs. Then every rank runs the ordinary loop of ``ds9_utils.train`` with three changes:

1. Every rank builds the same model; ``DistributedDataParallel`` (DDP) copies rank 0's weights to the others
   and, during each backward pass, averages the gradients of all ranks (an *all-reduce*). Every rank then
   applies the same average, so the copies stay identical without ever sending weights again.
2. Every rank draws the same random batch of ``batch_size`` windows (same seed) but reads only its own
   ``batch_size / world_size`` rows. The average of the ranks' gradients is the gradient of the whole
   batch, so N ranks take the same step one process would take on the whole batch: the same model,
   computed N times faster (when the ranks really run in parallel), up to the order of floating-point sums.
3. Evaluation is shared the same way and its losses averaged; only rank 0 writes the checkpoint and the log
   and shows progress, so the ranks never write over each other.

Run it:

    torchrun --standalone --nproc_per_node 2 -m ds9_utils.distributed --preset quick --max-steps 50 --out runs/ddp

(``python -m torch.distributed.run`` is the same launcher; ``--standalone`` finds a free local port, so two
runs on one machine do not collide.) Without torchrun the command trains in one process: the reference a
data-parallel run must match.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from .__main__ import Parser, UsageError, add_training_arguments, folder, run_guarded
from .course import CourseData, load_course_data, text_file_data, train_course_model
from .model import GPT
from .presets import default_preset
from .settings import corpus_dir, resolve_device
from .train import SingleProcess, TrainResult

CHECKPOINT_NAME = "model.pt"
LOG_NAME = "log.jsonl"


class DataParallel(SingleProcess):
    """One rank of a data-parallel run: what ``train`` asks, answered with collective operations.

    Make it with ``process_group()``, which opens the process group first.
    """

    def __init__(self, rank: int, world_size: int, device: str):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not between 0 and world_size - 1 = {world_size - 1}")
        self.rank = rank
        self.world_size = world_size
        self.device = device

    def wrap(self, model: torch.nn.Module) -> DistributedDataParallel:
        """DDP: broadcasts rank 0's weights now, averages the gradients during every backward pass."""
        device = torch.device(self.device)
        return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    def rows(self, batch_size: int) -> slice:
        """Rows ``rank * share`` to ``(rank + 1) * share`` of the batch, ``share = batch_size / world_size``."""
        if batch_size % self.world_size:
            raise ValueError(
                f"batch_size {batch_size} cannot be split evenly between {self.world_size} ranks: "
                "make it a multiple of the number of processes"
            )
        share = batch_size // self.world_size
        return slice(self.rank * share, (self.rank + 1) * share)

    def mean(self, values: dict[str, float]) -> dict[str, float]:
        names = sorted(values)
        summed = torch.tensor([values[name] for name in names], dtype=torch.float64, device=self.device)
        dist.all_reduce(summed, op=dist.ReduceOp.SUM)
        return dict(zip(names, (summed / self.world_size).tolist()))

    def any(self, flag: bool) -> bool:
        votes = torch.tensor([int(flag)], device=self.device)
        dist.all_reduce(votes, op=dist.ReduceOp.MAX)
        return bool(votes.item())


def launched_by_torchrun() -> bool:
    """True inside a process started by torchrun (it sets RANK, WORLD_SIZE, LOCAL_RANK and MASTER_ADDR/PORT)."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


@contextlib.contextmanager
def process_group(device: str | None = None) -> Iterator[SingleProcess]:
    """Join the run torchrun started, and leave it at the end: ``with process_group() as parallel: ...``.

    Outside torchrun this yields a plain ``SingleProcess``. On CUDA each rank takes the GPU numbered by its
    LOCAL_RANK and talks over NCCL; on anything else the ranks work on the CPU and talk over gloo.
    """
    if not launched_by_torchrun():
        yield SingleProcess()
        return
    rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    if resolve_device(device).startswith("cuda"):
        if local_rank >= torch.cuda.device_count():
            raise ValueError(
                f"LOCAL_RANK {local_rank} has no GPU ({torch.cuda.device_count()} visible): start at "
                "most one process per GPU with --nproc_per_node"
            )
        device, backend = f"cuda:{local_rank}", "nccl"
        torch.cuda.set_device(local_rank)
    else:
        device, backend = "cpu", "gloo"
    dist.init_process_group(backend=backend, rank=rank, world_size=world_size)
    try:
        yield DataParallel(rank, world_size, device)
        dist.barrier()  # every rank is done before any tears the group down (gloo can abort a rank otherwise)
    finally:
        dist.destroy_process_group()


def train_preset(
    data: CourseData,
    preset: str,
    out: Path,
    *,
    parallel: SingleProcess | None = None,
    max_steps: int | None = None,
    max_seconds: float | None = None,
    resume: bool = False,
    progress: bool = True,
    device: str | None = None,
) -> tuple[GPT, TrainResult]:
    """Train a preset's model on ``data`` as one rank of ``parallel`` (or alone), checkpointing to ``out``.

    Rank 0 writes ``out/model.pt`` (the usual checkpoint, loadable with ``checkpoints.load_checkpoint``) and
    ``out/log.jsonl`` (one line per evaluation); the other ranks write nothing. A rank trains on the device
    ``process_group`` gave it; a single process on ``device`` (default: ``settings.choose_device``).
    """
    parallel = parallel or SingleProcess()
    log_path = Path(out) / LOG_NAME
    if parallel.is_main:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        if not resume:
            log_path.write_text("")

    def log(step: int, metrics: dict[str, float]) -> None:  # called on rank 0 only
        with log_path.open("a") as file:
            file.write(json.dumps({"step": step, "world_size": parallel.world_size, **metrics}) + "\n")

    return train_course_model(
        data,
        preset=preset,
        checkpoint_path=Path(out) / CHECKPOINT_NAME,
        resume=resume,
        max_steps=max_steps,
        max_seconds=max_seconds,
        device=device,
        progress=progress,
        callback=log,
        parallel=parallel,
    )


def _load_data(text_file: Path | None, data: Path | None = None) -> CourseData:
    """Every rank reads the data itself; the corpus must already be built (`python -m ds9_utils corpus`), so
    that the ranks never download or build it at the same time."""
    return load_course_data(corpus_dir(data)) if text_file is None else text_file_data(text_file)


def build_parser() -> argparse.ArgumentParser:
    """The ``train`` command's arguments (``ds9_utils.__main__``), with ``--out`` a folder and ``--device``."""
    parser = Parser(
        prog="torchrun --nproc_per_node N -m ds9_utils.distributed",
        description="Train a preset's GPT with DistributedDataParallel, one process per rank.",
    )
    add_training_arguments(
        parser, out_help="folder for model.pt and log.jsonl (written by rank 0)", out_type=folder, out_required=True
    )
    parser.add_argument("--device", help="cpu or cuda (default: settings.choose_device)")
    return parser


def run(args: argparse.Namespace) -> int:
    device = resolve_device(args.device, source="--device")
    checkpoint = args.out / CHECKPOINT_NAME
    if checkpoint.exists() and not args.resume:
        raise UsageError(f"{checkpoint} already exists: pass --resume to continue that run, or another --out")
    if args.resume and not checkpoint.is_file():
        raise UsageError(f"--resume: there is no run to continue at {checkpoint}; check --out, or leave out --resume")
    data = _load_data(args.text, args.data_dir)
    with process_group(device) as parallel:
        _, result = train_preset(
            data,
            args.preset or default_preset(device, args.max_seconds),
            args.out,
            parallel=parallel,
            max_steps=args.max_steps,
            max_seconds=args.max_seconds,
            resume=args.resume,
            device=device,
        )
        if parallel.is_main:
            summary = {key: value for key, value in result.to_dict().items() if key != "history"}
            backend = dist.get_backend() if dist.is_initialized() else None
            print(
                json.dumps(
                    {"world_size": parallel.world_size, "backend": backend, **summary, "checkpoint": str(checkpoint)}
                )
            )
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_guarded(lambda: run(args), "interrupted: run the same command with --resume to continue")


if __name__ == "__main__":
    sys.exit(main())
