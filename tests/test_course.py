"""The course model's plumbing: its data, and the fallback a chapter uses when notebook 09 has not run."""

from __future__ import annotations

import pytest
import torch

from ds9_utils import course
from ds9_utils.corpus import SPLIT_NAMES
from ds9_utils.presets import PRESETS, default_preset, fallback_preset

LINES = "[Ops]\nKIRA: The runabout is late.\nODO: (gruffly) It is always late.\n(Kira sighs)\n\n"


@pytest.fixture()
def small_corpus(tmp_path, monkeypatch):
    """A data folder whose corpus is a few kilobytes of original text, in quick mode."""
    monkeypatch.setenv("DS9_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("DS9_QUICK", "1")
    monkeypatch.setenv("DS9_DEVICE", "cpu")
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    texts = {"train": LINES * 80, "val": LINES.replace("late", "early") * 10, "test": LINES * 5}
    for name in SPLIT_NAMES:
        (corpus / f"{name}.txt").write_text(texts[name])
    (corpus / "corpus.txt").write_text("\n".join(texts.values()))
    return tmp_path


def test_course_data_encodes_each_split_with_the_whole_corpus_vocabulary(small_corpus):
    data = course.load_course_data()
    assert data.tokenizer.decode(data.train[:20].tolist()) == (LINES * 80)[:20]
    assert len(data.val) == len(LINES.replace("late", "early") * 10)
    assert "y" in data.tokenizer.chars, "a character found only in validation text is in the vocabulary"
    assert "vocabulary" in str(data)


def test_text_data_splits_any_text_ninety_ten():
    data = course.text_data("abcdefghij" * 100)
    assert (len(data.train), len(data.val)) == (900, 100)
    assert data.test is None
    with pytest.raises(ValueError, match="val_fraction"):
        course.text_data("abc", val_fraction=1.5)


def test_load_course_model_trains_a_small_model_once_then_reuses_it(small_corpus, capsys):
    first = course.load_course_model(progress=False)
    assert "training a small one now" in capsys.readouterr().out
    small = course.course_checkpoint_path(fallback_preset())
    assert small.exists() and list((small_corpus / "checkpoints").iterdir()) == [small]
    assert first.step == first.train_config.max_steps and first.tokenizer is not None
    saved = small.stat().st_mtime_ns
    second = course.load_course_model(progress=False)
    assert capsys.readouterr().out == "" and small.stat().st_mtime_ns == saved
    assert all(torch.equal(a, b) for a, b in zip(first.model.state_dict().values(), second.model.state_dict().values()))


def test_load_course_model_prefers_notebook_09s_checkpoint(small_corpus):
    model, result = course.train_course_model(preset="quick", max_steps=3, progress=False)
    assert result.steps == 3 and course.course_checkpoint_path().exists()
    loaded = course.load_course_model(progress=False)
    assert loaded.step == 3, "notebook 09's run, not a freshly trained fallback"
    assert [p.name for p in (small_corpus / "checkpoints").iterdir()] == ["course_model-quick.pt"]


def test_each_preset_keeps_its_own_checkpoint(small_corpus, monkeypatch):
    """A quick run (DS9_QUICK=1) never stands in the way of the full course model, and the other way round.

    (The command line's main job is run both ways in test_cli_model.py.)"""
    paths = {name: course.course_checkpoint_path(name) for name in PRESETS}
    assert len(set(paths.values())) == len(PRESETS) and paths["course"].name == "course_model.pt"
    assert course.course_checkpoint_path() == paths["quick"], "in quick mode the course model is the quick one"
    course.train_course_model(preset="quick", max_steps=2, progress=False)
    monkeypatch.setenv("DS9_QUICK", "0")
    assert course.course_checkpoint_path() == paths["course"] and default_preset("cpu") == "cpu"
    assert course.find_course_checkpoint() is None, "the quick model is not the full course model"
    with pytest.raises(ValueError, match="unknown preset 'huge'"):
        course.course_checkpoint_path("huge")


def test_the_device_is_checked_in_one_place(small_corpus, monkeypatch):
    assert course.run_config("quick").device == "cpu"  # DS9_DEVICE=cpu
    monkeypatch.setenv("DS9_DEVICE", "banana")
    with pytest.raises(ValueError, match="^DS9_DEVICE=banana is not a device this machine has: use cpu"):
        course.run_config("quick")
    with pytest.raises(ValueError, match="DS9_DEVICE=banana is not a device"):
        course.train_course_model(preset="quick", max_steps=1, progress=False)
    with pytest.raises(ValueError, match="^device=banana is not a device this machine has"):
        course.run_config("quick", device="banana")
