"""Byte-pair encoding on the DS9 corpus: the fast trainer against the textbook one, and encode throughput.

    python benchmarks/bench_bpe.py                                  # 1 MB of the training split, vocabulary 1024
    python benchmarks/bench_bpe.py --megabytes 0.2 --vocab-size 512 # a quicker look
    python benchmarks/bench_bpe.py --skip-textbook --megabytes 4    # the fast trainer on the whole split

The two trainers must learn the same merges: the script checks it and stops with an error if they do not.
The textbook trainer (``textbook_bpe_merges``) re-counts every pair of every piece after every merge; the
fast one (``BPETokenizer.train``) keeps each distinct piece once with its count and updates only the pair
counts a merge changes. Encode throughput is measured on the validation split (text the tokenizer was not
trained on), first with an empty piece cache, then with the cache the first pass filled.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time

from ds9_utils.corpus import load_split
from ds9_utils.tokenizers import GPT2_SPLIT_PATTERN, GPT4_SPLIT_PATTERN, BPETokenizer, textbook_bpe_merges

PATTERNS = {"gpt4": GPT4_SPLIT_PATTERN, "gpt2": GPT2_SPLIT_PATTERN, "none": None}


def best_time(function, repeat: int):
    """The fastest of ``repeat`` runs (the least disturbed by other processes) and the last result."""
    best, result = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        result = function()
        best = min(best, time.perf_counter() - start)
    return best, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--megabytes", type=float, default=1.0, help="training text: the first N MB of the training split (default 1)"
    )
    parser.add_argument("--vocab-size", type=int, default=1024, help="default 1024")
    parser.add_argument("--pattern", choices=sorted(PATTERNS), default="gpt4", help="pre-split (default gpt4)")
    parser.add_argument(
        "--repeat", type=int, default=3, help="runs of each fast measurement; the best is reported (default 3)"
    )
    parser.add_argument("--skip-textbook", action="store_true", help="time only the fast trainer")
    args = parser.parse_args()
    pattern = PATTERNS[args.pattern]

    text = load_split("train")[: int(args.megabytes * 1_000_000)]
    megabytes = len(text.encode("utf-8")) / 1e6
    num_merges = args.vocab_size - 256
    print(
        f"Python {platform.python_version()} on {platform.machine()}; {megabytes:.2f} MB of the DS9 training "
        f"split, vocabulary {args.vocab_size} ({num_merges} merges), pre-split: {args.pattern}"
    )

    fast_seconds, tokenizer = best_time(lambda: BPETokenizer(pattern=pattern).train(text, args.vocab_size), args.repeat)
    print(f"fast trainer (BPETokenizer.train):     {fast_seconds:8.2f} s  (best of {args.repeat})")
    if not args.skip_textbook:
        print("textbook trainer (textbook_bpe_merges): running once, this takes minutes...", flush=True)
        textbook_seconds, textbook_merges = best_time(lambda: textbook_bpe_merges(text, num_merges, pattern), 1)
        print(f"textbook trainer (textbook_bpe_merges): {textbook_seconds:8.2f} s")
        if textbook_merges != list(tokenizer.merges):
            differ = next(i for i, (a, b) in enumerate(zip(textbook_merges, tokenizer.merges)) if a != b)
            sys.exit(
                f"FAILED: the trainers disagree from merge {differ} on "
                f"({len(textbook_merges)} textbook merges, {len(tokenizer.merges)} fast)"
            )
        print(f"same {len(textbook_merges)} merges: yes; speed-up {textbook_seconds / fast_seconds:.0f}x")

    validation = load_split("val")
    validation_megabytes = len(validation.encode("utf-8")) / 1e6
    merges = list(tokenizer.merges)
    cold_seconds, ids = best_time(lambda: BPETokenizer(merges, pattern=pattern).encode(validation), args.repeat)
    warm_seconds, _ = best_time(lambda: tokenizer.encode(validation), args.repeat)
    decode_seconds, decoded = best_time(lambda: tokenizer.decode(ids), args.repeat)
    if decoded != validation:
        sys.exit("FAILED: the validation text does not decode back to itself")
    print(
        f"encode {validation_megabytes:.2f} MB of validation text: {validation_megabytes / cold_seconds:6.2f} MB/s "
        f"with an empty piece cache, {validation_megabytes / warm_seconds:6.2f} MB/s with a warm one; "
        f"decode {validation_megabytes / decode_seconds:6.1f} MB/s"
    )
    print(f"{len(ids):,} tokens: {len(validation.encode('utf-8')) / len(ids):.2f} bytes per token")


if __name__ == "__main__":
    main()
