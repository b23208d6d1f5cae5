"""Progress bars: a saved notebook keeps each bar's last line (not a dead widget); a terminal gets tqdm."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import nbformat
import pytest
from nbclient import NotebookClient

from ds9_utils.progress import progress_bar
from ds9_utils.settings import in_notebook

WIDGET = "application/vnd.jupyter.widget-view+json"


def run_in_kernel(*sources: str) -> list[nbformat.NotebookNode]:
    """Execute cells in a real Jupyter kernel, as nbconvert does, and return them with their saved outputs."""
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(textwrap.dedent(s)) for s in sources])
    NotebookClient(notebook, timeout=120, kernel_name="python3").execute()
    return notebook.cells


def texts(cell: nbformat.NotebookNode) -> list[str]:
    return [output.get("text") or output.get("data", {}).get("text/plain", "") for output in cell.outputs]


def test_a_saved_notebook_keeps_the_last_line_of_the_bar_and_no_widget():
    (cell,) = run_in_kernel(
        """
        import time
        from ds9_utils.progress import progress_bar
        for _ in progress_bar(range(40), desc="counting", unit="step", mininterval=0.01):
            time.sleep(0.005)
        print("after the bar")
        """
    )
    assert not any(WIDGET in output.get("data", {}) for output in cell.outputs)
    assert not any(output.get("name") == "stderr" for output in cell.outputs), texts(cell)
    bar, after = texts(cell)
    assert bar.startswith("counting: 100%") and "40/40" in bar, bar
    assert after == "after the bar\n"


def test_two_bars_in_one_cell_keep_their_own_lines():
    (cell,) = run_in_kernel(
        """
        from ds9_utils.progress import progress_bar
        for _ in progress_bar(range(3), desc="first"):
            pass
        with progress_bar(total=5, desc="second", unit="step") as bar:
            bar.update(2)
        """
    )
    first, second = texts(cell)
    assert first.startswith("first: 100%") and "3/3" in first
    assert second.startswith("second:  40%") and "2/5" in second  # stopped early: the line says how far it got


def test_training_in_a_notebook_leaves_a_finished_bar(tmp_path):
    (cell,) = run_in_kernel(
        """
        import torch
        from ds9_utils.model import GPT, GPTConfig
        from ds9_utils.train import train
        from ds9_utils.train_config import TrainConfig
        torch.manual_seed(0)
        model = GPT(GPTConfig(vocab_size=5, block_size=8, n_layer=1, n_head=1, n_embd=8))
        data = torch.randint(0, 5, (500,))
        config = TrainConfig(batch_size=4, max_steps=12, eval_interval=6, eval_iters=1, device="cpu")
        train(model, data, data, config)
        """
    )
    (bar,) = [text for text in texts(cell) if text.startswith("training")]
    assert "100%" in bar and "12/12" in bar and "val=" in bar, bar
    assert "(step 12)" in bar, "the validation loss names the step it was measured at: " + bar
    assert "bpc=" not in bar and "bits=" in bar, "bits per token, not per character (BPE models use this bar too)"


def test_disabled_bars_show_nothing_in_a_notebook():
    (cell,) = run_in_kernel(
        """
        from ds9_utils.progress import progress_bar
        for _ in progress_bar(range(3), desc="hidden", disable=True):
            pass
        """
    )
    assert cell.outputs == []


def test_a_terminal_gets_tqdm_on_standard_error():
    script = "from ds9_utils.progress import progress_bar\nfrom ds9_utils.settings import in_notebook\n"
    script += "print(in_notebook())\n"
    script += "for _ in progress_bar(range(7), desc='pages'): pass\n"
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True)
    assert done.stdout == "False\n"
    assert "pages: 100%" in done.stderr and "7/7" in done.stderr


@pytest.mark.parametrize("items", [[], ["a"], list("abc")])
def test_the_bar_yields_every_item_in_order(items):
    assert not in_notebook()
    assert list(progress_bar(items, disable=False)) == items


def test_a_kernel_knows_it_is_a_notebook():
    (cell,) = run_in_kernel("from ds9_utils.settings import in_notebook\nprint(in_notebook())")
    assert texts(cell) == ["True\n"]
