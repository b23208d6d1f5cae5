"""The command line's model commands, run as a user runs them: ``python -m ds9_utils [train|generate]``.

Every command runs in a subprocess with its own data folder, in quick mode (set by conftest.py), and is judged
by what it prints, the files it leaves, and its exit status: 1 for a failure (a missing file...), 2 for bad
arguments or a file that is no good checkpoint, 130 for Ctrl-C (sent as a real SIGINT), each with one line on stderr
and no traceback.
"""

from __future__ import annotations

import json
import os
import select
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from ds9_utils.budget_curve import curve_table, read_curve
from ds9_utils.presets import PRESETS

PROJECT_ROOT = Path(__file__).resolve().parent.parent
SAMPLE_LINES = [
    "[Wardroom]",
    "CAPTAIN: The convoy leaves at dawn, with or without the freighter.",
    "ENGINEER: Then it leaves without the freighter. The coils are shot.",
    "(The engineer slides a padd across the table)",
    "CAPTAIN: Find me another way, Chief.",
    "",
]


def run_cli(*args: str, data_dir: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    environment = {**os.environ, "DS9_DATA_DIR": str(data_dir), **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "ds9_utils", *args],
        capture_output=True,
        text=True,
        cwd=PROJECT_ROOT,
        env=environment,
        timeout=600,
    )


def _ctrl_c_as_in_a_terminal() -> None:
    """Runs in the child before the command starts. Tests started in the background (``pytest &``) inherit
    SIGINT ignored, as the shell arranges for background jobs, and a command that ignores Ctrl-C cannot show
    what it does on Ctrl-C: give it the default, as a terminal would."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start_cli(*args: str, data_dir: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    environment = {**os.environ, "DS9_DATA_DIR": str(data_dir), **(env or {})}
    return subprocess.Popen(
        [sys.executable, "-m", "ds9_utils", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=PROJECT_ROOT,
        env=environment,
        preexec_fn=None if sys.platform == "win32" else _ctrl_c_as_in_a_terminal,
    )


def wait_for(condition, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def interrupt(process: subprocess.Popen) -> tuple[str, str]:
    """Press Ctrl-C: a real SIGINT, then everything the command printed."""
    process.send_signal(signal.SIGINT)
    try:
        out, err = process.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        process.kill()  # never leave it running after the test
        process.communicate()
        raise AssertionError("the command was still running 120 s after Ctrl-C") from None
    return out.decode(), err.decode()


def last_json(output: str) -> dict:
    return json.loads(output.strip().splitlines()[-1])


def one_line_error(result: subprocess.CompletedProcess, status: int) -> str:
    """The one line a failed command prints on stderr, checked for the exit status and the absence of a traceback."""
    assert result.returncode == status, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(errors) == 1 and errors[0].startswith("error: "), result.stderr
    return errors[0]


POSIX_SIGNALS = pytest.mark.skipif(sys.platform == "win32", reason="Ctrl-C is sent as a POSIX SIGINT")


@pytest.fixture(scope="module")
def text_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("text") / "wardroom.txt"
    path.write_text("\n".join(SAMPLE_LINES) * 60, encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory, text_file) -> tuple[Path, dict]:
    """A quick model trained on a small text file for 30 steps: its checkpoint and the printed summary."""
    data = tmp_path_factory.mktemp("data")
    out = data / "wardroom.pt"
    result = run_cli(
        "train", "--text", str(text_file), "--preset", "quick", "--max-steps", "30", "--out", str(out), data_dir=data
    )
    assert result.returncode == 0, result.stderr
    return out, last_json(result.stdout)


def test_train_prints_a_json_summary_and_writes_a_loadable_checkpoint(trained):
    out, summary = trained
    assert {"val_loss", "val_bpc", "steps", "tokens_per_second", "seconds"} <= summary.keys()
    assert summary["steps"] == 30
    assert summary["val_bpc"] == pytest.approx(summary["val_loss"] / 0.6931471805599453)
    assert summary["tokens_per_second"] > 0
    raw = torch.load(out, weights_only=True)
    assert raw["step"] == 30 and raw["tokenizer"]["type"] == "char"


def test_a_short_time_budget_trains_the_preset_made_for_it(text_file, tmp_path):
    """Outside quick mode, `train --max-seconds` on a CPU picks the model sized for the budget, not the course's."""
    out = tmp_path / "brief.pt"
    result = run_cli(
        "train", "--text", str(text_file), "--max-seconds", "2", "--out", str(out),
        data_dir=tmp_path, env={"DS9_QUICK": "0", "DS9_DEVICE": "cpu"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    summary = last_json(result.stdout)
    assert summary["preset"] == "brief" and "of the 'brief' preset" in result.stdout
    saved = torch.load(out, weights_only=True)
    assert saved["model_config"]["n_layer"] == PRESETS["brief"].model_kwargs["n_layer"]
    assert saved["train_config"]["max_seconds"] == 2.0


def test_train_refuses_to_overwrite_a_run_without_resume(trained, text_file, tmp_path):
    out, _ = trained
    before = out.read_bytes()
    result = run_cli(
        "train", "--text", str(text_file), "--preset", "quick", "--max-steps", "5", "--out", str(out), data_dir=tmp_path
    )
    error = one_line_error(result, 2)
    assert "--resume" in error and "already exists" in error
    assert out.read_bytes() == before, "the existing checkpoint must be left as it was"


def test_train_resume_continues_from_the_checkpoint(trained, text_file, tmp_path):
    out, _ = trained
    copy = tmp_path / "copy.pt"
    copy.write_bytes(out.read_bytes())
    result = run_cli(
        "train",
        "--text",
        str(text_file),
        "--preset",
        "quick",
        "--max-steps",
        "40",
        "--out",
        str(copy),
        "--resume",
        data_dir=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert last_json(result.stdout)["steps"] == 40
    assert torch.load(copy, weights_only=True)["history"]["steps"][0] == 0, "the history of the first run is kept"


def test_generate_continues_the_prompt_and_is_reproducible(trained, tmp_path):
    out, _ = trained
    args = ("generate", "--checkpoint", str(out), "--prompt", "CAPTAIN:", "--max-new-tokens", "60", "--seed", "7")
    first, second = run_cli(*args, data_dir=tmp_path), run_cli(*args, data_dir=tmp_path)
    assert first.returncode == 0, first.stderr
    assert first.stdout.startswith("CAPTAIN:")
    assert len(first.stdout.rstrip("\n")) > len("CAPTAIN:")
    assert first.stdout == second.stdout, "the same seed gives the same scene"


@pytest.mark.parametrize(
    "args, message",
    [
        (("--temperature", "-1"), "argument --temperature: must be 0"),
        (("--temperature", "1e-45"), "argument --temperature: must be 0"),
        (("--temperature", "nan"), "argument --temperature: 'nan' is not a finite number"),
        (("--temperature", "inf"), "argument --temperature: 'inf' is not a finite number"),
        (("--temperature", "hot"), "argument --temperature: 'hot' is not a number"),
        (("--top-p", "1.5"), "argument --top-p: must be a probability"),
        (("--top-p", "nan"), "argument --top-p: 'nan' is not a finite number"),
        (("--top-k", "0"), "argument --top-k: must be a whole number >= 1"),
        (("--max-new-tokens", "-5"), "argument --max-new-tokens: must be a whole number >= 1"),
        (
            ("--prompt", "CAPTAIN: \u00a1Hola! \u00bfQu\u00e9?"),
            "not in the vocabulary: '!', '?', 'H', 'Q', '\u00a1', '\u00bf', '\u00e9'.",
        ),
    ],
)
def test_generate_rejects_bad_arguments_with_one_clear_line(trained, tmp_path, args, message):
    out, _ = trained
    result = run_cli("generate", "--checkpoint", str(out), "--prompt", "CAPTAIN:", *args, data_dir=tmp_path)
    assert message in one_line_error(result, 2)


def test_a_prompt_character_outside_the_vocabulary_is_named(trained, tmp_path):
    """An out-of-vocabulary character must never reach the model as a bad token id (an IndexError there)."""
    out, _ = trained
    error = one_line_error(run_cli("generate", "--checkpoint", str(out), "--prompt", "Z\u00e9ro", data_dir=tmp_path), 2)
    assert "'Z'" in error and "'\u00e9'" in error and "not in the vocabulary" in error


@pytest.mark.parametrize(
    "args, message",
    [
        (("--max-seconds", "nan"), "argument --max-seconds: 'nan' is not a finite number"),
        (("--max-seconds", "inf"), "argument --max-seconds: 'inf' is not a finite number"),
        (("--max-seconds", "-1"), "argument --max-seconds: must be a number of seconds > 0"),
        (("--max-steps", "-3"), "argument --max-steps: must be a whole number >= 1"),
        (("--max-steps", "1.5"), "argument --max-steps: '1.5' is not a whole number"),
        (("--preset", "huge"), "argument --preset: invalid choice: 'huge'"),
    ],
)
def test_train_rejects_bad_numbers_with_one_clear_line(text_file, tmp_path, args, message):
    result = run_cli("train", "--text", str(text_file), "--out", str(tmp_path / "m.pt"), *args, data_dir=tmp_path)
    assert message in one_line_error(result, 2)
    assert not (tmp_path / "m.pt").exists()


def test_unwritable_places_are_one_clear_line(text_file, tmp_path):
    a_file = tmp_path / "notes.txt"
    a_file.write_text("a file, not a folder")
    out_under_a_file = run_cli("train", "--text", str(text_file), "--out", str(a_file / "m.pt"), data_dir=tmp_path)
    assert "notes.txt is a file, not a folder" in one_line_error(out_under_a_file, 2)
    out_is_a_folder = run_cli("train", "--text", str(text_file), "--out", str(tmp_path), data_dir=tmp_path)
    assert "is a folder; give the path of a file" in one_line_error(out_is_a_folder, 2)
    for command in ("download", "corpus", "train", "generate"):
        result = run_cli(command, "--data-dir", str(a_file), data_dir=tmp_path)
        assert "argument --data-dir" in one_line_error(result, 2) and "is a file, not a folder" in result.stderr


def test_a_bad_ds9_device_is_named_before_any_work(text_file, trained, tmp_path):
    out, _ = trained
    train = run_cli("train", "--text", str(text_file), "--out", str(tmp_path / "m.pt"), data_dir=tmp_path,
                    env={"DS9_DEVICE": "banana"})  # fmt: skip
    assert "DS9_DEVICE=banana is not a device this machine has: use cpu" in one_line_error(train, 1)
    assert not (tmp_path / "m.pt").exists()
    if not torch.cuda.is_available():
        generate = run_cli("generate", "--checkpoint", str(out), data_dir=tmp_path, env={"DS9_DEVICE": "cuda"})
        error = one_line_error(generate, 1)
        assert "DS9_DEVICE=cuda is not a device this machine has" in error and "checkpoint" not in error


def test_generate_and_train_explain_missing_or_broken_files(tmp_path, text_file, trained):
    missing = run_cli("generate", "--checkpoint", str(tmp_path / "nope.pt"), data_dir=tmp_path)
    assert "python -m ds9_utils train" in one_line_error(missing, 1)
    no_course_model = run_cli("generate", data_dir=tmp_path)
    assert "no course model in" in one_line_error(no_course_model, 1) and "--checkpoint" in no_course_model.stderr
    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"not a checkpoint")
    assert "not a readable checkpoint" in one_line_error(
        run_cli("generate", "--checkpoint", str(broken), data_dir=tmp_path), 2
    )
    raw = torch.load(trained[0], weights_only=True)
    del raw["sha256"]  # as in a checkpoint written before the checksum, whose parts are checked one by one
    raw["model"]["lm_head.weight"] = raw["model"]["lm_head.weight"][:, :5]
    torch.save(raw, broken)
    misshapen = one_line_error(run_cli("generate", "--checkpoint", str(broken), data_dir=tmp_path), 2)
    assert "damaged checkpoint: lm_head.weight is" in misshapen
    del raw["model_config"]
    torch.save(raw, broken)
    keyless = one_line_error(run_cli("generate", "--checkpoint", str(broken), data_dir=tmp_path), 2)
    assert "damaged checkpoint: it has no model_config" in keyless
    no_text = run_cli("train", "--text", str(tmp_path / "none.txt"), data_dir=tmp_path)
    assert "no such file" in one_line_error(no_text, 1)
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("caf\u00e9 ".encode("latin-1") * 1000)
    assert "not UTF-8" in one_line_error(run_cli("train", "--text", str(latin1), data_dir=tmp_path), 1)


def test_generate_without_checkpoint_uses_the_course_model_of_the_data_dir(trained, tmp_path):
    out, _ = trained
    course_model = tmp_path / "D" / "checkpoints" / "course_model-quick.pt"  # quick mode's course model
    course_model.parent.mkdir(parents=True)
    course_model.write_bytes(out.read_bytes())
    args = ("--prompt", "CAPTAIN:", "--max-new-tokens", "30", "--seed", "3")
    implicit = run_cli("generate", "--data-dir", str(tmp_path / "D"), *args, data_dir=tmp_path)
    explicit = run_cli("generate", "--checkpoint", str(out), *args, data_dir=tmp_path)
    assert implicit.returncode == 0, implicit.stderr
    assert implicit.stdout == explicit.stdout


def test_resume_refuses_another_text_with_a_vocabulary_of_the_same_size(trained, text_file, tmp_path):
    out, _ = trained
    copy = tmp_path / "copy.pt"
    copy.write_bytes(out.read_bytes())
    other = tmp_path / "other.txt"
    other.write_text(text_file.read_text().replace("W", "Q"), encoding="utf-8")  # Q is not in the first text
    result = run_cli("train", "--text", str(other), "--out", str(copy), "--resume", data_dir=tmp_path)
    error = one_line_error(result, 1)
    assert "trained on another text" in error and "vocabulary" in error and "preset" not in error, error
    assert copy.read_bytes() == out.read_bytes()


def test_resume_with_a_mistyped_out_refuses_instead_of_starting_afresh(text_file, tmp_path):
    result = run_cli(
        "train", "--text", str(text_file), "--out", str(tmp_path / "typo.pt"), "--resume", data_dir=tmp_path
    )
    assert "--resume: there is no run to continue at" in one_line_error(result, 2)
    assert not (tmp_path / "typo.pt").exists()


@pytest.mark.skipif(sys.platform == "win32", reason="symbolic links")
def test_a_symlinked_out_stays_a_symlink(text_file, tmp_path):
    (tmp_path / "runs").mkdir()
    link = tmp_path / "model.pt"
    link.symlink_to(tmp_path / "runs" / "v1.pt")
    args = ("train", "--text", str(text_file), "--preset", "quick", "--out", str(link))
    assert run_cli(*args, "--max-steps", "2", data_dir=tmp_path).returncode == 0
    assert run_cli(*args, "--max-steps", "4", "--resume", data_dir=tmp_path).returncode == 0
    assert link.is_symlink() and torch.load(tmp_path / "runs" / "v1.pt", weights_only=True)["step"] == 4


@POSIX_SIGNALS
def test_ctrl_c_in_train_prints_the_exact_command_that_resumes(text_file, tmp_path):
    out = tmp_path / "long run.pt"  # a space: the printed command must quote it
    args = ["train", "--text", str(text_file), "--preset", "quick", "--max-steps", "100000", "--out", str(out)]
    process = start_cli(*args, data_dir=tmp_path)
    wait_for(out.exists)
    _, stderr = interrupt(process)
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr
    command = stderr.strip().splitlines()[-1].split("continue it with: ", 1)[1]
    assert shlex.split(command) == ["python", "-m", "ds9_utils", *args, "--resume"]
    step = torch.load(out, weights_only=True)["step"]
    resumed = run_cli(*shlex.split(command)[3:], "--max-steps", str(step + 5), data_dir=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert last_json(resumed.stdout)["steps"] == step + 5


@pytest.fixture(scope="module")
def endless(tmp_path_factory) -> Path:
    """A model whose vocabulary has no newline, so a scene never ends: generation runs until it is stopped."""
    folder = tmp_path_factory.mktemp("endless")
    text = folder / "one_line.txt"
    text.write_text(" ".join(line for line in SAMPLE_LINES if line) * 30, encoding="utf-8")
    out = folder / "endless.pt"
    result = run_cli("train", "--text", str(text), "--preset", "quick", "--max-steps", "5", "--out", str(out),
                     data_dir=folder)  # fmt: skip
    assert result.returncode == 0, result.stderr
    return out


@POSIX_SIGNALS
def test_generate_prints_as_it_writes_and_ctrl_c_keeps_the_text(endless, tmp_path):
    process = start_cli("generate", "--checkpoint", str(endless), "--prompt", "CAPTAIN:", "--max-new-tokens",
                        "1000000", data_dir=tmp_path)  # fmt: skip
    printed = b""
    deadline = time.monotonic() + 120
    while len(printed) < len("CAPTAIN:") + 40:
        assert time.monotonic() < deadline and process.poll() is None, "text must appear while generation runs"
        if select.select([process.stdout], [], [], 1.0)[0]:
            printed += os.read(process.stdout.fileno(), 4096)
    rest, stderr = interrupt(process)
    assert process.returncode == 130
    assert (
        "Traceback" not in stderr
        and stderr.strip().splitlines()[-1] == "interrupted: the scene so far is printed above"
    )
    text = printed.decode() + rest
    assert text.startswith("CAPTAIN:") and len(text) >= len(printed.decode())


def test_the_main_job_downloads_trains_and_prints_a_scene(tmp_path, mirror_url):
    """``python -m ds9_utils`` on an empty data folder: the whole job against the loopback mirror.

    Then the same command without quick mode: it trains the full course model in its own file instead of
    refusing to resume the quick one (stopped with Ctrl-C once its first checkpoint is written).
    """
    site = {"DS9_BASE_URL": mirror_url, "DS9_DOWNLOAD_DELAY": "0"}
    result = run_cli(data_dir=tmp_path, env=site)
    assert result.returncode == 0, result.stderr
    assert len(list((tmp_path / "chakoteya" / "DS9").glob("[0-9][0-9][0-9].htm"))) == 165
    quick_model = tmp_path / "checkpoints" / "course_model-quick.pt"
    assert quick_model.exists()
    scene, longer_runs = result.stdout.split("Step 3: a new scene.", 1)[1].strip().split("\nThis run trained ", 1)
    assert scene.startswith("[Quark's]\n") and len(scene) > 50
    assert "What longer runs of the same recipe gave" in longer_runs and "train --preset course" in longer_runs
    assert curve_table(read_curve()) in longer_runs, "the stored budget curve, as chapter 09 prints it"
    again = run_cli(data_dir=tmp_path, env={"DS9_BASE_URL": "http://127.0.0.1:9/", "DS9_DOWNLOAD_DELAY": "0"})
    assert again.returncode == 0, "a second run reuses the cache and the trained model: no site needed"
    assert again.stdout.split("Step 3: a new scene.", 1)[1] == result.stdout.split("Step 3: a new scene.", 1)[1]
    if sys.platform == "win32":
        return
    before = quick_model.read_bytes()
    full = start_cli(data_dir=tmp_path, env={**site, "DS9_QUICK": "0", "DS9_DEVICE": "cpu"})
    wait_for(lambda: (tmp_path / "checkpoints" / "course_model-cpu.pt").exists() or full.poll() is not None)
    stdout, stderr = interrupt(full)
    assert full.returncode == 130, stderr
    assert "the 'cpu' model on cpu" in stdout and "build the model from that config" not in stderr
    assert stderr.strip().splitlines()[-1].endswith("run the same command again to continue")
    assert quick_model.read_bytes() == before
