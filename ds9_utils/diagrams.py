"""Schematic diagrams of the course's mechanisms, drawn in code so that they travel inside the notebooks.

Each chapter shows the picture of a mechanism before it builds it: boxes, arrows, grids and labels, in one
calm palette, sized for a notebook (about 8 x 3.5 inches). Every public function returns its Figure and takes
optional arguments, so that a diagram can carry the learner's own sizes and values (``heads(n_embd=64)``,
``attention(weights, "ODO: Aye")``). Nothing here calls ``plt.show()``: the notebook does, as for its plots.

The drawing surface of every diagram is measured in inches (``_canvas``), so that boxes, text and gaps can
be placed by reading the layout, without any transformation in between.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence

import numpy as np

from ds9_utils.plots import _as_array, token_label

# One palette for every diagram: (fill, edge) per role. Blue is data, orange what is computed or chosen now,
# green what is learned, purple the model, grey what is fixed or hidden.
PALETTE = {
    "blue": ("#dde8f4", "#3f6ea3"),
    "orange": ("#fbe4d0", "#c46a2b"),
    "green": ("#def0dd", "#3f8a4e"),
    "purple": ("#e8e2f4", "#6b5aa6"),
    "grey": ("#eef0f2", "#8d979f"),
    "red": ("#f7dddd", "#b24a4a"),
}
INK = "#2f3437"  # text and outlines
MUTED = "#6f7a82"  # notes
LINE = "#8d979f"  # arrows
TITLE_SIZE = 11.5
TEXT_SIZE = 9.0
NOTE_SIZE = 8.0
MONO = "DejaVu Sans Mono"
VALUE_CMAP = "RdBu_r"  # numbers that can be negative: blue below 0, red above


# --- drawing helpers ----------------------------------------------------------------------------------------


def _canvas(title: str, width: float = 8.0, height: float = 3.5):
    """A blank figure whose axes cover it and count in inches from the bottom left corner."""
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=(width, height))
    ax = fig.add_axes((0.0, 0.0, 1.0, 1.0))
    ax.set_xlim(0, width)
    ax.set_ylim(0, height)
    ax.axis("off")
    ax.text(0.2, height - 0.15, title, ha="left", va="top", fontsize=TITLE_SIZE, color=INK, fontweight="bold")
    return fig, ax


def _box(ax, x, y, w, h, text="", *, color="blue", size=TEXT_SIZE, mono=False, dashed=False, bold=False):
    """A rounded box with its lower left corner at (x, y) and centred text."""
    from matplotlib.patches import FancyBboxPatch

    fill, edge = PALETTE[color]
    ax.add_patch(
        FancyBboxPatch(
            (x, y),
            w,
            h,
            boxstyle="round,pad=0,rounding_size=0.06",
            facecolor=fill,
            edgecolor=edge,
            linewidth=1.1,
            linestyle="--" if dashed else "-",
        )
    )
    if text:
        _text(ax, x + w / 2, y + h / 2, text, size=size, mono=mono, bold=bold)


def _text(ax, x, y, text, *, size=TEXT_SIZE, color=INK, ha="center", va="center", mono=False, bold=False, **kw):
    return ax.text(
        x,
        y,
        text,
        ha=ha,
        va=va,
        fontsize=size,
        color=color,
        family=MONO if mono else None,
        fontweight="bold" if bold else None,
        linespacing=1.25,
        **kw,
    )


def _note(ax, x, y, text, *, ha="left", va="center", size=NOTE_SIZE, **kw):
    return _text(ax, x, y, text, size=size, color=MUTED, ha=ha, va=va, **kw)


def _arrow(ax, start, end, *, color=LINE, curve=0.0, width=1.2, dashed=False):
    """An arrow from ``start`` to ``end``; ``curve`` bends it (positive: to the left of its direction)."""
    from matplotlib.patches import FancyArrowPatch

    ax.add_patch(
        FancyArrowPatch(
            start,
            end,
            arrowstyle="-|>",
            mutation_scale=10,
            connectionstyle=f"arc3,rad={curve}",
            color=color,
            linewidth=width,
            linestyle="--" if dashed else "-",
            shrinkA=0,
            shrinkB=0,
        )
    )


def _plus(ax, x, y):
    """The circled plus where a branch adds its result back."""
    from matplotlib.patches import Circle

    ax.add_patch(Circle((x, y), 0.15, facecolor="white", edgecolor=INK, linewidth=1.2, zorder=3))
    _text(ax, x, y + 0.01, "+", size=11, zorder=4)


def _cell(ax, x, y, size, color, *, edge="white", width=None, height=None, hatch=None, line=0.8):
    """A square of side ``size`` (or a ``width`` x ``height`` rectangle) with its lower left corner at (x, y)."""
    from matplotlib.patches import Rectangle

    ax.add_patch(
        Rectangle(
            (x, y),
            size if width is None else width,
            size if height is None else height,
            facecolor=color,
            edgecolor=edge,
            linewidth=line,
            hatch=hatch,
            zorder=1,
        )
    )


def _vector(ax, x, y, values, *, cell, vertical=True, limit=1.0, along=None):
    """A vector of numbers as a strip of coloured cells (blue negative, red positive), starting at (x, y):
    downwards from its top cell when vertical, rightwards otherwise. Each cell is ``cell`` across the strip
    and ``along`` (default: ``cell``) along it."""
    along = cell if along is None else along
    import matplotlib

    cmap = matplotlib.colormaps[VALUE_CMAP]
    for i, value in enumerate(values):
        colour = cmap(0.5 + 0.5 * max(-1.0, min(1.0, float(value) / limit)))
        if vertical:
            _cell(ax, x, y - i * along, cell, colour, height=along, edge="white", line=0.6)
        else:
            _cell(ax, x + i * along, y, cell, colour, width=along, edge="white", line=0.6)


def _token_row(ax, x, y, tokens, *, cell=0.28, height=0.34, color="grey", highlight=(), size=TEXT_SIZE):
    """One box per token, left to right from (x, y); the indices in ``highlight`` are drawn in orange.
    Returns the x of each box's centre."""
    centres = []
    for i, token in enumerate(tokens):
        _box(
            ax,
            x + i * cell + 0.02,
            y,
            cell - 0.04,
            height,
            token_label(token),
            color="orange" if i in highlight else color,
            size=size,
            mono=True,
        )
        centres.append(x + i * cell + cell / 2)
    return centres


def _pseudo_vector(key: str, n: int) -> np.ndarray:
    """A fixed vector of n numbers in [-1, 1] for ``key``: the same key always gets the same numbers
    (a stand-in for a learned embedding, which the diagram cannot know)."""
    return np.random.default_rng(zlib.crc32(key.encode("utf-8"))).uniform(-1.0, 1.0, n)


def _weight_text(w: float) -> str:
    """0.333 -> '.33', 1.0 -> '1': short enough for a small cell."""
    return "1" if w >= 0.995 else f"{w:.2f}".lstrip("0")


def _tokens(tokens: str | Sequence[str]) -> list[str]:
    return list(tokens) if isinstance(tokens, str) else [str(t) for t in tokens]


# --- the diagrams, in the order of the chapters --------------------------------------------------------------


def next_token(
    context: str = "ODO: I",
    *,
    text: str | None = None,
    probabilities: Mapping[str, float] | None = None,
    example: str = "KIRA: Now!",
    top: int = 5,
):
    """Chapter 01: a language model reads the text so far and gives every possible next character a
    probability; a training text holds one such question per character.

    The bars show ``probabilities`` (character -> probability) when given, else the counts of what follows
    ``context`` in ``text``, else made-up numbers that say so.
    """
    if not context:
        raise ValueError("next_token needs a context of at least one character, e.g. context='ODO: I'.")
    source = "made-up numbers"
    if probabilities is None and text is not None:
        followers: dict[str, int] = {}
        start = text.find(context)
        while start != -1 and start + len(context) < len(text):
            follower = text[start + len(context)]
            followers[follower] = followers.get(follower, 0) + 1
            start = text.find(context, start + 1)
        if not followers:
            raise ValueError(f"the context {context!r} never occurs in the text: pick a shorter or commoner one.")
        total = sum(followers.values())
        probabilities = {ch: n / total for ch, n in followers.items()}
        source = f"counted after {total:,} occurrences in the text"
    elif probabilities is None:
        probabilities = {" ": 0.46, "'": 0.27, "t": 0.09, "f": 0.06, "n": 0.04}
    else:
        source = "the probabilities given"
    ranked = sorted(probabilities.items(), key=lambda item: -item[1])[:top]
    fig, ax = _canvas("A language model answers one question: what comes next?")

    # The context, the question mark, the model.
    shown = context[-11:]
    cell = 0.27
    _note(ax, 0.3, 2.78, "the text so far (the context)")
    x0 = 0.3
    if len(context) > len(shown):
        _text(ax, x0 + cell / 2, 2.22, "\u2026", color=MUTED)
        x0 += cell
    _token_row(ax, x0, 2.05, shown, cell=cell)
    question_x = x0 + len(shown) * cell
    _box(ax, question_x + 0.02, 2.05, cell - 0.04, 0.34, "?", color="orange", dashed=True, bold=True)
    model_x = question_x + cell + 0.35
    _arrow(ax, (question_x + cell + 0.05, 2.22), (model_x, 2.22))
    _box(ax, model_x, 1.87, 1.15, 0.7, "language\nmodel", color="purple")

    # The answer: a probability for every character of the vocabulary, the likeliest drawn.
    bars_x = model_x + 1.6
    _arrow(ax, (model_x + 1.15, 2.22), (bars_x - 0.05, 2.22))
    _note(ax, bars_x, 2.95, "P(next character | context)")
    bar_room = 8.0 - bars_x - 0.85
    for i, (ch, p) in enumerate(ranked):
        y = 2.62 - i * 0.25
        _text(ax, bars_x + 0.12, y, token_label(ch), mono=True)
        _cell(ax, bars_x + 0.3, y - 0.09, 0.18, PALETTE["orange"][1], width=max(0.02, p * bar_room), edge="none")
        _note(ax, bars_x + 0.36 + p * bar_room, y, f"{p:.0%}")
    _note(ax, bars_x, 2.62 - len(ranked) * 0.25, f"the {len(ranked)} likeliest ({source})", size=7.0)

    # Training: every position of a text is a question whose answer is the next character.
    example = example[:20]
    _note(ax, 0.3, 1.08, "Training needs no labels: every character of a text answers \u201cwhat comes after the text")
    _note(ax, 0.3, 0.9, "before it?\u201d, so one line holds one question per character (\u00b7 is a space):")
    _note(ax, 0.3, 0.58, "the text")
    _note(ax, 0.3, 0.18, "its next\ncharacter", size=7.0)
    centres = _token_row(ax, 1.1, 0.43, example[:-1], cell=0.3, height=0.3)
    _token_row(ax, 1.1, 0.03, example[1:], cell=0.3, height=0.3, color="orange")
    for c in centres:
        _arrow(ax, (c, 0.43), (c, 0.34), width=0.8)
    return fig


def bigram_table(text: str = "SISKO: Sisko.", *, vocab_size: int = 81):
    """Chapter 03: a window two characters wide slides along the text; each pair adds 1 to the cell
    [current, next] of a table, and a row divided by its total is P(next | current)."""
    if len(text) < 2:
        raise ValueError("bigram_table needs a text of at least two characters, e.g. 'SISKO: Sisko.'.")
    text = text[:26]
    pairs = list(zip(text, text[1:]))
    chars = sorted(set(text))
    index = {c: i for i, c in enumerate(chars)}
    counts = np.zeros((len(chars), len(chars)), dtype=int)
    for a, b in pairs:
        counts[index[a], index[b]] += 1
    # The row to explain: the character followed by the most different characters.
    row = int(np.argmax((counts > 0).sum(axis=1) * 1000 + counts.sum(axis=1)))
    window = next(i for i, (a, _) in enumerate(pairs) if index[a] == row)
    a, b = pairs[window]

    fig, ax = _canvas("The bigram table: count which character follows which")
    _note(ax, 0.3, 2.92, "1. slide a window two characters wide along the text:")
    _token_row(ax, 0.3, 2.4, text, cell=0.27, highlight={window, window + 1})
    _note(
        ax,
        0.3 + len(text) * 0.27 + 0.15,
        2.57,
        f"{token_label(a)} then {token_label(b)}:\n+1 in row {token_label(a)},\ncolumn {token_label(b)}",
        size=7.3,
    )

    # The table of this text's characters.
    n = len(chars)
    size = min(0.19, 1.75 / n)
    top, left = 2.0, 0.65
    label_size = max(5.5, min(8.0, size * 45))
    for i in range(n):
        for j in range(n):
            colour = PALETTE["grey"][0]
            if counts[i, j]:
                colour = PALETTE["orange"][1] if i == row else PALETTE["blue"][1]
            _cell(ax, left + j * size, top - (i + 1) * size, size, colour, edge="white")
            if counts[i, j]:
                _text(ax, left + (j + 0.5) * size, top - (i + 0.5) * size, str(counts[i, j]), size=6.0, color="white")
        _text(ax, left - 0.07, top - (i + 0.5) * size, token_label(chars[i]), size=label_size, mono=True, ha="right")
        _text(ax, left + (i + 0.5) * size, top + 0.09, token_label(chars[i]), size=label_size, mono=True)
    notes_x = left + n * size + 0.15
    _note(ax, notes_x, top, "2. the table of counts:", va="top")
    _note(ax, notes_x, top - 0.25, "row: the current character\ncolumn: the next one", va="top", size=7.3)
    _note(
        ax,
        notes_x,
        top - 0.72,
        f"here {n} \u00d7 {n}, for this text's\n{n} characters; for the whole\ncorpus {vocab_size} \u00d7 {vocab_size}",
        va="top",
        size=7.3,
    )

    # The chosen row as probabilities.
    x = 5.2
    followers = [(chars[j], int(counts[row, j])) for j in range(n) if counts[row, j]]
    total = sum(c for _, c in followers)
    _note(ax, x, top, f"3. divide row {token_label(chars[row])} by its total ({total}):", va="top")
    _note(ax, x, top - 0.22, f"P(next | current = {token_label(chars[row])})", va="top", size=7.3)
    for k, (ch, count) in enumerate(followers[:4]):
        y = top - 0.6 - k * 0.24
        p = count / total
        _text(ax, x + 0.1, y, token_label(ch), mono=True)
        _cell(ax, x + 0.3, y - 0.08, 0.16, PALETTE["orange"][1], width=p * 1.2, edge="none")
        _note(ax, x + 0.36 + p * 1.2, y, f"{count}/{total} = {p:.2f}", size=7.3)
    _note(ax, x, 0.38, "4. to write: draw the next character\nfrom the current one's row; repeat.", size=7.3)
    _note(ax, 0.3, 0.1, "\u00b7 is a space", size=7.0)
    return fig


def attention(weights=None, tokens: str | Sequence[str] = "ODO: Aye", *, row: int | None = None):
    """Chapter 05: attention is a weighted average of the past. Row t of the (T, T) weights says how much
    position t takes from each position up to itself (the future is masked); ``weights @ v`` averages the
    value vectors with those weights.

    ``weights`` is a (T, T) causal map whose rows sum to 1 (a tensor or an array); None draws the even
    average of chapter 05's first section. ``row`` picks the position whose average is explained (default:
    the last). The values are stand-ins: only their averaging matters here.
    """
    labels = _tokens(tokens)
    if weights is None:
        weights = np.tril(np.ones((len(labels), len(labels))))
        weights = weights / np.maximum(weights.sum(axis=1, keepdims=True), 1)
    weights = _as_array(weights)
    if weights.ndim != 2 or weights.shape[0] != weights.shape[1] or weights.shape[0] == 0:
        raise ValueError(f"attention wants one (T, T) map of weights, got shape {weights.shape}.")
    T = weights.shape[0]
    if len(labels) < T:
        raise ValueError(f"{len(labels)} tokens for a {T}x{T} map: pass one token per position.")
    if T > 24:
        raise ValueError(f"a {T}x{T} map is too big for a diagram: pass at most 24 positions (e.g. weights[:24, :24]).")
    labels = labels[:T]
    row = T - 1 if row is None else row
    if not 0 <= row < T:
        raise ValueError(f"row {row} is not a position of a {T}-position map (0 to {T - 1}).")
    dims = 4
    values = np.stack([_pseudo_vector(f"value {t} {label}", dims) for t, label in enumerate(labels)])
    output = weights @ values

    import matplotlib
    from matplotlib.patches import Rectangle

    blues = matplotlib.colormaps["Blues"]
    fig, ax = _canvas("Attention: every position takes a weighted average of the positions up to itself")
    cell = min(0.25, 2.2 / T)
    top, left = 2.72, 0.8
    width = T * cell
    v_cell = 0.25  # the value columns keep their width whatever T is
    vmax = max(float(weights.max()), 1e-9)
    for i in range(T):
        for j in range(T):
            x, y = left + j * cell, top - (i + 1) * cell
            if j > i:
                _cell(ax, x, y, cell, PALETTE["grey"][0], edge="white", hatch="///")
                continue
            w = float(weights[i, j])
            _cell(ax, x, y, cell, blues(0.08 + 0.8 * w / vmax), edge="white")
            if cell >= 0.22:
                colour = "white" if w / vmax > 0.55 else INK
                _text(ax, x + cell / 2, y + cell / 2, _weight_text(w), size=6.0, color=colour)
    size = max(5.0, min(TEXT_SIZE, 32 * cell))
    for t, label in enumerate(labels):
        _text(ax, left - 0.06, top - (t + 0.5) * cell, token_label(label), ha="right", mono=True, size=size)
        _text(ax, left + (t + 0.5) * cell, top + 0.1, token_label(label), mono=True, size=size)
    _note(ax, left + width / 2, top + 0.3, "looked at (key) \u2192", ha="center")
    _note(ax, left - 0.45, top - width / 2, "\u2190 looking (query)", ha="center", rotation=90)
    _text(ax, left + width / 2, top - width - 0.17, f"weights ({T}, {T})", size=NOTE_SIZE)

    # weights @ v = out, with the explained row highlighted on both sides.
    x_v = left + width + 0.42
    _text(ax, x_v - 0.21, top - width / 2, "@", size=12)
    for t in range(T):
        _vector(ax, x_v, top - (t + 1) * cell, values[t], cell=cell, vertical=False, along=v_cell)
    _text(ax, x_v + dims * v_cell / 2, top - width - 0.17, f"v ({T}, head_size)", size=NOTE_SIZE)
    _note(ax, x_v + dims * v_cell / 2, top + 0.1, "values", ha="center")
    x_out = x_v + dims * v_cell + 0.42
    _text(ax, x_out - 0.21, top - width / 2, "=", size=12)
    for t in range(T):
        _vector(ax, x_out, top - (t + 1) * cell, output[t], cell=cell, vertical=False, along=v_cell)
    _text(ax, x_out + dims * v_cell / 2, top - width - 0.17, f"out ({T}, head_size)", size=NOTE_SIZE)
    _note(ax, x_out + dims * v_cell / 2, top + 0.1, "output", ha="center")
    for x, w in ((left, width), (x_out, dims * v_cell)):
        ax.add_patch(
            Rectangle(
                (x, top - (row + 1) * cell), w, cell, fill=False, edgecolor=PALETTE["orange"][1], lw=1.8, zorder=3
            )
        )

    # What to read.
    x_notes = x_out + dims * v_cell + 0.3
    terms = [f"{_weight_text(float(weights[row, s]))}\u00b7v{s}" for s in range(row + 1) if weights[row, s] > 0]
    formula = " + ".join(terms[:3]) + (" + \u2026" if len(terms) > 3 else "")
    lines = [
        (f"Row {row} ({token_label(labels[row])}) sums to 1: its", INK),
        ("output is a weighted average", INK),
        ("of the values of positions 0 to " + str(row) + ":", INK),
        (f"out{row} = {formula}", INK),
        ("", INK),
        ("Hatched: the future. Its score is", MUTED),
        ("set to \u2212\u221e before the softmax, so", MUTED),
        ("its weight is exactly 0: no position", MUTED),
        ("sees the character it must predict.", MUTED),
    ]
    for k, (line, colour) in enumerate(lines):
        _text(ax, x_notes, top + 0.05 - k * 0.22, line, size=7.5, ha="left", va="top", color=colour)
    _note(
        ax,
        0.3,
        0.15,
        "weights = softmax(q\u00b7k / \u221ahead_size + mask), one row per position; a batch of B texts is "
        "B such maps at once.",
        size=7.5,
    )
    return fig


def heads(n_embd: int = 192, n_head: int = 4):
    """Chapter 06: multi-head attention. Every head reads the whole vector of ``n_embd`` numbers and computes
    its own attention with queries, keys and values of ``head_size = n_embd // n_head`` numbers; the heads'
    outputs, side by side, are ``n_embd`` numbers again, mixed by one projection."""
    if n_head < 1 or n_embd % n_head:
        raise ValueError(f"n_embd={n_embd} does not split into n_head={n_head} equal heads: pick a divisor of it.")
    head_size = n_embd // n_head
    fig, ax = _canvas(f"Multi-head attention: {n_head} heads of {head_size} instead of one head of {n_embd}")
    colours = ["blue", "orange", "green", "purple", "red", "grey"]
    shown = list(range(n_head)) if n_head <= 6 else [0, 1, 2, 3, None, n_head - 1]
    top, bottom = 2.75, 0.8
    height = top - bottom
    middle = bottom + height / 2

    def strip(x, label, colour):
        _cell(ax, x, bottom, 0.3, PALETTE[colour][0], height=height, edge=PALETTE[colour][1])
        _text(ax, x + 0.15, bottom - 0.17, label, size=NOTE_SIZE)
        _note(ax, x + 0.15, bottom - 0.36, "(B, T, n_embd)", ha="center", size=7.0)

    strip(0.45, f"x: {n_embd}", "grey")
    slot = height / len(shown)
    head_x, head_w, out_x = 1.4, 2.5, 4.4
    for k, h in enumerate(shown):
        y = top - (k + 1) * slot + 0.05
        if h is None:
            _text(ax, head_x + head_w / 2, y + slot / 2 - 0.05, "\u22ee", size=12, color=MUTED)
            continue
        colour = colours[h % len(colours)]
        _arrow(ax, (0.78, middle), (head_x, y + (slot - 0.1) / 2), width=0.8)
        _box(
            ax,
            head_x,
            y,
            head_w,
            slot - 0.1,
            f"head {h}: its own q, k, v of {head_size}\nattention over the past",
            color=colour,
            size=7.3 if slot < 0.5 else NOTE_SIZE,
        )
        _arrow(ax, (head_x + head_w, y + (slot - 0.1) / 2), (out_x - 0.03, top - (k + 0.5) * slot), width=0.8)
        _cell(ax, out_x, top - (k + 1) * slot, 0.3, PALETTE[colour][1], height=slot, edge="white", line=1.2)
    _text(ax, out_x + 0.15, bottom - 0.17, f"{n_head} \u00d7 {head_size}", size=NOTE_SIZE)
    _note(ax, out_x + 0.15, bottom - 0.36, "side by side", ha="center", size=7.0)
    _arrow(ax, (out_x + 0.33, middle), (5.15, middle))
    _box(ax, 5.15, middle - 0.42, 1.2, 0.84, f"proj\nLinear\n{n_embd} \u2192 {n_embd}", color="purple", size=NOTE_SIZE)
    _arrow(ax, (6.35, middle), (6.7, middle))
    strip(6.72, f"out: {n_embd}", "purple")
    _note(ax, 7.15, middle + 0.3, "what the\nheads found,\nmixed", size=7.3)
    _note(
        ax,
        0.3,
        0.13,
        f"head_size = n_embd // n_head = {n_embd} // {n_head} = {head_size}. Each head asks its own question of "
        f"all {n_embd} numbers; together they cost what one head of {n_embd} costs.",
        size=7.3,
    )
    return fig


def transformer_block(n_embd: int = 192, n_head: int = 4, n_layer: int = 4):
    """Chapter 07: a pre-norm transformer block. The residual stream runs straight through; attention and
    the feed-forward layer each read a layer-normed copy of it and add their result back."""
    if n_head < 1 or n_embd % n_head:
        raise ValueError(f"n_embd={n_embd} does not split into n_head={n_head} equal heads: pick a divisor of it.")
    fig, ax = _canvas("A transformer block: two parts, each adding its result to the residual stream")
    stream_y, branch_y = 1.25, 2.3
    ax.plot([0.3, 7.5], [stream_y, stream_y], color=PALETTE["grey"][1], linewidth=5, solid_capstyle="butt", zorder=0)
    _arrow(ax, (7.4, stream_y), (7.75, stream_y), color=PALETTE["grey"][1], width=2.5)
    _text(ax, 0.3, stream_y + 0.2, "x in", size=NOTE_SIZE, ha="left")
    _text(ax, 7.75, stream_y + 0.2, "x out", size=NOTE_SIZE, ha="right")
    _note(ax, 0.3, stream_y - 0.25, f"the residual stream x: (B, T, n_embd = {n_embd})", size=7.3)

    def part(x, norm, name, detail, colour, formula, caption):
        _arrow(ax, (x, stream_y), (x, branch_y))
        _box(ax, x - 0.38, branch_y, 0.76, 0.44, norm, color="grey", size=NOTE_SIZE, mono=True)
        _note(ax, x, branch_y + 0.58, "layer norm", ha="center", size=7.0)
        _arrow(ax, (x + 0.38, branch_y + 0.22), (x + 0.62, branch_y + 0.22))
        _box(ax, x + 0.62, branch_y - 0.13, 1.85, 0.7, "", color=colour)
        _text(ax, x + 1.545, branch_y + 0.38, name, size=TEXT_SIZE, mono=True, bold=True)
        _text(ax, x + 1.545, branch_y + 0.05, detail, size=7.3)
        plus_x = x + 2.8
        ax.plot([x + 2.47, plus_x], [branch_y + 0.22, branch_y + 0.22], color=LINE, linewidth=1.2)
        _arrow(ax, (plus_x, branch_y + 0.22), (plus_x, stream_y + 0.16))
        _plus(ax, plus_x, stream_y)
        _text(ax, x + 1.4, 0.62, formula, mono=True)
        _note(ax, x + 1.4, 0.38, caption, ha="center", size=7.3)

    part(
        0.7,
        "ln_1",
        "attn",
        f"{n_head} heads of {n_embd // n_head}:\ngather from the past",
        "blue",
        "x = x + attn(ln_1(x))",
        "communicate: positions exchange information",
    )
    part(
        4.3,
        "ln_2",
        "ffwd",
        f"{n_embd} \u2192 {4 * n_embd} \u2192 {n_embd}, GELU:\neach position on its own",
        "green",
        "x = x + ffwd(ln_2(x))",
        "compute: each position works on what it gathered",
    )
    _note(
        ax,
        0.3,
        0.1,
        f"The stream is only ever added to, never replaced: a straight path for the gradient. The GPT stacks "
        f"n_layer = {n_layer} of these blocks.",
        size=7.0,
    )
    return fig


def positional_encoding(
    tokens: str | Sequence[str] = "SISKO: Odo", *, n_embd: int = 64, kind: str = "sinusoidal", dims: int = 5
):
    """Chapter 08: the vector that enters the first block is the character's row of the token table plus
    the row of its position, so the same character at two positions enters as two different vectors.

    ``kind`` is ``"sinusoidal"`` (the fixed table of sines and cosines, drawn with its real values) or
    ``"learned"`` (a trained table, drawn with stand-in numbers, as are the token vectors). The first
    ``dims`` of each vector's ``n_embd`` numbers are drawn.
    """
    if kind not in ("sinusoidal", "learned"):
        raise ValueError(f"kind={kind!r}: choose 'sinusoidal' or 'learned'.")
    labels = _tokens(tokens)[:12]
    if not labels:
        raise ValueError("positional_encoding needs at least one token, e.g. tokens='SISKO: Odo'.")
    T = len(labels)
    dims = max(1, min(dims, n_embd, 6))
    token_vectors = np.stack([_pseudo_vector(f"token {label}", dims) for label in labels])
    if kind == "sinusoidal":
        from ds9_utils.model import sinusoidal_positions

        positions = sinusoidal_positions(T, n_embd).numpy()[:, :dims]
        position_detail = "fixed sines and cosines"
    else:
        positions = 0.8 * np.stack([_pseudo_vector(f"position {t}", dims) for t in range(T)])
        position_detail = "a learned table"
    inputs = token_vectors + positions
    first_seen: dict[str, int] = {}
    repeat = None
    for t, label in enumerate(labels):
        if label in first_seen and label.strip() and repeat is None:
            repeat = (first_seen[label], t)
        first_seen.setdefault(label, t)

    fig, ax = _canvas("Positions: each character enters as its token vector + its position's vector")
    pitch = min(0.48, 4.9 / T)
    cell = 0.11
    left = 2.75
    centres = [left + t * pitch + pitch / 2 for t in range(T)]
    for t, label in enumerate(labels):
        colour = "orange" if repeat and t in repeat else "grey"
        _box(ax, centres[t] - 0.15, 2.55, 0.3, 0.3, token_label(label), color=colour, mono=True)
        _note(ax, centres[t], 2.43, f"t={t}", ha="center", size=6.5)
    same = f"the same for both {token_label(labels[repeat[0]])}" if repeat else "one row per character"
    rows = [
        ("token_embedding[character]", same, token_vectors, 2.25, 1.0),
        ("+ position_vector[t]", position_detail, positions, 1.55, 1.0),
        ("= x, into the first block", "different at every position", inputs, 0.85, 2.0),
    ]
    for name, detail, vectors, y_top, limit in rows:
        middle = y_top - dims * cell / 2
        _text(ax, 0.25, middle + 0.08, name, size=NOTE_SIZE, ha="left", mono=True)
        _note(ax, 0.25, middle - 0.12, detail, size=7.0)
        for t in range(T):
            _vector(ax, centres[t] - cell / 2, y_top - cell, vectors[t], cell=cell, limit=limit)
    _note(ax, 0.25, 2.75, f"each vector: its first {dims}\nof {n_embd} numbers", size=7.0)
    if repeat:
        a, b = repeat
        message = (
            f"The two {token_label(labels[a])} (t={a} and t={b}) share a token vector but enter the model as "
            "different vectors: now attention can tell them apart."
        )
    else:
        message = "Without the position vector, attention could not tell the order of the characters."
    _note(ax, 0.25, 0.13, message, size=7.3)
    return fig


def training_loop(batch_size: int = 16, block_size: int = 32, vocab_size: int = 81, grad_clip: float = 1.0):
    """Chapter 09: one training step in five parts (batch, forward, backward, clip, step), repeated; with
    an evaluation on held-out episodes and a checkpoint every ``eval_interval`` steps."""
    fig, ax = _canvas("The training loop: five parts, repeated max_steps times")
    parts = [
        ("1. batch", f"x, y = get_batch(...)\n{batch_size} windows of {block_size}\ny: x shifted by one", "blue"),
        (
            "2. forward",
            f"model(x, y)\nlogits ({batch_size}, {block_size}, {vocab_size})\nloss: cross-entropy",
            "purple",
        ),
        ("3. backward", "loss.backward()\na gradient for\nevery weight", "orange"),
        ("4. clip", f"gradient norm\nabove {grad_clip:g}? shrink\nit to {grad_clip:g}", "grey"),
        ("5. step", "optimizer.step()\nAdamW, learning\nrate lr_at(step)", "green"),
    ]
    width, gap, y, h = 1.34, 0.2, 1.5, 1.05
    x0 = (8.0 - (len(parts) * width + (len(parts) - 1) * gap)) / 2
    for i, (name, detail, colour) in enumerate(parts):
        x = x0 + i * (width + gap)
        _box(ax, x, y, width, h, "", color=colour)
        _text(ax, x + width / 2, y + h - 0.17, name, bold=True)
        _text(ax, x + width / 2, y + h / 2 - 0.12, detail, size=7.3)
        if i:
            _arrow(ax, (x - gap + 0.01, y + h / 2), (x - 0.01, y + h / 2))
    last = x0 + (len(parts) - 1) * (width + gap) + width / 2
    _arrow(ax, (last, y), (x0 + width / 2, y), curve=-0.22)
    _note(ax, 4.0, 0.98, "the next step, with a fresh batch", ha="center")
    _box(
        ax,
        0.9,
        0.12,
        6.2,
        0.4,
        "every eval_interval steps: estimate_loss on training and validation episodes, save a checkpoint",
        color="grey",
        size=7.6,
        dashed=True,
    )
    _note(
        ax, 0.3, 2.88, "The loss says how surprised the model was by each next character; each step lowers it a little."
    )
    return fig


def kv_cache(
    tokens: str | Sequence[str] = "KIRA: Report", *, n_layer: int = 4, n_embd: int = 192, block_size: int = 128
):
    """Chapter 10: generating with and without the KV cache. Without it, every new character runs the model
    over the whole context again; with it, only the new position is computed and the keys and values of the
    earlier ones are read back from the cache."""
    labels = _tokens(tokens)[:14]
    if not labels:
        raise ValueError("kv_cache needs at least one token, e.g. tokens='KIRA: Report'.")
    T = len(labels)
    fig, ax = _canvas("The KV cache: compute each position once, keep its keys and values")
    cell = min(0.16, 1.9 / T)
    top = 2.62

    def panel(left, title, cached, explanation):
        _text(ax, left, top + 0.38, title, ha="left", bold=True)
        for step in range(T):
            y = top - (step + 1) * cell
            _note(ax, left - 0.06, y + cell / 2, f"{step + 1}", ha="right", size=6.0)
            for t in range(T):
                if t == step or (t < step and not cached):
                    colour = PALETTE["orange"][1]
                elif t < step:
                    colour = PALETTE["blue"][0]
                else:
                    colour = "white"
                _cell(ax, left + t * cell, y, cell, colour, edge="#d5dade", line=0.5)
        for t, label in enumerate(labels):
            _text(ax, left + (t + 0.5) * cell, top + 0.1, token_label(label), size=6.5, mono=True)
        _note(ax, left - 0.3, top - T * cell / 2, "step", rotation=90, ha="center", size=7.0)
        computed = T if cached else T * (T + 1) // 2
        notes_x = left + T * cell + 0.15
        _note(ax, notes_x, top - 0.05, explanation, va="top", size=7.3)
        _note(ax, notes_x, top - 1.85, f"positions\ncomputed: {computed}", va="bottom", size=7.3)

    panel(0.55, "without the cache", False, "step t runs the\nmodel on all t\npositions again")
    panel(
        4.35,
        "with the cache",
        True,
        "step t runs it on\nthe new position;\nthe others' keys\nand values are\nread back",
    )
    legend_y = 0.55
    _cell(ax, 0.55, legend_y - 0.07, 0.14, PALETTE["orange"][1])
    _note(ax, 0.75, legend_y, "computed at this step (query, key, value)", size=7.3)
    _cell(ax, 4.35, legend_y - 0.07, 0.14, PALETTE["blue"][0], edge="#d5dade")
    _note(ax, 4.55, legend_y, "key and value read from the cache", size=7.3)
    numbers = n_layer * 2 * block_size * n_embd
    _note(
        ax,
        0.55,
        0.17,
        f"The cache: n_layer \u00d7 (key + value) \u00d7 block_size \u00d7 n_embd = {n_layer} \u00d7 2 \u00d7 "
        f"{block_size} \u00d7 {n_embd} = {numbers:,} numbers.",
        size=7.5,
    )
    return fig


def bpe_merges(text: str = "Quark, Quark's bar, Quark!", num_merges: int = 4):
    """Chapter 12: byte-pair encoding. Start from the text's bytes; again and again, find the pair of
    neighbours that occurs most often and glue it into one new token (256, 257, ...). Each row is the text
    after one more merge: fewer, longer tokens."""
    from ds9_utils.tokenizers import count_pairs, merge_pair, text_bytes, textbook_bpe_merges

    data = text_bytes(text)
    if len(data) < 2:
        raise ValueError('bpe_merges needs a text of at least two bytes, e.g. "Quark, Quark\'s bar, Quark!".')
    if len(data) > 30:
        raise ValueError(f"{len(data)} bytes are too many to draw: pass a text of at most 30 bytes.")
    if not 1 <= num_merges <= 6:
        raise ValueError(f"num_merges={num_merges}: draw between 1 and 6 merges.")
    merges = textbook_bpe_merges(text, num_merges, pattern=None)
    vocab = {i: bytes([i]) for i in range(256)}
    rows: list[tuple[list[int], int | None, int]] = [(list(data), None, 0)]
    for k, pair in enumerate(merges):
        ids = rows[-1][0]
        vocab[256 + k] = vocab[pair[0]] + vocab[pair[1]]
        rows.append((merge_pair(ids, pair, 256 + k), 256 + k, count_pairs(ids)[pair]))

    def shown(token: int) -> str:
        return token_label(vocab[token].decode("utf-8", "replace"))

    fig, ax = _canvas("Byte-pair encoding: merge the most frequent pair of neighbours, again and again")
    cell = min(0.21, 5.1 / len(data))
    left = 2.3
    pitch = min(0.45, 2.35 / len(rows))
    _note(ax, left + len(data) * cell + 0.12, 2.98, "tokens", size=7.3)
    for r, (ids, new_id, count) in enumerate(rows):
        y = 2.55 - r * pitch
        if new_id is None:
            label = "start: one token per byte"
        else:
            a, b = merges[new_id - 256]
            label = f"{shown(a)} + {shown(b)} \u2192 {new_id} ({count}\u00d7)"
        _text(ax, left - 0.15, y + 0.14, label, size=7.5, ha="right", mono=True)
        x = left
        for token in ids:
            colour = "orange" if token == new_id else ("blue" if token >= 256 else "grey")
            width = len(vocab[token]) * cell
            _box(ax, x + 0.015, y, width - 0.03, 0.28, shown(token), color=colour, size=7.5, mono=True)
            x += width
        _text(ax, left + len(data) * cell + 0.3, y + 0.14, str(len(ids)), size=NOTE_SIZE)
    _note(
        ax,
        0.25,
        0.12,
        "Orange: the token this row's merge makes (its id; how often the pair occurred). Blue: tokens from "
        "earlier merges. The merges, in order, are the tokenizer.",
        size=7.0,
    )
    return fig


def lora(in_features: int = 192, out_features: int = 576, rank: int = 8, alpha: float = 16):
    """Chapter 13: LoRA. The layer's weight W stays frozen; a correction (alpha / rank) * B A, built from
    two thin trained matrices, is added to its output. B starts at zero, so training starts from the base
    model exactly."""
    if rank < 1:
        raise ValueError(f"rank={rank}: a LoRA adapter needs a rank of at least 1.")
    scaling = alpha / rank
    frozen = in_features * out_features
    trained = rank * (in_features + out_features)
    fig, ax = _canvas("LoRA: keep W frozen, learn a small correction B A beside it")
    mid = 1.95
    _box(ax, 0.25, mid - 0.25, 0.7, 0.5, f"x\n{in_features}", color="grey", size=NOTE_SIZE)
    # The frozen path.
    _arrow(ax, (0.95, mid), (1.4, 2.4))
    _box(ax, 1.4, 1.85, 1.1, 1.1, f"W\n{out_features} \u00d7 {in_features}", color="grey", size=NOTE_SIZE)
    _note(ax, 1.95, 3.07, "frozen", ha="center")
    # The adapter path.
    _arrow(ax, (0.95, mid), (1.4, 1.07))
    _box(ax, 1.4, 0.95, 1.1, 0.24, "", color="green")
    _text(ax, 1.95, 0.8, f"A: {rank} \u00d7 {in_features}", size=7.3)
    _arrow(ax, (2.5, 1.07), (2.75, 1.07))
    _box(ax, 2.75, 0.5, 0.24, 1.15, "", color="green")
    _text(ax, 2.87, 0.36, f"B: {out_features} \u00d7 {rank}", size=7.3)
    _note(ax, 1.95, 0.5, "trained", ha="center")
    _arrow(ax, (2.99, 1.07), (3.25, 1.07))
    _box(ax, 3.25, 0.85, 0.7, 0.44, f"\u00d7 {scaling:g}\n\u03b1 / r", color="green", size=7.3)
    plus = (4.35, mid)
    _arrow(ax, (2.5, 2.4), (plus[0] - 0.1, plus[1] + 0.12))
    _arrow(ax, (3.95, 1.07), (plus[0] - 0.07, plus[1] - 0.13))
    _plus(ax, *plus)
    _arrow(ax, (plus[0] + 0.15, mid), (4.8, mid))
    _box(ax, 4.8, mid - 0.25, 0.7, 0.5, f"y\n{out_features}", color="blue", size=NOTE_SIZE)
    notes = [
        (f"W: {out_features} \u00d7 {in_features} = {frozen:,} numbers,", INK),
        ("never changed.", INK),
        (f"A and B: {rank} \u00d7 ({in_features} + {out_features}) = {trained:,}", INK),
        (f"numbers, trained: {trained / frozen:.1%} of W.", INK),
        ("", INK),
        ("B starts at 0, so at step 0 the layer", MUTED),
        ("is exactly the base model's layer.", MUTED),
        ("After training, merge it into W:", MUTED),
        (f"W' = W + {scaling:g} \u00b7 B A", MUTED),
    ]
    for k, (line, colour) in enumerate(notes):
        _text(ax, 5.75, 2.95 - k * 0.22, line, size=7.5, ha="left", va="top", color=colour)
    _text(ax, 5.75, 0.55, f"y = x W\u1d40 + {scaling:g}\u00b7(x A\u1d40) B\u1d40", size=NOTE_SIZE, ha="left", mono=True)
    return fig


def rlhf_loop(kl_coef: float = 0.1, judge: str = "the rater"):
    """Chapter 14: RLHF. The starting model writes pairs of scenes, a judge prefers one of each pair, a
    reward model learns to score scenes from those preferences; then the policy is tuned with REINFORCE
    to write scenes the reward model likes, held near the frozen starting model by a KL penalty."""
    fig, ax = _canvas("RLHF: learn what \u201cgood\u201d means from preferences, then write more of it")
    _note(ax, 0.3, 2.95, "1. learn a score from preferences (once)", size=NOTE_SIZE)
    top = [
        ("prompt\n[Ops] (Kira enters)", "grey"),
        ("starting model\nwrites scenes A, B", "purple"),
        (f"judge\n({judge} or you)", "orange"),
        ("preference pair\nchosen, rejected", "blue"),
        ("reward model\nscore r(scene)", "green"),
    ]
    w, h, gap, y_top = 1.34, 0.58, 0.2, 2.15
    for i, (label, colour) in enumerate(top):
        x = 0.3 + i * (w + gap)
        _box(ax, x, y_top, w, h, label, color=colour, size=7.8)
        if i:
            _arrow(ax, (x - gap, y_top + h / 2), (x, y_top + h / 2))
    reward_x = 0.3 + 4 * (w + gap) + w / 2
    _note(ax, reward_x, y_top - 0.13, "learns: Bradley-Terry loss", ha="center", size=6.8)

    _note(ax, 0.3, 1.72, "2. tune the policy with it (repeat)", size=NOTE_SIZE)
    y_bot = 0.8
    boxes = [
        (0.3, 1.45, "policy: a copy of\nthe starting model", "purple", 7.6),
        (2.1, 1.4, "writes scenes\nfor a prompt", "grey", 7.6),
        (3.85, 1.7, f"return = reward\n\u2212 {kl_coef:g} \u00b7 KL", "green", 7.6),
        (5.9, 1.8, "REINFORCE step:\nbetter-than-usual\nscenes more likely", "orange", 7.3),
    ]
    for k, (x, bw, label, colour, size) in enumerate(boxes):
        _box(ax, x, y_bot, bw, h, label, color=colour, size=size)
        if k:
            previous_x, previous_w = boxes[k - 1][:2]
            _arrow(ax, (previous_x + previous_w, y_bot + h / 2), (x, y_bot + h / 2))
    _arrow(ax, (6.8, y_bot), (1.02, y_bot), curve=-0.12)
    _note(ax, 3.9, 0.32, "the tuned policy writes the next scenes", ha="center", size=7.0)
    # The reward model scores the policy's scenes; the frozen reference measures how far the policy moved.
    _arrow(ax, (reward_x, y_top - 0.25), (5.3, y_bot + h), dashed=True)
    _box(ax, 2.75, 1.5, 1.55, 0.4, "reference: the frozen\nstarting model", color="grey", size=7.0, dashed=True)
    _arrow(ax, (4.3, 1.6), (4.6, y_bot + h), dashed=True)
    _note(
        ax,
        0.3,
        0.1,
        f"KL: how far the policy has moved from the reference, weighted by \u03b2 = {kl_coef:g}. "
        "DPO skips the reward model and tunes the policy on the pairs directly.",
        size=7.0,
    )
    return fig


def data_parallel(n_ranks: int = 2, batch_size: int = 16):
    """Chapter 15: data parallelism. Every rank holds a full copy of the model and works on its own share of
    the batch; the all-reduce averages their gradients, so every copy takes the same step."""
    if not 1 <= n_ranks <= 8:
        raise ValueError(f"n_ranks={n_ranks}: draw between 1 and 8 ranks.")
    if batch_size % n_ranks:
        raise ValueError(f"batch_size={batch_size} does not split evenly over {n_ranks} ranks: use a multiple of it.")
    share = batch_size // n_ranks
    colours = ["blue", "orange", "green", "purple", "red", "grey"]
    subscript = str.maketrans("0123456789", "\u2080\u2081\u2082\u2083\u2084\u2085\u2086\u2087\u2088\u2089")
    fig, ax = _canvas("Data parallelism: copies of the model, each on its own share of the batch")
    cell = min(0.3, 5.6 / batch_size)
    _note(ax, 0.3, 2.97, f"one batch of {batch_size} windows:")
    for i in range(batch_size):
        _cell(ax, 2.1 + i * cell, 2.86, cell, PALETTE[colours[(i // share) % len(colours)]][1], height=0.22)
    top, bottom = 2.6, 0.5
    slot = (top - bottom) / n_ranks
    h = min(0.5, slot - 0.08)
    size = 7.0 if h < 0.4 else NOTE_SIZE
    columns = [(0.3, 1.55), (2.2, 1.75), (4.3, 1.0)]
    reduce_x, reduce_w, step_x = 5.6, 0.9, 6.8
    for r in range(n_ranks):
        y = top - (r + 1) * slot + (slot - h) / 2
        colour = colours[r % len(colours)]
        texts = [
            (f"rank {r}: rows {r * share}\u2013{(r + 1) * share - 1}", colour),
            ("full copy of the model:\nforward + backward" if h >= 0.4 else "model copy: fwd + bwd", "purple"),
            (f"gradient g{r}".translate(subscript), colour),
        ]
        for (x, w), (label, c) in zip(columns, texts):
            _box(ax, x, y, w, h, label, color=c, size=size)
        for (x1, w1), (x2, _) in zip(columns, columns[1:]):
            _arrow(ax, (x1 + w1, y + h / 2), (x2, y + h / 2))
        _arrow(ax, (columns[-1][0] + columns[-1][1], y + h / 2), (reduce_x, y + h / 2))
        _arrow(ax, (reduce_x + reduce_w, y + h / 2), (step_x, y + h / 2))
        _box(ax, step_x, y, 1.0, h, "same step,\nsame weights" if h >= 0.4 else "same step", color="green", size=size)
    _box(ax, reduce_x, bottom, reduce_w, top - bottom, "all-reduce:\naverage the\ngradients", color="grey", size=7.5)
    mean = " + ".join(f"g{r}".translate(subscript) for r in range(min(n_ranks, 3)))
    if n_ranks > 3:
        mean += " + \u2026"
    _note(
        ax,
        0.3,
        0.17,
        f"Every rank gets g = ({mean}) / {n_ranks}: the gradient of the whole batch, because the loss is an average "
        "over its rows.",
        size=7.5,
    )
    return fig


def qkv_projections(n_embd: int = 32, head_size: int = 16):
    """Chapter 05: queries, keys and values. Three learned linear maps turn every position's vector into a
    query (what it looks for), a key (what it offers) and a value (what it passes on); the scores are the
    queries' dot products with the keys, scaled, masked and softmaxed row by row, and each position's output is
    the weighted sum of the values."""
    if n_embd < 1 or head_size < 1:
        raise ValueError(f"n_embd and head_size must be at least 1, got {n_embd} and {head_size}.")
    fig, ax = _canvas(f"One head: queries, keys and values from the same {n_embd} numbers per position")
    _cell(ax, 0.35, 0.75, 0.3, PALETTE["grey"][0], height=2.0, edge=PALETTE["grey"][1])
    _text(ax, 0.5, 0.58, "x", size=TEXT_SIZE, mono=True)
    _note(ax, 0.5, 0.38, f"(B, T, {n_embd})", ha="center", size=7.0)
    rows = [
        ("query", "orange", "what position t looks for", 2.35),
        ("key", "green", "what position s offers", 1.55),
        ("value", "blue", "what position s passes on", 0.75),
    ]
    for name, colour, meaning, y in rows:
        _arrow(ax, (0.68, 1.75), (1.25, y + 0.2), width=0.9)
        _box(ax, 1.25, y, 1.45, 0.4, f"{name}: Linear", color=colour, size=NOTE_SIZE, mono=True)
        _note(ax, 1.975, y - 0.12, f"{n_embd} \u2192 {head_size}: {meaning}", ha="center", size=7.0)
        _arrow(ax, (2.7, y + 0.2), (3.05, y + 0.2))
        _cell(ax, 3.05, y + 0.02, 0.36, PALETTE[colour][0], height=0.36, edge=PALETTE[colour][1])
        _text(ax, 3.23, y + 0.2, name[0], size=TEXT_SIZE, mono=True, bold=True)
    _arrow(ax, (3.41, 2.55), (4.55, 2.2))
    _arrow(ax, (3.41, 1.75), (4.55, 2.0))
    _box(
        ax,
        4.55,
        1.75,
        1.55,
        0.7,
        "scores = q k\u1d40 / \u221ad\nmask the future\nsoftmax each row",
        color="purple",
        size=7.3,
    )
    _note(ax, 5.325, 1.6, f"(B, T, T), d = {head_size}", ha="center", size=7.0)
    _arrow(ax, (6.1, 2.1), (6.45, 1.55))
    _arrow(ax, (3.41, 0.95), (6.45, 1.3))
    _box(ax, 6.45, 1.1, 1.3, 0.65, "out = weights @ v", color="purple", size=7.3, mono=True)
    _note(ax, 7.1, 0.95, f"(B, T, {head_size})", ha="center", size=7.0)
    _note(
        ax,
        0.3,
        0.12,
        "Three matrices are all a head learns. The weights come from the data (q against every k up to itself); "
        "what flows is the values.",
        size=7.3,
    )
    return fig


def whole_gpt(n_layer: int = 4, n_embd: int = 128, n_head: int = 4, vocab_size: int = 81, block_size: int = 128):
    """The whole GPT, bottom to top: token ids become vectors (a table lookup), pass through ``n_layer``
    identical blocks (attention to gather from the past, a feed-forward layer to compute, each adding to the
    residual stream), are normalised once more, and a last linear layer turns each position's vector into a
    score for every token of the vocabulary."""
    if n_layer < 1 or n_head < 1 or n_embd % n_head:
        raise ValueError(
            f"n_layer={n_layer}, n_head={n_head}, n_embd={n_embd}: need at least one layer and n_embd divisible "
            "by n_head."
        )
    fig, ax = _canvas(f"The whole GPT: {n_layer} blocks between a table lookup and a scoring layer", height=4.2)
    x0, w = 0.6, 3.6
    centre, notes_x = x0 + w / 2, x0 + w + 0.25

    def layer(y, h, text, colour, mono=False):
        _box(ax, x0, y, w, h, text, color=colour, size=NOTE_SIZE if h > 0.33 else 7.3, mono=mono)
        return y + h

    def step(y, length=0.13):
        _arrow(ax, (centre, y), (centre, y + length))
        return y + length

    y = layer(0.25, 0.35, f"token ids (B, T), T \u2264 {block_size}", "grey", mono=True)
    embedding_y = step(y)
    y = layer(embedding_y, 0.35, f"token embedding: {vocab_size} rows of {n_embd}", "green")
    y = step(y)
    first_block = y
    shown = n_layer if n_layer <= 4 else 3  # a deeper stack: the first two, a gap, the last
    for i in range(shown):
        index = i if shown == n_layer or i < shown - 1 else n_layer - 1
        if index != i:  # blocks left out between the first ones and the last
            _text(ax, centre, y + 0.07, "\u22ee", size=11, color=MUTED)
            y += 0.2
        y = layer(y, 0.32, f"block {index}: x + attn(norm(x)), then x + ffwd(norm(x))", "blue")
        y = step(y, 0.08) if i < shown - 1 else y
    blocks_middle = (first_block + y) / 2
    y = layer(step(y), 0.3, "final norm", "grey")
    head_y = step(y)
    y = layer(head_y, 0.35, f"lm_head: Linear {n_embd} \u2192 {vocab_size}", "purple", mono=True)
    _note(ax, notes_x, head_y + 0.17, f"logits (B, T, {vocab_size}): a score\nfor every possible next token", size=7.3)
    _note(
        ax,
        notes_x,
        embedding_y + 0.17,
        "each position becomes a vector of\nn_embd numbers: the residual stream",
        size=7.3,
    )
    _note(
        ax,
        notes_x,
        blocks_middle,
        f"{n_layer} identical blocks, each with\n{n_head} heads of {n_embd // n_head}; the stream keeps\nits shape "
        f"(B, T, {n_embd}) all the way up",
        size=7.3,
    )
    return fig


#: Every diagram, by the chapter that draws it (the tests check that each notebook shows its own).
BY_CHAPTER = {
    "01": next_token,
    "03": bigram_table,
    "05": attention,
    "06": heads,
    "07": transformer_block,
    "08": positional_encoding,
    "09": training_loop,
    "10": kv_cache,
    "12": bpe_merges,
    "13": lora,
    "14": rlhf_loop,
    "15": data_parallel,
}


# --- diagrams of the later recipes (not tied to one chapter's notebook) ----------------------------------------


def _dial(ax, centre, radius, *, cross=True):
    """A dashed circle (the plane of one pair of numbers), with faint axes through its centre."""
    from matplotlib.patches import Circle

    x, y = centre
    ax.add_patch(Circle(centre, radius, fill=False, edgecolor=LINE, linewidth=0.9, linestyle="--"))
    if cross:
        ax.plot([x - radius, x + radius], [y, y], color="#d5dade", linewidth=0.7, zorder=0)
        ax.plot([x, x], [y - radius, y + radius], color="#d5dade", linewidth=0.7, zorder=0)


def _pointer(ax, centre, radius, angle, colour, width=1.8):
    """An arrow of length ``radius`` from ``centre`` at ``angle`` radians; returns its tip."""
    tip = (centre[0] + radius * np.cos(angle), centre[1] + radius * np.sin(angle))
    _arrow(ax, centre, tip, color=colour, width=width)
    return tip


def _positions(positions, name: str) -> list[int]:
    values = list(positions)
    if not values or any(not isinstance(p, (int, np.integer)) or isinstance(p, bool) or p < 0 for p in values):
        raise ValueError(f"{name}={positions!r}: pass positions as whole numbers of at least 0, e.g. (0, 1, 2, 5).")
    if max(values) > 100_000:
        raise ValueError(f"{name}={positions!r}: positions above 100,000 are too far to draw.")
    return [int(p) for p in values]


def rotary_positions(
    head_size: int = 8,
    positions: Sequence[int] = (0, 1, 2, 5),
    pair: int = 0,
    *,
    meet: Sequence[tuple[int, int]] = ((2, 0), (7, 5)),
    base: float = 10000.0,
):
    """Rotary position embedding (RoPE): instead of adding a position vector to the input, every query and key
    is turned, pair of numbers by pair of numbers, by an angle of position x frequency.

    Left: pair ``pair`` of a query (its numbers ``pair`` and ``pair + head_size // 2``, as ``rotate`` pairs
    them) drawn as an arrow in the plane, turned for each of ``positions``: the angles are
    ``ds9_utils.model.rotary_angles``'s and the turning is ``ds9_utils.model.rotate``'s. Middle: a query at m
    and a key at n, for each (m, n) of ``meet``: the angle between them, and their dot product over the whole
    head, depend only on m - n, so attention sees how far apart two characters are. Right: the first pairs
    spin fast (they tell neighbours apart), the last slowly (they tell near from far). The query and key
    numbers are stand-ins: only their turning matters here.
    """
    import torch

    from ds9_utils.model import rotary_angles, rotate

    if head_size < 2 or head_size % 2:
        raise ValueError(f"head_size={head_size}: rotary positions turn pairs of numbers, so it must be even (>= 2).")
    n_pairs = head_size // 2
    if not 0 <= pair < n_pairs:
        raise ValueError(f"pair={pair} is not a pair of a head of {head_size} numbers: choose 0 to {n_pairs - 1}.")
    shown = _positions(positions, "positions")
    if len(shown) > 6:
        raise ValueError(f"{len(shown)} positions are too many to draw: pass at most 6, e.g. (0, 1, 2, 5).")
    meet = [tuple(m) for m in meet]
    if len(meet) != 2 or any(len(m) != 2 for m in meet):
        raise ValueError(f"meet={meet!r}: pass two (m, n) pairs of positions, e.g. ((2, 0), (7, 5)).")
    _positions([p for m in meet for p in m], "meet")

    span = 16  # positions in the strip of speeds
    length = max(max(shown), *(p for m in meet for p in m), span - 1) + 1
    cos, sin = rotary_angles(length, head_size, base)
    query = torch.tensor(_pseudo_vector("rotary query", head_size), dtype=torch.float32)
    key = torch.tensor(_pseudo_vector("rotary key", head_size), dtype=torch.float32)
    # The same query (and key) at every position, turned by each position's angles.
    queries = rotate(query.expand(length, head_size), cos, sin)
    keys = rotate(key.expand(length, head_size), cos, sin)

    def direction(vectors, position):
        return float(torch.atan2(vectors[position, pair + n_pairs], vectors[position, pair]))

    frequencies = torch.atan2(sin[1], cos[1]).numpy()  # radians per position, all below pi
    fig, ax = _canvas("Rotary positions: turn each pair of a query's numbers by position \u00d7 frequency", 9.0, 4.2)
    colours = [PALETTE[c][1] for c in ("blue", "orange", "green", "purple", "red", "grey")]

    # 1. One pair of one query, at several positions.
    _text(ax, 0.3, 3.55, f"1. pair {pair} of a query, turned", ha="left", bold=True)
    centre, radius = (1.6, 2.05), 0.78
    _dial(ax, centre, radius)
    angles = [direction(queries, p) for p in shown]
    for k, angle in enumerate(angles):
        _pointer(ax, centre, radius, angle, colours[k % len(colours)])
    # Arrows closer than 14 degrees share one label, so that no two labels overlap.
    groups: list[list[int]] = []
    for k in sorted(range(len(shown)), key=lambda k: angles[k] % (2 * np.pi)):
        last = groups[-1][-1] if groups else None
        gap = None if last is None else (angles[k] - angles[last]) % (2 * np.pi)
        if gap is not None and gap < np.radians(14):
            groups[-1].append(k)
        else:
            groups.append([k])
    if len(groups) > 1 and (angles[groups[0][0]] - angles[groups[-1][-1]]) % (2 * np.pi) < np.radians(14):
        groups[0] = groups.pop() + groups[0]
    for group in groups:
        angle = angles[group[0]]
        c, s = np.cos(angle), np.sin(angle)
        ha = "left" if c > 0.35 else ("right" if c < -0.35 else "center")
        va = "bottom" if s > 0.35 else ("top" if s < -0.35 else "center")
        if len(group) == 1:
            label, colour = f"position {shown[group[0]]}", colours[group[0] % len(colours)]
        else:
            members = [str(shown[k]) for k in group]
            members = members if len(members) <= 3 else [members[0], "\u2026", members[-1]]
            label, colour = "positions " + ", ".join(members), INK
        x, y = centre[0] + (radius + 0.08) * c, centre[1] + (radius + 0.08) * s
        _text(ax, x, y, label, size=NOTE_SIZE, ha=ha, va=va, color=colour)
    _note(
        ax,
        0.3,
        0.85,
        f"numbers {pair} and {pair + n_pairs} of {head_size}: the\n"
        f"arrow turns {frequencies[pair]:.3g} rad per position",
    )

    # 2. A query at m meets a key at n.
    _text(ax, 3.3, 3.55, "2. a query at m meets a key at n", ha="left", bold=True)
    small = 0.5
    results = []
    for k, (m, n) in enumerate(meet):
        centre = (3.95 + k * 1.45, 2.2)
        _dial(ax, centre, small)
        q_angle, k_angle = direction(queries, m), direction(keys, n)
        _pointer(ax, centre, small, q_angle, PALETTE["orange"][1])
        _pointer(ax, centre, small, k_angle, PALETTE["blue"][1])
        between = (np.degrees(q_angle - k_angle) + 180.0) % 360.0 - 180.0
        dot = float(queries[m] @ keys[n])
        results.append((m - n, round(between), round(dot, 2)))
        _text(ax, centre[0], centre[1] + small + 0.2, f"m = {m}, n = {n}", size=NOTE_SIZE)
        _text(ax, centre[0], centre[1] - small - 0.17, f"angle {between:.0f}\u00b0", size=NOTE_SIZE)
        _text(ax, centre[0], centre[1] - small - 0.38, f"q\u00b7k = {dot:.2f}", size=NOTE_SIZE, mono=True)
    _text(ax, 3.45, 1.05, "query", size=NOTE_SIZE, ha="left", color=PALETTE["orange"][1], bold=True)
    _text(ax, 3.95, 1.05, "key", size=NOTE_SIZE, ha="left", color=PALETTE["blue"][1], bold=True)
    _note(ax, 4.3, 1.05, f"(pair {pair} of each)")
    if results[0][0] == results[1][0]:
        summary = f"same m \u2212 n = {results[0][0]}: same angle,\nsame q\u00b7k over the whole head"
    else:
        summary = "different m \u2212 n: different angles,\ndifferent q\u00b7k"
    _note(ax, 3.3, 0.7, summary)

    # 3. Every pair's speed: sin(angle) over the first positions, one row per pair (white: not turned yet).
    _text(ax, 6.35, 3.55, "3. every pair's speed", ha="left", bold=True)
    rows = list(range(n_pairs))
    if n_pairs > 8:
        rows = sorted(set(np.linspace(0, n_pairs - 1, 8).round().astype(int).tolist()) | {pair})
    cell_w = 0.09
    cell_h = min(0.24, 1.9 / len(rows))
    left, top = 6.95, 3.25
    import matplotlib
    from matplotlib.patches import Rectangle

    cmap = matplotlib.colormaps[VALUE_CMAP]
    values = sin.numpy()
    for r, i in enumerate(rows):
        y = top - (r + 1) * cell_h
        for t in range(span):
            _cell(ax, left + t * cell_w, y, cell_w, cmap(0.5 + 0.5 * float(values[t, i])), height=cell_h, line=0.3)
        colour = PALETTE["orange"][1] if i == pair else INK
        _text(ax, left - 0.06, y + cell_h / 2, f"pair {i}", size=NOTE_SIZE, ha="right", color=colour)
        _note(ax, left + span * cell_w + 0.05, y + cell_h / 2, f"{frequencies[i]:.2g}")
        if i == pair:
            ax.add_patch(
                Rectangle((left, y), span * cell_w, cell_h, fill=False, edgecolor=PALETTE["orange"][1], lw=1.6)
            )
    bottom = top - len(rows) * cell_h
    _note(ax, left + span * cell_w + 0.05, top + 0.12, "rad/pos", ha="left")
    _note(ax, left, bottom - 0.14, "0", ha="center")
    _note(ax, left + (span - 0.5) * cell_w, bottom - 0.14, str(span - 1), ha="center")
    _note(ax, left + span * cell_w / 2, bottom - 0.14, "position", ha="center")
    speeds = "sin(angle): the first pairs spin fast\n(neighbours), the last slowly (far)"
    _note(ax, 6.35, bottom - 0.55, speeds, va="top")

    _note(
        ax,
        0.3,
        0.22,
        "No position table to learn: queries and keys are turned inside attention, and q\u00b7k sees only how far "
        "apart two characters are.",
    )
    return fig


def muon_update(gradient=None, *, rows: int = 6, cols: int = 8, steps: int = 5, seed: int = 0):
    """Muon: what it does to a gradient matrix, against SGD and AdamW.

    Left: a gradient G as a heat map, with its singular values (how strongly it pushes in each direction)
    as bars: a few strong directions and many weak ones. Right: ``ds9_utils.optim.orthogonalize(G)`` after
    ``steps`` Newton-Schulz steps: the same directions, every singular value near 1. SGD would step along G
    itself, so its weak directions would hardly move; Muon gives every direction a step of about the same size.

    ``gradient`` is a 2-D matrix (a tensor or an array, at most 12 x 16); None draws a seeded ``rows`` x
    ``cols`` stand-in with one strong direction, as real gradients have. The singular values are computed
    from the matrices drawn.
    """
    import torch

    from ds9_utils.optim import orthogonalize

    if gradient is None:
        if not (2 <= rows <= 12 and 2 <= cols <= 16):
            raise ValueError(f"a {rows} x {cols} gradient cannot be drawn: pick 2 to 12 rows and 2 to 16 columns.")
        rng = np.random.default_rng(seed)
        strong = np.outer(rng.standard_normal(rows), rng.standard_normal(cols))
        gradient = 0.3 * rng.standard_normal((rows, cols)) + 0.6 * strong
    matrix = _as_array(gradient)
    if matrix.ndim != 2:
        raise ValueError(f"muon_update wants one 2-D gradient matrix, got shape {matrix.shape}.")
    if not (2 <= matrix.shape[0] <= 12 and 2 <= matrix.shape[1] <= 16):
        raise ValueError(f"a {matrix.shape[0]} x {matrix.shape[1]} gradient cannot be drawn: pass 2-12 x 2-16.")
    if not np.isfinite(matrix).all() or not np.abs(matrix).max() > 0:
        raise ValueError("the gradient must be finite and not all zero.")
    if not 1 <= steps <= 10:
        raise ValueError(f"steps={steps}: draw between 1 and 10 Newton-Schulz steps.")
    ortho = orthogonalize(torch.tensor(matrix, dtype=torch.float32), steps=steps).double().numpy()
    before = np.linalg.svd(matrix, compute_uv=False)
    after = np.linalg.svd(ortho, compute_uv=False)
    n_rows, n_cols = matrix.shape

    import matplotlib

    cmap = matplotlib.colormaps[VALUE_CMAP]
    fig, ax = _canvas("Muon: orthogonalize the gradient, so every direction takes a step of the same size", 9.0, 4.2)
    cell = min(0.22, 1.9 / n_cols, 1.25 / n_rows)
    top = 3.3
    width, height = n_cols * cell, n_rows * cell
    lefts = (0.45, 3.45)

    def heat(left, values, name):
        limit = float(np.abs(values).max())
        for i in range(n_rows):
            for j in range(n_cols):
                colour = cmap(0.5 + 0.5 * float(values[i, j]) / limit)
                _cell(ax, left + j * cell, top - (i + 1) * cell, cell, colour, line=0.5)
        _text(ax, left + width / 2, top + 0.15, name, size=NOTE_SIZE)

    def bars(left, values, label, colour, one):
        fig_w, fig_h = fig.get_size_inches()
        panel = fig.add_axes((left / fig_w, 0.72 / fig_h, 1.9 / fig_w, 0.95 / fig_h), label=label)
        panel.bar(range(1, len(values) + 1), values, color=PALETTE[colour][0], edgecolor=PALETTE[colour][1], lw=0.9)
        if one:
            panel.axhline(1.0, color=INK, linestyle="--", linewidth=0.9)
            panel.set_ylim(0, 1.45)
            panel.set_yticks([0, 1])
        else:
            panel.set_ylim(0, 1.15 * float(values.max()))
            panel.set_yticks([0, float(values.max())], ["0", f"{values.max():.1f}"])
        panel.set_xticks([])
        panel.tick_params(labelsize=NOTE_SIZE, colors=MUTED, length=2)
        for side in ("top", "right"):
            panel.spines[side].set_visible(False)
        for side in ("left", "bottom"):
            panel.spines[side].set_color(LINE)
        panel.patch.set_alpha(0.0)
        return panel

    heat(lefts[0], matrix, f"gradient G ({n_rows} \u00d7 {n_cols})")
    heat(lefts[1], ortho, "orthogonalize(G)")
    bars(lefts[0], before, "singular values before", "grey", False)
    bars(lefts[1], after, "singular values after", "green", True)
    ratio = before.max() / max(before.min(), 1e-12)
    _note(ax, lefts[0] + 0.95, 1.85, f"its singular values: largest/smallest = {ratio:.0f}", ha="center")
    spread = f"{after.min():.2f} to {after.max():.2f}"
    near = after.min() >= 0.6 and after.max() <= 1.3
    _note(ax, lefts[1] + 0.95, 1.85, f"all near 1 ({spread})" if near else f"now {spread}", ha="center")
    mid = top - height / 2
    _arrow(ax, (lefts[0] + width + 0.2, mid), (lefts[1] - 0.2, mid), width=1.5)
    _text(ax, (lefts[0] + width + lefts[1]) / 2, mid + 0.22, "orthogonalize", size=NOTE_SIZE, bold=True)
    _note(ax, (lefts[0] + width + lefts[1]) / 2, mid - 0.25, f"{steps} Newton\u2013Schulz\nsteps", ha="center")

    x = 6.0
    notes = [
        ("SGD: W \u2190 W \u2212 lr \u00b7 G", INK),
        ("strong directions take big steps,", MUTED),
        ("weak ones hardly move.", MUTED),
        ("AdamW: each number \u00f7 its own size", INK),
        ("evens out numbers, not directions.", MUTED),
        ("Muon: W \u2190 W \u2212 lr \u00b7 orthogonalize(G)", INK),
        ("G's directions, each with a step", MUTED),
        ("of about the same size.", MUTED),
    ]
    y = 3.45
    for k, (line, colour) in enumerate(notes):
        if k and colour == INK:
            y -= 0.16
        _text(ax, x, y, line, size=NOTE_SIZE, ha="left", va="top", color=colour)
        y -= 0.22
    _note(ax, x, 1.0, "Colours: red above 0, blue below;\neach map to its own largest number.", va="top")
    _note(
        ax,
        0.3,
        0.22,
        "Every direction gets a step of about the same size: weak directions are no longer drowned by strong ones.",
    )
    return fig
