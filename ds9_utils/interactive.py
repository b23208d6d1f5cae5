"""Knobs a learner can turn: the sampler's settings (chapter 10) and the heads of the model's attention (chapter 11).

Both explorers work the same way (``Explorer``). They first show a static rendering for their starting values,
a text or a figure, which is what GitHub and the tests (nbval) see in the saved notebook. Then, in a live
notebook (a Jupyter kernel: JupyterLab, Colab, Kaggle) with ipywidgets installed, they add controls under it,
and every change of a control redraws that same output in place. Outside a notebook the text is printed and
the figure is left open, for ``plt.show()``.
"""

from __future__ import annotations

import importlib.util
import io
from collections.abc import Callable
from typing import Any

import torch

from .corpus import SCENE_SEPARATOR
from .generate import generate_text, stop_at_text
from .plots import figure_description, image_output, plot_attention
from .settings import in_notebook
from .tokenizers import Tokenizer

SAMPLING_PROMPT = "[Quark's]\nQUARK:"
ATTENTION_LINE = "ODO: Where were you last night, Quark?"


def live_controls_available() -> bool:
    """Whether an explorer can add live controls here: a notebook kernel with ipywidgets installed."""
    return in_notebook() and importlib.util.find_spec("ipywidgets") is not None


def _show(rendering, handle=None):
    """Show a text or a figure, in place of what ``handle`` shows when given; returns the handle to update.

    In a notebook a figure is shown as a PNG image (whatever matplotlib's backend) and closed, so that the
    notebook does not show it a second time at the end of the cell."""
    if not in_notebook():
        if isinstance(rendering, str):
            print(rendering)
        return None
    import matplotlib.pyplot as plt
    from IPython.display import display

    if isinstance(rendering, str):
        shown = {"text/plain": rendering}
    else:
        png = io.BytesIO()
        rendering.savefig(png, format="png", bbox_inches="tight")
        shown = image_output(png.getvalue(), figure_description(rendering))
        plt.close(rendering)
    if handle is None:
        return display(shown, raw=True, display_id=True)
    handle.update(shown, raw=True)
    return handle


class _Controls:
    """A box of widgets whose saved text form reads as their settings, not as the widgets' repr.

    A notebook saves a widget with a ``text/plain`` fallback for renderers that cannot run widgets (GitHub, a
    terminal, nbval). ipywidgets' own fallback is ``VBox(children=(FloatSlider(value=0.8, ...``; this one
    names each control and its value, e.g. ``controls: temperature 0.8 · seed 0``."""

    def __init__(self, box: Any):
        self.box = box

    def __repr__(self) -> str:
        settings = []
        for control in self.box.children:
            value = getattr(control, "label", None) or control.value  # a drop-down shows its label
            settings.append(f"{control.description} {value}")
        return "controls (live in a running notebook with ipywidgets): " + " · ".join(settings)

    def _repr_mimebundle_(self, **kwargs: Any) -> dict[str, Any]:
        bundle = dict(self.box._repr_mimebundle_(**kwargs) or {})
        bundle["text/plain"] = repr(self)
        return bundle


class Explorer:
    """A rendering of some values, shown at once, and (in a live notebook) controls that change the values.

    ``render(**values)`` returns a text or a matplotlib figure; ``make_controls(values)`` returns one ipywidget
    per value, named like it. ``controls`` is empty where there are none (outside a notebook, or live=False);
    ``shown`` is what is on screen now.
    """

    def __init__(
        self,
        render: Callable[..., Any],
        values: dict[str, Any],
        make_controls: Callable[[dict[str, Any]], dict[str, Any]],
        live: bool | None = None,
    ):
        self.render = render
        self.values = dict(values)
        self.shown = render(**self.values)
        self._handle = _show(self.shown)
        self.controls: dict[str, Any] = {}
        if live is None:
            live = live_controls_available()
        if not live:
            return
        if importlib.util.find_spec("ipywidgets") is None:
            raise ImportError("the live controls need ipywidgets: pip install ipywidgets (or pass live=False)")
        import ipywidgets

        self.controls = make_controls(self.values)
        for name, control in self.controls.items():
            control.observe(lambda change, name=name: self._change(name, change["new"]), names="value")
        if in_notebook():
            from IPython.display import display

            display(_Controls(ipywidgets.VBox(list(self.controls.values()))))

    def _change(self, name: str, value: Any) -> None:
        self.values[name] = value
        try:
            self.shown = self.render(**self.values)
        except ValueError as error:  # e.g. a typed character the model does not know: say so in place
            self.shown = str(error)
        self._handle = _show(self.shown, self._handle)

    def _ipython_display_(self) -> None:
        """Nothing more to show: the explorer showed itself, and its controls, when it was made."""


# ------------------------------------------------------------------------------------------- sampling


def sample_scene(
    model: torch.nn.Module,
    tokenizer: Tokenizer,
    prompt: str = SAMPLING_PROMPT,
    *,
    temperature: float = 0.8,
    top_k: int | None = None,
    top_p: float | None = None,
    max_new_tokens: int = 300,
    seed: int = 0,
) -> str:
    """The prompt and one scene sampled after it, up to its end (a blank line) or ``max_new_tokens``.

    The seed fixes the random draws, so two settings with the same seed differ only by the settings."""
    device = next(model.parameters()).device
    text = generate_text(
        model,
        tokenizer,
        prompt,
        max_new_tokens,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        generator=torch.Generator(device=device).manual_seed(seed),
        stop=stop_at_text(tokenizer, SCENE_SEPARATOR),
    )
    continuation = text[len(prompt) :]
    return prompt + continuation.split(SCENE_SEPARATOR)[0]


def sampling_explorer(
    model: torch.nn.Module,
    tokenizer: Tokenizer,
    prompt: str = SAMPLING_PROMPT,
    *,
    temperature: float = 0.8,
    top_k: int | None = None,
    top_p: float | None = None,
    max_new_tokens: int = 300,
    seed: int = 0,
    live: bool | None = None,
) -> Explorer:
    """A scene sampled with these settings; in a live notebook, with sliders for the temperature, top-k, top-p
    and the seed that sample it again as they move (top-k 0 and top-p 1 switch those filters off)."""

    def render(temperature: float, top_k: int, top_p: float, seed: int) -> str:
        settings = (
            f"temperature {temperature:g}{' (greedy)' if temperature == 0 else ''} · top-k {top_k or 'off'} · "
            f"top-p {'off' if top_p >= 1 else f'{top_p:g}'} · seed {seed}"
        )
        scene = sample_scene(
            model,
            tokenizer,
            prompt,
            temperature=temperature,
            top_k=top_k or None,
            top_p=top_p if top_p < 1 else None,
            max_new_tokens=max_new_tokens,
            seed=seed,
        )
        return f"{settings}\n\n{scene}"

    def make_controls(values: dict[str, Any]) -> dict[str, Any]:
        import ipywidgets as widgets

        # continuous_update=False: sample again when a slider is let go, not at every step it passes
        options = {"style": {"description_width": "initial"}, "continuous_update": False}
        return {
            "temperature": widgets.FloatSlider(
                value=values["temperature"], min=0, max=2, step=0.05, description="temperature", **options
            ),
            "top_k": widgets.IntSlider(
                value=values["top_k"], min=0, max=tokenizer.vocab_size, description="top-k (0: off)", **options
            ),
            "top_p": widgets.FloatSlider(
                value=values["top_p"], min=0.05, max=1, step=0.05, description="top-p (1: off)", **options
            ),
            "seed": widgets.IntSlider(value=values["seed"], min=0, max=99, description="seed", **options),
        }

    values = {"temperature": temperature, "top_k": top_k or 0, "top_p": top_p or 1.0, "seed": seed}
    return Explorer(render, values, make_controls, live)


# ------------------------------------------------------------------------------------------ attention


def attention_figure(
    model: torch.nn.Module, tokenizer: Tokenizer, line: str = ATTENTION_LINE, *, layer: int, head: int
):
    """The attention map of one head for ``line`` read as a transcript line (after a newline): row t shows which
    earlier characters character t looks at. The last ``block_size`` characters are used. Returns the Figure."""
    if not line.strip():
        raise ValueError("Type a line of dialogue to see where the heads look, e.g. 'ODO: Quark!'.")
    ids = tokenizer.encode("\n" + line)[-model.block_size :]
    tokens = [tokenizer.decode([token]) for token in ids]
    device = next(model.parameters()).device
    weights = model.attention_maps(torch.tensor([ids], device=device))[layer][0, head]
    ax = plot_attention(weights, tokens, title=f"layer {layer}, head {head}: where each character looks")
    return ax.figure


def attention_explorer(
    model: torch.nn.Module,
    tokenizer: Tokenizer,
    line: str = ATTENTION_LINE,
    *,
    layer: int = -1,
    head: int = 0,
    live: bool | None = None,
) -> Explorer:
    """Where one head of ``model`` looks in ``line`` (default: the last layer's first head); in a live notebook,
    with a text box for your own line and a selector for every head of every layer."""
    n_layer, n_head = model.config.n_layer, model.config.n_head
    if not (-n_layer <= layer < n_layer and 0 <= head < n_head):
        raise ValueError(
            f"the model has layers 0-{n_layer - 1} and heads 0-{n_head - 1}; got layer {layer}, head {head}"
        )

    def render(line: str, head: tuple[int, int]) -> Any:
        return attention_figure(model, tokenizer, line, layer=head[0], head=head[1])

    def make_controls(values: dict[str, Any]) -> dict[str, Any]:
        import ipywidgets as widgets

        heads = [(f"layer {i} · head {j}", (i, j)) for i in range(n_layer) for j in range(n_head)]
        return {
            "line": widgets.Text(
                value=values["line"], description="line", continuous_update=False, layout={"width": "90%"}
            ),
            "head": widgets.Dropdown(options=heads, value=values["head"], description="head"),
        }

    return Explorer(render, {"line": line, "head": (layer % n_layer, head)}, make_controls, live)
