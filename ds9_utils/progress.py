"""Progress bars that read well in a terminal, in a live notebook and in a saved one.

In a terminal this is tqdm. In a notebook, tqdm's usual bar is a widget, and a saved notebook keeps a
widget only as a placeholder that GitHub, nbviewer and Colab's preview cannot draw: they show its first
state, "training: 0%| 0/4000", forever. So in a notebook the bar is one line of text that Jupyter replaces
in place (a display with an id): while the cell runs it moves, and the saved notebook keeps its last line,
"training (fp32): 100%|##########| 540/540 s [09:00<00:00, ...]".
"""

from __future__ import annotations

import io
from collections.abc import Iterable
from typing import Any

from tqdm.std import tqdm

from .settings import in_notebook


class _NoTerminal(io.TextIOBase):
    """Swallows what tqdm would write to a terminal: in a notebook the line is displayed instead."""

    def write(self, text: str) -> int:
        return len(text)


class NotebookLineBar(tqdm):
    """tqdm drawn as one text output of the running notebook cell, replaced at every redraw."""

    monitor_interval = 0  # tqdm's monitor thread would redraw from another thread, into whichever cell runs then

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._handle = None  # set by the first redraw, which tqdm makes before __init__ returns
        kwargs["file"] = _NoTerminal()
        kwargs.setdefault("mininterval", 0.5)  # each redraw is a message to the notebook: a few a second is plenty
        kwargs.setdefault("ascii", True)  # "#" draws the same in every notebook viewer's font
        super().__init__(*args, **kwargs)

    def display(self, msg: str | None = None, pos: int | None = None) -> bool:
        from IPython.display import display

        line = {"text/plain": self.__str__() if msg is None else msg}
        if self._handle is None:
            self._handle = display(line, raw=True, display_id=True)
        else:
            self._handle.update(line, raw=True)
        return True


def progress_bar(iterable: Iterable | None = None, **kwargs: Any) -> tqdm:
    """A tqdm bar (same arguments) that a saved notebook shows as its last line instead of a dead widget."""
    bar_class = NotebookLineBar if in_notebook() else tqdm
    return bar_class(iterable, **kwargs)
