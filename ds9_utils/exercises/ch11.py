"""Chapter 11's exercises: what context buys, which characters are hard, how long a copied stretch is."""

from __future__ import annotations

import math
import random

import torch

from ds9_utils.evaluate import longest_copied_substring
from ds9_utils.exercises import Exercise, close_problem, equal_problem, number_problem, register


def loss_by_context(losses: torch.Tensor, block_size: int) -> torch.Tensor:
    # Side-by-side windows: row w is window w, and in column i the model had i + 1 characters of context.
    by_window = losses.view(-1, block_size)
    return by_window.double().mean(dim=0) / math.log(2)  # nats -> bits


def _check_loss_by_context(answer) -> list[str]:
    generator = torch.Generator().manual_seed(0)
    for windows, block_size in [(3, 8), (50, 32), (1, 4)]:
        losses = torch.rand(windows * block_size, generator=generator) * 4
        problem = close_problem(
            f"loss_by_context on {windows} windows of {block_size} losses (in bits per character)",
            answer(losses.clone(), block_size),
            loss_by_context(losses, block_size),
        )
        if problem:
            return [problem]
    return []


register(
    Exercise(
        id="11.1",
        title="Does context help?",
        check=_check_loss_by_context,
        solution=loss_by_context,
        verified="averages the i-th prediction of every window, in bits",
    )
)


def bits_by_kind(targets: str, losses: torch.Tensor) -> dict[str, float]:
    # targets[j] is the character predicted with a loss of losses[j] nats; average the bits per kind.
    def kind_of(char: str) -> str:
        if char.isupper():
            return "capital"
        if char.islower():
            return "lower-case"
        if char.isdigit():
            return "digit"
        return {" ": "space", "\n": "newline"}.get(char, "punctuation")

    totals: dict[str, float] = {}
    counts: dict[str, int] = {}
    for char, loss in zip(targets, losses.tolist()):
        totals[kind_of(char)] = totals.get(kind_of(char), 0.0) + loss
        counts[kind_of(char)] = counts.get(kind_of(char), 0) + 1
    return {kind: totals[kind] / counts[kind] / math.log(2) for kind in totals}


SAMPLE = "KIRA: Where is he?\nODO: In holding cell 3, as of 0900.\n(Quark leaves)\nSISKO: Good.\n"


def _check_bits_by_kind(answer) -> list[str]:
    generator = torch.Generator().manual_seed(0)
    for text in (SAMPLE, "abc def"):
        losses = torch.rand(len(text), generator=generator) * 5
        expected, got = bits_by_kind(text, losses), answer(text, losses.clone())
        if not isinstance(got, dict):
            return [f"bits_by_kind should return a dict from kind to bits, got {type(got).__name__}"]
        problem = equal_problem(f"the kinds found in {text!r}", sorted(got), sorted(expected))
        if problem:
            return [problem + " (the kinds are capital, lower-case, digit, space, newline, punctuation)"]
        for kind, bits in expected.items():
            problem = number_problem(f"the {kind} characters of {text!r}, in bits", got[kind], bits)
            if problem:
                return [problem]
    return []


register(
    Exercise(
        id="11.2",
        title="Which characters are hard?",
        check=_check_bits_by_kind,
        solution=bits_by_kind,
        verified="groups the losses by the kind of character predicted and averages each group in bits",
    )
)


def longest_copy(generated: str, training_text: str) -> int:
    # Grow a stretch from each start while it still occurs in the training text; keep the longest.
    longest = 0
    for start in range(len(generated)):
        while start + longest < len(generated) and generated[start : start + longest + 1] in training_text:
            longest += 1
    return longest


def _check_longest_copy(answer) -> list[str]:
    rng = random.Random(0)
    training = "".join(rng.choice("ab c\n") for _ in range(300))
    cases = [
        ("a copy of 40 training characters in new text", "zzz" + training[100:140] + "zzz"),
        ("text that shares nothing with the training text", "xyz"),
        ("random text over the same letters", "".join(rng.choice("ab c\n") for _ in range(80))),
        ("the whole training text", training),
    ]
    for what, generated in cases:
        expected = longest_copied_substring(generated, training)[0]
        problem = equal_problem(f"longest_copy on {what}", answer(generated, training), expected)
        if problem:
            return [problem]
    return []


register(
    Exercise(
        id="11.3",
        title="Temperature and copying",
        check=_check_longest_copy,
        solution=longest_copy,
        verified="the same longest copied stretch as ds9_utils.evaluate.longest_copied_substring",
    )
)
