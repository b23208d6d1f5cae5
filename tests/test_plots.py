"""The shared figures draw what they promise: the right axes, labels and shapes (Agg backend, no display)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from ds9_utils.plots import (  # noqa: E402
    plot_attention,
    plot_attention_grid,
    plot_distribution,
    plot_loss_curves,
    plot_matrix,
    token_label,
)

TEXT = "SISKO: Odo?\nODO: Here."


def causal_weights(T: int, heads: int | None = None, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    shape = (T, T) if heads is None else (heads, T, T)
    scores = torch.randn(shape, generator=generator)
    scores = scores.masked_fill(torch.ones(T, T).tril() == 0, float("-inf"))
    return scores.softmax(dim=-1)


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def image_axes(fig) -> list:
    return [ax for ax in fig.axes if ax.images]


def test_token_label_makes_invisible_characters_visible():
    assert token_label("\n") == "⏎"
    assert token_label(" ") == "·"
    assert token_label("a b\n") == "a·b⏎"
    assert token_label("Q") == "Q"


def test_plot_attention_labels_every_character_on_both_axes():
    T = len(TEXT)
    ax = plot_attention(causal_weights(T), TEXT, title="one head")
    xlabels = [t.get_text() for t in ax.get_xticklabels()]
    ylabels = [t.get_text() for t in ax.get_yticklabels()]
    assert xlabels == ylabels == [token_label(c) for c in TEXT]
    assert "⏎" in xlabels and "·" in xlabels
    assert ax.get_title() == "one head"
    assert ax.get_xlabel() and ax.get_ylabel()
    assert ax.images[0].get_array().shape == (T, T)
    assert len(image_axes(ax.figure)) == 1


def test_plot_attention_draws_into_a_given_axes_and_accepts_numpy():
    fig, (left, right) = plt.subplots(1, 2)
    returned = plot_attention(causal_weights(5).numpy(), ["a", "b", " ", "c", "\n"], ax=right)
    assert returned is right
    assert right.images and not left.images


def test_plot_attention_rejects_wrong_shapes():
    with pytest.raises(ValueError, match="one \\(T, T\\) map"):
        plot_attention(causal_weights(4, heads=2), "abcd")
    with pytest.raises(ValueError, match="tokens"):
        plot_attention(causal_weights(4), "ab")


@pytest.mark.parametrize(
    "heads, ncols, rows, cols", [(6, 4, 3, 2), (4, 4, 2, 2), (3, 2, 2, 2), (1, 4, 1, 1), (3, 1, 3, 1)]
)
def test_plot_attention_grid_draws_one_map_per_head(heads, ncols, rows, cols):
    T = len(TEXT)
    fig = plot_attention_grid(causal_weights(T, heads=heads), TEXT, ncols=ncols)
    maps = image_axes(fig)
    assert len(maps) == heads
    assert [ax.get_title() for ax in maps] == [f"head {h}" for h in range(heads)]
    grid = [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]
    assert len(grid) == rows * cols
    assert sum(ax.get_label() == "<colorbar>" for ax in fig.axes) == 1


@pytest.mark.parametrize("T", [6, 24, 40, 64])
def test_attention_labels_are_readable_at_page_width(T):
    """At least 8 pt, on a grid no wider than the page, thinned where the characters would overlap."""
    text = ("SISKO: The station is ours. " * 3)[:T]
    figures = [
        plot_attention_grid(causal_weights(T, heads=8), text, ncols=4),
        plot_attention(causal_weights(T), text).figure,
    ]
    for fig in figures:
        assert fig.get_size_inches()[0] <= 13.0
        fig.canvas.draw()
        for ax in image_axes(fig):
            labels = [label for label in ax.get_xticklabels() if label.get_text()]
            assert labels and all(label.get_fontsize() >= 8 for label in labels)
            boxes = [label.get_window_extent() for label in labels]
            assert all(left.x1 <= right.x0 + 0.5 for left, right in zip(boxes, boxes[1:])), "labels overlap"
    assert plot_attention_grid(causal_weights(T, heads=8), text, ncols=4).get_size_inches()[0] <= 9.0


def test_plot_attention_grid_takes_titles_and_a_batch_dimension():
    weights = causal_weights(6, heads=2).unsqueeze(0)  # (1, H, T, T) as GPT.attention_maps returns it
    fig = plot_attention_grid(weights, "abcdef", titles=["first", "second"])
    assert [ax.get_title() for ax in image_axes(fig)] == ["first", "second"]
    with pytest.raises(ValueError, match="titles"):
        plot_attention_grid(weights, "abcdef", titles=["only one"])


def test_plot_loss_curves_draws_one_labelled_line_per_run():
    curves = {
        "learned": ([0, 50, 100], [4.5, 3.0, 2.5]),
        "none": (torch.tensor([0, 50, 100]), torch.tensor([4.5, 3.2, 2.9])),
    }
    ax = plot_loss_curves(curves, title="positions")
    assert [line.get_label() for line in ax.get_lines()] == ["learned", "none"]
    assert np.allclose(ax.get_lines()[1].get_ydata(), [4.5, 3.2, 2.9])
    assert ax.get_xlabel() == "step" and ax.get_ylabel() == "loss (nats)"
    assert ax.get_title() == "positions"
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["learned", "none"]


def test_plot_distribution_shows_the_top_tokens_in_order():
    labels = ["\n", " ", "a", "b", "c", "d"]
    probs = torch.tensor([0.05, 0.4, 0.1, 0.3, 0.1, 0.05])
    ax = plot_distribution(probs, labels, top=3, title="after 'Odo'")
    ticks = [t.get_text() for t in ax.get_xticklabels()]
    assert ticks == ["·", "b", "a"]
    heights = [patch.get_height() for patch in ax.patches]
    assert np.allclose(heights, [0.4, 0.3, 0.1])
    assert ax.get_ylabel() == "probability" and ax.get_xlabel() == "next character"
    with pytest.raises(ValueError, match="labels"):
        plot_distribution(probs, labels[:3])


def test_plot_matrix_draws_the_table_with_a_colour_scale():
    table = torch.linspace(-2.0, 1.0, 12).reshape(3, 4)
    ax = plot_matrix(table, title="positions", xlabel="dimension", ylabel="position", colorbar_label="value")
    assert ax.images[0].get_array().shape == (3, 4)
    assert np.allclose(ax.images[0].get_array(), table.numpy())
    assert (ax.get_title(), ax.get_xlabel(), ax.get_ylabel()) == ("positions", "dimension", "position")
    assert sum(a.get_label() == "<colorbar>" for a in ax.figure.axes) == 1


def test_plot_matrix_centered_scale_is_symmetric_around_zero():
    ax = plot_matrix(np.array([[-0.5, 2.0], [0.0, 1.0]]), centered=True)
    assert ax.images[0].get_clim() == (-2.0, 2.0)
    with pytest.raises(ValueError, match="2-D"):
        plot_matrix(np.zeros(3))


def test_in_a_kernel_the_live_loss_plot_saves_a_text_form(tmp_path, monkeypatch):
    """GitHub's text view, nbval and a terminal read the saved curves as words, not as an Image object's repr."""
    nbclient = pytest.importorskip("nbclient")
    import os

    import nbformat

    from ds9_utils.settings import PROJECT_ROOT

    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(PROJECT_ROOT), os.environ.get("PYTHONPATH")])))
    source = (
        "from ds9_utils.plots import LiveLossPlot\n"
        "plot = LiveLossPlot()\n"
        "plot.update({'steps': [0, 10], 'train_loss': [4.0, 2.0], 'val_loss': [4.1, 2.5], 'lr': [0.0, 1e-3]})"
    )
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(source)])
    nbclient.NotebookClient(
        notebook, kernel_name="python3", timeout=120, resources={"metadata": {"path": str(tmp_path)}}
    ).execute()
    outputs = [output for output in notebook.cells[0].outputs if output.output_type == "display_data"]
    assert len(outputs) == 1, notebook.cells[0].outputs
    assert "image/png" in outputs[0].data
    assert outputs[0].data["text/plain"] == (
        "[figure: loss curves to step 10, validation 2.500 nats = 3.607 bits per character]"
    )
