"""Checkpoint files: what is wrong with a bad one is said in one line, and a wrong device is not called a bad file."""

from __future__ import annotations

import os
import sys

import pytest
import torch

from ds9_utils.checkpoints import load_checkpoint, read_checkpoint, save_checkpoint
from ds9_utils.model import GPT, GPTConfig
from ds9_utils.tokenizers import CharTokenizer
from ds9_utils.train import train
from ds9_utils.train_config import TrainConfig

TEXT_A = "KIRA: The runabout is late.\nODO: It is always late.\n" * 40
TEXT_B = TEXT_A.replace("K", "Q")  # another text whose vocabulary has the same size
CONFIG = TrainConfig(batch_size=4, max_steps=4, eval_interval=2, eval_iters=2, warmup_steps=1, device="cpu")


def tiny_model(vocab_size: int) -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=vocab_size, block_size=8, n_layer=1, n_head=2, n_embd=8))


@pytest.fixture
def checkpoint(tmp_path):
    tokenizer = CharTokenizer.from_text(TEXT_A)
    model = tiny_model(tokenizer.vocab_size)
    path = tmp_path / "model.pt"
    save_checkpoint(path, model=model, optimizer=None, train_config=CONFIG, step=3, history={}, tokenizer=tokenizer)
    return path


def rewrite(path, change) -> None:
    raw = torch.load(path, weights_only=True)
    change(raw)
    torch.save(raw, path)


@pytest.mark.parametrize("device", ["banana", "cuda:7", "Cpu"])
def test_a_device_this_machine_lacks_is_named_not_blamed_on_the_file(checkpoint, device):
    with pytest.raises(ValueError, match=f"^device={device} is not a device this machine has: use cpu"):
        load_checkpoint(checkpoint, device)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_ds9_device_cuda_without_a_gpu_is_named(checkpoint, monkeypatch):
    monkeypatch.setenv("DS9_DEVICE", "cuda")
    with pytest.raises(ValueError, match="^DS9_DEVICE=cuda is not a device this machine has") as caught:
        load_checkpoint(checkpoint)
    assert "checkpoint" not in str(caught.value)


def test_a_good_checkpoint_loads_on_the_cpu(checkpoint):
    loaded = load_checkpoint(checkpoint, "cpu")
    assert loaded.step == 3 and loaded.tokenizer.decode(loaded.tokenizer.encode("KIRA")) == "KIRA"
    assert loaded.train_config == CONFIG and not loaded.model.training


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda raw: raw.pop("model_config"), "damaged checkpoint: it has no model_config"),
        (lambda raw: raw.pop("model"), "damaged checkpoint: it has no model;"),
        (lambda raw: raw["model"].pop("lm_head.weight"), "no weights for lm_head.weight"),
        (lambda raw: raw["model"].update(extra=torch.zeros(2)), "weights for no layer extra"),
        (lambda raw: raw["model"].update({"ln_f.weight": torch.zeros(3)}), r"ln_f.weight is \(3,\), not \(8,\)"),
        (lambda raw: raw["model_config"].update(n_head=3), "describes no model this version can build"),
        (lambda raw: raw.update(format="something else"), "not a ds9_utils checkpoint"),
    ],
)
def test_a_damaged_checkpoint_is_one_clear_line(checkpoint, change, message):
    rewrite(checkpoint, change)
    with pytest.raises(ValueError, match=message) as caught:
        load_checkpoint(checkpoint, "cpu")
    assert "\n" not in str(caught.value) and str(checkpoint) in str(caught.value)


def test_a_truncated_file_is_unreadable_not_a_device_problem(checkpoint):
    checkpoint.write_bytes(checkpoint.read_bytes()[:100])
    with pytest.raises(ValueError, match="is not a readable checkpoint"):
        read_checkpoint(checkpoint)


def train_on(text: str, path, steps: int, tokenizer=None, **kwargs):
    tokenizer = tokenizer or CharTokenizer.from_text(text)
    ids = torch.tensor(tokenizer.encode(text))
    model = tiny_model(tokenizer.vocab_size)
    config = TrainConfig(**{**vars(CONFIG), "max_steps": steps})
    return train(
        model, ids[:-100], ids[-100:], config, tokenizer=tokenizer, checkpoint_path=path, progress=False, **kwargs
    )


def test_resuming_on_another_text_with_a_vocabulary_of_the_same_size_is_refused(tmp_path):
    path = tmp_path / "a.pt"
    train_on(TEXT_A, path, 2)
    a, b = CharTokenizer.from_text(TEXT_A), CharTokenizer.from_text(TEXT_B)
    assert a.vocab_size == b.vocab_size and a.to_dict() != b.to_dict()
    before = path.read_bytes()
    with pytest.raises(ValueError, match="trained on another text .*--text"):
        train_on(TEXT_B, path, 4, resume=True)
    assert path.read_bytes() == before
    assert train_on(TEXT_A, path, 4, resume=True).steps == 4, "the same text resumes"


def test_resuming_a_different_model_is_refused_with_what_to_do(tmp_path):
    path = tmp_path / "a.pt"
    train_on(TEXT_A, path, 2)
    tokenizer = CharTokenizer.from_text(TEXT_A)
    other = GPT(GPTConfig(vocab_size=tokenizer.vocab_size, block_size=8, n_layer=2, n_head=2, n_embd=8))
    ids = torch.tensor(tokenizer.encode(TEXT_A))
    with pytest.raises(ValueError, match="for a different model .*--out"):
        train(other, ids[:-100], ids[-100:], CONFIG, tokenizer=tokenizer, checkpoint_path=path, resume=True)


@pytest.mark.skipif(sys.platform == "win32", reason="symbolic links")
def test_a_symlinked_checkpoint_stays_a_link(tmp_path):
    (tmp_path / "runs").mkdir()
    link = tmp_path / "model.pt"
    link.symlink_to(tmp_path / "runs" / "v1.pt")
    train_on(TEXT_A, link, 2)
    assert link.is_symlink() and os.readlink(link) == str(tmp_path / "runs" / "v1.pt")
    assert load_checkpoint(link, "cpu").step == 2
