"""Chapter 11's exercises: what context buys, which characters are hard, how long a copied stretch is, and
the model's surprise at each character, computed from its logits."""

from __future__ import annotations

import math
import random

import torch

from ds9_utils.evaluate import longest_copied_substring, token_losses
from ds9_utils.exercises import Exercise, close_problem, equal_problem, number_problem, register, with_typical_mistake
from ds9_utils.model import GPT, GPTConfig


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


def surprisal_bits(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    # logits: (T, vocab), one row of scores per position; targets: (T,), the character that came next.
    # The surprise at each position is -log2 of the probability the model gave the character that came.
    log_probs = torch.log_softmax(logits.double(), dim=-1)  # over the vocabulary, in each row
    return -log_probs[torch.arange(len(targets)), targets] / math.log(2)  # nats -> bits


def _surprisal_in_nats(logits, targets):
    """A typical mistake: the natural logarithm's nats, not bits."""
    return surprisal_bits(logits, targets) * math.log(2)


def _surprisal_over_positions(logits, targets):
    """A typical mistake: the softmax taken down the positions (dim=0) instead of across the vocabulary."""
    log_probs = torch.log_softmax(logits.double(), dim=0)
    return -log_probs[torch.arange(len(targets)), targets] / math.log(2)


def _check_surprisal_bits(answer) -> list[str]:
    generator = torch.Generator().manual_seed(11)
    for vocab_size, block_size in [(12, 16), (40, 8), (5, 32)]:
        with torch.random.fork_rng():  # random weights, without moving the notebook's own random numbers
            torch.manual_seed(vocab_size + block_size)
            model = GPT(GPTConfig(vocab_size=vocab_size, block_size=block_size, n_layer=1, n_head=2, n_embd=16)).eval()
        tokens = torch.randint(vocab_size, (block_size + 1,), generator=generator)
        expected = token_losses(model, tokens, block_size).double() / math.log(2)  # the library, in bits
        with torch.no_grad():
            logits = model(tokens[None, :-1])[0][0]
        got = answer(logits.clone(), tokens[1:].clone())
        what = f"surprisal_bits for {block_size} positions over {vocab_size} characters"
        problem = close_problem(what, got, expected, atol=1e-4, rtol=1e-4)
        if problem is None:
            continue
        return [
            with_typical_mistake(
                problem,
                got,
                (
                    (_surprisal_in_nats, "these are nats (natural log): divide by ln 2, or use log2, for bits"),
                    (
                        _surprisal_over_positions,
                        "your softmax ran down the positions (dim=0); each row's "
                        "probabilities are over the vocabulary: "
                        "dim=-1",
                    ),
                ),
                (logits, tokens[1:]),
                atol=1e-4,
                rtol=1e-4,
            )
        ]
    return []


register(
    Exercise(
        id="11.4",
        title="How surprised was the model?",
        builds="the surprise (bits) at every character",
        check=_check_surprisal_bits,
        solution=surprisal_bits,
        verified="the same surprise at every position as ds9_utils.evaluate.token_losses, in bits",
    )
)
