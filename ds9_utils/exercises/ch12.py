"""Chapter 12's exercises: two pre-split patterns, merges that cross pieces, bits per character from tokens,
and byte-pair encoding built by hand: encoding with learned merges, and training on distinct pieces."""

from __future__ import annotations

import math
import re
from collections import Counter

from ds9_utils.exercises import Exercise, equal_problem, number_problem, register
from ds9_utils.tokenizers import (
    GPT2_SPLIT_PATTERN,
    GPT4_SPLIT_PATTERN,
    BPETokenizer,
    count_pairs,
    learn_bpe_merges,
    merge_pair,
    text_bytes,
)

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


def bpe_encode(text: str, merges: list[tuple[int, int]]) -> list[int]:
    # Start from the UTF-8 bytes (a character like "é" or "—" is two or three of them), then replay the merges
    # in the order they were learned: merge i made token 256 + i, and later merges build on earlier ones.
    ids = list(text.encode("utf-8"))
    for index, (first, second) in enumerate(merges):
        merged, i = [], 0
        while i < len(ids):
            if i + 1 < len(ids) and ids[i] == first and ids[i + 1] == second:
                merged.append(256 + index)
                i += 2
            else:
                merged.append(ids[i])
                i += 1
        ids = merged
    return ids


def _encode_code_points(text, merges):
    """A typical mistake: one id per character (ord), not per UTF-8 byte."""
    ids = [ord(character) for character in text]
    for index, pair in enumerate(merges):
        ids = merge_pair(ids, pair, 256 + index)
    return ids


def _encode_most_frequent_first(text, merges):
    """A typical mistake: merging, each time, the learned pair most frequent in *this* text, not the earliest."""
    ids = list(text.encode("utf-8"))
    rank = {pair: index for index, pair in enumerate(merges)}
    while True:
        counts = count_pairs(ids)
        learned = [pair for pair in counts if pair in rank]
        if not learned:
            return ids
        pair = min(learned, key=lambda pair: (-counts[pair], rank[pair]))
        ids = merge_pair(ids, pair, 256 + rank[pair])


# Texts to encode: one the merges were learned on, new ones with the same words, and non-ASCII characters.
ENCODE_TEXTS = [
    "QUARK: Welcome to Quark's!",
    "SISKO: Report, Major. KIRA: Forty-seven ships.",
    "ODO: Quark's bar is closed — by order of the constable.",
    "DAX: Benjamin, the café on Bajor serves hasperat.",
    "O'BRIEN: Julian, it's 0900. They're holding at 1200 kilometres.",
]


def _check_bpe_encode(answer) -> list[str]:
    tokenizer = BPETokenizer(pattern=None).train(TRAIN_TEXT + "— café on Bajor", 256 + 80)
    merges = [tuple(pair) for pair in tokenizer.merges]
    for text in ENCODE_TEXTS:
        expected = tokenizer.encode(text)
        got = answer(text, [tuple(pair) for pair in merges])
        if isinstance(got, tuple):
            got = list(got)
        problem = equal_problem(f"bpe_encode({text!r}, the 80 merges)", got, expected)
        if problem is None:
            continue
        for mistake, hint in (
            (
                _encode_code_points,
                "you started from one id per character (ord); BPE starts from the UTF-8 bytes, "
                "list(text.encode('utf-8')), so 'é' is two tokens before any merge",
            ),
            (
                _encode_most_frequent_first,
                "you merged the pair most frequent in this text first; replay the merges in the order they were "
                "learned (merge i makes token 256 + i), as training did",
            ),
        ):
            if got == mistake(text, merges):
                return [f"{hint} ({problem})"]
        return [problem]
    return []


register(
    Exercise(
        id="12.4",
        title="Encode with the merges",
        builds="BPE encoding",
        check=_check_bpe_encode,
        solution=bpe_encode,
        verified="the same token ids as BPETokenizer.encode on new text, accents and dashes included",
    )
)


def train_bpe_from_pieces(piece_counts: dict[bytes, int], num_merges: int) -> list[tuple[int, int]]:
    # Each distinct piece once, with how often it occurs: a pair inside it counts that many times.
    words = {piece: list(piece) for piece in piece_counts}
    merges = []
    for new_id in range(256, 256 + num_merges):
        counts: dict[tuple[int, int], int] = {}
        for piece, ids in words.items():
            for pair in zip(ids, ids[1:]):
                counts[pair] = counts.get(pair, 0) + piece_counts[piece]
        if not counts:  # every piece is one token: nothing left to merge
            break
        pair = min(counts, key=lambda pair: (-counts[pair], pair))  # the most frequent (ties: the smallest)
        words = {piece: merge_pair(ids, pair, new_id) for piece, ids in words.items()}
        merges.append(pair)
    return merges


def _train_ignoring_counts(piece_counts, num_merges):
    """A typical mistake: every distinct piece counted once, whatever its count."""
    return train_bpe_from_pieces(dict.fromkeys(piece_counts, 1), num_merges)


def _train_counting_once(piece_counts, num_merges):
    """A typical mistake: the most frequent pairs of the raw bytes, counted once, never recounted after a merge."""
    counts: dict[tuple[int, int], int] = {}
    for piece, count in piece_counts.items():
        for pair in zip(piece, piece[1:]):
            counts[pair] = counts.get(pair, 0) + count
    return sorted(counts, key=lambda pair: (-counts[pair], pair))[:num_merges]


def _check_train_bpe_from_pieces(answer) -> list[str]:
    for name, text in (
        ("the little script", TRAIN_TEXT),
        ("the script and the encoding texts", TRAIN_TEXT + "".join(ENCODE_TEXTS)),
    ):
        piece_counts = Counter(text_bytes(piece) for piece in re.findall(GPT4_SPLIT_PATTERN, text))
        for num_merges in (10, 60):
            expected = learn_bpe_merges(piece_counts, num_merges)
            got = answer(dict(piece_counts), num_merges)
            got = [tuple(pair) for pair in got] if isinstance(got, (list, tuple)) else got
            problem = equal_problem(f"the {num_merges} merges learned from {name}'s pieces", got, expected)
            if problem is None:
                continue
            for mistake, hint in (
                (
                    _train_ignoring_counts,
                    "you counted each distinct piece once; a pair inside a piece occurs as often as the piece: add "
                    "piece_counts[piece] for it, not 1",
                ),
                (
                    _train_counting_once,
                    "you took the most frequent pairs of one count of the raw bytes; count again after every merge, "
                    "since each merge makes new pairs (with the new token) and removes old ones",
                ),
            ):
                if got == mistake(piece_counts, num_merges):
                    return [f"{hint} ({problem})"]
            if isinstance(got, list) and len(got) == len(expected):
                first = next(i for i, (g, e) in enumerate(zip(got, expected)) if g != e)
                wrong = f"merge {first} (token {256 + first}) should be {expected[first]}, yours is {got[first]}"
                return [f"{wrong} ({problem})"]
            return [problem]
    return []


register(
    Exercise(
        id="12.5",
        title="Train on distinct pieces, with their counts",
        builds="BPE training",
        check=_check_train_bpe_from_pieces,
        solution=train_bpe_from_pieces,
        verified="the same merges as ds9_utils.tokenizers.learn_bpe_merges (and so BPETokenizer.train), in order",
    )
)
