"""The course model's plumbing: its data, and the fallback a chapter uses when notebook 09 has not run."""

from __future__ import annotations

import pytest
import torch

from ds9_utils import course
from ds9_utils.corpus import SPLIT_NAMES

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
    small = small_corpus / "checkpoints" / course.SMALL_CHECKPOINT
    assert small.exists() and not course.course_checkpoint_path().exists()
    assert first.step == first.train_config.max_steps and first.tokenizer is not None
    saved = small.stat().st_mtime_ns
    second = course.load_course_model(progress=False)
    assert capsys.readouterr().out == "" and small.stat().st_mtime_ns == saved
    assert all(torch.equal(a, b) for a, b in zip(first.model.state_dict().values(), second.model.state_dict().values()))


def test_load_course_model_prefers_notebook_09s_checkpoint(small_corpus):
    model, result = course.train_course_model(preset="quick", max_steps=3, progress=False)
    assert result.steps == 3 and course.course_checkpoint_path().exists()
    loaded = course.load_course_model(progress=False)
    assert loaded.step == 3
    assert not (small_corpus / "checkpoints" / course.SMALL_CHECKPOINT).exists()
