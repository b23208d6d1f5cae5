"""Tests for ds9_utils.distributed: how a batch is shared between ranks, and a real two-process run.

The main test starts ``torchrun`` with two CPU processes talking over gloo on 127.0.0.1 and checks that the
model they train together is the model one process trains on the same global batch.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from ds9_utils.checkpoints import load_checkpoint
from ds9_utils.course import run_config, text_data
from ds9_utils.distributed import CHECKPOINT_NAME, LOG_NAME, DataParallel, main, train_preset
from ds9_utils.model import GPT
from ds9_utils.presets import PRESETS
from ds9_utils.train import SingleProcess, get_batch, set_seed, train

PROJECT_ROOT = Path(__file__).resolve().parent.parent
TEXT = "".join(
    f"Sisko: Report, Major. Kira: Three ships on sensors, {n} kilometres out.\nO'Brien: Aye.\n" for n in range(400)
)
STEPS = 6


@pytest.fixture(scope="module")
def text_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("text") / "ops.txt"
    path.write_text(TEXT, encoding="utf-8")
    return path


def max_difference(a: torch.nn.Module, b: torch.nn.Module) -> float:
    return max((pa - pb).abs().max().item() for pa, pb in zip(a.state_dict().values(), b.state_dict().values()))


def test_ranks_read_disjoint_shares_that_make_up_the_global_batch():
    data = torch.arange(1000)
    whole_x, whole_y = get_batch(data, 16, 12, torch.Generator().manual_seed(3))
    shares = [
        get_batch(data, 16, 12, torch.Generator().manual_seed(3), rows=DataParallel(rank, 3, "cpu").rows(12))
        for rank in range(3)
    ]
    assert [share[0].shape for share in shares] == [(4, 16)] * 3
    assert torch.equal(torch.cat([x for x, _ in shares]), whole_x)
    assert torch.equal(torch.cat([y for _, y in shares]), whole_y)
    assert SingleProcess().rows(12) == slice(0, 12) and SingleProcess().is_main


def test_a_batch_that_does_not_split_evenly_is_refused_before_any_communication():
    with pytest.raises(ValueError, match="multiple of the number of processes"):
        DataParallel(0, 3, "cpu").rows(16)
    data = text_data(TEXT)
    model = GPT(PRESETS["quick"].gpt_config(data.tokenizer.vocab_size))
    with pytest.raises(ValueError, match="multiple of the number of processes"):
        train(model, data.train, data.val, run_config("quick", 2), parallel=DataParallel(1, 3, "cpu"), progress=False)
    with pytest.raises(ValueError, match="between 0 and world_size"):
        DataParallel(2, 2, "cpu")


def test_run_config_cuts_the_run_but_keeps_the_presets_schedule():
    config = run_config("quick", 7, "cpu")
    recipe = PRESETS["quick"].train_config
    assert config.max_steps == 7 and config.lr_decay_steps == recipe.max_steps and config.device == "cpu"
    assert config.batch_size == recipe.batch_size
    with pytest.raises(ValueError, match="unknown preset"):
        run_config("huge")


def test_cli_refuses_to_overwrite_a_run_without_resume(tmp_path: Path, text_file: Path, capsys):
    (tmp_path / CHECKPOINT_NAME).write_bytes(b"an earlier run")
    assert main(["--out", str(tmp_path), "--text", str(text_file), "--max-steps", "1"]) == 2
    assert "--resume" in capsys.readouterr().err


def test_cli_shares_the_train_commands_checks_and_error_lines(tmp_path: Path, text_file: Path, capsys):
    """The same argument types and one-line errors as ``python -m ds9_utils train`` (one builder, one handler)."""
    with pytest.raises(SystemExit) as usage:
        main(["--out", str(tmp_path), "--text", str(text_file), "--max-steps", "-3"])
    assert usage.value.code == 2
    assert capsys.readouterr().err.startswith("error: argument --max-steps: must be a whole number >= 1")
    assert main(["--out", str(tmp_path / "typo"), "--text", str(text_file), "--resume"]) == 2
    assert "--resume: there is no run to continue" in capsys.readouterr().err
    assert main(["--out", str(tmp_path / "run"), "--text", str(text_file), "--device", "banana"]) == 1
    error = capsys.readouterr().err
    assert error.startswith("error: --device=banana is not a device this machine has") and error.count("\n") == 1


def test_two_ranks_with_gloo_train_the_model_one_process_trains_on_the_same_global_batch(
    tmp_path: Path, text_file: Path, monkeypatch: pytest.MonkeyPatch
):
    # Both sides in float32 (DS9_PRECISION), whatever this CPU would choose: the test is about the ranks sharing
    # one batch exactly. In bfloat16 the same run rounds differently from one batch split to another by 1.5e-3
    # after these steps, a fifth of what half a batch changes (8e-3): rounding would hide what is checked here.
    monkeypatch.setenv("DS9_PRECISION", "fp32")
    out = tmp_path / "ddp"
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "ds9_utils.distributed",
        "--preset",
        "quick",
        "--max-steps",
        str(STEPS),
        "--out",
        str(out),
        "--text",
        str(text_file),
        "--device",
        "cpu",
    ]
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT), "OMP_NUM_THREADS": "1"}
    finished = subprocess.run(command, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=240)
    assert finished.returncode == 0, finished.stderr[-3000:]
    summaries = [json.loads(line) for line in finished.stdout.splitlines() if line.startswith("{")]
    assert len(summaries) == 1, "only rank 0 reports"
    assert summaries[0]["world_size"] == 2 and summaries[0]["backend"] == "gloo"
    assert summaries[0]["steps"] == STEPS

    # Only rank 0 wrote: one checkpoint, and one log line per evaluation (not one per rank).
    assert sorted(path.name for path in out.iterdir()) == sorted([CHECKPOINT_NAME, LOG_NAME])
    log = [json.loads(line) for line in (out / LOG_NAME).read_text().splitlines()]
    assert [entry["step"] for entry in log] == [0, STEPS] and {entry["world_size"] for entry in log} == {2}
    together = load_checkpoint(out / CHECKPOINT_NAME, device="cpu")
    assert together.step == STEPS

    data = text_data(TEXT)
    alone, result = train_preset(data, "quick", tmp_path / "single", max_steps=STEPS, progress=False, device="cpu")
    # Two ranks multiply half batches, one process whole ones: the same sums, rounded in another order.
    assert max_difference(together.model, alone) < 1e-5
    assert together.history["val_loss"][-1] == pytest.approx(result.val_loss, abs=1e-5)

    # The tolerance is tight enough to matter: one rank's share alone (half the batch) trains another model.
    config = run_config("quick", STEPS, "cpu")
    set_seed(config.seed)
    half = GPT(PRESETS["quick"].gpt_config(data.tokenizer.vocab_size))
    train(half, data.train, data.val, replace(config, batch_size=config.batch_size // 2), progress=False)
    assert max_difference(together.model, half) > 1e-3
