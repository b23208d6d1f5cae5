"""Training throughput against nanoGPT: tokens per second of full training steps, alternating, in one process.

    python benchmarks/bench_model.py --nanogpt /path/to/nanoGPT                  # both shapes
    python benchmarks/bench_model.py --nanogpt /path/to/nanoGPT --steps 40 --only small

Each shape trains two models side by side on the same random batches, one step of each in turn, so a busy
machine slows both alike: ours with the training loop's own pieces (``configure_optimizer``: AdamW, fused
where the device has it; the precision ``ds9_utils.precision`` picks for this device; ``torch.compile`` when
``should_compile`` says so; gradient clipping), and nanoGPT's ``model.py`` with its loop on a CPU (AdamW from
``configure_optimizers``, clipping, float32, no compile). The two shapes are nanoGPT's CPU run ("small": 4
layers, 128 wide, block 64, batch 12) and its shakespeare-char model ("medium": 6 x 384, block 256, batch 8).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from ds9_utils.model import GPT, GPTConfig
from ds9_utils.optim import configure_optimizer
from ds9_utils.precision import autocast, device_precision, grad_scaler, should_compile
from ds9_utils.train_config import TrainConfig

VOCAB_SIZE = 65  # tiny Shakespeare's characters; the DS9 corpus has 81
SHAPES = {
    # name: (n_layer, n_head, n_embd, block_size, batch_size)
    "small": (4, 4, 128, 64, 12),
    "medium": (6, 6, 384, 256, 8),
}


def ours(shape: tuple[int, ...], device: str) -> tuple[Callable[[torch.Tensor, torch.Tensor], None], str]:
    """One training step of ds9_utils's loop, and a description of what it uses."""
    n_layer, n_head, n_embd, block_size, _ = shape
    model = GPT(GPTConfig(VOCAB_SIZE, block_size, n_layer, n_head, n_embd)).to(device).train()
    cfg = TrainConfig(learning_rate=1e-3, device=device)
    optimizer = configure_optimizer(model, cfg)
    precision = device_precision(device)
    scaler = grad_scaler(device, precision)
    compiled = should_compile(device, model)
    network = torch.compile(model) if compiled else model

    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        with autocast(device, precision):
            _, loss = network(x, y)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        scaler.step(optimizer)
        scaler.update()
        loss.item()

    fused = optimizer.defaults.get("fused")
    return step, f"{precision}, {'fused' if fused else 'plain'} AdamW, {'compiled' if compiled else 'eager'}"


def nanogpt(shape: tuple[int, ...], device: str, nanogpt_dir: Path) -> Callable[[torch.Tensor, torch.Tensor], None]:
    """One training step of nanoGPT's train.py on a CPU: float32, no compile, AdamW, clipping at 1.0."""
    sys.path.insert(0, str(nanogpt_dir))
    try:
        from model import GPT as NanoGPT
        from model import GPTConfig as NanoConfig
    finally:
        sys.path.remove(str(nanogpt_dir))
    n_layer, n_head, n_embd, block_size, _ = shape
    config = NanoConfig(
        block_size=block_size, vocab_size=VOCAB_SIZE, n_layer=n_layer, n_head=n_head, n_embd=n_embd, bias=False
    )
    with contextlib.redirect_stdout(io.StringIO()):  # nanoGPT prints its parameter counts
        model = NanoGPT(config).to(device).train()
        optimizer = model.configure_optimizers(0.1, 1e-3, (0.9, 0.99), torch.device(device).type)

    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        _, loss = model(x, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        loss.item()

    return step


def compare(
    shape: tuple[int, ...], device: str, nanogpt_dir: Path, warmup: int, steps: int
) -> tuple[float, float, str]:
    """Tokens per second of ours and nanoGPT's, timed one step each in turn on the same batches."""
    torch.manual_seed(0)
    our_step, description = ours(shape, device)
    their_step = nanogpt(shape, device, nanogpt_dir)
    *_, block_size, batch_size = shape
    times = {"ours": 0.0, "nanoGPT": 0.0}
    for index in range(warmup + steps):
        x = torch.randint(0, VOCAB_SIZE, (batch_size, block_size), device=device)
        y = torch.randint(0, VOCAB_SIZE, (batch_size, block_size), device=device)
        for name, step in (("ours", our_step), ("nanoGPT", their_step))[:: 1 if index % 2 else -1]:
            started = time.perf_counter()
            step(x, y)
            if index >= warmup:
                times[name] += time.perf_counter() - started
    tokens = steps * batch_size * block_size
    return tokens / times["ours"], tokens / times["nanoGPT"], description


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nanogpt", type=Path, required=True, help="a nanoGPT checkout (its model.py is imported)")
    parser.add_argument("--only", choices=sorted(SHAPES), help="run one shape")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps of each first (default 3)")
    parser.add_argument("--steps", type=int, default=20, help="timed steps of each (default 20)")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads (default: PyTorch's choice)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    if not (args.nanogpt / "model.py").is_file():
        sys.exit(f"--nanogpt {args.nanogpt}: no model.py there; pass the folder of a nanoGPT checkout")
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, device {args.device}, {torch.get_num_threads()} threads")
    for name, shape in SHAPES.items():
        if args.only and name != args.only:
            continue
        our_rate, their_rate, description = compare(shape, args.device, args.nanogpt, args.warmup, args.steps)
        n_layer, n_head, n_embd, block_size, batch_size = shape
        print(
            f"{name:>6} ({n_layer}x{n_embd}, {n_head} heads, block {block_size}, batch {batch_size}): "
            f"ours {our_rate:,.0f} tokens/s ({description}), nanoGPT {their_rate:,.0f} tokens/s, "
            f"{our_rate / their_rate:.2f}x"
        )


if __name__ == "__main__":
    main()
