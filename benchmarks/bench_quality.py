"""Model quality at equal time: the course's recipe, its classic GPT-2 recipe and nanoGPT's, same budget.

    python benchmarks/bench_quality.py --text input.txt --nanogpt /path/to/nanoGPT              # 120 s each
    python benchmarks/bench_quality.py --text input.txt --nanogpt /path/to/nanoGPT --rounds 2   # two orders

"modern" is exactly what a user runs, ``python -m ds9_utils train --text FILE --max-seconds S`` with its
defaults, in a subprocess (on a CPU it picks the preset made for the budget: ``brief`` for 120 s, see
``ds9_utils.presets``: the speedruns' recipe). "classic" is the same command with ``--preset classic``: the GPT-2
recipe of chapters 05-08 at the course model's shape.
nanoGPT's is its CPU run of shakespeare-char (4 layers, 4 heads, 128 wide, block 64, batch 12, no dropout,
float32, no compile) with AdamW at 1e-3, 100 warm-up steps and a cosine to 1e-4 laid over the same
S seconds, so it too ends annealed. Both models are then measured by the same function on the same held-out
text (the last 10% of the file, which neither trained on): the mean loss over a fixed set of 200 batches of
random windows (float32, each model at its own context length). The machine's load changes both runs'
speed, so run them on a quiet machine, or with ``--rounds 2`` (the second round in the reverse order) to see
the spread.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from ds9_utils.checkpoints import load_checkpoint
from ds9_utils.course import text_file_data
from ds9_utils.evaluate import bits_per_char
from ds9_utils.train import estimate_loss, get_batch

NANOGPT_SHAPE = dict(n_layer=4, n_head=4, n_embd=128, block_size=64, dropout=0.0, bias=False)
NANOGPT_RECIPE = dict(batch_size=12, learning_rate=1e-3, min_lr=1e-4, warmup_steps=100, weight_decay=0.1)
EVAL_BATCHES, EVAL_BATCH_SIZE = 200, 12


def held_out_loss(model: torch.nn.Module, val: torch.Tensor) -> float:
    """Mean loss (nats per character) on the same 200 batches of held-out windows, for any model."""
    return estimate_loss(model, {"val": val}, eval_iters=EVAL_BATCHES, batch_size=EVAL_BATCH_SIZE, autocast=False)[
        "val"
    ]


def train_ours(text: Path, seconds: float, out: Path, preset: str | None = None) -> tuple[float, dict]:
    """Run the command line for a time budget (with its default preset, or ``preset``); its final JSON line and
    our held-out loss."""
    command = [sys.executable, "-m", "ds9_utils", "train", "--text", str(text), "--max-seconds", str(seconds)]
    command += ["--preset", preset] if preset else []
    run = subprocess.run([*command, "--out", str(out)], capture_output=True, text=True, check=False)
    if run.returncode != 0:
        sys.exit(f"{' '.join(command)} failed ({run.returncode}):\n{run.stderr[-2000:]}")
    summary = json.loads(run.stdout.strip().splitlines()[-1])
    model = load_checkpoint(out, device="cpu").model
    return held_out_loss(model, text_file_data(text).val), summary


def train_nanogpt(text: Path, seconds: float, nanogpt_dir: Path, seed: int) -> tuple[float, dict]:
    """nanoGPT's model and CPU loop, with its warm-up and cosine laid over ``seconds`` of training."""
    sys.path.insert(0, str(nanogpt_dir))
    try:
        from model import GPT as NanoGPT
        from model import GPTConfig as NanoConfig
    finally:
        sys.path.remove(str(nanogpt_dir))
    data = text_file_data(text)
    torch.manual_seed(seed)
    recipe = NANOGPT_RECIPE
    with contextlib.redirect_stdout(io.StringIO()):  # nanoGPT prints its parameter counts
        model = NanoGPT(NanoConfig(vocab_size=data.tokenizer.vocab_size, **NANOGPT_SHAPE)).train()
        optimizer = model.configure_optimizers(recipe["weight_decay"], recipe["learning_rate"], (0.9, 0.99), "cpu")
    generator = torch.Generator().manual_seed(seed)

    def lr_at(step: int, elapsed: float) -> float:
        if step < recipe["warmup_steps"]:
            return recipe["learning_rate"] * (step + 1) / recipe["warmup_steps"]
        cosine = 0.5 * (1 + math.cos(math.pi * min(elapsed / seconds, 1.0)))
        return recipe["min_lr"] + cosine * (recipe["learning_rate"] - recipe["min_lr"])

    step, started = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - started) < seconds:
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, elapsed)
        x, y = get_batch(data.train, NANOGPT_SHAPE["block_size"], recipe["batch_size"], generator)
        _, loss = model(x, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        step += 1
    return held_out_loss(model, data.val), {"steps": step, "seconds": time.perf_counter() - started}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--text", type=Path, required=True, help="a UTF-8 text, e.g. tiny Shakespeare's input.txt")
    parser.add_argument("--nanogpt", type=Path, required=True, help="a nanoGPT checkout (its model.py is imported)")
    parser.add_argument("--seconds", type=float, default=120.0, help="training time of each run (default 120)")
    parser.add_argument("--rounds", type=int, default=1, help="rounds of the three runs; each round reverses the order")
    parser.add_argument("--seed", type=int, default=1337)
    args = parser.parse_args()
    if not (args.nanogpt / "model.py").is_file():
        sys.exit(f"--nanogpt {args.nanogpt}: no model.py there; pass the folder of a nanoGPT checkout")
    results: dict[str, list[float]] = {"modern": [], "classic": [], "nanoGPT": []}
    with tempfile.TemporaryDirectory() as scratch:
        for round_index in range(args.rounds):
            order = list(results) if round_index % 2 == 0 else list(reversed(results))
            for name in order:
                if name == "nanoGPT":
                    loss, info = train_nanogpt(args.text, args.seconds, args.nanogpt, args.seed)
                else:
                    preset = "classic" if name == "classic" else None
                    loss, info = train_ours(args.text, args.seconds, Path(scratch) / f"{name}-{round_index}.pt", preset)
                results[name].append(loss)
                print(
                    f"{name:>7}: held-out {loss:.4f} nats = {bits_per_char(loss):.4f} bpc; {json.dumps(info)}",
                    flush=True,
                )
    means = {name: sum(values) / len(values) for name, values in results.items()}
    print("mean held-out loss (nats): " + ", ".join(f"{name} {mean:.4f}" for name, mean in means.items()))
    print(
        f"modern - classic = {means['modern'] - means['classic']:+.4f}, "
        f"modern - nanoGPT = {means['modern'] - means['nanoGPT']:+.4f}"
    )
    print(json.dumps({"seconds": args.seconds, "text": str(args.text), **results, "means": means}))


if __name__ == "__main__":
    main()
