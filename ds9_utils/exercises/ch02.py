"""Chapter 02's exercises: questions asked of the parsed episodes (speakers, places, line lengths)."""

from __future__ import annotations

from collections import Counter

from ds9_utils.exercises import Exercise, equal_problem, number_problem, register
from ds9_utils.parse import Episode, Line, Scene


def _say(speaker: str, text: str, modifier: str | None = None) -> Line:
    return Line("dialogue", speaker, text, modifier=modifier)


def _sample_episodes() -> list[Episode]:
    """Two small episodes in which each careless reading gives a wrong answer."""
    direction = Line("direction", None, "(Sisko and Kira enter, talking about the OC signal)")
    first = Episode(
        401,
        "The Way of the Warrior",
        None,
        None,
        [
            Scene("Ops", [_say("SISKO", "Report.", "OC"), _say("KIRA", "Nothing yet, Captain."), direction]),
            Scene("Quark's", [_say("QUARK", "Welcome to Quark's!", "on viewscreen"), _say("ODO", "Quark.", "OC")]),
            Scene("Ops", [_say("SISKO", "Then we wait.", "OC"), _say("KIRA", "We wait.", "OC")]),
        ],
    )
    second = Episode(
        402,
        "The Visitor",
        None,
        None,
        [
            Scene("Quark's", [_say("QUARK", "Drinks, anyone? The first round is on the house.")]),
            Scene("Infirmary", [_say("BASHIR", "Hold still.", "OC"), _say("SISKO", "I am holding still.")]),
            Scene("Quark's", [_say("ROM", "Brother!")]),
        ],
    )
    return [first, second]


def off_camera_lines(episodes: list[Episode]) -> Counter:
    return Counter(line.speaker for ep in episodes for line in ep.lines if line.modifier == "OC")


def _check_off_camera_lines(answer) -> list[str]:
    got = answer(_sample_episodes())
    expected = off_camera_lines(_sample_episodes())
    return [
        p
        for p in [
            equal_problem(
                "off_camera_lines(sample episodes)", dict(got) if isinstance(got, dict) else got, dict(expected)
            )
        ]
        if p
    ]


register(
    Exercise(
        id="02.1",
        title="Off camera",
        check=_check_off_camera_lines,
        solution=off_camera_lines,
        verified="counts only the lines marked OC (not 'on viewscreen', not a direction that mentions OC)",
    )
)


def episodes_per_location(episodes: list[Episode]) -> Counter:
    # A set per episode: a place with five scenes in one episode counts once for it.
    return Counter(place for ep in episodes for place in {scene.location for scene in ep.scenes if scene.location})


def _check_episodes_per_location(answer) -> list[str]:
    got = answer(_sample_episodes())
    expected = episodes_per_location(_sample_episodes())
    problem = equal_problem(
        "episodes_per_location(sample episodes)", dict(got) if isinstance(got, dict) else got, dict(expected)
    )
    return [problem + " (count episodes, not scenes)"] if problem else []


register(
    Exercise(
        id="02.2",
        title="The busiest places",
        check=_check_episodes_per_location,
        solution=episodes_per_location,
        verified="counts each place once per episode, however many scenes it has there",
    )
)


def words_per_line(episodes: list[Episode], name: str) -> float:
    counts = [
        len(line.text.split())
        for ep in episodes
        for line in ep.lines
        if line.kind == "dialogue" and line.speaker == name
    ]
    return sum(counts) / len(counts)


def _check_words_per_line(answer) -> list[str]:
    episodes = _sample_episodes()
    found = [
        number_problem(
            f"words_per_line(sample episodes, {name!r})", answer(episodes, name), words_per_line(episodes, name)
        )
        for name in ("SISKO", "QUARK", "KIRA", "ROM")
    ]
    return [problem for problem in found if problem]


register(
    Exercise(
        id="02.3",
        title="Long-winded",
        check=_check_words_per_line,
        solution=words_per_line,
        verified="averages the words of each speaker's spoken lines across every episode",
    )
)
