"""Model quality for a fixed time budget: validation loss (nats and bits per character) after training.

    python benchmarks/bench_quality.py                       # nanoGPT's small CPU config, 120 s on the DS9 corpus
    python benchmarks/bench_quality.py --seconds 600         # a longer budget
    python benchmarks/bench_quality.py --text input.txt      # any UTF-8 text, split 90/10 (e.g. tiny Shakespeare)
    python benchmarks/bench_quality.py --preset cpu          # the full cpu preset (20-30 minutes)

The small config is nanoGPT's CPU shakespeare-char run (4 layers, 4 heads, 128 wide, block 64, batch 12,
learning rate 1e-3, no dropout). nanoGPT reports 1.88 nats validation loss for it on tiny Shakespeare after
2000 steps; on the same file this benchmark should land close to that. On the DS9 corpus the number differs
(another text, another vocabulary), so compare DS9 runs with DS9 runs.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

from ds9_utils.course import CourseData, load_course_data, text_data
from ds9_utils.model import GPT, GPTConfig
from ds9_utils.settings import choose_device
from ds9_utils.train import PRESETS, TrainConfig, configure_optimizer, get_batch, set_seed, train

NANOGPT_REFERENCE = "nanoGPT, same config, tiny Shakespeare, 2000 steps: val loss 1.88 nats (2.71 bpc)"
SMALL_MODEL = dict(block_size=64, n_layer=4, n_head=4, n_embd=128, dropout=0.0)
SMALL_TRAINING = TrainConfig(
    batch_size=12,
    learning_rate=1e-3,
    min_lr=1e-4,
    warmup_steps=100,
    beta2=0.99,
    weight_decay=0.1,
    grad_clip=1.0,
    eval_iters=100,
    log_interval=10,
)


def load_data(text_file: Path | None) -> tuple[CourseData, str]:
    """The tokenized train and validation data, and a name for where they came from."""
    if text_file is not None:
        return text_data(text_file.read_text(encoding="utf-8")), str(text_file)
    try:
        return load_course_data(), "DS9 corpus"
    except FileNotFoundError as error:
        sys.exit(
            f"no DS9 corpus to train on ({error}).\nBuild it with `python -m ds9_utils download` and "
            "`python -m ds9_utils corpus`, or pass --text FILE to use any UTF-8 text."
        )


def steps_per_second(
    config: GPTConfig, cfg: TrainConfig, data: torch.Tensor, device: str, seconds: float = 3.0
) -> float:
    """Measure training speed on a throw-away copy, so the schedule can be sized to fit the time budget."""
    model = GPT(config).to(device)
    optimizer = configure_optimizer(model, cfg)
    generator = torch.Generator().manual_seed(0)

    def step() -> None:
        x, y = get_batch(data, config.block_size, cfg.batch_size, generator, device)
        _, loss = model(x, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss.item()

    step()  # the first step pays for one-off allocations
    steps, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        step()
        steps += 1
    return steps / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--seconds",
        type=float,
        help="training time budget (default 120 for the small config; "
        "with --preset, the preset's own step count decides)",
    )
    parser.add_argument("--text", type=Path, help="train on this UTF-8 file (split 90/10) instead of the DS9 corpus")
    parser.add_argument("--preset", choices=sorted(PRESETS), help="train a preset instead of the small config")
    parser.add_argument("--device", help="cpu, cuda or mps (default: the best available)")
    parser.add_argument("--seed", type=int, default=1337)
    args = parser.parse_args()

    device = args.device or choose_device()
    data, source = load_data(args.text)
    tokenizer, train_data, val_data = data.tokenizer, data.train, data.val

    if args.preset:
        preset = PRESETS[args.preset]
        config = preset.gpt_config(tokenizer.vocab_size)
        cfg = replace(preset.train_config, device=device, seed=args.seed, max_seconds=args.seconds)
        name = f"preset {args.preset!r}"
    else:
        seconds = args.seconds or 120.0
        config = GPTConfig(vocab_size=tokenizer.vocab_size, **SMALL_MODEL)
        probe = replace(SMALL_TRAINING, device=device)
        speed = steps_per_second(config, probe, train_data, device, seconds=min(3.0, seconds / 10))
        # Size the cosine schedule to the steps that fit (leaving ~10% for the two evaluations), so the
        # learning rate has decayed when the clock runs out; max_seconds is the hard stop.
        max_steps = max(1, int(0.9 * speed * seconds))
        cfg = replace(probe, seed=args.seed, max_steps=max_steps, eval_interval=max_steps, max_seconds=seconds)
        name = "small config (4 layers, 4 heads, 128 wide, block 64, batch 12)"

    print(
        f"{name} on {source}: {len(train_data):,} train / {len(val_data):,} val characters, "
        f"vocabulary {tokenizer.vocab_size}, device {device}, up to {cfg.max_steps} steps"
        + (f" or {cfg.max_seconds:.0f} s" if cfg.max_seconds else "")
    )
    set_seed(args.seed)
    model = GPT(config)
    result = train(model, train_data, val_data, cfg, tokenizer=tokenizer, progress=True)

    print(
        f"validation loss: {result.val_loss:.4f} nats = {result.val_bpc:.4f} bits per character "
        f"(train {result.train_loss:.4f} nats)"
    )
    print(
        f"steps: {result.steps} ({result.stop_reason}), {result.tokens_per_second:,.0f} tokens/s, "
        f"{result.seconds:.1f} s"
    )
    print(f"reference: {NANOGPT_REFERENCE}")
    summary = {
        "config": args.preset or "small",
        "source": source,
        "device": device,
        "val_loss": result.val_loss,
        "val_bpc": result.val_bpc,
        "train_loss": result.train_loss,
        "steps": result.steps,
        "tokens_per_second": result.tokens_per_second,
        "seconds": result.seconds,
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
