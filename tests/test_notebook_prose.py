"""The prose tells the truth about the outputs: a static check of the committed notebooks (no kernel).

A learner believes what a chapter says, so every *measured* number quoted in a chapter's markdown must be
printed by one of that chapter's own outputs. "Measured" here means a number with a decimal point, a
percentage, or a number written with thousands separators (``1.627``, ``55.2%``, ``1,786,752``): the kind of
number a run produces. Whole numbers written plainly (``4 layers``, ``165 episodes``) are settings and counts
the prose may name freely. Numbers inside LaTeX (``$...$``), inline code and links are left alone, and a small
explicit allow-list holds the citations and constants a chapter quotes from elsewhere.

A quoted number matches an output when an output number rounds to it: the prose's ``1.63`` is matched by an
output's ``1.627``, ``55.2%`` by ``55.2%`` or by a fraction ``0.552``. The check also wants the parts every
chapter owes its reader: the question it answers, a summary, exercises, and what comes next.
"""

from __future__ import annotations

import re
from decimal import ROUND_HALF_EVEN, ROUND_HALF_UP, Decimal, InvalidOperation
from pathlib import Path

import nbformat
import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("[0-9][0-9]_*.ipynb"))

# Numbers a chapter may quote without printing them: citations of other work and mathematical constants.
# Each entry says where it comes from; keep this list short.
ALLOWED: dict[str, set[str]] = {
    "*": {
        "2.718",  # e
        "3.14",  # pi
        "3.141",
        "0.693",  # ln 2
        "1.44",  # 1 / ln 2, bits in a nat
        "1.88",  # nanoGPT's reported validation loss on tiny Shakespeare (its README)
    },
    "03": {"1,000"},  # a round number of samples, a setting
    "07": {"0.2"},  # the gpu preset's dropout rate, a setting
    "09": {"0.15"},  # the margin over counting the course asks of its model, a target
    "12": {"1,024", "50,000", "200,000"},  # the BPE vocabulary asked for; large models' vocabularies, cited
    "14": {"0.05"},  # the rater's tie margin, a setting of ds9_utils.feedback
    "15": {"16,384"},  # the GPUs of Llama 3's training cluster, cited from its paper
}

MEASURED = re.compile(r"(?<![\w.,/-])(\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+\.\d+)(\s?%)?(?![\w.]\d)")
HIDDEN = [
    re.compile(r"\$\$.*?\$\$", re.S),  # display math
    re.compile(r"\$[^$\n]+\$"),  # inline math
    re.compile(r"```.*?```", re.S),  # code blocks
    re.compile(r"`[^`\n]+`"),  # inline code
    re.compile(r"\]\([^)]*\)"),  # link targets
    re.compile(r"https?://\S+"),  # bare addresses
    re.compile(r"<[^>]+>"),  # html tags
    re.compile(r"(?:Python|torch|PyTorch|version) \d+(?:\.\d+)+"),  # version numbers
    re.compile(r"^#{1,6} .*$", re.M),  # headings: section numbers such as "3.4 Compiling"
]
OUTPUT_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?(?:[eE][-+]?\d+)?")


def prose_numbers(markdown: str) -> list[str]:
    """The measured numbers quoted in a markdown cell, as written (``1.627``, ``55.2%``, ``1,786,752``)."""
    for pattern in HIDDEN:
        markdown = pattern.sub(" ", markdown)
    return [number + ("%" if percent else "") for number, percent in MEASURED.findall(markdown)]


def output_text(cell: nbformat.NotebookNode) -> str:
    parts = []
    for output in cell.get("outputs", []):
        parts.append(output.get("text", "") if isinstance(output.get("text", ""), str) else "".join(output["text"]))
        for kind, value in output.get("data", {}).items():
            if kind.startswith("text/"):
                parts.append(value if isinstance(value, str) else "".join(value))
    return "\n".join(parts)


def output_values(notebook: nbformat.NotebookNode) -> tuple[set[Decimal], str]:
    """Every number with a fractional part printed by the notebook's outputs, and their text.

    Whole numbers are left out: a quoted ``1.63`` must come from a printed measurement such as ``1.627``,
    not from a step count that happens to round to it; numbers with separators are matched as text.
    """
    text = "\n".join(output_text(cell) for cell in notebook.cells if cell.cell_type == "code")
    values = set()
    for token in OUTPUT_NUMBER.findall(text):
        if "." not in token and "e" not in token.lower():
            continue
        try:
            values.add(Decimal(token.replace(",", "")))
        except InvalidOperation:
            continue
    return values, text


def _rounds_to(value: Decimal, target: Decimal) -> bool:
    """True when ``value``, printed with at least the quoted precision, rounds to ``target``."""
    exponent = target.as_tuple().exponent
    if value.as_tuple().exponent > exponent:
        return False
    quantum = Decimal(1).scaleb(exponent)
    return any(abs(value).quantize(quantum, rounding=mode) == abs(target) for mode in (ROUND_HALF_UP, ROUND_HALF_EVEN))


def is_printed(quoted: str, values: set[Decimal], text: str) -> bool:
    """True when some output number, rounded to the quoted precision, is the quoted number."""
    if quoted in text:
        return True
    percent = quoted.endswith("%")
    target = Decimal(quoted.rstrip("%").replace(",", ""))
    candidates = [target] + ([target / 100] if percent else [])
    for value in values:
        for candidate in candidates:
            if candidate is not target:  # a fraction printed for a percentage: compare at the percent's precision
                if _rounds_to(value * 100, target):
                    return True
            elif _rounds_to(value, candidate):
                return True
    return False


def unprinted_numbers(notebook: nbformat.NotebookNode, name: str) -> list[str]:
    values, text = output_values(notebook)
    allowed = ALLOWED["*"] | ALLOWED.get(name, set())
    missing = []
    for index, cell in enumerate(notebook.cells):
        if cell.cell_type != "markdown":
            continue
        for quoted in prose_numbers(cell.source):
            if quoted.rstrip("%") in allowed or is_printed(quoted, values, text):
                continue
            missing.append(f"cell {index}: {quoted}")
    return missing


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.stem[:2])
def test_every_measured_number_in_the_prose_is_printed_by_the_notebook(path: Path):
    notebook = nbformat.read(path, as_version=4)
    assert any(cell.get("outputs") for cell in notebook.cells if cell.cell_type == "code"), (
        f"{path.name} has no outputs: commit it after a full run"
    )
    missing = unprinted_numbers(notebook, path.stem[:2])
    assert not missing, f"{path.name}: numbers in the prose that no output prints: {', '.join(missing)}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.stem[:2])
def test_every_output_comes_from_a_run(path: Path):
    """A cell with outputs but no execution count was edited after the run (nbval also refuses it)."""
    notebook = nbformat.read(path, as_version=4)
    unrun = [
        index
        for index, cell in enumerate(notebook.cells)
        if cell.cell_type == "code" and cell.get("outputs") and cell.get("execution_count") is None
    ]
    assert not unrun, f"{path.name}: cells {unrun} show outputs that no run produced; rerun the notebook"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.stem[:2])
def test_every_chapter_has_its_question_summary_exercises_and_next(path: Path):
    notebook = nbformat.read(path, as_version=4)
    markdown = "\n".join(cell.source for cell in notebook.cells if cell.cell_type == "markdown")
    headings = [line.lstrip("#").strip().lower() for line in markdown.splitlines() if line.startswith("#")]
    lacks = []
    if "the question this chapter answers" not in markdown.lower():
        lacks.append("its question ('**The question this chapter answers:** ...')")
    for part in ("summary", "exercises"):
        if part not in headings:
            lacks.append(f"a '## {part.title()}' section")
    if not any(heading in ("next", "what next") for heading in headings):
        lacks.append("a '## Next' section")
    assert not lacks, f"{path.name} lacks {', '.join(lacks)}"


def test_the_check_finds_a_number_the_outputs_do_not_print():
    """The check itself can fail: a made-up number in the prose is caught, a printed one is not."""
    notebook = nbformat.v4.new_notebook()
    notebook.cells = [
        nbformat.v4.new_markdown_cell("One head reaches 1.65 nats, eight heads 1.627, a 55.2% win; `1.23` is code."),
        nbformat.v4.new_code_cell("print(...)"),
    ]
    notebook.cells[1].outputs = [nbformat.v4.new_output("stream", name="stdout", text="eight heads: 1.6271\n")]
    assert unprinted_numbers(notebook, "xx") == ["cell 0: 1.65", "cell 0: 55.2%"]
    notebook.cells[1].outputs[0].text += "one head: 1.6503, preferred in 0.552 of pairs\n"
    assert unprinted_numbers(notebook, "xx") == []
