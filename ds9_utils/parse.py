"""Turn the transcript pages of chakoteya.net into structured episodes: scenes made of lines.

The pages are hand-made HTML from the late 1990s, so this module is mostly about being forgiving:

1. ``decode_page`` turns the bytes into text. Most pages mix UTF-8 with stray Windows-1252 bytes in one
   file, so no single codec reads them; we decode every valid UTF-8 sequence as UTF-8 and every other byte
   as Windows-1252, and make all line ends ``\\n``.
2. ``parse_index`` reads the episode listing, ``episodes.htm``.
3. ``parse_episode`` reads one transcript page. The header (title, stardate, airdate) comes before the
   transcript table, the footer after it; only the table is transcript. Its text is cut into lines at
   ``<br>`` and paragraph boundaries (a source line break inside a paragraph is only word wrapping), and
   each line is classified:

   - a **scene heading**: a line set entirely in bold, such as ``[Ops]``, or ``[Location]`` alone on a line.
     Its brackets are dropped, also the mistyped ones (``{Promenade]``, ``Ops]``), and so is a stray time
     stamp before them (``13.24 [O'Brien's quarters]``, once in the mirror).
   - a **speaker line**: ``NAME: text``, where the name is in capitals and may hold spaces, apostrophes,
     dots, hyphens, digits and a mark in brackets: ``DAX [OC]: ...`` keeps speaker ``DAX`` and modifier
     ``OC``. A leading ``(aside)`` becomes the line's parenthetical.
   - a **direction**: anything in parentheses, also when one of them is missing, as in
     ``Odo drags Jaheel to his feet)``. Two kinds of text without parentheses count as directions too,
     because they are not spoken by a named character on screen: log entries read as a voice-over
     (``Station log, stardate 46425.8. ...``, ``Captain's log, supplemental. ...``) and captions set
     entirely in italics (the opening crawl, ``To be continued...``). A direction's text is stored without
     its outer parentheses.

   Lines before the first heading belong to an opening scene whose location is ``""``. A line that is
   none of the three is kept in ``Episode.unclassified``, never dropped silently.

HTML entities (``&amp;``, ``&#146;``) are unescaped by ``html.parser`` inside text only, after the tags are
recognised, so an escaped ``&lt;`` in the text can never be mistaken for a tag.
"""

from __future__ import annotations

import codecs
import re
from dataclasses import dataclass, field
from html.parser import HTMLParser
from typing import Literal

# Pages that hold two episodes: the index links the first number only, the page tells the whole story.
TWO_PART_PAGES: dict[int, tuple[int, ...]] = {401: (401, 402), 473: (473, 474)}

# ---------------------------------------------------------------------------------------------- decoding

_CP1252_FALLBACK = "ds9-cp1252-fallback"


def _byte_as_cp1252(byte: int) -> str:
    """One byte as Windows-1252; the five bytes that code page leaves undefined fall back to Latin-1."""
    try:
        return bytes([byte]).decode("cp1252")
    except UnicodeDecodeError:
        return bytes([byte]).decode("latin-1")


def _decode_invalid_utf8_as_cp1252(error: UnicodeError) -> tuple[str, int]:
    """A codec error handler: replace the first byte that is not valid UTF-8, then resume after it."""
    if not isinstance(error, UnicodeDecodeError):
        raise error
    return _byte_as_cp1252(error.object[error.start]), error.start + 1


codecs.register_error(_CP1252_FALLBACK, _decode_invalid_utf8_as_cp1252)


def decode_page(raw: bytes) -> str:
    """Decode a page that mixes UTF-8 and Windows-1252 bytes, with every line end made ``\\n``.

    Valid UTF-8 sequences are read as UTF-8 (``é`` as two bytes), every other byte as Windows-1252
    (``\\x92`` is a right quote). Entities are left alone: the HTML parser unescapes them inside text.
    """
    text = raw.decode("utf-8", errors=_CP1252_FALLBACK)
    text = text.removeprefix("\ufeff")
    return text.replace("\r\n", "\n").replace("\r", "\n")


# ----------------------------------------------------------------------------------------- the records


@dataclass
class EpisodeLink:
    """One row of the episode index: the page to fetch and what the index says about it."""

    number: int
    href: str
    title: str
    production: str
    airdate: str
    season: int | None


@dataclass
class Line:
    """One line of a scene: what a character says, or a direction (action, log narration, caption)."""

    kind: Literal["dialogue", "direction"]
    speaker: str | None
    text: str
    parenthetical: str | None = None
    modifier: str | None = None  # a mark beside the speaker's name: "OC" (off camera), "on viewscreen", ...


@dataclass
class Scene:
    """A location heading and the lines that follow it."""

    location: str
    lines: list[Line] = field(default_factory=list)


@dataclass
class Episode:
    """One transcript page, parsed. ``parts`` lists both episode numbers of a two-part page."""

    number: int
    title: str
    stardate: str | None
    airdate: str | None
    scenes: list[Scene]
    unclassified: list[str] = field(default_factory=list)
    season: int | None = None
    parts: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if not self.parts:
            self.parts = TWO_PART_PAGES.get(self.number, (self.number,))

    @property
    def lines(self) -> list[Line]:
        """Every line of every scene, in order."""
        return [line for scene in self.scenes for line in scene.lines]


# ------------------------------------------------------------------------------------------ HTML reading

# Tags after which the text on the page starts a new line. Everything else (font, a, span, and the odd
# mistyped <nr> or <r>) is ignored; source line breaks are plain spaces.
_BREAKING_TAGS = {
    "br",
    "p",
    "div",
    "center",
    "table",
    "tbody",
    "tr",
    "td",
    "th",
    "h1",
    "h2",
    "h3",
    "h4",
    "h5",
    "h6",
    "li",
    "ul",
    "ol",
    "body",
    "hr",
}


@dataclass
class _SourceLine:
    """A line of page text before classification, and whether all of it was set in bold or in italics."""

    text: str
    bold: bool
    italic: bool


class _PageReader(HTMLParser):
    """Collects a page's text as lines, in three regions: before, inside and after the first table."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.regions: dict[str, list[_SourceLine]] = {"header": [], "table": [], "footer": []}
        self.region = "header"
        self.title_tag = ""
        self._in_title = False
        self._table_depth = 0
        self._bold = 0
        self._italic = 0
        self._pieces: list[tuple[str, bool, bool]] = []  # (text, bold, italic) since the last line break

    def _break_line(self) -> None:
        text = " ".join("".join(piece for piece, _, _ in self._pieces).split())
        if text:
            visible = [piece for piece in self._pieces if piece[0].strip()]
            bold = all(is_bold for _, is_bold, _ in visible)
            italic = all(is_italic for _, _, is_italic in visible)
            self.regions[self.region].append(_SourceLine(text, bold, italic))
        self._pieces = []

    def _enter_region(self, region: str) -> None:
        self._break_line()
        self.region = region

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "table":
            self._table_depth += 1
            if self.region == "header":
                self._enter_region("table")
        elif tag in ("b", "strong"):
            self._bold += 1
        elif tag in ("i", "em"):
            self._italic += 1
        elif tag == "title":
            self._in_title = True
        if tag in _BREAKING_TAGS:
            self._break_line()

    def handle_endtag(self, tag: str) -> None:
        if tag in _BREAKING_TAGS:
            self._break_line()
        if tag == "table" and self._table_depth:
            self._table_depth -= 1
            if self._table_depth == 0 and self.region == "table":
                self._enter_region("footer")
        elif tag in ("b", "strong"):
            self._bold = max(0, self._bold - 1)
        elif tag in ("i", "em"):
            self._italic = max(0, self._italic - 1)
        elif tag == "title":
            self._in_title = False

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _BREAKING_TAGS:
            self._break_line()

    def handle_data(self, data: str) -> None:
        if self._in_title:
            self.title_tag += data
            return
        self._pieces.append((data, self._bold > 0, self._italic > 0))

    def close(self) -> None:
        super().close()
        self._break_line()


def _read_page(html: str) -> _PageReader:
    reader = _PageReader()
    reader.feed(html)
    reader.close()
    return reader


# --------------------------------------------------------------------------------------------- the index

_PAGE_HREF = re.compile(r"^(\d{3})\.htm$")
_SEASON = re.compile(r"^Season\s+(\d+)$", re.IGNORECASE)


class _IndexReader(HTMLParser):
    """Reads the index table row by row, noting the season heading each row falls under."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.links: list[EpisodeLink] = []
        self._season: int | None = None
        self._heading: str | None = None
        self._cells: list[str] | None = None
        self._href: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in ("h1", "h2", "h3", "h4"):
            self._heading = ""
        elif tag == "tr":
            self._cells, self._href = [], None
        elif tag == "td" and self._cells is not None:
            self._cells.append("")
        elif tag == "a" and self._cells is not None and self._href is None:
            href = dict(attrs).get("href") or ""
            if _PAGE_HREF.match(href):
                self._href = href

    def handle_endtag(self, tag: str) -> None:
        if tag in ("h1", "h2", "h3", "h4") and self._heading is not None:
            season = _SEASON.match(" ".join(self._heading.split()))
            if season:
                self._season = int(season.group(1))
            self._heading = None
        elif tag == "tr" and self._cells is not None:
            self._finish_row()

    def handle_data(self, data: str) -> None:
        if self._heading is not None:
            self._heading += data
        elif self._cells:
            self._cells[-1] += data

    def _finish_row(self) -> None:
        cells = [" ".join(cell.split()) for cell in self._cells or []]
        if self._href is not None:
            cells += [""] * (3 - len(cells))
            number = int(_PAGE_HREF.match(self._href).group(1))
            self.links.append(EpisodeLink(number, self._href, cells[0], cells[1], cells[2], self._season))
        self._cells, self._href = None, None


def parse_index(html: str) -> list[EpisodeLink]:
    """The episodes that ``episodes.htm`` links, in page order.

    Only links of the exact form ``NNN.htm`` count; a path (``../../x.htm``), an absolute URL or any other
    link is ignored, so nothing the index says can send a download outside the site's ``DS9/`` folder.
    """
    reader = _IndexReader()
    reader.feed(html)
    reader.close()
    return reader.links


# -------------------------------------------------------------------------------------- one transcript

# A speaker's name: a first word in capitals, then up to four more words ("DABO GIRL", "WORF + MARTOK",
# "O'BRIEN et al"). Then an optional mark in brackets, however mistyped ("[OC]", "[OC}", "{OC]", "[OC"),
# an optional aside in parentheses, and the colon.
_NAME = r"[A-Z0-9][A-Z0-9'.&+/-]*(?:\s+[A-Za-z0-9'.&+/-]+){0,4}?"
_SPEAKER = re.compile(
    rf"""^(?P<name>{_NAME})
        \s*(?:[\[{{](?P<modifier>[^\]}}:]*)[\]}}]?)?
        \s*(?:\((?P<aside>[^()]*)\))?
        \s*:\s*(?P<text>.*)$""",
    re.VERBOSE,
)
# What may follow a known name when the colon is missing: a mark, then text ("NOG [on monitor] Knows").
_AFTER_NAME_WITHOUT_COLON = re.compile(
    r"""^(?:\s*[\[{](?P<modifier>[^\]}:]*)[\]}]?)?
        (?:\s*[@;]\s*|\s+)(?P<text>.*)$""",
    re.VERBOSE,
)
_LEADING_PARENTHETICAL = re.compile(r"^\((?P<aside>[^()]*)\)\s*(?P<rest>.*)$")
_STRAY_LEADING_PUNCTUATION = re.compile(r"^[.,;)\]]+\s*")
_BRACKETED_HEADING = re.compile(r"^[\d\s.:]*\[(?P<location>[^\[\]]+)\]$")
# Voice-over narration that names no speaker: "Station log, stardate ...", "Kira Nerys, personal log, ...",
# "Permanent Documentation File, Dukat, SG. ...", and a dedication ("In memory of ...").
_NARRATION = re.compile(r"^(?:(?:[\w'.-]+,?\s+){0,4}(?:log|documentation file)\b|in memory of\b)", re.IGNORECASE)
_HEADING_BRACKETS = "[]{}() "


def _speaker_name(raw: str) -> str:
    return " ".join(raw.split()).rstrip(".")


def _dialogue(name: str, match: re.Match[str]) -> Line:
    """A speaker line from the name and a match that holds the text, a modifier and perhaps an aside."""
    spoken = match.group("text").strip()
    parenthetical = match.groupdict().get("aside")
    leading = _LEADING_PARENTHETICAL.match(spoken)
    if parenthetical is None and leading:
        parenthetical, spoken = leading.group("aside"), leading.group("rest")
    modifier = match.group("modifier")
    return Line(
        "dialogue",
        name,
        spoken.strip(),
        " ".join(parenthetical.split()) if parenthetical is not None else None,
        " ".join(modifier.split()) if modifier else None,
    )


def _speaker_line(text: str, known_speakers: list[str]) -> Line | None:
    """``NAME: text``, or a name this page already used (longest first) followed by text without the colon."""
    match = _SPEAKER.match(text)
    if match:
        return _dialogue(_speaker_name(match.group("name")), match)
    for name in known_speakers:
        if text.startswith(name):
            rest = _AFTER_NAME_WITHOUT_COLON.match(text[len(name) :])
            if rest:
                return _dialogue(name, rest)
    return None


def _direction(source: _SourceLine, text: str) -> Line | None:
    """Text in parentheses (either may be missing), log narration, or a caption set in italics."""
    if text.startswith("(") or text.endswith(")"):
        return Line("direction", None, text.removeprefix("(").removesuffix(")").strip())
    if _NARRATION.match(text) or source.italic:
        return Line("direction", None, text)
    return None


def _heading(source: _SourceLine, text: str) -> str | None:
    """The location of a scene heading: a bold line, or ``[Location]`` on a line of its own."""
    if source.bold:
        return text.strip(_HEADING_BRACKETS)
    match = _BRACKETED_HEADING.match(text)
    return match.group("location").strip() if match else None


def _known_speakers(lines: list[_SourceLine]) -> list[str]:
    """The names that speak with a colon somewhere on the page, longest first (one-letter names left out)."""
    names = set()
    for source in lines:
        match = _SPEAKER.match(source.text)
        if match:
            names.add(_speaker_name(match.group("name")))
    return sorted((name for name in names if len(name) > 1), key=lambda name: (-len(name), name))


def _split_into_scenes(lines: list[_SourceLine]) -> tuple[list[Scene], list[str]]:
    """Classify each line of the transcript table and group the lines into scenes.

    A line of plain text continues what came just before it in its scene: after a speech it is more of
    that speech (the transcriber broke a long speech in two), after a direction it is more description
    (a montage of images). Plain text with nothing before it in its scene is reported as unclassified.
    """
    known_speakers = _known_speakers(lines)
    scenes: list[Scene] = []
    unclassified: list[str] = []
    for source in lines:
        text = _STRAY_LEADING_PUNCTUATION.sub("", source.text)
        location = _heading(source, text)
        if location is not None:
            scenes.append(Scene(location))
            continue
        line = _speaker_line(text, known_speakers) or _direction(source, text)
        if line is None and scenes and scenes[-1].lines:
            previous = scenes[-1].lines[-1]
            line = Line(previous.kind, previous.speaker, text, None, previous.modifier)
        if line is None:
            unclassified.append(source.text)
            continue
        if not scenes:
            scenes.append(Scene(""))
        scenes[-1].lines.append(line)
    return scenes, unclassified


_STARDATE = re.compile(r"^Stardate:\s*(?P<value>.*)$", re.IGNORECASE | re.MULTILINE)
_AIRDATE = re.compile(r"Airdate:\s*(?P<value>.*)$", re.IGNORECASE | re.MULTILINE)
_UNKNOWN = {"", "unknown", "n/a", "none"}


def _header_value(pattern: re.Pattern[str], header: str) -> str | None:
    match = pattern.search(header)
    if not match or match.group("value").strip().lower() in _UNKNOWN:
        return None
    return match.group("value").strip()


def parse_episode(html: str, number: int) -> Episode:
    """Parse one transcript page (already decoded) into an ``Episode`` of scenes and lines.

    ``number`` is the page's number (``401`` for ``401.htm``); the page itself does not state it.
    """
    reader = _read_page(html)
    header_lines = reader.regions["header"]
    bold_header = next((line.text for line in header_lines if line.bold), "")
    title = bold_header or reader.title_tag.rpartition(" - ")[2].strip()
    header = "\n".join(line.text for line in header_lines)

    scenes, unclassified = _split_into_scenes(reader.regions["table"])
    return Episode(
        number,
        " ".join(title.split()),
        _header_value(_STARDATE, header),
        _header_value(_AIRDATE, header),
        scenes,
        unclassified,
    )
