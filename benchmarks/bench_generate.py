"""Generation speed with and without the KV cache: tokens per second for 500 new characters.

    python benchmarks/bench_generate.py                    # the cpu and gpu presets' shapes, 500 tokens
    python benchmarks/bench_generate.py --tokens 1000      # longer texts (the context slides past block_size)
    python benchmarks/bench_generate.py --checkpoint data/checkpoints/course_model.pt

Without the cache every new character runs the model over the whole context again; with it, over one
position. Both sample the same tokens for the same seed (checked here on every run). The aim is at least 5x
at 500 characters.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from ds9_utils.generate import generate
from ds9_utils.model import GPT
from ds9_utils.settings import choose_device
from ds9_utils.train import PRESETS, load_checkpoint

VOCAB_SIZE = 81  # the DS9 corpus's characters


def tokens_per_second(
    model: GPT, new_tokens: int, use_cache: bool, device: str, seed: int = 0
) -> tuple[float, torch.Tensor]:
    """Speed of one ``generate`` call from a one-token prompt, and the tokens it produced."""
    prompt = torch.zeros((1, 1), dtype=torch.long, device=device)
    generator = torch.Generator(device=device).manual_seed(seed)
    if device == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    out = generate(model, prompt, new_tokens, use_cache=use_cache, generator=generator)
    if device == "cuda":
        torch.cuda.synchronize()
    return new_tokens / (time.perf_counter() - started), out


def measure(name: str, model: GPT, new_tokens: int, device: str) -> None:
    model.to(device).eval()
    tokens_per_second(model, 20, True, device)  # warm-up: first calls pay for one-off allocations
    cached_rate, cached = tokens_per_second(model, new_tokens, True, device)
    plain_rate, plain = tokens_per_second(model, new_tokens, False, device)
    same = torch.equal(cached, plain)
    print(
        f"{name:>10}: with cache {cached_rate:7.0f} tokens/s, without {plain_rate:7.0f} tokens/s, "
        f"speed-up {cached_rate / plain_rate:5.1f}x, same tokens: {same}"
    )
    if not same:
        raise SystemExit("the cached and uncached paths sampled different tokens: that is a bug")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=500, help="new characters to generate (default 500)")
    parser.add_argument("--checkpoint", type=Path, help="time a trained model instead of the presets' shapes")
    parser.add_argument("--device", help="cpu, cuda or mps (default: the best available)")
    args = parser.parse_args()
    device = args.device or choose_device()
    print(
        f"torch {torch.__version__}, device {device}, {torch.get_num_threads()} threads, "
        f"{args.tokens} new tokens from a one-token prompt"
    )
    if args.checkpoint:
        measure(args.checkpoint.stem, load_checkpoint(args.checkpoint, device).model, args.tokens, device)
        return
    for preset in ("cpu", "gpu"):
        torch.manual_seed(0)
        config = PRESETS[preset].gpt_config(VOCAB_SIZE)
        measure(f"{preset} shape", GPT(config), args.tokens, device)


if __name__ == "__main__":
    main()
