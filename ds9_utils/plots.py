"""The figures the notebooks share: attention maps, matrices, loss curves and next-character distributions,
and the loss curves ``train(live_plot=True)`` redraws under a notebook cell.

Every function draws into a matplotlib Axes (a new figure when ``ax`` is None) and returns it (the grid
returns its Figure), so a notebook can add to the picture before it is shown. Nothing here calls
``plt.show()``: Jupyter shows the figure at the end of the cell.

Characters are hard to read as tick labels when they are invisible, so a newline is drawn as ``⏎``, a space
as ``·`` and a tab as ``→`` (see ``token_label``).
"""

from __future__ import annotations

import base64
import io
import math
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from .evaluate import bits_per_char
from .settings import FIGURE_DPI, in_notebook

#: How invisible characters are drawn on the axes.
VISIBLE = {"\n": "⏎", " ": "·", "\t": "→", "\r": "␍"}


def token_label(token: str) -> str:
    """A token as it should appear on an axis: newline as ⏎, space as ·, tab as →; other text unchanged."""
    return "".join(VISIBLE.get(c, c) for c in str(token))


def _as_array(values) -> np.ndarray:
    """A tensor (on any device, with or without grad) or array-like as a float numpy array."""
    if hasattr(values, "detach"):
        values = values.detach().float().cpu().numpy()
    return np.asarray(values, dtype=float)


def _token_list(tokens: str | Iterable[str]) -> list[str]:
    return [token_label(t) for t in (list(tokens) if isinstance(tokens, str) else tokens)]


def _new_axes(figsize: tuple[float, float]):
    import matplotlib.pyplot as plt

    _, ax = plt.subplots(figsize=figsize)
    return ax


#: The smallest tick label drawn: readable when the figure is shown at GitHub's page width.
MIN_TICK_POINTS = 8.0
#: The widest a grid of maps is drawn, in inches: wider figures are shrunk to the page, and their labels with them.
MAX_GRID_INCHES = 9.0


def _tick_fontsize(n: int) -> float:
    """Small enough that up to about 50 labels fit side by side, never below ``MIN_TICK_POINTS`` (8-11 pt)."""
    return float(max(MIN_TICK_POINTS, min(11.0, 420.0 / max(n, 1))))


def _label_steps(n: int, inches: float, fontsize: float) -> tuple[int, int]:
    """Label every k-th of ``n`` positions along ``inches`` so that labels of ``fontsize`` pt do not overlap;
    the positions in between keep their place, unlabelled. Returns (k along x, k along y): side by side a
    monospace character needs its width (0.6 of its size, and a little more), one above another its full height."""
    points = inches * 72.0
    across = max(1, math.ceil(n * fontsize * 0.65 / points))
    down = max(1, math.ceil(n * fontsize * 1.15 / points))
    return across, down


def _draw_map(
    ax,
    weights: np.ndarray,
    labels: list[str],
    *,
    vmax: float,
    fontsize: float,
    label_steps: tuple[int, int] = (1, 1),
    show_ylabels: bool = True,
    axis_titles: bool = True,
):
    import matplotlib

    T_query, T_key = weights.shape
    # The future a causal map may not look at (above the diagonal, weight exactly 0) is left white.
    future = np.triu(np.ones((T_query, T_key), dtype=bool), k=1 + T_key - T_query) & (weights == 0)
    cmap = matplotlib.colormaps["viridis"].with_extremes(bad="white")
    image = ax.imshow(
        np.ma.masked_array(weights, future), cmap=cmap, vmin=0.0, vmax=vmax, interpolation="nearest", aspect="equal"
    )
    across, down = label_steps
    ax.set_xticks(range(0, T_key, across))
    ax.set_xticklabels(labels[:T_key:across], fontsize=fontsize, family="monospace")
    ax.set_yticks(range(0, T_query, down))
    ax.set_yticklabels(labels[:T_query:down] if show_ylabels else [], fontsize=fontsize, family="monospace")
    ax.tick_params(length=0, pad=1.5)
    if axis_titles:
        ax.set_xlabel("looked at (key)")
        if show_ylabels:
            ax.set_ylabel("looking (query)")
    return image


def plot_attention(weights, tokens: str | Sequence[str], *, ax=None, title: str | None = None):
    """Draw one attention map: ``weights`` is (T, T), row t is where position t looks (rows sum to 1).

    ``tokens`` is the text (a string, or one string per token) labelling both axes. Returns the Axes.
    """
    weights = _as_array(weights)
    if weights.ndim != 2:
        raise ValueError(
            f"plot_attention wants one (T, T) map, got shape {weights.shape}; "
            "use plot_attention_grid for several heads, or index one (e.g. maps[0][0, head])."
        )
    labels = _token_list(tokens)
    if len(labels) < max(weights.shape):
        raise ValueError(
            f"{len(labels)} tokens for a {weights.shape[0]}x{weights.shape[1]} map: pass one token per row/column."
        )
    T = max(weights.shape)
    if ax is None:
        side = min(12.0, max(4.0, 0.2 * T + 1.5))
        ax = _new_axes((side + 1.0, side))
    fontsize = _tick_fontsize(T)
    inches = 0.8 * min(ax.figure.get_size_inches())  # about the map's side: the figure less its margins
    image = _draw_map(
        ax,
        weights,
        labels,
        vmax=max(float(weights.max()), 1e-9),
        fontsize=fontsize,
        label_steps=_label_steps(T, inches, fontsize),
    )
    ax.figure.colorbar(image, ax=ax, fraction=0.046, pad=0.03, label="attention weight")
    if title:
        ax.set_title(title)
    return ax


def plot_attention_grid(weights, tokens: str | Sequence[str], *, titles: Sequence[str] | None = None, ncols: int = 4):
    """Draw several attention maps side by side: ``weights`` is (H, T, T), one map per head
    (a leading batch dimension of 1 is dropped). All maps share one colour scale. Returns the Figure.

    At most ``ncols`` maps a row, and no more than fit ``MAX_GRID_INCHES`` at a readable size; where a map's
    characters are too many for ``MIN_TICK_POINTS`` labels, every k-th is labelled."""
    import matplotlib.pyplot as plt

    weights = _as_array(weights)
    if weights.ndim == 4 and weights.shape[0] == 1:
        weights = weights[0]
    if weights.ndim != 3:
        raise ValueError(f"plot_attention_grid wants (H, T, T) maps, got shape {weights.shape}.")
    H, T = weights.shape[0], max(weights.shape[1:])
    labels = _token_list(tokens)
    if len(labels) < T:
        raise ValueError(f"{len(labels)} tokens for {T}-position maps: pass one token per row/column.")
    if titles is not None and len(titles) != H:
        raise ValueError(f"{len(titles)} titles for {H} maps.")
    smallest_panel = 3.0
    ncols = max(1, min(ncols, H, int((MAX_GRID_INCHES - 1.0) // smallest_panel)))
    nrows = math.ceil(H / ncols)
    panel = min(6.0, max(2.8, 0.11 * T + 1.2), (MAX_GRID_INCHES - 1.0) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(panel * ncols + 1.0, panel * nrows + 0.3), squeeze=False)
    vmax = max(float(weights.max()), 1e-9)
    fontsize = MIN_TICK_POINTS
    label_steps = _label_steps(T, 0.8 * panel, fontsize)
    image = None
    for index, ax in enumerate(axes.flat):
        if index >= H:
            ax.axis("off")
            continue
        first_column = index % ncols == 0
        image = _draw_map(
            ax,
            weights[index],
            labels,
            vmax=vmax,
            fontsize=fontsize,
            label_steps=label_steps,
            show_ylabels=first_column,
            axis_titles=index // ncols == nrows - 1 or first_column,
        )
        if index + ncols < H:  # a map below this one: its title needs the room an axis title would take
            ax.set_xlabel("")
        ax.set_title(titles[index] if titles is not None else f"head {index}", fontsize=10)
    fig.colorbar(image, ax=[a for a in axes.flat[:H]], fraction=0.02, pad=0.02, label="attention weight")
    return fig


def plot_matrix(
    values,
    *,
    ax=None,
    title: str | None = None,
    xlabel: str | None = None,
    ylabel: str | None = None,
    centered: bool = False,
    colorbar_label: str | None = None,
):
    """Draw any 2-D table of numbers as a heat map (row 0 at the top), e.g. a position table or a
    similarity matrix. ``centered`` uses a diverging colour scale symmetric around 0, so that positive and
    negative values look alike in strength. Returns the Axes."""
    values = _as_array(values)
    if values.ndim != 2:
        raise ValueError(f"plot_matrix wants a 2-D table, got shape {values.shape}.")
    if ax is None:
        rows, cols = values.shape
        width = min(10.0, max(4.0, 0.08 * cols + 3.0))
        ax = _new_axes((width + 1.0, min(8.0, max(3.0, width * rows / max(cols, 1)))))
    if centered:
        limit = max(float(np.abs(values).max()), 1e-9)
        image = ax.imshow(values, cmap="RdBu_r", vmin=-limit, vmax=limit, interpolation="nearest", aspect="auto")
    else:
        image = ax.imshow(values, cmap="viridis", interpolation="nearest", aspect="auto")
    ax.figure.colorbar(image, ax=ax, fraction=0.046, pad=0.03, label=colorbar_label or "")
    if xlabel:
        ax.set_xlabel(xlabel)
    if ylabel:
        ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    return ax


def plot_loss_curves(
    curves: Mapping[str, tuple[Sequence[float], Sequence[float]]],
    *,
    ax=None,
    title: str | None = None,
    ylabel: str = "loss (nats)",
):
    """Draw one line per run: ``curves`` maps a label to ``(steps, losses)``. Returns the Axes."""
    if ax is None:
        ax = _new_axes((7.0, 4.0))
    for name, (steps, losses) in curves.items():
        steps, losses = _as_array(steps), _as_array(losses)
        ax.plot(steps, losses, marker="." if len(steps) <= 60 else None, label=str(name))
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    if curves:
        ax.legend()
    if title:
        ax.set_title(title)
    return ax


def plot_distribution(probs, labels: Sequence[str], *, ax=None, title: str | None = None, top: int = 20):
    """Bar chart of the ``top`` most likely next tokens: ``probs`` has one probability per vocabulary entry
    and ``labels[i]`` is the text of token i (e.g. ``tokenizer.chars``). Returns the Axes."""
    probs = _as_array(probs).reshape(-1)
    if len(labels) != len(probs):
        raise ValueError(f"{len(labels)} labels for {len(probs)} probabilities: pass one label per token.")
    order = np.argsort(-probs, kind="stable")[: max(1, top)]
    if ax is None:
        ax = _new_axes((max(5.0, 0.4 * len(order) + 1.5), 3.5))
    positions = np.arange(len(order))
    ax.bar(positions, probs[order], color="tab:blue")
    ax.set_xticks(positions)
    ax.set_xticklabels([token_label(labels[i]) for i in order], fontsize=11, family="monospace")
    ax.set_xlabel("next character" if all(len(str(labels[i])) <= 1 for i in order) else "next token")
    ax.set_ylabel("probability")
    ax.set_ylim(0, max(float(probs[order].max()) * 1.15, 1e-9))
    ax.grid(axis="y", alpha=0.3)
    if title:
        ax.set_title(title)
    return ax


def loss_curve_png(history: dict[str, list]) -> bytes:
    """Draw the train and validation loss curves (nats on the left, bits per character on the right) as a PNG."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7, 3.5))
    axes = figure.subplots()
    axes.plot(history["steps"], history["train_loss"], marker=".", label="train")
    axes.plot(history["steps"], history["val_loss"], marker=".", label="validation")
    axes.set_xlabel("step")
    axes.set_ylabel("loss (nats per character)")
    axes.secondary_yaxis("right", functions=(bits_per_char, lambda bits: bits * math.log(2))).set_ylabel(
        "bits per character"
    )
    if history["val_loss"]:
        latest = history["val_loss"][-1]
        axes.set_title(f"step {history['steps'][-1]}: validation {latest:.3f} nats = {bits_per_char(latest):.3f} bpc")
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=FIGURE_DPI)
    return buffer.getvalue()


def image_output(png: bytes, description: str) -> dict[str, str]:
    """A PNG as a notebook output bundle whose text form says what the figure shows.

    ``display(bundle, raw=True)`` shows the image where images can be drawn; a text renderer (a terminal,
    nbval, GitHub's plain view of an output) shows ``[figure: description]`` instead of
    ``<IPython.core.display.Image object>``."""
    return {"image/png": base64.b64encode(png).decode("ascii"), "text/plain": f"[figure: {description}]"}


def figure_description(figure) -> str:
    """What a matplotlib figure shows, in words, for its text form: its axes' titles, else their labels."""
    titles = [ax.get_title() for ax in figure.axes if ax.get_title()]
    if titles:
        return "; ".join(titles)
    labels = [f"{ax.get_ylabel()} against {ax.get_xlabel()}" for ax in figure.axes if ax.get_xlabel()]
    return "; ".join(labels) or "a figure"


class LiveLossPlot:
    """Redraws the loss curves in place under a notebook cell; does nothing outside Jupyter."""

    def __init__(self) -> None:
        self.handle = None
        if not in_notebook():  # a plain script or terminal IPython
            return
        from IPython.display import display

        waiting = "the loss curves appear after the first evaluation"
        self.handle = display({"text/markdown": f"*{waiting}*", "text/plain": waiting}, raw=True, display_id=True)

    def update(self, history: dict[str, list]) -> None:
        if self.handle is not None:
            latest = (
                f"validation {history['val_loss'][-1]:.3f} nats = {bits_per_char(history['val_loss'][-1]):.3f} bits "
                "per character"
                if history["val_loss"]
                else "no evaluation yet"
            )
            description = f"loss curves to step {history['steps'][-1] if history['steps'] else 0}, {latest}"
            self.handle.update(image_output(loss_curve_png(history), description), raw=True)
