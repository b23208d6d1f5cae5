"""Chapter 01's exercises: what follows a character, the average surprise of a text, how contexts multiply."""

from __future__ import annotations

import math
import random
from collections import Counter

from ds9_utils.exercises import Exercise, equal_problem, number_problem, register


def _random_texts(alphabet: str = "ab?\n ", count: int = 20, length: int = 60) -> list[str]:
    rng = random.Random(0)
    return ["".join(rng.choice(alphabet) for _ in range(length)) for _ in range(count)]


def next_character_probabilities(text: str, context: str) -> dict[str, float]:
    # Every place where `context` occurs (overlapping ones too) and some character follows it.
    following = Counter(text[i + len(context)] for i in range(len(text) - len(context)) if text.startswith(context, i))
    total = sum(following.values())
    return {ch: n / total for ch, n in following.most_common()}


def _check_next_character_probabilities(answer) -> list[str]:
    cases = [("aaa", "aa"), ("a?b?\n?\n", "?"), ("QUARK: Rom?\nROM: Yes?\n", "?\n")]
    cases += [(text, context) for text in _random_texts() for context in ("?", "a", "ab")]
    for text, context in cases:
        got, expected = answer(text, context), next_character_probabilities(text, context)
        if not isinstance(got, dict):
            return [f"next_character_probabilities({text!r}, {context!r}) should return a dict, got {got!r}"]
        if set(got) != set(expected):
            return [
                f"next_character_probabilities({text!r}, {context!r}) has keys {sorted(got)}, "
                f"expected {sorted(expected)} (overlapping occurrences count too)"
            ]
        for ch, p in expected.items():
            if problem := number_problem(f"next_character_probabilities({text!r}, {context!r})[{ch!r}]", got[ch], p):
                return [problem]
    return []


register(
    Exercise(
        id="01.1",
        title="What follows a question mark?",
        check=_check_next_character_probabilities,
        solution=next_character_probabilities,
        verified="agrees with counting every (overlapping) occurrence on 60 random texts and 3 tricky ones",
    )
)


def average_surprise(text: str, next_probability, k: int) -> float:
    # Pad with k newlines so the first character has a context too, then average -log2 P(next | context).
    padded = "\n" * k + text
    bits = [-math.log2(next_probability(padded[t - k : t], padded[t])) for t in range(k, len(padded))]
    return sum(bits) / len(bits)


def _check_average_surprise(answer) -> list[str]:
    def uniform(context: str, ch: str) -> float:
        return 1 / 81

    def likes_repeats(context: str, ch: str) -> float:  # a made-up model: a repeated character is likely
        return 0.5 if context[-1:] == ch else 0.5 / 80

    seen_contexts: list[str] = []

    def recording(context: str, ch: str) -> float:
        seen_contexts.append(context)
        return likes_repeats(context, ch)

    found = [number_problem("average_surprise('SISKO', uniform, 3)", answer("SISKO", uniform, 3), math.log2(81))]
    for text in ["SISKO: Take us out.\n", "aaab", "\n\nxx"]:
        for k in (1, 3):
            found.append(
                number_problem(
                    f"average_surprise({text!r}, likes_repeats, {k})",
                    answer(text, likes_repeats, k),
                    average_surprise(text, likes_repeats, k),
                )
            )
    answer("ODO", recording, 2)
    found.append(
        equal_problem("the contexts average_surprise('ODO', model, 2) asks about", seen_contexts, ["\n\n", "\nO", "OD"])
    )
    return [problem for problem in found if problem]


register(
    Exercise(
        id="01.2",
        title="A likely line and an unlikely one",
        check=_check_average_surprise,
        solution=average_surprise,
        verified="gives log2(81) bits for a blind guess, the right average for a made-up model, and asks it about "
        "the right k-character contexts",
    )
)


def distinct_contexts(text: str, k: int) -> int:
    return len({text[i : i + k] for i in range(len(text) - k + 1)})


def _check_distinct_contexts(answer) -> list[str]:
    cases = [("aaaa", 2, 1), ("abcd", 4, 1), ("abc", 5, 0), ("abab", 2, 2)]
    cases += [(text, k, distinct_contexts(text, k)) for text in _random_texts("abc", 10, 40) for k in range(1, 7)]
    for text, k, expected in cases:
        if problem := equal_problem(f"distinct_contexts({text!r}, {k})", answer(text, k), expected):
            return [problem]
    return []


register(
    Exercise(
        id="01.3",
        title="The explosion of contexts",
        check=_check_distinct_contexts,
        solution=distinct_contexts,
        verified="counts the different k-character pieces of 60 random texts, and of a text shorter than k",
    )
)
