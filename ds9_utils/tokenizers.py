"""Tokenizers turn text into a list of integers (token ids) and back.

A language model only ever sees integers. The simplest tokenizer gives every distinct character its own id:
``CharTokenizer``. Every tokenizer here shares the small ``Tokenizer`` interface (``encode``, ``decode``,
``vocab_size``, ``save``/``load``), so the model, the training loop and generation work with any of them
and a byte-pair-encoding tokenizer can join later without changing their code.
"""
from __future__ import annotations

import json
import os
import tempfile
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, Iterable


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

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the tokenizer as JSON. The file is written under a temporary name and then renamed, so a
        crash never leaves a half-written tokenizer behind."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        descriptor, temporary_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(descriptor, "w", encoding="utf-8") as file:
                json.dump(self.to_dict(), file, ensure_ascii=False)
            os.replace(temporary_name, path)
        except BaseException:
            Path(temporary_name).unlink(missing_ok=True)
            raise
        return path

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Tokenizer:
        """Read a tokenizer written by ``save``. ``Tokenizer.load`` picks the class from the file's ``"type"``;
        ``CharTokenizer.load`` also checks that the file holds a character tokenizer."""
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"No tokenizer file at {path}; build one with from_text(...) and save(path) first.")
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
            raise ValueError("A CharTokenizer needs at least one character; build it with CharTokenizer.from_text(text).")
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
        if hasattr(ids, "tolist"):  # a tensor or numpy array: one conversion instead of one per element
            ids = ids.tolist()
        ids = list(ids)
        out_of_range = [i for i in ids if not 0 <= i < len(self.chars)]
        if out_of_range:
            raise ValueError(
                f"Cannot decode token id(s) {out_of_range[:5]}: ids must be in 0..{len(self.chars) - 1} "
                "for this vocabulary. Was the model trained with a different tokenizer?"
            )
        return "".join([self.chars[i] for i in ids])

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


_TOKENIZER_CLASSES: dict[str, type[Tokenizer]] = {CharTokenizer.kind: CharTokenizer}
