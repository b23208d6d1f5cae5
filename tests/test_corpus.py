"""The corpus: the training text's format, its small vocabulary, the split by episode, and its files.

Small corpora are built here from pages written in the site's layout with original text; one test builds
the real corpus from the shared mirror (skipped where there is none).
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import pytest

from ds9_utils import corpus
from ds9_utils.__main__ import main
from ds9_utils.corpus import (
    FALLBACK_CHARACTER,
    build_corpus,
    load_episodes,
    load_split,
    normalise_characters,
    render_episode,
    split_episodes,
)
from ds9_utils.parse import Episode, Line, Scene, decode_page, parse_episode
from ds9_utils.settings import pages_dir

HEADER = re.compile(r"^=== (\d+): (.+) ===$", re.MULTILINE)


def page(title: str, body: str) -> bytes:
    """A transcript page in the site's layout (header, transcript table, footer), as cp1252 bytes."""
    return (
        f"<html><head><title>The Deep Space Nine Transcripts - {title}</title></head><body>\r\n"
        f"<p><font size=5><b>{title}</b></font><br>Stardate: Unknown<br>Original Airdate: 1 Jan, 2099</p>\r\n"
        f"<table><tr><td>{body}</td></tr></table>\r\n"
        "<p><font size=1>Footer: trademarks of their owners.</font></p></body></html>"
    ).encode("cp1252")


def index(numbers: list[int]) -> bytes:
    rows = "".join(
        f'<tr><td><a href="{n}.htm">Episode {n}</a></td><td>{n}</td><td>1 Jan, 2099</td></tr>' for n in numbers
    )
    return f"<html><body><h2>Season 7</h2><table>{rows}</table></body></html>".encode()


def write_site(folder: Path, count: int = 10) -> list[int]:
    """``count`` small episodes 901, 902, ... and an index, in a cache folder like the downloader's.

    The pages are Windows-1252 bytes, as many of the site's are: the apostrophe is byte 0x92, the dash 0x97.
    """
    folder.mkdir(parents=True, exist_ok=True)
    numbers = list(range(901, 901 + count))
    for n in numbers:
        body = (
            f"<p>Station log, stardate 99{n}.1. Nothing to report.</p>"
            f"<b>[Ops]</b><p>TARVEK: Episode {n} begins.<br>MELLIN [OC]: (distant) Copy that.<br>"
            f"(The doors open)</p><b>[Lemmo's shop]</b><p>LEMMO: It\u2019s {n} strips of latinum \u2014 final.</p>"
        )
        (folder / f"{n}.htm").write_bytes(page(f"Story {n}", body))
    (folder / "episodes.htm").write_bytes(index(numbers))
    return numbers


# ----------------------------------------------------------------------------------------------- the format


def test_rendered_episode_format():
    episode = Episode(
        number=901,
        title="The Invented Gambit",
        stardate=None,
        airdate=None,
        scenes=[
            Scene("", [Line("direction", None, "Station log, stardate 99101.5. All quiet.")]),
            Scene(
                "Ops",
                [
                    Line("dialogue", "KIRA", "The freighter is late again."),
                    Line("dialogue", "O'BRIEN", "Give me a minute.", parenthetical="from under the console"),
                    Line("dialogue", "DAX", "Dax to Ops.", modifier="OC"),
                    Line("dialogue", "TARVEK", "", parenthetical="sighs"),
                    Line("direction", None, "Kira taps her combadge"),
                ],
            ),
            Scene("Promenade", [Line("dialogue", "QUARK", "Customers!")]),
        ],
    )
    assert render_episode(episode) == (
        "=== 901: The Invented Gambit ===\n"
        "\n"
        "(Station log, stardate 99101.5. All quiet.)\n"
        "\n"
        "[Ops]\n"
        "KIRA: The freighter is late again.\n"
        "O'BRIEN: (from under the console) Give me a minute.\n"
        "DAX [OC]: Dax to Ops.\n"
        "TARVEK: (sighs)\n"
        "(Kira taps her combadge)\n"
        "\n"
        "[Promenade]\n"
        "QUARK: Customers!\n"
    )


def test_normalise_makes_typography_plain_and_counts_what_falls_back():
    replaced: Counter[str] = Counter()
    text = "\u201cCaf\u00e9\u201d \u2014 it\u2019s\u00a0\u00bd off\u2026  really \u03bb\u03bb \u2713 so\u00adft \n"
    assert normalise_characters(text, replaced) == '"Cafe" - it\'s 1/2 off... really ?? ? soft\n'
    assert replaced == {"\u03bb": 2, "\u2713": 1}
    assert FALLBACK_CHARACTER == "?"


def test_normalise_leaves_plain_ascii_alone_but_whitespace():
    assert normalise_characters("A  b\t c \nD ") == "A b c\nD"


# -------------------------------------------------------------------------------------------- the build


def test_build_writes_the_corpus_from_pages(tmp_path):
    numbers = write_site(tmp_path / "pages")
    summary = build_corpus(tmp_path / "pages", tmp_path / "corpus")
    corpus = (tmp_path / "corpus" / "corpus.txt").read_text(encoding="utf-8")

    assert [int(n) for n, _ in HEADER.findall(corpus)] == numbers
    assert corpus.startswith(
        "=== 901: Story 901 ===\n\n(Station log, stardate 99901.1. Nothing to report.)\n\n[Ops]\n"
        "TARVEK: Episode 901 begins.\nMELLIN [OC]: (distant) Copy that.\n(The doors open)\n\n"
        "[Lemmo's shop]\nLEMMO: It's 901 strips of latinum - final.\n\n=== 902: Story 902 ===\n"
    )
    assert "Footer" not in corpus and "\r" not in corpus and not re.search(r" $", corpus, re.MULTILINE)
    assert summary.episodes == 10 and summary.characters == len(corpus)
    assert summary.vocab_size == len(set(corpus))
    assert summary.unclassified_lines == 0 and summary.empty_pages == [] and summary.replaced_characters == {}
    assert dict(summary.top_speakers) == {"TARVEK": 10, "MELLIN": 10, "LEMMO": 10}
    assert summary.to_dict()["out_dir"] == str(tmp_path / "corpus")
    json.dumps(summary.to_dict())  # the command line prints it as JSON


def test_the_vocabulary_is_small_and_the_same_on_every_build(tmp_path):
    write_site(tmp_path / "pages")
    odd = "<b>[Ops]</b><p>TARVEK: Na\u00efve r\u00e9sum\u00e9 \u00bd \u03a9 \u2603.</p>".encode("utf-8")
    (tmp_path / "pages" / "950.htm").write_bytes(page("Odd", "").replace(b"<td></td>", b"<td>" + odd + b"</td>"))
    first = build_corpus(tmp_path / "pages", tmp_path / "one")
    second = build_corpus(tmp_path / "pages", tmp_path / "two")
    text = load_split("all", tmp_path / "one")
    assert set(text) <= set(chr(c) for c in range(0x20, 0x7F)) | {"\n"}
    assert "TARVEK: Naive resume 1/2 ? ?." in text
    assert first.replaced_characters == {"\u03a9": 1, "\u2603": 1}
    assert first.vocab_size == second.vocab_size == len(set(text))
    for name in ("corpus.txt", "train.txt", "val.txt", "test.txt", "split.json", "episodes.jsonl"):
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes(), name


def test_pages_without_a_transcript_are_left_out_and_listed(tmp_path):
    write_site(tmp_path / "pages", count=4)
    (tmp_path / "pages" / "960.htm").write_bytes(page("Under construction", ""))
    summary = build_corpus(tmp_path / "pages", tmp_path / "corpus")
    assert summary.episodes == 4 and summary.empty_pages == ["960.htm"]
    assert "960" not in load_split("all", tmp_path / "corpus")


def test_cli_corpus_names_each_page_it_leaves_out_and_why_on_stderr_and_in_its_json(tmp_path, monkeypatch, capsys):
    pages = pages_dir(tmp_path)
    write_site(pages, count=4)
    (pages / "960.htm").write_bytes(page("Under construction", ""))
    (pages / "961.htm").write_bytes(b"<html><table><tr><td>" * 3)

    def parse_or_fail(html: str, number: int) -> Episode:  # a page html.parser cannot read (it raises on some)
        if number == 961:
            raise AssertionError("expected name token")
        return parse_episode(html, number)

    monkeypatch.setattr(corpus, "parse_episode", parse_or_fail)
    assert main(["corpus", "--data-dir", str(tmp_path)]) == 0
    out, err = capsys.readouterr()
    reasons = json.loads(out.strip().splitlines()[-1])["dropped_reasons"]
    assert list(reasons) == ["960.htm", "961.htm"]
    assert reasons["960.htm"].startswith("no transcript line in its") and "download" in reasons["960.htm"]
    assert reasons["961.htm"].startswith("not readable HTML (AssertionError)")
    assert err.splitlines() == [f"warning: left {name} out of the corpus: {reason}" for name, reason in reasons.items()]


def test_build_errors_say_what_to_do(tmp_path):
    (tmp_path / "nothing").mkdir()
    with pytest.raises(FileNotFoundError, match=r"python -m ds9_utils download"):
        build_corpus(tmp_path / "nothing", tmp_path / "corpus")
    (tmp_path / "nothing" / "901.htm").write_bytes(page("Empty", ""))
    with pytest.raises(ValueError, match=r"none of the 1 pages.*python -m ds9_utils download"):
        build_corpus(tmp_path / "nothing", tmp_path / "corpus")
    assert not (tmp_path / "corpus").exists()


def test_files_are_replaced_atomically(tmp_path):
    """A rebuild renames complete new files into place: a reader holding an old file still reads all of it."""
    write_site(tmp_path / "pages", count=6)
    build_corpus(tmp_path / "pages", tmp_path / "corpus")
    old_text = (tmp_path / "corpus" / "corpus.txt").read_text(encoding="utf-8")
    with (tmp_path / "corpus" / "corpus.txt").open(encoding="utf-8") as reader:
        write_site(tmp_path / "pages", count=9)
        build_corpus(tmp_path / "pages", tmp_path / "corpus")
        assert reader.read() == old_text  # the old file, whole: it was never rewritten in place
    new_text = (tmp_path / "corpus" / "corpus.txt").read_text(encoding="utf-8")
    assert len(HEADER.findall(new_text)) == 9
    assert sorted(path.name for path in (tmp_path / "corpus").iterdir()) == sorted(
        ["corpus.txt", "train.txt", "val.txt", "test.txt", "split.json", "episodes.jsonl"]
    )  # no temporary files


# -------------------------------------------------------------------------------------------- the split


def test_split_is_by_episode_deterministic_and_disjoint():
    numbers = list(range(401, 576))
    split = split_episodes(numbers)
    assert split == split_episodes(reversed(numbers)) == split_episodes(numbers + numbers[:5])
    train, val, test = (set(split[name]) for name in ("train", "val", "test"))
    assert not (train & val or train & test or val & test)
    assert train | val | test == set(numbers)
    assert len(val) == len(test) == round(len(numbers) * 0.1)
    assert all(split[name] == sorted(split[name]) for name in split)
    assert split_episodes(numbers, seed=1) != split  # the seed, and only the seed, changes it


def test_split_keeps_at_least_one_episode_for_validation_and_test_once_there_are_three():
    assert [len(part) for part in split_episodes([1, 2, 3]).values()] == [1, 1, 1]
    assert split_episodes([7, 8]) == {"train": [7, 8], "val": [], "test": []}


@pytest.mark.parametrize("fractions", [(0.5, 0.5), (-0.1, 0.1), (1.0, 0.0)])
def test_split_refuses_fractions_that_leave_nothing_to_train_on(fractions):
    with pytest.raises(ValueError, match="left to train on"):
        split_episodes(range(100), val_fraction=fractions[0], test_fraction=fractions[1])


def test_split_files_hold_whole_episodes(tmp_path):
    write_site(tmp_path / "pages", count=12)
    summary = build_corpus(tmp_path / "pages", tmp_path / "corpus")
    record = json.loads((tmp_path / "corpus" / "split.json").read_text())
    in_files = {
        name: [int(n) for n, _ in HEADER.findall(load_split(name, tmp_path / "corpus"))]
        for name in ("train", "val", "test")
    }
    assert in_files == {name: record[name] for name in ("train", "val", "test")}
    assert sorted(sum(in_files.values(), [])) == list(range(901, 913))
    assert summary.split_episodes == {name: len(numbers) for name, numbers in in_files.items()}
    assert sum(summary.split_characters.values()) + 2 == summary.characters  # the splits are joined by "\n"


# ------------------------------------------------------------------------------------------ for notebooks


def test_load_split_errors_say_what_to_do(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"python -m ds9_utils download.*python -m ds9_utils corpus"):
        load_split("train", tmp_path / "no-corpus")
    with pytest.raises(FileNotFoundError, match="setup_notebook"):
        load_episodes(tmp_path / "no-corpus")
    write_site(tmp_path / "pages", count=3)
    build_corpus(tmp_path / "pages", tmp_path / "corpus")
    with pytest.raises(ValueError, match="train, val, test, all"):
        load_split("validation", tmp_path / "corpus")


def test_load_episodes_gives_back_the_parsed_episodes_with_seasons(tmp_path):
    write_site(tmp_path / "pages", count=3)
    build_corpus(tmp_path / "pages", tmp_path / "corpus")
    episodes = load_episodes(tmp_path / "corpus")
    expected = parse_episode(decode_page((tmp_path / "pages" / "902.htm").read_bytes()), 902)
    expected.season = 7
    assert [episode.number for episode in episodes] == [901, 902, 903]
    assert episodes[1] == expected


def test_the_real_corpus(mirror_dir, tmp_path):
    summary = build_corpus(mirror_dir / "DS9", tmp_path)
    corpus = load_split("all", tmp_path)
    assert summary.episodes == 165 and summary.empty_pages == []
    assert summary.vocab_size == len(set(corpus)) <= 96
    assert summary.split_episodes == {"train": 133, "val": 16, "test": 16}
    seasons = Counter(episode.season for episode in load_episodes(tmp_path))
    assert sorted(seasons) == [1, 2, 3, 4, 5, 6, 7]
    headers = [int(n) for n, _ in HEADER.findall(corpus)]
    assert headers == sorted(headers) and len(headers) == 165
    speakers = dict(summary.top_speakers)
    assert {"SISKO", "KIRA", "ODO", "QUARK", "BASHIR", "DAX", "O'BRIEN"} <= set(speakers)
