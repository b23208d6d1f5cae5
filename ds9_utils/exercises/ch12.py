"""Chapter 12's exercises: two pre-split patterns, merges that cross pieces, bits per character from tokens."""

from __future__ import annotations

import math
import re

from ds9_utils.exercises import Exercise, equal_problem, number_problem, register
from ds9_utils.tokenizers import GPT2_SPLIT_PATTERN, GPT4_SPLIT_PATTERN, BPETokenizer

# A little script to train on: names with apostrophes, numbers, punctuation, words that repeat.
TRAIN_TEXT = """[Ops]
SISKO: Report, Major.
KIRA: Forty-seven Cardassian ships, Captain. They're holding at 1200 kilometres.
O'BRIEN: The shields won't hold for long. I'll need 30 minutes.
SISKO: You've got 20, Chief.
[Quark's]
QUARK: Welcome to Quark's! The first drink's on the house.
ODO: It's never on the house, Quark.
QUARK: Odo! You're ruining my business. I'd like 1337 latinum strips for that.
O'BRIEN: Julian, it's 0900. Where's the rest of the team?
BASHIR: They're on their way, Chief. They'll be here.
"""
VAL_TEXT = """[Infirmary]
BASHIR: Hold still, Chief. It's only 1 hypospray.
O'BRIEN: That's what you said about the last 3.
KIRA: We've got 47 ships out there, Julian.
"""


def bytes_per_token(pattern: str | None, train_text: str, val_text: str, vocab_size: int) -> float:
    # Train a tokenizer that splits with `pattern`, then measure how many bytes each token of new text holds.
    tokenizer = BPETokenizer(pattern=pattern).train(train_text, vocab_size)
    return len(val_text.encode("utf-8")) / len(tokenizer.encode(val_text))


def _check_bytes_per_token(answer) -> list[str]:
    for name, pattern in (("GPT-2's", GPT2_SPLIT_PATTERN), ("GPT-4's", GPT4_SPLIT_PATTERN)):
        for vocab_size in (280, 330):
            expected = bytes_per_token(pattern, TRAIN_TEXT, VAL_TEXT, vocab_size)
            got = answer(pattern, TRAIN_TEXT, VAL_TEXT, vocab_size)
            problem = number_problem(f"bytes per token with {name} pattern and {vocab_size} tokens", got, expected)
            if problem:
                return [problem + " (bytes of val_text in UTF-8, divided by its number of tokens)"]
    return []


def _two_patterns_demo() -> None:
    line = "O'BRIEN: Forty-seven 1234567 ships.\n"
    for name, pattern in (("GPT-2", GPT2_SPLIT_PATTERN), ("GPT-4", GPT4_SPLIT_PATTERN)):
        compression = bytes_per_token(pattern, TRAIN_TEXT, VAL_TEXT, 330)
        print(f"{name}: {compression:.2f} bytes per token on the sample; pieces {re.findall(pattern, line)}")


register(
    Exercise(
        id="12.1",
        title="GPT-2's pre-split",
        check=_check_bytes_per_token,
        solution=bytes_per_token,
        verified="trains with the given pattern and measures bytes per token of the validation text",
        demo=_two_patterns_demo,
    )
)


def crossing_tokens(tokenizer: BPETokenizer) -> list[str]:
    # The learned tokens (ids from 256 on) that GPT-4's pre-split would cut into more than one piece.
    tokens = [tokenizer.decode([token_id]) for token_id in range(256, tokenizer.vocab_size)]
    return [token for token in tokens if len(re.findall(GPT4_SPLIT_PATTERN, token)) > 1]


def _check_crossing_tokens(answer) -> list[str]:
    for what, pattern in (("no pre-split", None), ("GPT-4's pre-split", GPT4_SPLIT_PATTERN)):
        tokenizer = BPETokenizer(pattern=pattern).train(TRAIN_TEXT, 256 + 60)
        got = answer(tokenizer)
        if isinstance(got, tuple):
            got = list(got)
        problem = equal_problem(
            f"the crossing tokens of a tokenizer trained with {what}", got, crossing_tokens(tokenizer)
        )
        if problem:
            return [problem]
    return []


register(
    Exercise(
        id="12.2",
        title="Without a pre-split",
        check=_check_crossing_tokens,
        solution=crossing_tokens,
        verified="finds the merged tokens that cross a GPT-4 piece boundary (none when GPT-4's pre-split was used)",
    )
)


def bits_per_char_from_loss(loss_per_token: float, n_characters: int, n_tokens: int) -> float:
    # nats per token x tokens per character = nats per character; divide by ln 2 for bits.
    return loss_per_token * n_tokens / n_characters / math.log(2)


def _check_bits_per_char_from_loss(answer) -> list[str]:
    for loss, n_characters, n_tokens in [(2.0, 1000, 400), (math.log(2), 10, 10), (3.1, 123_456, 40_000)]:
        problem = number_problem(
            f"bits_per_char_from_loss({loss:.4g}, n_characters={n_characters}, n_tokens={n_tokens})",
            answer(loss, n_characters, n_tokens),
            bits_per_char_from_loss(loss, n_characters, n_tokens),
        )
        if problem:
            return [problem]
    return []


register(
    Exercise(
        id="12.3",
        title="Bits per character from the training loss",
        check=_check_bits_per_char_from_loss,
        solution=bits_per_char_from_loss,
        verified="turns nats per token into bits per character with the text's characters per token",
    )
)
