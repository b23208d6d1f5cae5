"""Checkpoint files: what is wrong with a bad one is said in one line, and a wrong device is not called a bad file."""

from __future__ import annotations

import io
import os
import re
import sys
import zipfile

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ds9_utils.__main__ import main
from ds9_utils.checkpoints import (
    CHECKSUM_KEY,
    content_digest,
    load_checkpoint,
    read_checkpoint,
    read_resumable_checkpoint,
    save_checkpoint,
)
from ds9_utils.files import DamagedFileError
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


def rewrite(path, change, *, keep_checksum: bool = False) -> None:
    """Change a checkpoint's contents; without ``keep_checksum`` it becomes a file from before the checksum."""
    raw = torch.load(path, weights_only=True)
    if not keep_checksum:
        del raw[CHECKSUM_KEY]
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
        (lambda raw: raw.update(model_config=5), "damaged checkpoint: its model_config is of type int"),
        (lambda raw: raw.update(sha257="0"), r"damaged checkpoint: it has parts no checkpoint has: \['sha257'\]"),
    ],
)
def test_a_damaged_checkpoint_is_one_clear_line(checkpoint, change, message):
    rewrite(checkpoint, change)
    with pytest.raises(DamagedFileError, match=message) as caught:
        load_checkpoint(checkpoint, "cpu")
    assert "\n" not in str(caught.value) and str(checkpoint) in str(caught.value)
    tokenizer = CharTokenizer.from_text(TEXT_A)
    with pytest.raises(ValueError, match=re.escape(str(checkpoint))):  # train --resume's reader: no traceback either
        read_resumable_checkpoint(checkpoint, tiny_model(tokenizer.vocab_size), tokenizer)


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
    with pytest.raises(ValueError, match=r"trained on another text \(its vocabulary, \d+ tokens, is not this"):
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


# ---------------------------------------------------------------------------------------------- the checksum


def test_a_changed_weight_is_reported_as_damage_not_loaded(checkpoint):
    def nudge(raw) -> None:  # what one flipped bit of a float does: the file still unpickles
        raw["model"]["lm_head.weight"].view(torch.int32)[0, 0] ^= 1

    rewrite(checkpoint, nudge, keep_checksum=True)
    with pytest.raises(DamagedFileError, match="is damaged: its contents no longer match the checksum") as caught:
        load_checkpoint(checkpoint, "cpu")
    assert "good copy" in str(caught.value) and "\n" not in str(caught.value)


def test_a_checkpoint_from_before_the_checksum_still_loads(checkpoint):
    rewrite(checkpoint, lambda raw: None)
    assert CHECKSUM_KEY not in torch.load(checkpoint, weights_only=True)
    assert load_checkpoint(checkpoint, "cpu").step == 3


def test_the_checksum_covers_every_part_and_tells_values_apart():
    state = {"step": 3, "history": {"loss": [1.5]}, "model": {"w": torch.zeros(2)}}
    changed = [
        {**state, "step": 4},
        {**state, "history": {"loss": [1.25]}},
        {**state, "model": {"w": torch.tensor([0.0, 1e-30])}},
        {**state, "model": {"w": torch.zeros(2, dtype=torch.float64)}},
        {**state, "model": {"w": torch.zeros(1, 2)}},
        {**state, "step": "3"},
    ]
    digests = {content_digest(other) for other in changed}
    assert len(digests) == len(changed) and content_digest(state) not in digests
    assert content_digest({**state, CHECKSUM_KEY: "anything"}) == content_digest(state)


@pytest.fixture(scope="module")
def good_bytes(tmp_path_factory) -> bytes:
    """A checkpoint with an optimizer, so that train --resume's path reads it too."""
    tokenizer = CharTokenizer.from_text(TEXT_A)
    model = tiny_model(tokenizer.vocab_size)
    optimizer = torch.optim.AdamW(model.parameters())
    path = tmp_path_factory.mktemp("good") / "model.pt"
    save_checkpoint(
        path, model=model, optimizer=optimizer, train_config=CONFIG, step=3, history={}, tokenizer=tokenizer
    )
    return path.read_bytes()


def flip_a_weight_bit(good: bytes) -> bytes:
    """``good`` with one bit changed inside the bytes of a weight tensor."""
    weights = torch.load(io.BytesIO(good), weights_only=True)["model"]["lm_head.weight"].numpy().tobytes()
    where = good.index(weights) + len(weights) // 2
    return good[:where] + bytes([good[where] ^ 0x10]) + good[where + 1 :]


def foreign_zip() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("notes/readme.txt", "a zip file, but not torch's")
    return buffer.getvalue()


BAD_FILES = {
    "text": lambda good: b"hello world\n",
    "empty": lambda good: b"",
    "truncated": lambda good: good[: len(good) // 2],
    "a foreign zip": lambda good: foreign_zip(),
    "a wrong first byte": lambda good: b"Q" + good[1:],
    "a flipped bit": flip_a_weight_bit,
}


@pytest.mark.parametrize("kind", BAD_FILES)
def test_generate_and_train_resume_on_a_bad_file_say_so_in_one_line_with_exit_2(good_bytes, kind, tmp_path, capsys):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(BAD_FILES[kind](good_bytes))
    text = tmp_path / "text.txt"
    text.write_text(TEXT_A, encoding="utf-8")
    for command in (
        ["generate", "--checkpoint", str(bad)],
        ["train", "--text", str(text), "--out", str(bad), "--resume"],
    ):
        capsys.readouterr()
        assert main(command) == 2, command  # any exception would escape main and fail the test with its traceback
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"error: {bad} "), (command, lines)
    assert bad.read_bytes() == BAD_FILES[kind](good_bytes), "the bad file is left as it was"


BAD_BYTES = st.one_of(
    st.tuples(st.just("random bytes"), st.binary(max_size=20_000)),
    st.tuples(st.just("truncated at"), st.floats(0, 1, exclude_max=True)),
    st.tuples(st.just("bit flipped at"), st.floats(0, 1, exclude_max=True)),
)


def damage(good: bytes, how: str, where) -> bytes:
    if how == "random bytes":
        return where
    if how == "truncated at":
        return good[: int(where * len(good))]
    bit = int(where * len(good) * 8)
    return good[: bit // 8] + bytes([good[bit // 8] ^ (1 << bit % 8)]) + good[bit // 8 + 1 :]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(damaged=BAD_BYTES)
def test_a_damaged_file_is_refused_in_one_line_or_loads_exactly_what_was_saved(good_bytes, tmp_path, damaged):
    """Through the readers of `generate --checkpoint` (load_checkpoint) and `train --resume`
    (read_resumable_checkpoint): no other exception, and nothing changed ever loads."""
    path = tmp_path / "damaged.pt"
    path.write_bytes(damage(good_bytes, *damaged))
    saved = content_digest(torch.load(io.BytesIO(good_bytes), weights_only=True))
    tokenizer = CharTokenizer.from_text(TEXT_A)
    readers = {
        "generate": lambda: load_checkpoint(path, "cpu").raw,
        "train --resume": lambda: read_resumable_checkpoint(path, tiny_model(tokenizer.vocab_size), tokenizer),
    }
    for name, read in readers.items():
        try:
            raw = read()
        except DamagedFileError as error:
            assert "\n" not in str(error) and str(path) in str(error), (name, str(error))
        else:  # a change the file's format ignores (a zip header's field): what loads is what was saved
            assert raw[CHECKSUM_KEY] == content_digest(raw) == saved, name
