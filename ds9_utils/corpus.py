"""Render parsed episodes as the plain text a character-level model trains on, and split it by episode.

The training text looks like this (one episode shown)::

    === 901: The Invented Gambit ===

    (Station log, stardate 99101.5. The new replicators arrived today.)

    [Ops]
    KIRA: The freighter is late again.
    O'BRIEN: (from under the console) Give me a minute.
    DAX [OC]: Dax to Ops.
    (Kira taps her combadge)

    [Promenade]
    ...

- An episode starts with a header line ``=== NUMBER: Title ===`` and a blank line; episodes follow one
  another in number order, one blank line apart, so the header line is the separator.
- Each scene starts with its heading, ``[Location]``; lines before the first heading (an opening log, a
  "Last time on...") come right after the episode header, without a heading. Scenes are one blank line apart.
- A speaker line is ``NAME: text``, with the mark beside the name when there is one (``DAX [OC]: ...``) and
  the leading aside when there is one (``O'BRIEN: (from under the console) ...``). A direction, log entry
  or caption is one line in parentheses, whatever parenthesis the page forgot.
- Whitespace is normalised: single spaces, no trailing spaces, ``\\n`` line ends.

The character vocabulary is kept small and deterministic: typography is made plain (curly quotes become
straight, every dash ``-``, an ellipsis ``...``, a no-break space a space), accented letters lose their
accents (Unicode NFKD, ``é`` -> ``e``), and any character still outside printable ASCII and the newline is
replaced by ``FALLBACK_CHARACTER`` (``?``) and counted in the summary, so nothing changes unnoticed.

The split is by episode, never by position in the text, so the validation and test loss measure how well
the model does on episodes it has never seen. A two-part page (401, 473) is one episode here, so its two
halves can never land in different splits.
"""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .files import write_atomically
from .parse import Episode, Line, Scene, decode_page, parse_episode, parse_index
from .settings import corpus_dir as _default_corpus_dir
from .settings import pages_dir as default_pages_dir

FALLBACK_CHARACTER = "?"
SCENE_SEPARATOR = "\n\n"  # one blank line between blocks: a scene ends where the next scene or episode begins
_OUTSIDE_ALLOWED = re.compile(r"[^\x20-\x7e\n]")  # printable ASCII and the newline are allowed
SPLIT_NAMES = ("train", "val", "test")
DEFAULT_SPLIT_SEED = 0
BUILD_COMMAND = "python -m ds9_utils corpus"
DOWNLOAD_COMMAND = "python -m ds9_utils download"
REFETCH_HINT = f"`{DOWNLOAD_COMMAND}` fetches it again"  # download refetches a cached page it finds no transcript in

_PLAIN_TYPOGRAPHY = str.maketrans(
    {
        "\u2018": "'",
        "\u2019": "'",
        "\u201a": "'",
        "\u201b": "'",
        "\u2032": "'",
        "\u00b4": "'",
        "\u201c": '"',
        "\u201d": '"',
        "\u201e": '"',
        "\u201f": '"',
        "\u2033": '"',
        "\u00ab": '"',
        "\u00bb": '"',
        "\u2010": "-",
        "\u2011": "-",
        "\u2012": "-",
        "\u2013": "-",
        "\u2014": "-",
        "\u2015": "-",
        "\u2212": "-",
        "\u2026": "...",
        "\u00a0": " ",
        "\u2044": "/",
        "\u00ad": None,
        "\u200b": None,
        "\u200c": None,
        "\u200d": None,
        "\ufeff": None,  # invisible: dropped
    }
)


def normalise_characters(text: str, replaced: Counter[str] | None = None) -> str:
    """Make ``text`` plain printable ASCII (plus newlines) with single spaces and no trailing ones.

    Each character that has to fall back to ``FALLBACK_CHARACTER`` is counted in ``replaced`` when given.
    """
    if not text.isascii():  # the slow part, only for the few texts that need it
        decomposed = unicodedata.normalize("NFKD", text)  # "é" -> "e" + a combining accent, "½" -> "1⁄2"
        text = "".join(ch for ch in decomposed if not unicodedata.combining(ch)).translate(_PLAIN_TYPOGRAPHY)
    text = "\n".join(" ".join(line.split()) for line in text.split("\n"))

    def fall_back(match: re.Match[str]) -> str:
        if replaced is not None:
            replaced[match.group()] += 1
        return FALLBACK_CHARACTER

    return _OUTSIDE_ALLOWED.sub(fall_back, text)


def render_line(line: Line) -> str:
    """One line in the training-text format: ``NAME [mark]: (aside) text`` or ``(direction)``."""
    if line.kind == "direction":
        return f"({line.text})"
    name = f"{line.speaker} [{line.modifier}]" if line.modifier else str(line.speaker)
    aside = f"({line.parenthetical})" if line.parenthetical is not None else ""
    spoken = " ".join(part for part in (aside, line.text) if part)
    return f"{name}: {spoken}"


def _render_scene(scene: Scene) -> str:
    heading = [f"[{scene.location}]"] if scene.location else []
    return "\n".join(heading + [render_line(line) for line in scene.lines])


def _render(episode: Episode, replaced: Counter[str] | None = None) -> str:
    blocks = [f"=== {episode.number}: {episode.title} ==="]
    blocks += [_render_scene(scene) for scene in episode.scenes if scene.lines or scene.location]
    return normalise_characters(SCENE_SEPARATOR.join(blocks), replaced) + "\n"


def render_episode(episode: Episode) -> str:
    """One episode in the training-text format described at the top of this module (ends with ``\\n``)."""
    return _render(episode)


# -------------------------------------------------------------------------------------------- the split


def _share(count: int, fraction: float) -> int:
    """How many of ``count`` episodes a split of ``fraction`` gets: at least one once there are three."""
    share = round(count * fraction)
    return max(share, 1) if fraction > 0 and count >= 3 else share


def _split_rank(number: int, seed: int) -> str:
    return hashlib.sha256(f"ds9-split:{seed}:{number}".encode()).hexdigest()


def split_episodes(
    numbers: Iterable[int],
    *,
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    seed: int = DEFAULT_SPLIT_SEED,
) -> dict[str, list[int]]:
    """Assign whole episodes to train, val and test; each list is sorted.

    Episodes are ranked by a hash of (seed, episode number): the result depends only on the numbers and
    the seed, never on their order or on Python's hash randomisation. The first ``val_fraction`` of the
    ranking is validation, the next ``test_fraction`` is test, the rest is training.
    """
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise ValueError(
            f"val_fraction={val_fraction} and test_fraction={test_fraction} must each be in [0, 1) and sum to "
            "less than 1, so that some episodes are left to train on"
        )
    ranked = sorted(set(numbers), key=lambda number: _split_rank(number, seed))
    n_val, n_test = _share(len(ranked), val_fraction), _share(len(ranked), test_fraction)
    if ranked and n_val + n_test >= len(ranked):
        raise ValueError(f"{len(ranked)} episodes are too few for these fractions: none would be left to train on")
    return {
        "train": sorted(ranked[n_val + n_test :]),
        "val": sorted(ranked[:n_val]),
        "test": sorted(ranked[n_val : n_val + n_test]),
    }


# ------------------------------------------------------------------------------------------ the build


@dataclass
class CorpusSummary:
    """What ``build_corpus`` made: sizes, the vocabulary, and everything it could not use as it was."""

    out_dir: Path
    episodes: int
    characters: int
    vocab_size: int
    unclassified_lines: int
    top_speakers: list[tuple[str, int]]
    replaced_characters: dict[str, int]
    split_episodes: dict[str, int]
    split_characters: dict[str, int]
    empty_pages: list[str] = field(default_factory=list)  # pages with no transcript in them, left out
    dropped_reasons: dict[str, str] = field(default_factory=dict)  # why each of empty_pages was left out

    def to_dict(self) -> dict:
        """A JSON-ready copy (the command line prints it)."""
        info = asdict(self)
        info["out_dir"] = str(self.out_dir)
        info["top_speakers"] = [[name, count] for name, count in self.top_speakers]
        return info


def _seasons_from_index(folder: Path) -> dict[int, int]:
    index = folder / "episodes.htm"
    if not index.exists():
        return {}
    return {
        link.number: link.season for link in parse_index(decode_page(index.read_bytes())) if link.season is not None
    }


def _episode_to_json(episode: Episode) -> str:
    record = {
        **vars(episode),
        "scenes": [
            {"location": scene.location, "lines": [vars(line) for line in scene.lines]} for scene in episode.scenes
        ],
    }
    return json.dumps(record, ensure_ascii=False)


def _episode_from_json(record: dict) -> Episode:
    scenes = [Scene(scene["location"], [Line(**line) for line in scene["lines"]]) for scene in record["scenes"]]
    return Episode(**{**record, "scenes": scenes, "parts": tuple(record["parts"])})


def build_corpus(
    pages_dir: Path | None = None,
    out_dir: Path | None = None,
    *,
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    seed: int = DEFAULT_SPLIT_SEED,
) -> CorpusSummary:
    """Parse every ``NNN.htm`` page in ``pages_dir`` and write the corpus files into ``out_dir``.

    Writes ``corpus.txt`` (every episode), ``train.txt``, ``val.txt``, ``test.txt``, ``split.json`` (the
    episode numbers of each split) and ``episodes.jsonl`` (the parsed episodes, one JSON object a line),
    each to a temporary name first and then renamed, so a reader never sees half a file.
    """
    pages_dir = Path(pages_dir) if pages_dir is not None else default_pages_dir()
    out_dir = Path(out_dir) if out_dir is not None else _default_corpus_dir()
    pages = sorted(pages_dir.glob("[0-9][0-9][0-9].htm"))
    if not pages:
        raise FileNotFoundError(f"no transcript pages (NNN.htm) in {pages_dir}; run `{DOWNLOAD_COMMAND}` first")
    seasons = _seasons_from_index(pages_dir)
    episodes: list[Episode] = []
    dropped: dict[str, str] = {}
    for page in pages:
        raw = page.read_bytes()
        try:
            episode = parse_episode(decode_page(raw), int(page.stem))
        except Exception as error:  # html.parser raises on some garbled markup (AssertionError up to 3.12)
            dropped[page.name] = f"not readable HTML ({type(error).__name__}); {REFETCH_HINT}"
            continue
        if not any(scene.lines for scene in episode.scenes):
            dropped[page.name] = f"no transcript line in its {len(raw):,} bytes; {REFETCH_HINT}"
            continue
        episode.season = seasons.get(episode.number)
        episodes.append(episode)
    if not episodes:
        raise ValueError(
            f"none of the {len(pages)} pages in {pages_dir} holds a transcript; delete them and run "
            f"`{DOWNLOAD_COMMAND}` again"
        )

    replaced: Counter[str] = Counter()
    texts = {episode.number: _render(episode, replaced) for episode in episodes}
    split = split_episodes(texts, val_fraction=val_fraction, test_fraction=test_fraction, seed=seed)
    corpus = "\n".join(texts.values())
    split_texts = {name: "\n".join(texts[number] for number in split[name]) for name in SPLIT_NAMES}

    out_dir.mkdir(parents=True, exist_ok=True)
    write_atomically(out_dir / "corpus.txt", corpus.encode("utf-8"))
    for name in SPLIT_NAMES:
        write_atomically(out_dir / f"{name}.txt", split_texts[name].encode("utf-8"))
    jsonl = "".join(_episode_to_json(episode) + "\n" for episode in episodes)
    write_atomically(out_dir / "episodes.jsonl", jsonl.encode("utf-8"))
    split_record = {"seed": seed, "val_fraction": val_fraction, "test_fraction": test_fraction, **split}
    write_atomically(out_dir / "split.json", (json.dumps(split_record, indent=1) + "\n").encode("utf-8"))

    speakers = Counter(line.speaker for episode in episodes for line in episode.lines if line.kind == "dialogue")
    return CorpusSummary(
        out_dir=out_dir,
        episodes=len(episodes),
        characters=len(corpus),
        vocab_size=len(set(corpus)),
        unclassified_lines=sum(len(episode.unclassified) for episode in episodes),
        top_speakers=speakers.most_common(20),
        replaced_characters=dict(replaced.most_common()),
        split_episodes={name: len(split[name]) for name in SPLIT_NAMES},
        split_characters={name: len(split_texts[name]) for name in SPLIT_NAMES},
        empty_pages=list(dropped),
        dropped_reasons=dropped,
    )


# ---------------------------------------------------------------------------------------- for notebooks


def _corpus_file(corpus_dir: Path | None, name: str) -> Path:
    folder = Path(corpus_dir) if corpus_dir is not None else _default_corpus_dir()
    path = folder / name
    if not path.exists():
        raise FileNotFoundError(
            f"{path} does not exist: the corpus is not built yet; run `{DOWNLOAD_COMMAND}` and then "
            f"`{BUILD_COMMAND}` (or call ds9_utils.workspace.setup_notebook())"
        )
    return path


def load_split(name: str = "train", corpus_dir: Path | None = None) -> str:
    """The training text of one split (``"train"``, ``"val"``, ``"test"``) or of them all (``"all"``)."""
    if name not in SPLIT_NAMES + ("all",):
        raise ValueError(f"unknown split {name!r}; choose one of {', '.join(SPLIT_NAMES + ('all',))}")
    filename = "corpus.txt" if name == "all" else f"{name}.txt"
    return _corpus_file(corpus_dir, filename).read_text(encoding="utf-8")


def load_episodes(corpus_dir: Path | None = None) -> list[Episode]:
    """The parsed episodes saved by ``build_corpus`` (with their seasons), for tables and plots."""
    path = _corpus_file(corpus_dir, "episodes.jsonl")
    with path.open(encoding="utf-8") as records:
        return [_episode_from_json(json.loads(record)) for record in records if record.strip()]
