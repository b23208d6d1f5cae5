"""The parser, on the whole mirror of the site and on small pages written here in the site's layout.

The small pages hold original text (nothing copied from the transcripts) and one quirk of the real pages
each, so a failure names the quirk. Downloading, the cache and refusing to follow ``../../x.htm`` while
downloading are tested in ``test_download.py``; here ``parse_index`` itself is tested.
"""

from __future__ import annotations

import html
import re
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ds9_utils.parse import Episode, Line, decode_page, parse_episode, parse_index

# At most this many lines of the whole mirror may be neither a heading, a speaker line nor a direction.
MAX_UNCLASSIFIED_LINES = 10
# At most this many words of the transcript tables may be missing from the parsed episodes (a stray
# time stamp before a heading, say); each one is printed.
MAX_MISSING_WORDS = 10

WORD = re.compile(r"[A-Za-z0-9]+")


# ------------------------------------------------------------------------------------------ the whole mirror


@pytest.fixture(scope="module")
def mirror_episodes(mirror_dir: Path) -> list[tuple[str, str, Episode]]:
    """Every transcript page of the mirror: (file name, decoded HTML, parsed episode)."""
    pages = sorted((mirror_dir / "DS9").glob("[0-9][0-9][0-9].htm"))
    parsed = []
    for page in pages:
        text = decode_page(page.read_bytes())
        parsed.append((page.name, text, parse_episode(text, int(page.stem))))
    return parsed


def table_words(page: str) -> Counter[str]:
    """The words inside the transcript table, found without the parser: tags out, entities decoded."""
    start = re.search(r"<table\b", page, re.IGNORECASE).start()
    end = page.lower().rfind("</table>")
    region = re.sub(r"<!--.*?-->", "", page[start:end], flags=re.DOTALL)
    region = re.sub(r"(?i)</?(?:br|p|div|td|tr|tbody|table|center)\b[^>]*>", " ", region)
    region = re.sub(r"<[^>]*>", "", region)
    return Counter(WORD.findall(html.unescape(region)))


def parsed_words(episode: Episode) -> Counter[str]:
    parts = list(episode.unclassified)
    for scene in episode.scenes:
        parts.append(scene.location)
        for line in scene.lines:
            parts += [line.speaker or "", line.modifier or "", line.parenthetical or "", line.text]
    return Counter(WORD.findall(" ".join(parts)))


def test_mirror_every_table_line_is_a_heading_a_speaker_line_or_a_direction(mirror_episodes):
    assert len(mirror_episodes) == 165
    unclassified = [(name, text) for name, _, episode in mirror_episodes for text in episode.unclassified]
    for name, text in unclassified:
        print(f"unclassified in {name}: {text!r}")  # shown by pytest -rA or on failure
    assert len(unclassified) <= MAX_UNCLASSIFIED_LINES, unclassified

    for name, _, episode in mirror_episodes:
        assert episode.title and episode.airdate, name
        assert sum(len(scene.lines) for scene in episode.scenes) > 100, name
        headings = [scene.location for scene in episode.scenes[1:]]
        assert all(headings), f"{name}: a scene after the first has no location"
        for line in episode.lines:
            if line.kind == "dialogue":
                assert line.speaker and (line.speaker[0].isupper() or line.speaker[0].isdigit()), (name, line)
                assert line.text or line.parenthetical, (name, line)
            else:
                assert line.kind == "direction" and line.speaker is None and line.text, (name, line)


def test_mirror_no_words_of_the_transcripts_are_lost(mirror_episodes):
    """Every word in a transcript table is in the parsed episode: nothing is dropped on the way."""
    missing_total = 0
    for name, page, episode in mirror_episodes:
        expected, found = table_words(page), parsed_words(episode)
        missing = expected - found
        if missing:
            print(f"words missing from {name}: {dict(missing)}")
        missing_total += sum(missing.values())
        # Extra words can only be speakers' names: a continued speech repeats its speaker.
        speaker_words = {word for line in episode.lines if line.speaker for word in WORD.findall(line.speaker)}
        assert set(found - expected) <= speaker_words, (name, found - expected)
    assert missing_total <= MAX_MISSING_WORDS


def test_mirror_two_part_pages_say_so(mirror_episodes):
    parts = {episode.number: episode.parts for _, _, episode in mirror_episodes}
    assert parts[401] == (401, 402) and parts[473] == (473, 474) and parts[403] == (403,)


# ------------------------------------------------------------------------------------ small pages, one quirk


def site_page(
    body: str,
    *,
    title: str = "The Invented Gambit",
    stardate: str = "99101.5",
    airdate: str = "4 Jan, 2099",
    footer: str | None = None,
) -> str:
    """A transcript page in the site's layout: header, one transcript table, footer."""
    footer = (
        footer
        if footer is not None
        else (
            '<p><font size="2"><a href="episodes.htm">&lt;Back to the episode listing</a></font></p>'
            '<p><font size="1">Footer words: trademarks, copyright, a link.</font></p>'
        )
    )
    return (
        f"<html><head><title>The Deep Space Nine Transcripts - {title}</title></head><body>\n"
        f'<p><font size="5"><b>{title}</b></font><br>\n'
        f'<font size="2">Stardate: {stardate}<br>\nOriginal Airdate: {airdate}<br></font></p>\n'
        f'<div align="center"><center><table border="0"><tbody><tr><td>\n{body}\n'
        f"</td></tr></tbody></table></center></div>\n{footer}\n</body></html>"
    )


def parse(body: str, **header) -> Episode:
    return parse_episode(site_page(body, **header), 901)


def only_scene(episode: Episode):
    assert len(episode.scenes) == 1, episode.scenes
    return episode.scenes[0]


def test_decode_mixes_utf8_and_cp1252_bytes():
    raw = "Caf\u00e9 menu: ".encode("utf-8") + b"\x93hot\x94 soup, chef\x92s choice \x85 " + "\u2014 ok".encode()
    assert decode_page(raw) == "Caf\u00e9 menu: \u201chot\u201d soup, chef\u2019s choice \u2026 \u2014 ok"


def test_decode_bytes_undefined_in_cp1252_fall_back_to_latin1_and_bom_is_dropped():
    assert decode_page(b"\xef\xbb\xbfA\x81B\x9dC") == "A\x81B\x9dC"


def test_decode_makes_every_line_end_a_newline():
    assert decode_page(b"one\r\ntwo\rthree\nfour\r\r\nfive") == "one\ntwo\nthree\nfour\n\nfive"


def plain_line_ends(text: str) -> str:
    return text.removeprefix("\ufeff").replace("\r\n", "\n").replace("\r", "\n")


@given(st.text(st.characters(blacklist_categories=("Cs",))))
def test_decode_reads_any_utf8_page_as_utf8(text):
    assert decode_page(text.encode("utf-8")) == plain_line_ends(text)


# Characters whose Windows-1252 byte (0x80-0xBF) can only continue a UTF-8 sequence, never start one, so a
# page written in Windows-1252 with them must come back exactly.
CP1252_ONLY = "\u20ac\u2026\u2018\u2019\u201c\u201d\u2013\u2014\u2122\u00a0\u00a9\u00ae\u00bd"


@given(st.text(st.sampled_from(CP1252_ONLY) | st.characters(max_codepoint=127)))
def test_decode_reads_a_windows_1252_page_as_windows_1252(text):
    assert decode_page(text.encode("cp1252")) == plain_line_ends(text)


@given(st.binary())
def test_decode_never_fails_and_never_leaves_a_carriage_return(raw):
    text = decode_page(raw)
    assert "\r" not in text and len(text) <= len(raw)


def test_header_gives_title_stardate_airdate_and_the_footer_is_ignored():
    episode = parse("<b>[Cargo bay]</b><p>LEMMO: The crates are here. <br>(He counts them)</p>")
    assert (episode.number, episode.title, episode.stardate, episode.airdate) == (
        901,
        "The Invented Gambit",
        "99101.5",
        "4 Jan, 2099",
    )
    scene = only_scene(episode)
    assert scene.location == "Cargo bay"
    assert scene.lines == [Line("dialogue", "LEMMO", "The crates are here."), Line("direction", None, "He counts them")]
    assert episode.unclassified == []
    assert "Footer" not in repr(episode) and "Back to" not in repr(episode)


def test_unknown_stardate_is_none():
    episode = parse("<b>[Ops]</b><p>TARVEK: Hello.</p>", stardate="Unknown")
    assert episode.stardate is None and episode.airdate == "4 Jan, 2099"


def test_crlf_and_cr_line_ends_and_br_lines():
    body = (
        "<b>[Ops]</b>\r\n<p>TARVEK: First line, which the transcriber\r\nwrapped in the source. <br>\r"
        "MELLIN: Second line.<br/>\r\n(A panel beeps)<BR>\rTARVEK: Third.</p>"
    )
    page = site_page(body).encode("ascii")
    scene = only_scene(parse_episode(decode_page(page), 901))
    assert [(line.speaker, line.text) for line in scene.lines] == [
        ("TARVEK", "First line, which the transcriber wrapped in the source."),
        ("MELLIN", "Second line."),
        (None, "A panel beeps"),
        ("TARVEK", "Third."),
    ]


def test_a_page_that_mixes_utf8_and_windows_1252_bytes():
    body = (
        "<b>[Caf\u00e9]</b><p>TARVEK: It\u2019s the chef\u2019s special.<br>".encode("utf-8")
        + b"MELLIN: It\x92s \x93special\x94 \x97 again.</p>"
    )
    page = site_page("BODY").encode("ascii").replace(b"BODY", body)
    scene = only_scene(parse_episode(decode_page(page), 901))
    assert scene.location == "Caf\u00e9"
    assert [line.text for line in scene.lines] == [
        "It\u2019s the chef\u2019s special.",
        "It\u2019s \u201cspecial\u201d \u2014 again.",
    ]


def test_bold_headings_and_mistyped_brackets():
    body = (
        "<b>[Ops]</b><p>TARVEK: One.</p>"
        "<p><b>{Promenade]</b></p><p>MELLIN: Two.</p>"
        "<p><b>Cargo bay]</b></p><p>MELLIN: Three.</p>"
        "<p><strong>[Lemmo's shop - back room}</strong></p><p>LEMMO: Four.</p>"
    )
    episode = parse(body)
    assert [scene.location for scene in episode.scenes] == ["Ops", "Promenade", "Cargo bay", "Lemmo's shop - back room"]
    assert [len(scene.lines) for scene in episode.scenes] == [1, 1, 1, 1]


def test_a_bracketed_line_not_in_bold_is_a_heading_too():
    episode = parse("<p>[Runabout]<br>TARVEK: Course laid in.</p>")
    assert only_scene(episode).location == "Runabout"


def test_speaker_modifiers_even_mistyped():
    body = (
        "<b>[Ops]</b><p>DAX [OC]: Go ahead.<br>TARVEK [on viewscreen]: Hail them.<br>"
        "MELLIN [OC}: Mistyped mark.<br>LEMMO {OC]: Also mistyped.<br>DABO GIRL: A name of two words.</p>"
    )
    lines = only_scene(parse(body)).lines
    assert [(line.speaker, line.modifier, line.text) for line in lines] == [
        ("DAX", "OC", "Go ahead."),
        ("TARVEK", "on viewscreen", "Hail them."),
        ("MELLIN", "OC", "Mistyped mark."),
        ("LEMMO", "OC", "Also mistyped."),
        ("DABO GIRL", None, "A name of two words."),
    ]


def test_parentheticals_and_directions():
    body = (
        "<b>[Ops]</b><p>TARVEK: (quietly) Not now.<br>MELLIN (turning): Why not?<br>"
        "TARVEK: (sighs)<br>(The lights dim.)<br>Mellin walks to the door)<br>"
        "(A long silence</p>"
    )
    lines = only_scene(parse(body)).lines
    assert lines[0] == Line("dialogue", "TARVEK", "Not now.", "quietly")
    assert lines[1] == Line("dialogue", "MELLIN", "Why not?", "turning")
    assert lines[2] == Line("dialogue", "TARVEK", "", "sighs")
    assert [line.text for line in lines[3:]] == ["The lights dim.", "Mellin walks to the door", "A long silence"]
    assert all(line.kind == "direction" and line.speaker is None for line in lines[3:])


def test_log_entries_and_italic_captions_are_directions():
    body = (
        "<p>Station log, stardate 99101.5. The replicators are late again.</p>"
        "<b>[Ops]</b><p>TARVEK: Noted.<br><i>Three weeks later</i></p>"
    )
    episode = parse(body)
    opening, ops = episode.scenes
    assert opening.location == "" and opening.lines == [
        Line("direction", None, "Station log, stardate 99101.5. The replicators are late again.")
    ]
    assert ops.lines[1] == Line("direction", None, "Three weeks later")


def test_stray_tags_are_ignored_and_entities_decoded_inside_text():
    # The site has the odd mistyped tag (<nr>, <r>) before a real <br>: it must neither break nor end a line.
    body = (
        "<b>[Ops]</b><p><font size=2>TARVEK: Half <span>a</span> sen<font>tence</font>.</font> <nr>\n<br>"
        "MELLIN: Trade &amp; profit, and it&#146;s 3 &lt; 4 &lt;b&gt;honestly.<r><br>"
        "<a href='x'>LEMMO</a>: Linked name.</p>"
    )
    lines = only_scene(parse(body)).lines
    assert [(line.speaker, line.text) for line in lines] == [
        ("TARVEK", "Half a sentence."),
        ("MELLIN", "Trade & profit, and it\u2019s 3 < 4 <b>honestly."),
        ("LEMMO", "Linked name."),
    ]


def test_a_speech_continued_on_a_new_line_keeps_its_speaker():
    body = "<b>[Ops]</b><p>TARVEK [OC]: The first half of a long speech<br>and its second half.</p>"
    lines = only_scene(parse(body)).lines
    assert [(line.speaker, line.modifier, line.text) for line in lines] == [
        ("TARVEK", "OC", "The first half of a long speech"),
        ("TARVEK", "OC", "and its second half."),
    ]


def test_a_known_speaker_without_a_colon_is_still_a_speaker():
    body = "<b>[Ops]</b><p>TARVEK: Report.<br>MELLIN: All quiet.<br>TARVEK [OC] Where are you?</p>"
    lines = only_scene(parse(body)).lines
    assert lines[-1] == Line("dialogue", "TARVEK", "Where are you?", None, "OC")


def test_plain_text_with_nothing_before_it_is_reported_not_dropped():
    body = "<b>[Ops]</b><p>Nobody says this and it is no direction.<br>TARVEK: Then who does?</p>"
    episode = parse(body)
    assert episode.unclassified == ["Nobody says this and it is no direction."]
    assert [line.text for line in episode.lines] == ["Then who does?"]


def test_a_page_without_a_transcript_has_no_lines():
    episode = parse("")
    assert episode.lines == [] and episode.unclassified == [] and episode.title == "The Invented Gambit"


def test_two_part_page_numbers():
    assert parse_episode(site_page("<b>[Ops]</b><p>A: b</p>"), 401).parts == (401, 402)
    assert parse("<b>[Ops]</b><p>TARVEK: Hi.</p>").parts == (901,)


def test_parse_index_reads_seasons_and_rows_and_ignores_links_outside_the_folder():
    index = """<html><body>
    <h2>Season 1</h2>
    <table>
      <tr><td><b>Episode Name</b></td><td><b>Production</b></td><td><b>Airdate</b></td></tr>
      <tr><td><a href="901.htm">The Invented Gambit</a></td><td>901</td><td>4 Jan, 2099</td></tr>
      <tr><td><a href="../../x.htm">Escape</a></td><td>x</td><td>never</td></tr>
      <tr><td><a href="/etc/passwd">Root</a></td><td>0</td><td>never</td></tr>
      <tr><td><a href="http://example.invalid/999.htm">Elsewhere</a></td><td>999</td><td>never</td></tr>
      <tr><td><a href="sub/903.htm">Sub folder</a></td><td>903</td><td>never</td></tr>
    </table>
    <h2>Season  2</h2>
    <table>
      <tr><td><font><a href="902.htm">A Second
      Title</a></font></td><td>902</td><td>11 Jan, 2099</td></tr>
    </table></body></html>"""
    links = parse_index(index)
    assert [(link.number, link.href, link.title, link.production, link.airdate, link.season) for link in links] == [
        (901, "901.htm", "The Invented Gambit", "901", "4 Jan, 2099", 1),
        (902, "902.htm", "A Second Title", "902", "11 Jan, 2099", 2),
    ]


def test_parse_index_of_a_page_without_links_is_empty():
    assert parse_index("<html><body><p>No episodes today.</p></body></html>") == []
