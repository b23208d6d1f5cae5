"""Measuring what a trained model learned: compression, format, copying.

Three questions notebook 11 asks of the course model, each answered by a small function here:

- How well does it predict unseen text? ``token_losses`` and ``bits_per_character`` score a model over a
  long text (a whole split, not a few random windows), window by window.
- Does what it writes look like a transcript? ``classify_line`` sorts one line into speaker line, stage
  direction, scene heading or malformed; ``scene_format_report`` summarises a generated text that way and
  counts how many speakers it names are real ones.
- Does it write real words? ``real_words_share`` counts the share of its words found in the training text.
- Does it invent, or does it recite? ``longest_copied_substring`` finds the longest stretch of the generated
  text that appears word for word in the training text; ``SuffixIndex`` makes that fast for many samples.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.nn import functional as F

from .progress import progress_bar


def bits_per_char(nats: float) -> float:
    """Convert a loss in nats per character to bits per character (``nats / ln 2``)."""
    return nats / math.log(2)


# ---------------------------------------------------------------------------------------------- line kinds

#: A speaker line: a name in capitals, optionally followed by a bracketed note such as ``[OC]`` (off camera)
#: or ``[on viewscreen]``, a colon, a space and something said. ``O'BRIEN: Try it now.``
SPEAKER_LINE = re.compile(r"^(?P<name>[A-Z0-9][A-Z0-9 '.\-&+/]*?)\s*(?P<note>\[[^\[\]]*\])?: (?P<text>\S.*)$")
#: A stage direction: the whole line in parentheses. ``(Odo leaves)``
DIRECTION_LINE = re.compile(r"^\([^()]*(\([^()]*\)[^()]*)*\)$")
#: A scene heading: the whole line in square brackets. ``[Quark's]``
HEADING_LINE = re.compile(r"^\[[^\[\]]+\]$")

LINE_KINDS = ("speaker", "direction", "heading", "malformed")


@dataclass(frozen=True)
class LineInfo:
    """What one line of a transcript is: its kind (one of ``LINE_KINDS``) and, for a speaker line, who speaks."""

    kind: str
    speaker: str | None = None


def classify_line(line: str) -> LineInfo:
    """Sort one line (without its newline) into a speaker line, a direction, a heading or a malformed line.

    The speaker's name is returned without its bracketed note, so ``KIRA [OC]`` counts as ``KIRA``. Surrounding
    white space is ignored. An empty line is "malformed" here; ``scene_format_report`` skips empty lines.
    """
    line = line.strip()
    match = SPEAKER_LINE.match(line)
    if match:
        return LineInfo("speaker", match.group("name").strip())
    if DIRECTION_LINE.match(line):
        return LineInfo("direction")
    if HEADING_LINE.match(line):
        return LineInfo("heading")
    return LineInfo("malformed")


def speaker_counts(text: str) -> Counter:
    """How many lines each speaker has in ``text`` (names without notes such as ``[OC]``)."""
    counts: Counter = Counter()
    for line in text.splitlines():
        info = classify_line(line)
        if info.kind == "speaker":
            counts[info.speaker] += 1
    return counts


def scene_format_report(text: str, known_speakers: Iterable[str], *, drop_last_line: bool | None = None) -> dict:
    """How well ``text`` (e.g. a generated scene) follows the transcript format, as a dictionary.

    Every non-empty line is classified with ``classify_line``. The result holds the counts (``lines``,
    ``speaker``, ``direction``, ``heading``, ``malformed``), the fraction of each (``speaker_fraction``, ...),
    ``well_formed_fraction`` (speaker lines, directions and headings together), the speakers used
    (``speakers``: name -> lines), ``known_speaker_fraction`` (of the speaker lines, how many have a name from
    ``known_speakers``), ``known_name_fraction`` (the same over distinct names) and ``unknown_speakers`` (the
    invented names, most frequent first).

    drop_last_line: a sample cut off after a fixed number of characters usually ends in the middle of a line,
        which would count as malformed; by default (None) the last line is left out when ``text`` does not
        end with a newline. True or False forces it.

    Fractions of nothing are reported as ``nan`` (a text without lines is neither good nor bad).
    """
    known = set(known_speakers)
    lines = text.split("\n")
    if drop_last_line is None:
        drop_last_line = not text.endswith("\n")
    if drop_last_line and lines:
        lines = lines[:-1]
    counts = dict.fromkeys(LINE_KINDS, 0)
    speakers: Counter = Counter()
    for line in lines:
        if not line.strip():
            continue
        info = classify_line(line)
        counts[info.kind] += 1
        if info.speaker is not None:
            speakers[info.speaker] += 1

    def fraction(part: int, whole: int) -> float:
        return part / whole if whole else math.nan

    total = sum(counts.values())
    known_lines = sum(count for name, count in speakers.items() if name in known)
    report = {"lines": total, **counts}
    report.update({f"{kind}_fraction": fraction(counts[kind], total) for kind in LINE_KINDS})
    report["well_formed_fraction"] = fraction(total - counts["malformed"], total)
    report["speakers"] = dict(speakers.most_common())
    report["known_speaker_fraction"] = fraction(known_lines, counts["speaker"])
    report["known_name_fraction"] = fraction(sum(1 for name in speakers if name in known), len(speakers))
    report["unknown_speakers"] = [name for name, _ in speakers.most_common() if name not in known]
    return report


# ---------------------------------------------------------------------------------------------- copying


class SuffixIndex:
    """A suffix array of a text: the start of every suffix, sorted alphabetically, to find substrings fast.

    Looking for a string in the text becomes a binary search, like finding a word in a dictionary: about
    ``log2(len(text))`` comparisons (23 for 5 million characters) instead of a scan of the whole text.
    The array is built by prefix doubling with numpy: sort the suffixes by their first few characters (as many
    as fit in one 64-bit number), then by twice as many, and so on, each round ranking pairs of the previous
    round's ranks. Rounds stop when every suffix is distinguished or after ``max_prefix`` characters (suffixes
    that agree on their first ``max_prefix`` characters stay in an arbitrary order among themselves, which is
    fine for any search of at most that length; longer ones are checked with ``str.find``). For the 5 MB
    training text, building takes several seconds and about half a gigabyte of memory at its peak.
    """

    def __init__(self, text: str, *, max_prefix: int = 256):
        if max_prefix < 1:
            raise ValueError(f"max_prefix must be at least 1, got {max_prefix}")
        self.text = text
        self.max_prefix = max_prefix
        n = len(text)
        codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
        alphabet, small = np.unique(codes, return_inverse=True)  # ids 0..distinct-1 in code-point order
        small = small.astype(np.int64).reshape(-1) + 1  # 0 is kept for "past the end", which sorts first
        # First round: sort by as many characters as fit in one 63-bit number (8 for a ~100-character alphabet).
        bits = int(len(alphabet) + 1).bit_length()
        length = max(1, min(max_prefix, 63 // bits))
        key = np.zeros(n, dtype=np.int64)
        for offset in range(length):
            key <<= bits
            if offset < n:
                key[: n - offset] |= small[offset:]
        order, rank = self._sort_and_rank(key)
        # Then double: the first 2L characters of a suffix are its first L followed by the first L of the
        # suffix L further on, so ranking the pairs of ranks sorts by 2L characters.
        while n and length < max_prefix and rank.max() < n - 1:
            second = np.zeros(n, dtype=np.int64)  # 0: past the end
            if length < n:
                second[: n - length] = rank[length:] + 1
            order, rank = self._sort_and_rank(rank * (n + 1) + second)
            length *= 2
        self.suffixes = order.astype(np.int64 if n >= 2**31 else np.int32)

    @staticmethod
    def _sort_and_rank(key: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The order that sorts ``key`` and each element's dense rank (equal keys share a rank)."""
        order = np.argsort(key)
        sorted_key = key[order]
        rank = np.empty(len(key), dtype=np.int64)
        rank[order] = np.concatenate(([0], np.cumsum(sorted_key[1:] != sorted_key[:-1]))) if len(key) else []
        return order, rank

    def __len__(self) -> int:
        return len(self.text)

    def _lower_bound(self, query: str) -> int:
        """The first position in the suffix array whose suffix's prefix of len(query) is >= query."""
        text, suffixes, m = self.text, self.suffixes, len(query)
        low, high = 0, len(suffixes)
        while low < high:
            middle = (low + high) // 2
            start = int(suffixes[middle])
            if text[start : start + m] < query:
                low = middle + 1
            else:
                high = middle
        return low

    def contains(self, query: str) -> bool:
        """Whether ``query`` occurs in the text (same answer as ``query in text``)."""
        if len(query) > self.max_prefix:
            return query in self.text
        position = self._lower_bound(query)
        if position == len(self.suffixes):
            return False
        start = int(self.suffixes[position])
        return self.text[start : start + len(query)] == query

    def find(self, query: str) -> int:
        """A position where ``query`` occurs in the text, or -1 (not necessarily the first occurrence)."""
        if len(query) > self.max_prefix:
            return self.text.find(query)
        position = self._lower_bound(query)
        if position < len(self.suffixes):
            start = int(self.suffixes[position])
            if self.text[start : start + len(query)] == query:
                return start
        return -1


def longest_copied_substring(generated: str, training_text: str | SuffixIndex) -> tuple[int, str]:
    """The longest substring of ``generated`` that also occurs in ``training_text``: ``(length, substring)``.

    A long copied stretch means the model recited its training data rather than wrote something new. The
    search slides a window over ``generated`` that only ever grows: at each start it asks whether the window
    one character longer than the best so far still occurs in the training text; if so the best grows,
    otherwise the window moves on. That is at most ``2 * len(generated)`` membership tests.

    ``training_text`` may be the text itself (each test is then a ``str.find`` over it: fine for one sample of
    a few thousand characters against 5 MB, a few seconds) or a ``SuffixIndex`` of it, built once and reused
    (each test is then a binary search: milliseconds per sample). The first longest substring is returned;
    ``(0, "")`` when not even one character is shared.
    """
    contains = training_text.contains if isinstance(training_text, SuffixIndex) else training_text.__contains__
    best_start, best_length = 0, 0
    for start in range(len(generated)):
        if start + best_length >= len(generated):
            break
        while start + best_length < len(generated) and contains(generated[start : start + best_length + 1]):
            best_start, best_length = start, best_length + 1
    return best_length, generated[best_start : best_start + best_length]


#: A word: letters, with apostrophes or hyphens inside (``O'Brien``, ``Quark's``, ``twenty-four``).
WORD = re.compile(r"[A-Za-z]+(?:['-][A-Za-z]+)*")


def words(text: str) -> list[str]:
    """The words of ``text``, lower-cased (``SISKO`` and ``Sisko`` are one word)."""
    return [word.lower() for word in WORD.findall(text)]


def real_words_share(generated: str, known_words: Iterable[str] | str) -> float:
    """The share of the words in ``generated`` that occur in ``known_words`` (a text, or its ``words``).

    A model that spells ("the station is quiet") scores near 1 against its training text; one that strings
    likely letters together ("the qualinions station") scores lower, whatever its loss says. Case is ignored.
    A text with no words scores 0.
    """
    vocabulary = set(words(known_words)) if isinstance(known_words, str) else {w.lower() for w in known_words}
    found = words(generated)
    return sum(word in vocabulary for word in found) / len(found) if found else 0.0


# ---------------------------------------------------------------------------------------------- compression


def _score_windows(n_targets: int, block_size: int, stride: int) -> list[tuple[int, int]]:
    """(start, first scored offset) of the windows that score every target exactly once; see token_losses."""
    if n_targets <= block_size:
        return [(0, 0)]
    windows, scored_until, start = [], 0, 0
    while scored_until < n_targets:
        start = min(start, n_targets - block_size)
        windows.append((start, scored_until - start))
        scored_until = start + block_size
        start += stride
    return windows


def default_stride(block_size: int) -> int:
    """The stride ``token_losses`` uses unless told: half a window, so every prediction sees half a window or more."""
    return max(block_size // 2, 1)


@torch.no_grad()
def token_losses(
    model: torch.nn.Module,
    tokens: Sequence[int] | torch.Tensor,
    block_size: int,
    device: str | torch.device = "cpu",
    *,
    stride: int | None = None,
    batch_size: int = 32,
    progress: bool = False,
) -> torch.Tensor:
    """The loss (nats) of every prediction a model makes over a long text: a float tensor of len(tokens) - 1.

    Entry ``j`` is ``-ln p(tokens[j + 1] | the tokens before it)``. The model sees at most ``block_size``
    tokens at once, so the text is cut into windows of ``block_size`` tokens:

    - ``stride < block_size``: windows that overlap, each scoring only its last ``stride`` predictions (the
      first window scores all of its own), so every prediction but the first ``block_size`` has at least
      ``block_size - stride`` tokens of context. ``stride=None`` means half a window (``default_stride``): every
      prediction gets at least half a window of context, at twice the cost of non-overlapping windows.
      ``stride=1`` is the exact, slow, full-context score.
    - ``stride=block_size``: non-overlapping windows. Half the cost, but the first characters of each window are
      predicted from almost no context, so the average is pessimistic (for the course model about 0.03 bits per
      character worse): unfair against a counting model, which always sees its full context.

    Either way every prediction is scored exactly once (the last window is aligned with the end of the text).
    ``model(idx)`` must return ``(logits, _)``, as the course's ``GPT`` and ``BigramLanguageModel`` do. The
    model is put in eval mode for the call and restored afterwards.
    """
    tokens = torch.as_tensor(tokens, dtype=torch.long).reshape(-1)
    if len(tokens) < 2:
        raise ValueError("token_losses needs at least two tokens: one to predict from and one to predict")
    if block_size < 1:
        raise ValueError(f"block_size must be at least 1, got {block_size}")
    stride = default_stride(block_size) if stride is None else stride
    if not 1 <= stride <= block_size:
        raise ValueError(f"stride must be between 1 and block_size ({block_size}), got {stride}")
    n_targets = len(tokens) - 1
    windows = _score_windows(n_targets, block_size, stride)
    length = min(block_size, n_targets)
    losses = torch.empty(n_targets, dtype=torch.float32)
    was_training = model.training
    model.eval()
    batches = range(0, len(windows), batch_size)
    if progress:
        batches = progress_bar(batches, desc="scoring", unit="batch")
    try:
        for first in batches:
            chunk = windows[first : first + batch_size]
            starts = torch.tensor([start for start, _ in chunk])
            offsets = torch.arange(length)
            x = tokens[starts[:, None] + offsets].to(device)
            y = tokens[starts[:, None] + offsets + 1].to(device)
            logits, _ = model(x)
            nats = F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), reduction="none").view(len(chunk), length)
            nats = nats.cpu()
            for row, (start, skip) in enumerate(chunk):
                losses[start + skip : start + length] = nats[row, skip:]
    finally:
        model.train(was_training)
    return losses


def bits_per_character(
    model: torch.nn.Module,
    tokens: Sequence[int] | torch.Tensor,
    block_size: int,
    device: str | torch.device = "cpu",
    *,
    stride: int | None = None,
    batch_size: int = 32,
    progress: bool = False,
) -> float:
    """The model's average loss over a whole text, in bits per character (for a character tokenizer).

    Bits per character is the number of yes/no questions the model needs, on average, to pin down each next
    character: 0 would be a perfect prediction, ``log2(vocab_size)`` a uniform guess. It is the mean of
    ``token_losses`` (see there for ``stride``: windows overlapping by half by default) divided by ``ln 2``.
    """
    losses = token_losses(model, tokens, block_size, device, stride=stride, batch_size=batch_size, progress=progress)
    return bits_per_char(losses.double().mean().item())


def line_losses(text: str, losses: torch.Tensor | Sequence[float]) -> list[dict]:
    """Split per-character losses of ``text`` by line: one dictionary per non-empty line.

    ``losses`` are ``token_losses`` of the character-encoded ``text`` (entry ``j`` scores character ``j + 1``),
    so a line's characters and the newline that ends it are scored by the entries just before them; the very
    first character of the text has no score and is left out. Each dictionary holds ``line``, ``kind``,
    ``speaker`` (see ``classify_line``), ``characters`` (how many were scored) and ``bits`` (their mean loss
    in bits per character).
    """
    losses = torch.as_tensor(losses, dtype=torch.float64).reshape(-1)
    if len(losses) != len(text) - 1:
        raise ValueError(
            f"losses must have len(text) - 1 = {len(text) - 1} entries (one per predicted character), got {len(losses)}"
        )
    cumulative = torch.cat([torch.zeros(1, dtype=torch.float64), losses.cumsum(0)])  # cumulative[j] = sum(losses[:j])
    rows, start = [], 0
    for line in text.split("\n"):
        end = start + len(line) + 1  # include the newline, which the model must also predict
        first, last = max(start, 1), min(end, len(text))  # characters first..last-1 are scored
        if line.strip() and last > first:
            info = classify_line(line)
            nats = (cumulative[last - 1] - cumulative[first - 1]).item()
            rows.append(
                {
                    "line": line,
                    "kind": info.kind,
                    "speaker": info.speaker,
                    "characters": last - first,
                    "bits": bits_per_char(nats / (last - first)),
                }
            )
        start = end
    return rows
