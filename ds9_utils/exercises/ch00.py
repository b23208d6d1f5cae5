"""Chapter 00's exercises: reading the corpus format (speaker lines, episode headers, scenes)."""

from __future__ import annotations

import re

from ds9_utils.exercises import Exercise, equal_problem, register

# A small corpus in the training-text format, made so that each careless reading gives a wrong answer:
# a mark beside a name, a name inside a direction, a longer name that starts with another, an episode
# that has the most lines but not the most characters, a scene heading that only starts like another.
SAMPLE = """=== 401: The Way of the Warrior ===

[Quark's]
QUARK: Welcome, welcome! Sit anywhere you like, the first round is on the house tonight, Constable.
QUARK [OC]: Rom!
ODO: I will be watching you.
(Quark hands Rom a tray; ROM: is written on it)
QUARKS: There is no one by that name.

[Infirmary]
BASHIR: Hold still.
KIRA: I am holding still.
BASHIR: Then hold stiller.

=== 402: The Visitor ===

[Ops]
SISKO: Report.
DAX: Nothing.
KIRA: Nothing here.
ODO: Nor here.
O'BRIEN: Same.

[Infirmary]
BASHIR: Well?

[Infirmary corridor]
BASHIR: Never mind.

=== 403: Hippocratic Oath ===

[Infirmary]
BASHIR: Next.
(A Klingon walks in)

[Wardroom]
SISKO: Dismissed.
"""


def spoken_lines(corpus: str, name: str) -> int:
    # A spoken line starts with the speaker's name and a colon; a mark such as [OC] may sit in between.
    return sum(1 for line in corpus.split("\n") if line.startswith(name + ":") or line.startswith(name + " ["))


def _check_spoken_lines(answer) -> list[str]:
    found = []
    for name, expected in [("QUARK", 2), ("ODO", 2), ("ROM", 0), ("KIRA", 2)]:
        problem = equal_problem(f"spoken_lines(SAMPLE, {name!r})", answer(SAMPLE, name), expected)
        if problem:
            found.append(problem + " (the sample is ds9_utils.exercises.ch00.SAMPLE: print it to see its lines)")
    return found


register(
    Exercise(
        id="00.1",
        title="How many lines does a character speak?",
        check=_check_spoken_lines,
        solution=spoken_lines,
        verified="counts Quark's [OC] line, ignores 'QUARKS:' and a name inside a direction",
    )
)


def longest_episode(corpus: str) -> str:
    # Cut the corpus at each header line and measure each piece, header to next header.
    headers = list(re.finditer(r"^=== (\d+): (.*) ===$", corpus, flags=re.MULTILINE))
    ends = [header.start() for header in headers[1:]] + [len(corpus)]
    lengths = {header.group(2): end - header.start() for header, end in zip(headers, ends)}
    return max(lengths, key=lengths.get)


def _check_longest_episode(answer) -> list[str]:
    reversed_order = "".join(reversed(re.split(r"(?m)^(?====)", SAMPLE)))
    return [
        problem
        for problem in (
            equal_problem("longest_episode(ds9_utils.exercises.ch00.SAMPLE)", answer(SAMPLE), "The Way of the Warrior"),
            equal_problem(
                "longest_episode on SAMPLE's episodes in reverse order",
                answer(reversed_order),
                "The Way of the Warrior",
            ),
        )
        if problem
    ]


register(
    Exercise(
        id="00.2",
        title="Which episode is the longest?",
        check=_check_longest_episode,
        solution=longest_episode,
        verified="finds the longest episode in characters (not in lines), wherever it sits in the corpus",
    )
)


def scene_sizes(corpus: str, place: str) -> list[int]:
    # A scene is a block between blank lines that starts with its heading; count the lines after it.
    return [block.count("\n") for block in corpus.strip("\n").split("\n\n") if block.split("\n", 1)[0] == f"[{place}]"]


def _check_scene_sizes(answer) -> list[str]:
    cases = [("Infirmary", [3, 1, 2]), ("Ops", [5]), ("Promenade", [])]
    return [
        problem
        for place, expected in cases
        if (problem := equal_problem(f"scene_sizes(SAMPLE, {place!r})", answer(SAMPLE, place), expected))
    ]


register(
    Exercise(
        id="00.3",
        title="How long are the scenes set in one place?",
        check=_check_scene_sizes,
        solution=scene_sizes,
        verified="finds every scene at a place (not one whose heading only starts the same) and counts its lines",
    )
)
