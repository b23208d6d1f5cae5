"""The command line's messages tell the truth, with the exit status they promise (issue 20, Measured 8).

Run in this process through ``main`` (fast: no interpreter to start), judged by the one line on stderr and
the exit status: 1 for a failure, 2 for a usage error; an exception escaping ``main`` fails the test.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from ds9_utils.__main__ import MAX_SEED, main

PROJECT_ROOT = Path(__file__).resolve().parent.parent  # the subprocess imports this checkout's ds9_utils
TEXT = "KIRA: The runabout is late.\nODO: It is always late.\n" * 40  # 2,000 characters


def one_line_error(capsys, status: int, code: int) -> str:
    assert code == status
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


def usage_error(capsys, argv: list[str]) -> str:
    """The line argparse prints for bad arguments: it exits 2 by SystemExit."""
    with pytest.raises(SystemExit) as exited:
        main(argv)
    return one_line_error(capsys, 2, exited.value.code)


def test_text_that_is_a_folder_is_called_a_folder(tmp_path, capsys):
    error = one_line_error(capsys, 1, main(["train", "--text", str(tmp_path), "--out", str(tmp_path / "m.pt")]))
    assert f"--text {tmp_path} is a folder" in error and "no such file" not in error


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes are POSIX")
def test_text_that_is_a_named_pipe_is_called_one(tmp_path, capsys):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    error = one_line_error(capsys, 1, main(["train", "--text", str(fifo), "--out", str(tmp_path / "m.pt")]))
    assert "is a named pipe (FIFO), not a file" in error and "no such file" not in error


def test_a_missing_text_is_still_no_such_file(tmp_path, capsys):
    error = one_line_error(capsys, 1, main(["train", "--text", str(tmp_path / "none.txt")]))
    assert "no such file" in error


@pytest.mark.parametrize("seed", ["99999999999999999999", "-1", str(MAX_SEED + 1)])
def test_a_seed_out_of_range_is_a_usage_error_that_names_the_range(capsys, seed):
    error = usage_error(capsys, ["generate", "--seed", seed])
    assert "argument --seed" in error and "from 0 to 2**63-1" in error and seed in error


def test_an_empty_prompt_is_a_usage_error(capsys):
    error = usage_error(capsys, ["generate", "--prompt", ""])
    assert "argument --prompt: is empty" in error and "--help" in error


def test_a_text_too_short_for_the_preset_names_presets_not_block_size(tmp_path, capsys):
    text = tmp_path / "short.txt"
    text.write_text(TEXT[:1200], encoding="utf-8")  # a validation part of 120 tokens: the cpu preset reads 129
    out = tmp_path / "m.pt"
    error = one_line_error(capsys, 2, main(["train", "--text", str(text), "--preset", "cpu", "--out", str(out)]))
    assert "too short for the 'cpu' preset" in error and "(--preset quick)" in error  # the one window short enough
    assert "block_size" not in error and not out.exists()


def test_the_largest_seed_is_accepted(tmp_path, capsys):
    """The range named is the range taken: 2**63-1 gets past the arguments (to the missing checkpoint)."""
    error = one_line_error(capsys, 1, main(["generate", "--seed", str(MAX_SEED), "--checkpoint", str(tmp_path / "x")]))
    assert "no checkpoint at" in error


# A run that holds the lock of a checkpoint, in another process, as a long training run would.
HOLDER = """
import sys, time
from ds9_utils.files import sole_writer
with sole_writer(sys.argv[1], "--out"):
    print("holding", flush=True)
    time.sleep(120)
"""


def test_a_second_train_on_the_same_out_is_refused_in_one_line_naming_the_first(tmp_path, capsys):
    out, text = tmp_path / "same.pt", tmp_path / "text.txt"
    text.write_text(TEXT, encoding="utf-8")
    train = ["train", "--text", str(text), "--out", str(out), "--max-steps", "1"]
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(out)], stdout=subprocess.PIPE, text=True, cwd=PROJECT_ROOT
    )
    try:
        assert holder.stdout.readline() == "holding\n"
        error = one_line_error(capsys, 2, main(train))
        assert f"{out} is being written by another run (process {holder.pid})" in error
        assert "wait for it to finish" in error and "--out" in error and not out.exists()
    finally:
        holder.kill()  # as kill -9 would: the lock file stays, the lock goes with the process
        holder.wait()
    assert main(train) == 0 and out.is_file(), "a lock left by a killed run does not block the next run"
