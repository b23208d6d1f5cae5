"""Generation speed with and without the KV cache at batch 1, and the cost of stop_at_text as texts grow.

    python benchmarks/bench_generate.py                    # 4x256 block 512 and the cpu preset's shape, 1 and 2 threads
    python benchmarks/bench_generate.py --threads 1        # one thread only: steadier on a busy machine
    python benchmarks/bench_generate.py --tokens 1000      # longer texts (the context slides past block_size)
    python benchmarks/bench_generate.py --checkpoint data/checkpoints/course_model.pt

Without the cache every new token runs the model over the whole context again; with it, over one position.
Both sample the same tokens for the same seed (checked on every run). The two are timed in turns, in one
process, and the best of ``--rounds`` is kept, so that a busy machine disturbs the comparison less. Each line
also gives how many PyTorch operations one cached step runs (``aten::`` calls as the profiler counts them,
nested ones included), and the ceiling the weights set: one matrix-vector product per layer with the model's
own weights and nothing else (``weights_alone_tokens_per_second``), in float32 and in the two 16-bit formats.
At batch 1 a step costs its operations' fixed cost per call plus the time to read every weight once; once the
weights outgrow the caches, no decode step in that precision gets past the second.

``stop_at_text`` is timed on its own, fed the new tokens the way ``generate`` feeds it, next to the obvious
condition that decodes the whole text at every step: the first grows linearly with the length of the text,
the second quadratically.
"""

from __future__ import annotations

import argparse
import string
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from ds9_utils.checkpoints import load_checkpoint
from ds9_utils.generate import generate, stop_at_text
from ds9_utils.model import GPT, GPTConfig
from ds9_utils.presets import PRESETS
from ds9_utils.settings import choose_device
from ds9_utils.tokenizers import CharTokenizer

VOCAB_SIZE = 81  # the DS9 corpus's characters
ISSUE_SHAPE = dict(block_size=512, n_layer=4, n_head=4, n_embd=256)  # the shape the speed target is set for
STOP_LENGTHS = (2000, 4000, 8000)
WEIGHT_FORMATS = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def timed_generate(model: GPT, new_tokens: int, use_cache: bool, device: str) -> tuple[float, torch.Tensor]:
    """Seconds for one ``generate`` call of ``new_tokens`` from a one-token prompt, and its tokens."""
    prompt = torch.zeros((1, 1), dtype=torch.long, device=device)
    generator = torch.Generator(device=device).manual_seed(0)
    if device == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    out = generate(model, prompt, new_tokens, use_cache=use_cache, generator=generator)
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - started, out


def torch_ops_per_token(model: GPT, device: str) -> float:
    """PyTorch operations per cached generation step: two runs of different lengths, profiled, so that what
    a call does once (the first forward pass, the set-up) cancels out. Both stay within the cpu preset's
    block_size, so no refill of the cache is counted."""
    counts = []
    for new_tokens in (20, 100):
        with profile(activities=[ProfilerActivity.CPU]) as profiler:
            timed_generate(model, new_tokens, True, device)
        counts.append(sum(event.name.startswith("aten::") for event in profiler.events()))
    return (counts[1] - counts[0]) / 80


@torch.inference_mode()
def weights_alone_tokens_per_second(model: GPT, rounds: int, dtype: torch.dtype = torch.float32) -> float:
    """The ceiling the weights set: tokens/s of nothing but one matrix-vector product per ``Linear`` of the
    model (every block's four and the output layer), at batch 1, with the model's own weights in ``dtype``.

    A generated token must read every weight once. When the weights outgrow the processor's caches (4x256 is
    about 13 MB in float32) that read, not the arithmetic or Python, sets the pace: no decode step can beat
    this number on the machine it was measured on, in this precision. 16-bit weights halve the bytes to read,
    which helps only where the processor multiplies them about as fast as float32.
    """
    weights = [module.weight.to(dtype) for module in model.modules() if isinstance(module, torch.nn.Linear)]
    inputs = [torch.randn(1, weight.size(1), device=weight.device, dtype=weight.dtype) for weight in weights]

    on_cuda = weights[0].is_cuda  # GPU work is queued: wait for it before reading the clock

    def one_token() -> None:
        for x, weight in zip(inputs, weights):
            torch.nn.functional.linear(x, weight)

    for _ in range(20):
        one_token()
    best = float("inf")
    for _ in range(rounds):
        if on_cuda:
            torch.cuda.synchronize()
        started = time.perf_counter()
        for _ in range(200):
            one_token()
        if on_cuda:
            torch.cuda.synchronize()
        best = min(best, (time.perf_counter() - started) / 200)
    return 1 / best


def measure(name: str, model: GPT, new_tokens: int, device: str, rounds: int) -> None:
    model.to(device).eval()
    timed_generate(model, 20, True, device)  # warm-up: first calls pay for one-off allocations
    best = {True: float("inf"), False: float("inf")}
    outputs = {}
    for _ in range(rounds):
        for use_cache in (True, False):
            seconds, outputs[use_cache] = timed_generate(model, new_tokens, use_cache, device)
            best[use_cache] = min(best[use_cache], seconds)
    same = torch.equal(outputs[True], outputs[False])
    cached, plain = new_tokens / best[True], new_tokens / best[False]
    print(
        f"{name:>22}: with cache {cached:6.0f} tokens/s, without {plain:6.0f} tokens/s, "
        f"speed-up {cached / plain:5.1f}x, same tokens: {same}, {torch_ops_per_token(model, device):.0f} ops/token; "
        "the weights alone "
        + ", ".join(
            f"{weights_alone_tokens_per_second(model, rounds, dtype):6.0f} tokens/s in {format_name}"
            for format_name, dtype in WEIGHT_FORMATS.items()
        )
    )
    if not same:
        raise SystemExit("the cached and uncached paths sampled different tokens: that is a bug")


def stop_condition_seconds(stop, new_tokens: torch.Tensor) -> float:
    """Seconds ``stop`` spends when called as ``generate`` calls it: with the new tokens after every step."""
    started = time.perf_counter()
    for length in range(1, new_tokens.size(1) + 1):
        if stop(new_tokens[:, :length]):
            raise SystemExit("the stop text was found in random tokens; pick a longer one")
    return time.perf_counter() - started


def measure_stop_at_text() -> None:
    tokenizer = CharTokenizer(string.printable[:VOCAB_SIZE])
    text = "\n\n[Never written]"
    tokens = torch.randint(0, VOCAB_SIZE, (1, max(STOP_LENGTHS)), generator=torch.Generator().manual_seed(0))
    whole_text = lambda new_tokens: all(text in tokenizer.decode(row) for row in new_tokens.tolist())
    print(f"stop_at_text({text!r}), the condition alone, at batch 1:")
    for length in STOP_LENGTHS:
        linear = stop_condition_seconds(stop_at_text(tokenizer, text), tokens[:, :length])
        quadratic = stop_condition_seconds(whole_text, tokens[:, :length])
        print(
            f"{length:>22} tokens: {linear * 1000:7.1f} ms ({linear / length * 1e6:4.1f} us/token); "
            f"decoding the whole text at every step {quadratic * 1000:7.1f} ms"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=500, help="new tokens to generate (default 500)")
    parser.add_argument("--rounds", type=int, default=3, help="timings of each kind; the best is kept (default 3)")
    parser.add_argument(
        "--threads", type=int, nargs="+", default=[1, 2], help="torch.set_num_threads, one run each (default 1 2)"
    )
    parser.add_argument("--checkpoint", type=Path, help="time a trained model instead of the shapes below")
    parser.add_argument("--device", help="cpu, cuda or mps (default: the best available)")
    args = parser.parse_args()
    device = args.device or choose_device()
    for threads in args.threads:
        torch.set_num_threads(threads)
        print(
            f"torch {torch.__version__}, device {device}, {torch.get_num_threads()} threads, "
            f"{args.tokens} new tokens from a one-token prompt, batch 1, best of {args.rounds}"
        )
        if args.checkpoint:
            model = load_checkpoint(args.checkpoint, device).model
            measure(args.checkpoint.stem, model, args.tokens, device, args.rounds)
            continue
        course = PRESETS["cpu"].gpt_config(VOCAB_SIZE)
        configs = {
            "4x256 block 512": GPTConfig(vocab_size=VOCAB_SIZE, **ISSUE_SHAPE),
            f"cpu preset {course.n_layer}x{course.n_embd} b{course.block_size}": course,
        }
        for name, config in configs.items():
            torch.manual_seed(0)
            measure(name, GPT(config), args.tokens, device, args.rounds)
    measure_stop_at_text()


if __name__ == "__main__":
    main()
