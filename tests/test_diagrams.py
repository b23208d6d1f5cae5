"""The diagrams draw what they promise (labels carrying the sizes passed in, every label inside the figure and
clear of the others), refuse impossible sizes with one clear line, and each chapter shows its diagram
before the code that builds the mechanism (Agg backend, no display)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import json  # noqa: E402
from pathlib import Path  # noqa: E402

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.text import Text  # noqa: E402

from ds9_utils import diagrams  # noqa: E402

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def all_text(fig: Figure) -> str:
    return "\n".join(t.get_text() for t in fig.findobj(Text))


def assert_readable(fig: Figure) -> None:
    """A notebook-sized figure whose labels all lie inside it and never overlap one another."""
    assert isinstance(fig, Figure)
    assert plt.fignum_exists(fig.number), "pyplot must know the figure, so that plt.show() shows it"
    width, height = fig.get_size_inches()
    assert 7.0 <= width <= 9.0 and 3.0 <= height <= 4.5
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    boxes = [
        (t.get_text(), t.get_window_extent(renderer))
        for t in fig.findobj(Text)
        if t.get_visible() and t.get_text().strip()
    ]
    assert boxes, "a diagram without any label"
    for text, box in boxes:
        inside = box.x0 >= 0 and box.y0 >= 0 and box.x1 <= fig.bbox.width and box.y1 <= fig.bbox.height
        assert inside, f"{text!r} runs off the figure: {box}"
    for i, (text_a, a) in enumerate(boxes):
        for text_b, b in boxes[i + 1 :]:
            overlap_x = min(a.x1, b.x1) - max(a.x0, b.x0)
            overlap_y = min(a.y1, b.y1) - max(a.y0, b.y0)
            assert overlap_x <= 1 or overlap_y <= 1, f"{text_a!r} and {text_b!r} overlap"


#: Every diagram: the chapters' own, those of the later recipes (rotary positions, Muon), the Q/K/V projections
#: and the whole GPT.
ALL_DIAGRAMS = [
    *diagrams.BY_CHAPTER.values(),
    diagrams.rotary_positions,
    diagrams.muon_update,
    diagrams.qkv_projections,
    diagrams.whole_gpt,
]


@pytest.mark.parametrize("draw", ALL_DIAGRAMS, ids=lambda f: f.__name__)
def test_every_diagram_draws_with_its_defaults(draw):
    assert_readable(draw())


def causal_weights(T: int, seed: int = 0) -> torch.Tensor:
    scores = torch.randn(T, T, generator=torch.Generator().manual_seed(seed))
    return scores.masked_fill(torch.ones(T, T).tril() == 0, float("-inf")).softmax(dim=-1)


WEIGHTS = causal_weights(5)

CUSTOM = [
    (
        lambda: diagrams.next_token("QUAR", probabilities={"K": 0.9, "T": 0.1}),
        ["90%", "10%", "the probabilities given"],
    ),
    (
        lambda: diagrams.next_token("ODO: I", text="ODO: I see.\nODO: It is.\nODO: I'm here.\n"),
        ["counted after 3 occurrences", "33%"],
    ),
    (lambda: diagrams.bigram_table("DAX: Dax.", vocab_size=65), ["65 \u00d7 65", "here 8 \u00d7 8"]),
    (
        lambda: diagrams.attention(WEIGHTS, "Quark", row=3),
        ["weights (5, 5)", "v (5, head_size)", "Row 3", diagrams._weight_text(float(WEIGHTS[3, 0]))],
    ),
    (
        lambda: diagrams.heads(n_embd=64, n_head=8),
        ["8 heads of 8 instead of one head of 64", "64 // 8 = 8", "8 \u00d7 8"],
    ),
    (
        lambda: diagrams.transformer_block(n_embd=32, n_head=4, n_layer=6),
        ["32 \u2192 128 \u2192 32", "4 heads of 8", "n_layer = 6"],
    ),
    (
        lambda: diagrams.positional_encoding("ODO", n_embd=16, kind="learned"),
        ["of 16 numbers", "a learned table", "t=2", "The two O (t=0 and t=2)"],
    ),
    (
        lambda: diagrams.training_loop(batch_size=8, block_size=64, vocab_size=100, grad_clip=0.5),
        ["logits (8, 64, 100)", "8 windows of 64", "above 0.5"],
    ),
    (
        lambda: diagrams.kv_cache("ODO", n_layer=2, n_embd=32, block_size=16),
        ["2 \u00d7 2 \u00d7 16 \u00d7 32 = 2,048 numbers", "computed: 6", "computed: 3"],
    ),
    (
        lambda: diagrams.bpe_merges("aaab aaab", num_merges=2),
        ["a + a \u2192 256 (4\u00d7)", "a + b \u2192 257 (2\u00d7)", "9", "7", "5"],
    ),
    (
        lambda: diagrams.lora(in_features=64, out_features=64, rank=4, alpha=8),
        ["64 \u00d7 64 = 4,096", "4 \u00d7 (64 + 64) = 512", "12.5% of W", "\u00d7 2"],
    ),
    (lambda: diagrams.rlhf_loop(kl_coef=0.05, judge="a person"), ["0.05 \u00b7 KL", "a person or you"]),
    (lambda: diagrams.data_parallel(n_ranks=4, batch_size=32), ["rank 3: rows 24\u201331", "/ 4", "32 windows"]),
    (
        lambda: diagrams.rotary_positions(16, positions=(0, 3, 9), pair=2, meet=((3, 1), (9, 4))),
        ["pair 2 of a query", "numbers 2 and 10 of 16", "position 9", "m = 9, n = 4", "different m \u2212 n", "pair 7"],
    ),
    (
        lambda: diagrams.rotary_positions(64, positions=(0, 1, 2, 3, 4, 5), pair=31),
        ["positions 0, \u2026, 5", "pair 31", "numbers 31 and 63 of 64"],
    ),
    (
        lambda: diagrams.muon_update(torch.randn(4, 5, generator=torch.Generator().manual_seed(1)), steps=3),
        ["gradient G (4 \u00d7 5)", "3 Newton\u2013Schulz", "orthogonalize(G)"],
    ),
    (lambda: diagrams.muon_update(rows=12, cols=16, seed=3), ["gradient G (12 \u00d7 16)"]),
    (lambda: diagrams.qkv_projections(n_embd=64, head_size=8), ["64 \u2192 8", "(B, T, 64)", "d = 8"]),
    (
        lambda: diagrams.whole_gpt(n_layer=6, n_embd=96, n_head=3, vocab_size=65, block_size=256),
        [
            "65 rows of 96",
            "Linear 96 \u2192 65",
            "block 5",
            "6 identical blocks",
            "3 heads of 32",
            "T \u2264 256",
        ],
    ),
]


@pytest.mark.parametrize("draw, expected", CUSTOM, ids=[f"custom-{i}" for i in range(len(CUSTOM))])
def test_diagrams_show_the_sizes_and_values_passed_in(draw, expected):
    fig = draw()
    assert_readable(fig)
    text = all_text(fig)
    for label in expected:
        assert label in text, f"{label!r} is not among the diagram's labels"


def test_attention_takes_a_long_map_and_numbers_only_what_fits():
    fig = diagrams.attention(causal_weights(20), "SISKO: Odo, have you")
    assert_readable(fig)
    assert "weights (20, 20)" in all_text(fig)


def test_the_sinusoidal_positions_are_the_models_own_table():
    from ds9_utils.model import sinusoidal_positions

    fig = diagrams.positional_encoding("ab", n_embd=8, dims=4)
    # The middle row of vectors is drawn from the real table: position 1, dimension 0 is sin(1) > 0 (red).
    assert sinusoidal_positions(2, 8)[1, 0] > 0.8
    reds = [p for p in fig.axes[0].patches if p.get_facecolor()[0] > 0.6 and p.get_facecolor()[2] < 0.3]
    assert reds, "no strongly positive cell drawn"


@pytest.mark.parametrize(
    "draw, message",
    [
        (lambda: diagrams.next_token("XYZZY", text="ODO: Quark."), "never occurs"),
        (lambda: diagrams.next_token(""), "at least one character"),
        (lambda: diagrams.bigram_table("a"), "at least two characters"),
        (lambda: diagrams.attention(torch.ones(3, 4) / 4, "abcd"), r"one \(T, T\) map"),
        (lambda: diagrams.attention(WEIGHTS, "abc"), "3 tokens for a 5x5 map"),
        (lambda: diagrams.attention(WEIGHTS, "Quark", row=5), "row 5 is not a position"),
        (lambda: diagrams.attention(causal_weights(30), "x" * 30), "at most 24 positions"),
        (lambda: diagrams.heads(n_embd=30, n_head=4), "does not split into n_head=4"),
        (lambda: diagrams.qkv_projections(head_size=0), "must be at least 1"),
        (lambda: diagrams.whole_gpt(n_embd=30, n_head=4), "n_embd divisible"),
        (lambda: diagrams.whole_gpt(n_layer=0), "at least one layer"),
        (lambda: diagrams.transformer_block(n_embd=30, n_head=4), "does not split into n_head=4"),
        (lambda: diagrams.positional_encoding(kind="rotary"), "choose 'sinusoidal' or 'learned'"),
        (lambda: diagrams.kv_cache(""), "at least one token"),
        (lambda: diagrams.bpe_merges("a"), "at least two bytes"),
        (lambda: diagrams.bpe_merges("x" * 40), "at most 30 bytes"),
        (lambda: diagrams.bpe_merges("abab", num_merges=9), "between 1 and 6 merges"),
        (lambda: diagrams.lora(rank=0), "rank of at least 1"),
        (lambda: diagrams.data_parallel(n_ranks=2, batch_size=15), "does not split evenly over 2 ranks"),
        (lambda: diagrams.data_parallel(n_ranks=9, batch_size=18), "between 1 and 8 ranks"),
        (lambda: diagrams.rotary_positions(head_size=7), "head_size=7: .* must be even"),
        (lambda: diagrams.rotary_positions(head_size=0), "must be even"),
        (lambda: diagrams.rotary_positions(head_size=8, pair=4), "pair=4 is not a pair of a head of 8 numbers"),
        (lambda: diagrams.rotary_positions(pair=-1), "choose 0 to 3"),
        (lambda: diagrams.rotary_positions(positions=()), "whole numbers of at least 0"),
        (lambda: diagrams.rotary_positions(positions=(0, -1)), "whole numbers of at least 0"),
        (lambda: diagrams.rotary_positions(positions=range(7)), "at most 6"),
        (lambda: diagrams.rotary_positions(meet=((2, 0),)), r"two \(m, n\) pairs"),
        (lambda: diagrams.muon_update(torch.randn(6)), "one 2-D gradient matrix, got shape"),
        (lambda: diagrams.muon_update(torch.randn(2, 3, 4)), "one 2-D gradient matrix, got shape"),
        (lambda: diagrams.muon_update(torch.randn(20, 8)), "cannot be drawn"),
        (lambda: diagrams.muon_update(torch.zeros(3, 4)), "not all zero"),
        (lambda: diagrams.muon_update(rows=1), "cannot be drawn"),
        (lambda: diagrams.muon_update(steps=0), "between 1 and 10 Newton-Schulz steps"),
    ],
)
def test_impossible_sizes_get_one_clear_line(draw, message):
    with pytest.raises(ValueError, match=message):
        draw()


def font_sizes(fig: Figure) -> list[float]:
    return [t.get_fontsize() for t in fig.findobj(Text) if t.get_visible() and t.get_text().strip()]


@pytest.mark.parametrize("draw", [diagrams.rotary_positions, diagrams.muon_update], ids=lambda f: f.__name__)
def test_the_recipe_diagrams_have_no_text_below_8_points(draw):
    assert min(font_sizes(draw())) >= 8.0


def test_rotary_positions_shows_the_positions_and_the_relative_angle():
    fig = diagrams.rotary_positions()
    text = all_text(fig)
    for label in ["position 0", "position 1", "position 2", "position 5", "m = 2, n = 0", "m = 7, n = 5"]:
        assert label in text, f"{label!r} is not among the diagram's labels"
    assert "same m \u2212 n = 2: same angle" in text
    # The two meetings (2, 0) and (7, 5) draw the same angle and the same q.k: it depends only on m - n.
    angles = [t.get_text() for t in fig.findobj(Text) if t.get_text().startswith("angle ")]
    dots = [t.get_text() for t in fig.findobj(Text) if t.get_text().startswith("q\u00b7k = ")]
    assert len(angles) == 2 and angles[0] == angles[1]
    assert len(dots) == 2 and dots[0] == dots[1]
    # The speeds are rotary_angles' frequencies: pair i turns base ** (-2i / head_size) rad per position.
    for label in ["1", "0.1", "0.01", "0.001"]:
        assert label in text.split("\n")


def bar_heights(fig: Figure, label: str) -> list[float]:
    (panel,) = [a for a in fig.axes if a.get_label() == label]
    return [p.get_height() for p in panel.patches]


def test_muon_update_draws_the_singular_values_of_the_orthogonalized_gradient():
    from ds9_utils.optim import orthogonalize

    gradient = torch.randn(6, 8, generator=torch.Generator().manual_seed(0)) * torch.logspace(0, -2, 8)
    fig = diagrams.muon_update(gradient)
    assert "orthogonalize" in all_text(fig)
    before, after = bar_heights(fig, "singular values before"), bar_heights(fig, "singular values after")
    assert before == pytest.approx(torch.linalg.svdvals(gradient).tolist(), rel=1e-4)
    assert after == pytest.approx(torch.linalg.svdvals(orthogonalize(gradient)).tolist(), abs=1e-4)
    assert len(after) == 6 and all(0.6 <= s <= 1.3 for s in after), after
    assert max(before) / min(before) > 5, "the gradient drawn should have strong and weak directions"
    # The defaults too: a seeded gradient with one strong direction, every singular value near 1 after.
    fig = diagrams.muon_update()
    after = bar_heights(fig, "singular values after")
    assert len(after) == 6 and all(0.6 <= s <= 1.3 for s in after), after
    assert "all near 1" in all_text(fig)
    # The dashed line at 1 is drawn where the singular values should land.
    (panel,) = [a for a in fig.axes if a.get_label() == "singular values after"]
    assert any(line.get_linestyle() == "--" and list(line.get_ydata()) == [1.0, 1.0] for line in panel.lines)


#: The diagrams each chapter draws before it builds their mechanisms: its own (``diagrams.BY_CHAPTER``) and, in
#: chapter 09, those of the speedrun recipe it teaches (rotary positions, Muon).
BY_CHAPTER = {chapter: [draw.__name__] for chapter, draw in diagrams.BY_CHAPTER.items()}
BY_CHAPTER["09"] = ["training_loop", "rotary_positions", "muon_update"]
BY_CHAPTER["05"] = ["attention", "qkv_projections"]
BY_CHAPTER["15"] = ["data_parallel", "whole_gpt"]

# The code that builds each diagram's mechanism: the diagram must come before the first code cell with one of these.
MECHANISM_CODE = {
    "next_token": ["following_counts(", "count_table("],
    "bigram_table": ["zip(example, example[1:])", "Counter(zip(", "index_put_("],
    "attention": ["xbow", "class OneHead"],
    "heads": ["class ManyHeads", "MultiHeadAttention("],
    "transformer_block": ["class MyFeedForward", "class MyBlock"],
    "positional_encoding": ["def my_sinusoidal", "sinusoidal_positions("],
    "training_loop": ["def train_by_hand", "train(by_library"],
    "rotary_positions": ["def rotate_by_hand", "rotary_angles("],
    "muon_update": ["def newton_schulz", "orthogonalize("],
    "kv_cache": ["cache_numbers", "use_cache=use_cache"],
    "bpe_merges": ["def get_pair_counts", "def merge(", "train_bpe_by_hand("],
    "lora": ["layer = base.blocks[0].attn.qkv", "LoRALinear"],
    "rlhf_loop": ["scene_prompts(", "sample_completions(", "RewardModel("],
    "data_parallel": ["gradients(xb", "torch.distributed.run"],
    "qkv_projections": ["key = nn.Linear(C, head_size"],
    "whole_gpt": ["def non_embedding_parameters"],
}
DRAWN = [(chapter, name) for chapter, names in sorted(BY_CHAPTER.items()) for name in names]


def notebook_cells(chapter: str) -> list[dict]:
    (path,) = NOTEBOOKS.glob(f"{chapter}_*.ipynb")
    cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
    return [{**cell, "source": "".join(cell["source"])} for cell in cells]


@pytest.mark.parametrize("chapter, name", DRAWN, ids=[f"{chapter}-{name}" for chapter, name in DRAWN])
def test_each_chapter_shows_its_diagram_before_building_the_mechanism(chapter, name):
    cells = notebook_cells(chapter)
    drawing = [
        i for i, cell in enumerate(cells) if cell["cell_type"] == "code" and f"diagrams.{name}(" in cell["source"]
    ]
    assert len(drawing) == 1, f"chapter {chapter} should draw diagrams.{name} in exactly one cell"
    index = drawing[0]
    source = cells[index]["source"]
    assert "from ds9_utils import diagrams" in source
    assert source.rstrip().endswith("plt.show()"), "the figure must be shown inline"
    assert cells[index - 1]["cell_type"] == "markdown", "a sentence should say what to look at"
    builds = [
        i
        for i, cell in enumerate(cells)
        if cell["cell_type"] == "code" and i != index and any(code in cell["source"] for code in MECHANISM_CODE[name])
    ]
    assert builds, f"chapter {chapter}: none of {MECHANISM_CODE[name]} found; update MECHANISM_CODE"
    assert index < builds[0], (
        f"chapter {chapter}: diagrams.{name} (cell {index}) comes after its code (cell {builds[0]})"
    )
