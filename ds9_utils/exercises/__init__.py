"""Exercises that check themselves.

Each chapter's exercises live in ``chNN.py`` as an :class:`Exercise`: a check that lists what is wrong with an
answer, and a reference solution that passes it. In a notebook the learner writes an answer, runs
``check("05.2", my_answer)`` to learn whether it is right (or exactly what is wrong), and only when they want
to, opens ``solution("05.2")``: its source sits behind a click, collapsed in JupyterLab, Colab and on GitHub,
and nothing of it runs (so no output gives it away) until ``solution("05.2").run()``.

The checks are written like nbgrader's test cells: they compare the answer with the ``ds9_utils`` version or
the reference on random inputs, with a known value, or with a shape, and say which input failed and how.
"""

from __future__ import annotations

import contextlib
import html
import importlib
import inspect
import pkgutil
import re
import signal
import textwrap
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

import torch

__all__ = [
    "Exercise",
    "SolutionView",
    "all_exercises",
    "build_it_exercises",
    "check",
    "close_problem",
    "equal_problem",
    "number_problem",
    "register",
    "solution",
    "typical_mistake",
    "with_typical_mistake",
]


@dataclass(frozen=True)
class Exercise:
    """One exercise: what it asks, how an answer is checked, and the reference answer.

    ``check`` returns the problems it finds with an answer, most telling first; an empty list means right.
    ``expects`` says what the learner hands in: a ``"function"`` (``solution`` is that function, written the
    way the learner's should be), or a ``"value"`` (``solution`` is a function of no arguments that computes
    it, so that its source shows how). ``verified`` says, for the success line, what a passing check proved.
    ``demo``, when set, is what ``solution(id).run()`` does instead of returning the answer (draw the plot
    the exercise is about, say). ``builds`` names the mechanism when the learner writes one of the course's
    own (its check compares the answer with ``ds9_utils`` and names the typical mistakes); the README lists
    these build-it exercises chapter by chapter.
    """

    id: str
    title: str
    check: Callable[[Any], list[str]]
    solution: Callable[..., Any]
    expects: Literal["function", "value"] = "function"
    verified: str = ""
    demo: Callable[[], Any] | None = None
    builds: str = ""

    def reference(self) -> Any:
        """The reference answer, in the form the learner hands to ``check``."""
        return self.solution() if self.expects == "value" else self.solution


_REGISTRY: dict[str, Exercise] = {}
_ID = re.compile(r"(\d\d)\.\d+")


def register(exercise: Exercise) -> Exercise:
    """Add a chapter's exercise to the registry (each ``chNN`` module calls this at import)."""
    if not _ID.fullmatch(exercise.id):
        raise ValueError(f"exercise id {exercise.id!r} should look like '05.2' (chapter, dot, number)")
    if exercise.id in _REGISTRY and _REGISTRY[exercise.id] is not exercise:
        raise ValueError(f"exercise {exercise.id} is registered twice; give the second one a new number")
    _REGISTRY[exercise.id] = exercise
    return exercise


def _exercise(exercise_id: str) -> Exercise:
    """Look an exercise up by id, importing its chapter's module the first time."""
    match = _ID.fullmatch(exercise_id)
    if match:
        try:
            importlib.import_module(f"{__name__}.ch{match.group(1)}")
        except ModuleNotFoundError as error:
            if error.name != f"{__name__}.ch{match.group(1)}":
                raise
    if exercise_id not in _REGISTRY:
        known = ", ".join(all_exercises())
        raise KeyError(f"there is no exercise {exercise_id!r}; the exercises are {known}")
    return _REGISTRY[exercise_id]


def build_it_exercises() -> dict[str, Exercise]:
    """The exercises in which the learner writes one of the course's mechanisms, by id in order."""
    return {exercise_id: exercise for exercise_id, exercise in all_exercises().items() if exercise.builds}


def all_exercises() -> dict[str, Exercise]:
    """Every exercise of the course, by id in order (imports every chapter's module)."""
    for module in pkgutil.iter_modules(__path__):
        if re.fullmatch(r"ch\d\d", module.name):
            importlib.import_module(f"{__name__}.{module.name}")
    return dict(sorted(_REGISTRY.items(), key=lambda item: tuple(int(part) for part in item[0].split("."))))


CHECK_SECONDS = 60.0  # a check's time limit: the slowest reference answer takes about a second


class _OutOfTime(BaseException):
    """Raised into the learner's code when the check's time is up: a BaseException, so that a bare
    ``except Exception`` in an answer's loop cannot swallow it."""


@contextlib.contextmanager
def _time_limit(seconds: float) -> Iterator[None]:
    """Raise ``_OutOfTime`` in this thread after ``seconds``, where the platform allows it.

    That is POSIX's interval timer, whose signal only the main thread receives (a notebook's cells run
    there); in another thread, on Windows, or while someone else's timer runs (it is left alone), the check
    runs without a limit.
    """
    if (
        not hasattr(signal, "setitimer")
        or threading.current_thread() is not threading.main_thread()
        or signal.getitimer(signal.ITIMER_REAL) != (0.0, 0.0)
    ):
        yield
        return

    def out_of_time(signum: int, frame: Any) -> None:
        raise _OutOfTime

    previous = signal.signal(signal.SIGALRM, out_of_time)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def problems(exercise: Exercise, answer: Any) -> list[str]:
    """What is wrong with ``answer``, as sentences; an unfinished, crashing or endless answer is a problem,
    not an error (the check runs under ``CHECK_SECONDS``' time limit where the platform allows it)."""
    if answer is None or answer is Ellipsis:
        return ["there is no answer yet: write it in the cell above, run that cell, then run this check again"]
    if exercise.expects == "function" and not callable(answer):
        return [f"expected a function, got {type(answer).__name__}: pass the function itself, without calling it"]
    try:
        with _time_limit(CHECK_SECONDS):
            return exercise.check(answer)
    except _OutOfTime:
        return [
            f"your answer did not finish within {CHECK_SECONDS:g} s, so the check stopped it: look for a loop "
            "that never ends"
        ]
    except NotImplementedError:
        return ["your function is not written yet: replace `raise NotImplementedError` with your code"]
    except Exception as error:  # the learner's code can fail in any way; say how, never crash the notebook
        return [f"your answer raised {type(error).__name__}: {error}"]


class Verdict:
    """What ``check`` found: true when the answer is right. In a notebook it shows nothing itself (the printed
    line already said it), so a check cell's output is that one line, not a stray ``True`` or ``False``."""

    def __init__(self, right: bool) -> None:
        self.right = right

    def __bool__(self) -> bool:
        return self.right

    def __repr__(self) -> str:
        return "right" if self.right else "not yet"

    def _ipython_display_(self) -> None:
        pass


def check(exercise_id: str, answer: Any) -> Verdict:
    """Check an answer, print one line saying it is right or what is wrong, and return whether it is right."""
    exercise = _exercise(exercise_id)
    found = problems(exercise, answer)
    if found:
        more = f" (and {len(found) - 1} more problem{'s' * (len(found) > 2)})" if len(found) > 1 else ""
        print(f"❌ not yet: {found[0]}{more}")
        return Verdict(False)
    print(f"✅ right: {exercise.verified or exercise.title}")
    return Verdict(True)


class SolutionView:
    """A solution kept out of sight: its source behind a click, nothing run until :meth:`run`."""

    def __init__(self, exercise: Exercise) -> None:
        self.exercise = exercise

    @property
    def source(self) -> str:
        """The reference solution's code (and its demo's), as the learner would write it."""
        parts = [self.exercise.solution] + ([self.exercise.demo] if self.exercise.demo else [])
        return "\n\n".join(textwrap.dedent(inspect.getsource(part)).strip() for part in parts)

    def run(self) -> Any:
        """Run the solution: draw its demo when it has one, else return the reference answer."""
        return self.exercise.demo() if self.exercise.demo else self.exercise.reference()

    def _repr_html_(self) -> str:
        summary = f"Show the solution to exercise {self.exercise.id} ({html.escape(self.exercise.title)})"
        return f"<details><summary>{summary}</summary>\n<pre>{html.escape(self.source)}</pre>\n</details>"

    def __repr__(self) -> str:
        return (
            f"Solution to exercise {self.exercise.id} hidden: print(solution({self.exercise.id!r}).source) "
            f"shows it, solution({self.exercise.id!r}).run() runs it"
        )


def solution(exercise_id: str) -> SolutionView:
    """The reference solution to an exercise, hidden until asked for (click it, print ``.source``, or ``.run()``)."""
    return SolutionView(_exercise(exercise_id))


# Small helpers the chapters' checks share: each returns None when all is well, else one specific sentence.


def _plain_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """A float64 CPU copy of ``tensor`` as a plain ``torch.Tensor``, made without calling any of its methods.

    A ``torch.Tensor`` subclass can override any method (``allclose``, ``detach``...) and intercept every
    torch function through ``__torch_function__``; with that switched off, it is viewed as the base class
    first, and only then copied.
    """
    with torch._C.DisableTorchFunctionSubclass():
        plain = torch.Tensor.as_subclass(tensor, torch.Tensor)
    if type(plain) is not torch.Tensor:
        raise TypeError(f"a {type(tensor).__name__} could not be read as a plain tensor")
    return plain.detach().to("cpu", torch.float64, copy=True)


def close_problem(what: str, got: Any, expected: torch.Tensor, atol: float = 1e-5, rtol: float = 1e-4) -> str | None:
    """Compare a tensor with the expected one: type, shape, then values (naming the worst element).

    The answer is compared as a plain copy (``_plain_tensor``) by torch's own ``allclose``, never through
    its methods, so a tensor subclass cannot answer for itself.
    """
    if got is None:
        return f"{what} is None: did the function `return` its result?"
    if not isinstance(got, torch.Tensor):
        return f"{what} should be a tensor, got {type(got).__name__}"
    got_values, expected_values = _plain_tensor(got), _plain_tensor(expected)
    if tuple(got_values.shape) != tuple(expected_values.shape):
        return f"{what} has shape {tuple(got_values.shape)}, expected {tuple(expected_values.shape)}"
    if torch.allclose(got_values, expected_values, atol=atol, rtol=rtol, equal_nan=True):
        return None
    gap = (got_values - expected_values).abs().nan_to_num(float("inf"))
    worst = tuple(int(i) for i in torch.unravel_index(gap.argmax(), gap.shape)) if gap.dim() else ()
    at = f" at index {worst}" if worst else ""
    return f"{what} is off{at}: expected {expected_values[worst].item():.6g}, got {got_values[worst].item():.6g}"


def typical_mistake(
    got: Any,
    mistakes: Iterable[tuple[Callable[..., Any], str]],
    args: tuple,
    *,
    atol: float = 1e-8,
    rtol: float = 1e-5,
    nan_as_zero: bool = False,
) -> str | None:
    """The hint of the first typical mistake whose output on ``args`` is the learner's, or None.

    ``mistakes`` pairs a function written with the mistake with the hint that names it; each runs only when
    the ones before it did not match. Outputs are compared as plain float64 copies (``_plain_tensor``), shape
    first; ``nan_as_zero`` reads NaN as 0 on both sides (a 0 / 0 where the mistake writes 0).
    """
    if not isinstance(got, torch.Tensor):
        return None
    got = _plain_tensor(got).nan_to_num() if nan_as_zero else _plain_tensor(got)
    for mistake, hint in mistakes:
        wrong = _plain_tensor(torch.as_tensor(mistake(*args)))
        wrong = wrong.nan_to_num() if nan_as_zero else wrong
        if got.shape == wrong.shape and torch.allclose(got, wrong, atol=atol, rtol=rtol):
            return hint
    return None


def with_typical_mistake(
    problem: str,
    got: Any,
    mistakes: Iterable[tuple[Callable[..., Any], str]],
    args: tuple,
    *,
    atol: float = 1e-8,
    rtol: float = 1e-5,
    nan_as_zero: bool = False,
) -> str:
    """``problem``, led by the hint of the typical mistake that produced ``got`` when one did (see
    ``typical_mistake``): "<hint> (<problem>)"."""
    hint = typical_mistake(got, mistakes, args, atol=atol, rtol=rtol, nan_as_zero=nan_as_zero)
    return f"{hint} ({problem})" if hint else problem


def number_problem(what: str, got: Any, expected: float, rel: float = 1e-4, abs_tol: float = 1e-6) -> str | None:
    """Compare a number with the expected one (a one-element tensor counts as a number)."""
    if got is None:
        return f"{what} is None: did the function `return` its result?"
    if isinstance(got, torch.Tensor) and got.numel() == 1:
        got = got.item()
    if isinstance(got, bool) or not isinstance(got, (int, float)):
        return f"{what} should be a number, got {type(got).__name__}"
    if abs(got - expected) <= max(abs_tol, rel * abs(expected)):
        return None
    return f"{what}: expected {expected:.6g}, got {got:.6g}"


_PLAIN_KEYS = (str, int, float, bool, bytes, type(None))


def _plain_key(key: Any) -> bool:
    """A dict key or set element of a built-in type, whose ``==`` and ``hash`` no answer can have rewritten."""
    return type(key) in _PLAIN_KEYS or (type(key) is tuple and all(_plain_key(part) for part in key))


def _same(got: Any, expected: Any) -> bool:
    """``got == expected``, judged with exact types all the way down: an object whose ``__eq__`` always says
    yes is not the list, number or string expected, and no ``==`` of the answer's own is ever called."""
    if type(got) is not type(expected):
        return False
    if isinstance(expected, (list, tuple)):
        return len(got) == len(expected) and all(_same(g, e) for g, e in zip(got, expected))
    if isinstance(expected, dict):
        return (
            all(_plain_key(key) for key in got)
            and got.keys() == expected.keys()
            and all(_same(got[key], value) for key, value in expected.items())
        )
    if isinstance(expected, (set, frozenset)):
        return all(_plain_key(item) for item in got) and got == expected
    return bool(expected == got)  # the same exact type as the expected value: its own ==, not the answer's


def equal_problem(what: str, got: Any, expected: Any) -> str | None:
    """Compare a plain value (a string, a number, a list, a dict) with the expected one: its exact type
    first (a list is a list, an int is not a bool), then its value (``_same``)."""
    if _same(got, expected):
        return None
    if got is None:
        return f"{what} is None: did the function `return` its result?"
    if type(got) is not type(expected):
        return f"{what} should be of type {type(expected).__name__}, got {type(got).__name__}"
    return f"{what}: expected {expected!r}, got {got!r}"
