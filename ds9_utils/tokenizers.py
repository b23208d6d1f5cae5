"""Tokenizers turn text into a list of integers (token ids) and back.

A language model only ever sees integers. The simplest tokenizer gives every distinct character its own id:
``CharTokenizer``. ``BPETokenizer`` starts from the 256 byte values of UTF-8, so it can encode any text, and
learns to merge frequent neighbours into longer tokens (byte-pair encoding, as GPT-2 and GPT-4 do), so the
same text takes fewer tokens. Every tokenizer here shares the small ``Tokenizer`` interface (``encode``,
``decode``, ``vocab_size``, ``save``/``load``), so the model, the training loop and generation work with any
of them.

Byte-pair encoding is laid out as in Karpathy's minbpe, top to bottom: the two textbook steps
(``count_pairs``, ``merge_pair``), the pre-split patterns, the textbook trainer kept as the reference
(``textbook_bpe_merges``), the fast trainer (``learn_bpe_merges``) and the tokenizer that uses them.
"""

from __future__ import annotations

import heapq
import json
import os
import re
import unicodedata
from abc import ABC, abstractmethod
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from .files import write_atomically
from .progress import progress_bar


class Tokenizer(ABC):
    """What every tokenizer offers: text -> ids -> text, a vocabulary size, and a small JSON form on disk."""

    #: The ``"type"`` written to JSON, so ``Tokenizer.load`` can rebuild the right class.
    kind: str = ""

    @abstractmethod
    def encode(self, text: str) -> list[int]:
        """The token ids of ``text``."""

    @abstractmethod
    def decode(self, ids: Iterable[int]) -> str:
        """The text of a sequence of token ids."""

    @property
    @abstractmethod
    def vocab_size(self) -> int:
        """How many distinct token ids there are: the size of the model's embedding table and output layer."""

    @abstractmethod
    def to_dict(self) -> dict[str, Any]:
        """Everything needed to rebuild this tokenizer, as JSON-friendly values including ``"type"``."""

    @classmethod
    @abstractmethod
    def from_dict(cls, data: dict[str, Any]) -> Tokenizer:
        """Rebuild a tokenizer from ``to_dict()``'s output."""

    def _checked_ids(self, ids: Iterable[int]) -> list[int]:
        """``ids`` as a list, each checked to be a token of this vocabulary (for ``decode``)."""
        if hasattr(ids, "tolist"):  # a tensor or numpy array: one conversion instead of one per element
            ids = ids.tolist()
        ids = list(ids)
        out_of_range = [i for i in ids if not 0 <= i < self.vocab_size]
        if out_of_range:
            raise ValueError(
                f"Cannot decode token id(s) {out_of_range[:5]}: ids must be in 0..{self.vocab_size - 1} "
                "for this vocabulary. Was the model trained with a different tokenizer?"
            )
        return ids

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the tokenizer as JSON, one field and one list entry per line, so people can read it. The
        file is written under a temporary name and then renamed, so a crash never leaves a half-written
        tokenizer behind."""
        path = Path(path)
        write_atomically(path, _readable_json(self.to_dict()).encode("utf-8"))
        return path

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Tokenizer:
        """Read a tokenizer written by ``save``. ``Tokenizer.load`` picks the class from the file's ``"type"``;
        ``CharTokenizer.load`` (or ``BPETokenizer.load``) also checks that the file holds that kind."""
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(
                f"No tokenizer file at {path}; build one (CharTokenizer.from_text(text) or "
                "BPETokenizer().train(text, vocab_size)) and save(path) first."
            )
        data = json.loads(path.read_text(encoding="utf-8"))
        kind = data.get("type") if isinstance(data, dict) else None
        tokenizer_class = _TOKENIZER_CLASSES.get(kind) if cls is Tokenizer else cls
        if tokenizer_class is None:
            known = ", ".join(sorted(_TOKENIZER_CLASSES))
            raise ValueError(f"{path} holds a tokenizer of unknown type {kind!r}; known types are: {known}.")
        return tokenizer_class.from_dict(data)


class CharTokenizer(Tokenizer):
    """One token per character: the vocabulary is the sorted set of characters of the training text.

    Sorting makes the ids deterministic: the same text always gives the same vocabulary, on every machine.
    """

    kind = "char"

    def __init__(self, chars: Iterable[str]):
        chars = list(chars)
        if not chars:
            raise ValueError(
                "A CharTokenizer needs at least one character; build it with CharTokenizer.from_text(text)."
            )
        not_single = [c for c in chars if not isinstance(c, str) or len(c) != 1]
        if not_single:
            raise ValueError(f"Every vocabulary entry must be a single character, got {not_single[:5]!r}.")
        if len(set(chars)) != len(chars):
            raise ValueError("The vocabulary lists a character twice; every character must appear once.")
        self.chars: list[str] = chars
        self._id_of_char = {c: i for i, c in enumerate(chars)}

    @classmethod
    def from_text(cls, text: str) -> CharTokenizer:
        """The tokenizer whose vocabulary is every distinct character of ``text``, sorted."""
        if not text:
            raise ValueError("Cannot build a vocabulary from empty text; pass the training corpus.")
        return cls(sorted(set(text)))

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> list[int]:
        try:
            return [self._id_of_char[c] for c in text]
        except KeyError:
            unknown = sorted(set(text) - self._id_of_char.keys())
            listed = ", ".join(repr(c) for c in unknown)
            raise ValueError(
                f"Cannot encode {len(unknown)} character(s) that are not in the vocabulary: {listed}. "
                "Remove or replace them in the text, or build the tokenizer from a text that contains them "
                "(CharTokenizer.from_text)."
            ) from None

    def decode(self, ids: Iterable[int]) -> str:
        return "".join([self.chars[i] for i in self._checked_ids(ids)])

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.kind, "chars": self.chars}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CharTokenizer:
        if not isinstance(data, dict) or data.get("type") != cls.kind or "chars" not in data:
            raise ValueError(
                f"Expected a character tokenizer ({{'type': 'char', 'chars': [...]}}), got {str(data)[:80]!r}."
            )
        return cls(data["chars"])

    def __repr__(self) -> str:
        return f"CharTokenizer(vocab_size={self.vocab_size})"


# --------------------------------------------------------------------------------------- byte-pair encoding
#
# Text is first turned into UTF-8 bytes, so the starting vocabulary is the 256 byte values and any string can
# be encoded. Training then repeats one step: find the most frequent pair of neighbouring tokens and merge it
# into a new token. Encoding replays the merges in the order they were learned.

Pair = tuple[int, int]

#: How many piece encodings ``BPETokenizer`` remembers; words repeat, so most pieces are found here.
PIECE_CACHE_SIZE = 100_000

# GPT-2's and GPT-4's pre-split patterns, written for the standard library's ``re``, which lacks ``\p{L}``
# (any letter) and ``\p{N}`` (any number). ``\w`` is a letter, a number or "_", which gives:
#   \p{L}              -> [^\W\d_]       a word character that is neither a digit nor the underscore
#   \p{N}              -> \d             a decimal digit
#   [^\s\p{L}\p{N}]    -> (?:[^\s\w]|_)  neither space nor letter nor digit: punctuation, symbols, emoji
# The originals' possessive quantifiers (?+ and ++) are dropped: Python supports them only from 3.11, and
# here they change nothing. Every character of any text falls into one of the alternatives, so the pieces
# always join back into the text.
GPT2_SPLIT_PATTERN = "|".join(
    [
        r"'s|'t|'re|'ve|'m|'ll|'d",  # English contractions
        r" ?[^\W\d_]+",  # a word, with the space before it
        r" ?\d+",  # a number
        r" ?(?:[^\s\w]|_)+",  # punctuation and symbols
        r"\s+(?!\S)",  # spaces, leaving the last one to the word that follows
        r"\s+",  # any other whitespace
    ]
)
GPT4_SPLIT_PATTERN = "|".join(
    [
        r"'(?i:[sdmt]|ll|ve|re)",  # contractions, in any case: 's 'd 'm 't 'll 've 're
        r"(?:[^\r\n\w]|_)?[^\W\d_]+",  # a word, with one space or punctuation mark before it
        r"\d{1,3}",  # numbers, at most three digits per piece
        r" ?(?:[^\s\w]|_)+[\r\n]*",  # punctuation and symbols, with the line breaks after them
        r"\s*[\r\n]",  # line breaks, with the spaces before them
        r"\s+(?!\S)",  # spaces, leaving the last one to the word that follows
        r"\s+",  # any other whitespace
    ]
)


def count_pairs(ids: Sequence[int], counts: dict[Pair, int] | None = None) -> dict[Pair, int]:
    """How often each pair of neighbouring ids occurs in ``ids``, added to ``counts`` when it is given."""
    counts = {} if counts is None else counts
    for pair in zip(ids, ids[1:]):
        counts[pair] = counts.get(pair, 0) + 1
    return counts


def merge_pair(ids: Sequence[int], pair: Pair, new_id: int) -> list[int]:
    """``ids`` with every occurrence of ``pair`` replaced by ``new_id``, scanning from left to right
    (so ``a a a`` merged on ``(a, a)`` gives ``new a``)."""
    first, second = pair
    merged, i = [], 0
    while i < len(ids):
        if ids[i] == first and i + 1 < len(ids) and ids[i + 1] == second:
            merged.append(new_id)
            i += 2
        else:
            merged.append(ids[i])
            i += 1
    return merged


def text_bytes(text: str) -> bytes:
    """The UTF-8 bytes of ``text``. Lone surrogates (which a Python string may hold) are kept as their
    three-byte form, so that even such strings decode back exactly."""
    return text.encode("utf-8", "surrogatepass")


def textbook_bpe_merges(text: str, num_merges: int, pattern: str | None = GPT4_SPLIT_PATTERN) -> list[Pair]:
    """THE REFERENCE TRAINER, slow on purpose: byte-pair encoding exactly as it is taught.

    Split the text with ``pattern`` (or not at all when it is None), then ``num_merges`` times: count every
    pair of neighbours in every piece, merge the most frequent pair everywhere. Ties go to the smallest pair,
    so the result does not depend on dictionary order. It stops early when no pair is left. ``BPETokenizer``
    learns exactly these merges with ``learn_bpe_merges``; tests and ``benchmarks/bench_bpe.py`` compare them.
    """
    pieces = re.findall(pattern, text) if pattern else [text]
    ids = [list(text_bytes(piece)) for piece in pieces]
    merges: list[Pair] = []
    for new_id in range(256, 256 + num_merges):
        counts: dict[Pair, int] = {}
        for piece_ids in ids:
            count_pairs(piece_ids, counts)
        if not counts:
            break
        pair = min(counts, key=lambda pair: (-counts[pair], pair))  # most frequent, then smallest
        ids = [merge_pair(piece_ids, pair, new_id) for piece_ids in ids]
        merges.append(pair)
    return merges


def _merge_and_count_changes(
    word: list[int], pair: Pair, new_id: int, weight: int, changes: defaultdict[Pair, int]
) -> list[int]:
    """``merge_pair(word, pair, new_id)``, also adding to ``changes`` how each pair's count changes.

    Each merge of ``a b`` into ``N`` inside ``x a b y`` turns the pairs ``(x, a) (a, b) (b, y)`` into
    ``(x, N) (N, y)``; everything else in the word keeps its pairs. Taking ``x`` from the merged output
    (not the input) keeps overlapping merges right: in ``a b a b`` the second merge sees ``x = N``, removes
    the ``(N, a)`` the first one added and adds ``(N, N)``.
    """
    first, second = pair
    merged, i = [], 0
    while i < len(word):
        if word[i] == first and i + 1 < len(word) and word[i + 1] == second:
            changes[pair] -= weight
            if merged:
                changes[merged[-1], first] -= weight
                changes[merged[-1], new_id] += weight
            if i + 2 < len(word):
                changes[second, word[i + 2]] -= weight
                changes[new_id, word[i + 2]] += weight
            merged.append(new_id)
            i += 2
        else:
            merged.append(word[i])
            i += 1
    return merged


def learn_bpe_merges(piece_counts: Mapping[bytes, int], num_merges: int, *, progress: bool = False) -> list[Pair]:
    """The merges ``textbook_bpe_merges`` learns, computed from each distinct piece's bytes and its count.

    Two ideas make it fast. Identical pieces are always merged identically, so each distinct piece is kept
    once, with how often it occurs (a word like " the" is stored once, not thousands of times). And a merge
    only changes the counts of the pairs next to each place it merges, so those changes are applied to the
    counts (see ``_merge_and_count_changes``), and only the pieces that contain the merged pair are visited,
    instead of re-counting every pair of the whole text after every merge. A heap keeps the most frequent
    pair on top; entries whose count has changed since they were pushed are skipped when they come up.
    """
    words = [list(piece) for piece in piece_counts]
    weights = list(piece_counts.values())
    counts: dict[Pair, int] = {}
    words_with: defaultdict[Pair, set[int]] = defaultdict(set)  # pair -> the words it occurs (or occurred) in
    for index, word in enumerate(words):
        for pair in zip(word, word[1:]):
            counts[pair] = counts.get(pair, 0) + weights[index]
            words_with[pair].add(index)
    heap = [(-count, pair) for pair, count in counts.items()]  # smallest first: highest count, then smallest pair
    heapq.heapify(heap)
    merges: list[Pair] = []
    with progress_bar(total=num_merges, disable=not progress, desc="learning merges", unit="merge") as bar:
        while heap and len(merges) < num_merges:
            negative_count, pair = heapq.heappop(heap)
            if counts.get(pair) != -negative_count:  # out of date
                continue
            new_id = 256 + len(merges)
            merges.append(pair)
            changes: defaultdict[Pair, int] = defaultdict(int)
            for index in words_with.pop(pair):
                words[index] = _merge_and_count_changes(words[index], pair, new_id, weights[index], changes)
                for added in zip(words[index], words[index][1:]):
                    if new_id in added:
                        words_with[added].add(index)
            for changed, change in changes.items():
                if change:
                    counts[changed] = counts.get(changed, 0) + change
                    if counts[changed]:
                        heapq.heappush(heap, (-counts[changed], changed))
                    else:
                        del counts[changed]
            bar.update()
    return merges


class BPETokenizer(Tokenizer):
    """Byte-level byte-pair encoding: the 256 byte values, then one token per learned merge, then the special
    tokens.

    ``pattern`` pre-splits text into pieces (words, numbers, punctuation, whitespace) that merges never cross,
    as GPT-2 and GPT-4 do; ``None`` treats the whole text as one piece (fine for short texts and for
    teaching, slow for long ones). ``special_tokens`` are strings such as ``"<|end of scene|>"`` that get ids
    of their own; ordinary text never produces them (see ``encode``).

        tokenizer = BPETokenizer(special_tokens=["<|end of scene|>"]).train(text, vocab_size=1024)
    """

    kind = "byte_level_bpe"

    def __init__(
        self,
        merges: Iterable[Sequence[int]] = (),
        pattern: str | None = GPT4_SPLIT_PATTERN,
        special_tokens: Iterable[str] = (),
    ):
        if pattern is not None and not isinstance(pattern, str):
            raise TypeError(f"pattern must be a regular expression string or None, got {type(pattern).__name__}.")
        try:
            self._splitter = re.compile(pattern) if pattern else None
        except re.error as error:
            raise ValueError(
                f"The pre-split pattern is not a valid regular expression ({error}); pass "
                "GPT4_SPLIT_PATTERN, GPT2_SPLIT_PATTERN or None."
            ) from None
        self.pattern = pattern or None
        self._special_names = self._checked_special_tokens(special_tokens)
        self._set_merges(merges)

    @staticmethod
    def _checked_special_tokens(special_tokens: Iterable[str]) -> list[str]:
        if isinstance(special_tokens, str):
            raise TypeError(f"special_tokens must be a list of strings, e.g. [{special_tokens!r}].")
        names = list(special_tokens)
        for name in names:
            if not isinstance(name, str) or not name:
                raise ValueError(f"Every special token must be a non-empty string, got {name!r}.")
            try:
                name.encode("utf-8")
            except UnicodeEncodeError:
                raise ValueError(
                    f"The special token {name!r} is not valid Unicode text (it holds a lone surrogate)."
                ) from None
        if len(set(names)) != len(names):
            raise ValueError("A special token is listed twice; every special token must appear once.")
        return names

    def _set_merges(self, merges: Iterable[Sequence[int]]) -> None:
        """Store the merges and build what encoding and decoding need: each token's bytes, and the rank of
        each pair (its new id: the lower, the earlier it was learned)."""
        pieces = [bytes([byte]) for byte in range(256)]
        ranks: dict[Pair, int] = {}
        for new_id, merge in enumerate(merges, start=256):
            if (
                len(merge) != 2
                or not all(isinstance(i, int) and not isinstance(i, bool) for i in merge)
                or not all(0 <= i < new_id for i in merge)
            ):
                raise ValueError(
                    f"Merge {new_id - 256} must be a pair of ids of earlier tokens (0..{new_id - 1}), got {merge!r}."
                )
            pair = (merge[0], merge[1])
            if pair in ranks:
                raise ValueError(
                    f"Merge {new_id - 256} repeats merge {ranks[pair] - 256} {pair}; every pair is merged once."
                )
            ranks[pair] = new_id
            pieces.append(pieces[pair[0]] + pieces[pair[1]])
        #: pair -> the id of the token it becomes, in the order the merges were learned
        self.merges: dict[Pair, int] = ranks
        #: token id -> its bytes, special tokens included
        self.vocab: list[bytes] = pieces + [text_bytes(name) for name in self._special_names]
        self._cache: dict[str, list[int]] = {}

    @property
    def special_tokens(self) -> dict[str, int]:
        """Each special token and its id; they come after the bytes and the merges."""
        first = 256 + len(self.merges)
        return {name: first + i for i, name in enumerate(self._special_names)}

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def train(self, text: str, vocab_size: int, *, progress: bool = False) -> BPETokenizer:
        """Learn merges from ``text`` until the vocabulary holds ``vocab_size`` tokens (256 bytes, the merges
        and the special tokens); any earlier merges are replaced. Stops early if the pieces of the text run out
        of pairs. Returns the tokenizer itself."""
        if not isinstance(text, str):
            raise TypeError(
                f"train needs the text as a str, got {type(text).__name__}; read a file with "
                "Path(path).read_text(encoding='utf-8')."
            )
        if not text:
            raise ValueError("Cannot learn merges from empty text; pass the training corpus.")
        smallest = 256 + len(self._special_names)
        if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < smallest:
            raise ValueError(
                f"vocab_size must be an integer of at least {smallest} (256 byte values "
                f"+ {len(self._special_names)} special tokens), got {vocab_size!r}."
            )
        piece_counts = Counter(self._split(text))
        merges = learn_bpe_merges(
            {text_bytes(piece): count for piece, count in piece_counts.items()},
            vocab_size - smallest,
            progress=progress,
        )
        self._set_merges(merges)
        return self

    def _split(self, text: str) -> list[str]:
        if self._splitter is None:
            return [text] if text else []
        return self._splitter.findall(text)

    def _encode_piece(self, piece: str) -> list[int]:
        """Apply the merges to one piece: while some neighbouring pair has been learned, merge the pair that
        was learned first. This replays training, so a piece of the training text gets the tokens it had."""
        ids = list(text_bytes(piece))
        while len(ids) >= 2:
            pair = min(zip(ids, ids[1:]), key=lambda pair: self.merges.get(pair, float("inf")))
            if pair not in self.merges:
                break
            ids = merge_pair(ids, pair, self.merges[pair])
        return ids

    def encode_ordinary(self, text: str) -> list[int]:
        """The token ids of ``text``, treating every character as ordinary text (no special tokens)."""
        if not isinstance(text, str):
            raise TypeError(f"encode needs a str, got {type(text).__name__}.")
        if self._splitter is None:
            return self._encode_piece(text) if text else []
        ids: list[int] = []
        cache = self._cache
        for piece in self._splitter.findall(text):
            piece_ids = cache.get(piece)
            if piece_ids is None:
                if len(cache) >= PIECE_CACHE_SIZE:
                    cache.clear()
                piece_ids = cache[piece] = self._encode_piece(piece)
            ids.extend(piece_ids)
        return ids

    def encode(self, text: str, *, allowed_special: str | Iterable[str] = ()) -> list[int]:
        """The token ids of ``text``.

        By default the text of a special token is encoded like any other text, so ordinary text (a
        transcript, a user's prompt) can never produce a special token's id. Name the special tokens to
        recognise in ``allowed_special`` (or pass ``"all"``) when the text is yours and uses them on purpose.
        """
        if isinstance(allowed_special, str):
            if allowed_special != "all":
                raise ValueError(
                    f"allowed_special must be 'all' or a collection of special tokens, e.g. "
                    f"[{allowed_special!r}], got the string {allowed_special!r}."
                )
            allowed = list(self._special_names)
        else:
            allowed = list(allowed_special)
        unknown = [name for name in allowed if name not in self._special_names]
        if unknown:
            raise ValueError(
                f"{unknown!r} are not special tokens of this tokenizer; its special tokens are "
                f"{self._special_names!r} (set them with BPETokenizer(special_tokens=[...]))."
            )
        if not allowed:
            return self.encode_ordinary(text)
        special_ids = self.special_tokens
        longest_first = sorted(set(allowed), key=len, reverse=True)
        parts = re.split("(" + "|".join(map(re.escape, longest_first)) + ")", text)
        ids: list[int] = []
        for i, part in enumerate(parts):  # re.split with a group: text, special, text, special, ..., text
            if i % 2:
                ids.append(special_ids[part])
            else:
                ids.extend(self.encode_ordinary(part))
        return ids

    def decode(self, ids: Iterable[int]) -> str:
        """The text of ``ids``. A sequence that does not form valid UTF-8 (a model can sample one, e.g. half
        of a multi-byte character) decodes with the replacement character U+FFFD in those places."""
        data = b"".join([self.vocab[i] for i in self._checked_ids(ids)])
        try:
            return data.decode("utf-8", "surrogatepass")
        except UnicodeDecodeError:
            return data.decode("utf-8", "replace")

    def render_token(self, token_id: int) -> str:
        """A printable form of one token for people: its text, with control characters such as a line break
        written as escapes (``\\n``) and partial UTF-8 characters as U+FFFD."""
        if not 0 <= token_id < len(self.vocab):
            raise ValueError(f"Token id {token_id} is not in 0..{len(self.vocab) - 1}.")
        text = self.vocab[token_id].decode("utf-8", "replace")
        return "".join(repr(c)[1:-1] if unicodedata.category(c).startswith("C") else c for c in text)

    def to_dict(self) -> dict[str, Any]:
        # Each merge is [first id, second id, the new token's text]; the text is for people reading the
        # file and is not read back.
        return {
            "type": self.kind,
            "pattern": self.pattern,
            "special_tokens": self.special_tokens,
            "merges": [[first, second, self.render_token(new_id)] for (first, second), new_id in self.merges.items()],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BPETokenizer:
        if not isinstance(data, dict) or data.get("type") != cls.kind or not isinstance(data.get("merges"), list):
            raise ValueError(
                f"Expected a byte-level BPE tokenizer ({{'type': '{cls.kind}', 'merges': [...]}}), "
                f"got {str(data)[:80]!r}."
            )
        for number, entry in enumerate(data["merges"]):
            if not isinstance(entry, list) or len(entry) < 2:
                raise ValueError(f"Merge {number} must be a list [first id, second id, text], got {entry!r}.")
        special_tokens = data.get("special_tokens") or {}
        if not isinstance(special_tokens, dict):
            raise ValueError(f"special_tokens must map each special token to its id, got {special_tokens!r}.")
        tokenizer = cls(
            [entry[:2] for entry in data["merges"]],
            pattern=data.get("pattern"),
            special_tokens=sorted(special_tokens, key=special_tokens.get),
        )
        if tokenizer.special_tokens != special_tokens:
            raise ValueError(
                f"The special tokens' ids {special_tokens} must follow the merges, from "
                f"{256 + len(tokenizer.merges)} on: expected {tokenizer.special_tokens}."
            )
        return tokenizer

    def __repr__(self) -> str:
        pattern = {
            GPT4_SPLIT_PATTERN: "GPT4_SPLIT_PATTERN",
            GPT2_SPLIT_PATTERN: "GPT2_SPLIT_PATTERN",
            None: "None",
        }.get(self.pattern, "custom")
        return (
            f"BPETokenizer(vocab_size={self.vocab_size}, merges={len(self.merges)}, pattern={pattern}, "
            f"special_tokens={self._special_names!r})"
        )


def _readable_json(data: dict[str, Any]) -> str:
    """``data`` as JSON with one top-level field per line and one list entry per line: easy to read and to
    compare with diff, and still plain JSON for ``json.loads``."""
    fields = []
    for key, value in data.items():
        if isinstance(value, list) and value:
            entries = ",\n  ".join(json.dumps(entry, ensure_ascii=False) for entry in value)
            fields.append(f"{json.dumps(key)}: [\n  {entries}\n ]")
        else:
            fields.append(f"{json.dumps(key)}: {json.dumps(value, ensure_ascii=False)}")
    return "{\n " + ",\n ".join(fields) + "\n}\n"


_TOKENIZER_CLASSES: dict[str, type[Tokenizer]] = {CharTokenizer.kind: CharTokenizer, BPETokenizer.kind: BPETokenizer}
