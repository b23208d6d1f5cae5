"""Training throughput of the GPT: tokens per second for forward + backward + AdamW step.

    python benchmarks/bench_model.py                 # both configurations, a few steps each
    python benchmarks/bench_model.py --steps 50      # longer, steadier numbers
    python benchmarks/bench_model.py --only small --attention explicit --threads 2

The reference bar is nanoGPT's model.py on the course's 2-core CPU: about 10k tokens/s for "small" and
1.3k tokens/s for "medium".
"""

from __future__ import annotations

import argparse
import time

import torch

from ds9_utils.model import GPT, GPTConfig

VOCAB_SIZE = 96  # about the number of distinct characters in the DS9 transcripts

CONFIGURATIONS = {
    # name: (config, batch size, nanoGPT's tokens/s on the course CPU)
    "small": (GPTConfig(VOCAB_SIZE, block_size=64, n_layer=4, n_head=4, n_embd=128), 12, 10_000),
    "medium": (GPTConfig(VOCAB_SIZE, block_size=256, n_layer=6, n_head=6, n_embd=384), 8, 1_300),
}


def training_tokens_per_second(
    config: GPTConfig, batch_size: int, warmup_steps: int, timed_steps: int, device: str
) -> float:
    """Tokens per second of full training steps on random tokens, after ``warmup_steps`` untimed ones."""
    torch.manual_seed(0)
    model = GPT(config).to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4)
    x = torch.randint(0, config.vocab_size, (batch_size, config.block_size), device=device)
    y = torch.randint(0, config.vocab_size, (batch_size, config.block_size), device=device)

    def step() -> None:
        _, loss = model(x, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for _ in range(warmup_steps):
        step()
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(timed_steps):
        step()
    if device == "cuda":
        torch.cuda.synchronize()
    return batch_size * config.block_size * timed_steps / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=sorted(CONFIGURATIONS), help="run one configuration")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first (default 2)")
    parser.add_argument("--steps", type=int, default=5, help="timed steps (default 5)")
    parser.add_argument("--attention", choices=["fast", "explicit"], default="fast")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads (default: PyTorch's choice)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    print(
        f"torch {torch.__version__}, device {args.device}, {torch.get_num_threads()} threads, "
        f"attention {args.attention}"
    )
    for name, (config, batch_size, reference) in CONFIGURATIONS.items():
        if args.only and name != args.only:
            continue
        config = GPTConfig(**{**vars(config), "attention": args.attention})
        rate = training_tokens_per_second(config, batch_size, args.warmup, args.steps, args.device)
        shape = (
            f"n_layer={config.n_layer} n_head={config.n_head} n_embd={config.n_embd} "
            f"block={config.block_size} batch={batch_size}"
        )
        print(f"{name:>6}: {rate:8.0f} tokens/s  ({shape}; nanoGPT bar on the course CPU ~{reference} tokens/s)")


if __name__ == "__main__":
    main()
