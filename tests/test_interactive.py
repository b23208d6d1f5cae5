"""The explorers of chapters 10 and 11: a static output first, then live controls that redraw it in place.

Without a notebook kernel (here) the static output is printed (text) or left open (figure), and forcing
``live=True`` still builds the ipywidgets controls, so moving them is tested for real: each change renders
again, prints the new text, and the explorer's ``shown`` is what the same settings give when asked directly.
``test_in_a_kernel_...`` runs both explorers in a real Jupyter kernel, as JupyterLab, Colab and nbval do.
"""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib
import nbformat
import numpy as np
import pytest
import torch

from ds9_utils.corpus import SCENE_SEPARATOR
from ds9_utils.interactive import attention_explorer, sample_scene, sampling_explorer
from ds9_utils.model import GPT, GPTConfig
from ds9_utils.tokenizers import CharTokenizer

matplotlib.use("agg")
import matplotlib.pyplot as plt  # noqa: E402

PROJECT_ROOT = Path(__file__).resolve().parent.parent
TEXT = "[Quark's]\nQUARK: Welcome to Quark's!\nODO: Where were you last night, Quark?\n\n[Ops]\nKIRA: Odo!\n"


@pytest.fixture(scope="module")
def model_and_tokenizer():
    """A tiny untrained GPT: the explorers' mechanics do not depend on what the model has learned."""
    torch.manual_seed(0)
    tokenizer = CharTokenizer.from_text(TEXT)
    model = GPT(GPTConfig(vocab_size=tokenizer.vocab_size, block_size=64, n_layer=2, n_head=2, n_embd=16))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a model this small samples several times faster on one thread, above all on a busy CPU
    yield model.eval(), tokenizer
    torch.set_num_threads(threads)


def shown_map(figure) -> np.ndarray:
    """The weights an attention figure draws (its hidden future cells read as 0)."""
    return np.ma.filled(figure.axes[0].images[0].get_array(), 0.0)


def head_map(model: GPT, tokenizer: CharTokenizer, line: str, layer: int, head: int) -> np.ndarray:
    ids = torch.tensor([tokenizer.encode("\n" + line)])
    return model.attention_maps(ids)[layer][0, head].numpy()


def test_sample_scene_is_reproducible_and_stops_before_the_next_scene(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    first = sample_scene(model, tokenizer, "[Ops]\n", max_new_tokens=80, seed=1)
    assert first == sample_scene(model, tokenizer, "[Ops]\n", max_new_tokens=80, seed=1)
    assert first.startswith("[Ops]\n") and SCENE_SEPARATOR not in first.removeprefix("[Ops]\n")  # no next scene
    greedy = sample_scene(model, tokenizer, "[Ops]\n", temperature=0, max_new_tokens=80)
    assert sample_scene(model, tokenizer, "[Ops]\n", top_k=1, max_new_tokens=80, seed=5) == greedy  # one choice left


def test_sampling_explorer_prints_the_scene_for_its_settings_without_a_kernel(model_and_tokenizer, capsys):
    model, tokenizer = model_and_tokenizer
    explorer = sampling_explorer(model, tokenizer, "[Ops]\n", top_k=5, max_new_tokens=60, seed=3)
    scene = sample_scene(model, tokenizer, "[Ops]\n", top_k=5, max_new_tokens=60, seed=3)
    assert explorer.shown == f"temperature 0.8 · top-k 5 · top-p off · seed 3\n\n{scene}"
    assert capsys.readouterr().out == explorer.shown + "\n"
    assert explorer.controls == {}  # no kernel: nothing to move


def test_moving_a_sampling_slider_samples_again(model_and_tokenizer, capsys):
    model, tokenizer = model_and_tokenizer
    explorer = sampling_explorer(model, tokenizer, "[Ops]\n", max_new_tokens=60, live=True)
    assert sorted(explorer.controls) == ["seed", "temperature", "top_k", "top_p"]
    capsys.readouterr()
    explorer.controls["temperature"].value = 0
    greedy = sample_scene(model, tokenizer, "[Ops]\n", temperature=0, max_new_tokens=60)
    assert explorer.shown == f"temperature 0 (greedy) · top-k off · top-p off · seed 0\n\n{greedy}"
    assert capsys.readouterr().out == explorer.shown + "\n"
    explorer.controls["temperature"].value = 1.0
    explorer.controls["top_p"].value = 0.5
    nucleus = sample_scene(model, tokenizer, "[Ops]\n", temperature=1.0, top_p=0.5, max_new_tokens=60)
    assert explorer.shown == f"temperature 1 · top-k off · top-p 0.5 · seed 0\n\n{nucleus}"


def test_attention_explorer_draws_the_chosen_heads_map(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    explorer = attention_explorer(model, tokenizer, "ODO: Quark!", layer=1, head=1, live=False)
    figure = explorer.shown
    assert figure.axes[0].get_title() == "layer 1, head 1: where each character looks"
    np.testing.assert_allclose(shown_map(figure), head_map(model, tokenizer, "ODO: Quark!", 1, 1), atol=1e-6)
    assert explorer.controls == {}
    plt.close("all")


def test_typing_a_line_and_picking_a_head_redraws_the_map(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    explorer = attention_explorer(model, tokenizer, live=True)  # default: the last layer's first head
    assert explorer.values["head"] == (1, 0)
    explorer.controls["line"].value = "KIRA: Odo!"
    explorer.controls["head"].value = (0, 1)
    np.testing.assert_allclose(shown_map(explorer.shown), head_map(model, tokenizer, "KIRA: Odo!", 0, 1), atol=1e-6)
    explorer.controls["line"].value = "KIRA: Zzz"  # 'Z' never occurs in TEXT: the map gives way to one line
    assert isinstance(explorer.shown, str) and "'Z'" in explorer.shown and "vocabulary" in explorer.shown
    explorer.controls["line"].value = " "
    assert explorer.shown.startswith("Type a line")
    plt.close("all")


def test_attention_explorer_names_the_heads_the_model_has(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    with pytest.raises(ValueError, match="layers 0-1 and heads 0-1; got layer 2, head 0"):
        attention_explorer(model, tokenizer, layer=2, live=False)


def test_in_a_kernel_the_explorers_show_a_static_output_then_their_controls(tmp_path, monkeypatch):
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipywidgets")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(PROJECT_ROOT), os.environ.get("PYTHONPATH")])))
    build = (
        "import torch\nfrom ds9_utils.model import GPT, GPTConfig\nfrom ds9_utils.tokenizers import CharTokenizer\n"
        f"from ds9_utils.interactive import attention_explorer, sampling_explorer\ntorch.manual_seed(0)\n"
        f"tokenizer = CharTokenizer.from_text({TEXT!r})\n"
        "model = GPT(GPTConfig(tokenizer.vocab_size, block_size=64, n_layer=2, n_head=2, n_embd=16)).eval()"
    )
    notebook = nbformat.v4.new_notebook(
        cells=[
            nbformat.v4.new_code_cell(build),
            nbformat.v4.new_code_cell('sampling_explorer(model, tokenizer, "[Ops]\\n", max_new_tokens=40)'),
            nbformat.v4.new_code_cell("attention_explorer(model, tokenizer)"),
        ]
    )
    client = nbclient.NotebookClient(
        notebook, kernel_name="python3", timeout=120, resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()

    for cell, static in ((notebook.cells[1], "text/plain"), (notebook.cells[2], "image/png")):
        outputs = [output for output in cell.outputs if output.output_type != "stream"]
        assert [output.output_type for output in outputs] == ["display_data", "display_data"], cell.outputs
        first, controls = (output.data for output in outputs)
        assert static in first, "the static rendering comes first, for GitHub and nbval"
        assert "application/vnd.jupyter.widget-view+json" in controls, "then the live controls"
        # saved for renderers without widgets (GitHub, nbval): the settings in words, not VBox(children=(...
        assert controls["text/plain"].startswith("controls (live in a running notebook"), controls["text/plain"]
        assert "VBox" not in controls["text/plain"]
    assert "temperature 0.8 · top-k (0: off) 0" in notebook.cells[1].outputs[1].data["text/plain"]
    assert "head layer 1 · head 0" in notebook.cells[2].outputs[1].data["text/plain"]
    figure_text = notebook.cells[2].outputs[0].data["text/plain"]
    assert figure_text.startswith("[figure: ") and "layer" in figure_text, figure_text
    assert notebook.cells[1].outputs[0].data["text/plain"].startswith("temperature 0.8 · top-k off · top-p off")
