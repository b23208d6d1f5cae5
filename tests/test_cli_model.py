"""The command line's model commands, run as a user runs them: ``python -m ds9_utils [train|generate]``.

Every command runs in a subprocess with its own data folder, in quick mode (set by conftest.py), and is judged
by what it prints, the files it leaves, and its exit status.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

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


def last_json(output: str) -> dict:
    return json.loads(output.strip().splitlines()[-1])


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


def test_train_refuses_to_overwrite_a_run_without_resume(trained, text_file, tmp_path):
    out, _ = trained
    before = out.read_bytes()
    result = run_cli(
        "train", "--text", str(text_file), "--preset", "quick", "--max-steps", "5", "--out", str(out), data_dir=tmp_path
    )
    assert result.returncode == 2
    assert "--resume" in result.stderr and "already exists" in result.stderr
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
        (("--temperature", "-1"), "temperature"),
        (("--top-p", "1.5"), "top_p"),
        (("--top-k", "0"), "top_k"),
        (("--prompt", "CAPTAIN: \u00a1Hola!"), "'\u00a1'"),
    ],
)
def test_generate_rejects_bad_arguments_with_one_clear_line(trained, tmp_path, args, message):
    out, _ = trained
    result = run_cli("generate", "--checkpoint", str(out), "--prompt", "CAPTAIN:", *args, data_dir=tmp_path)
    assert result.returncode == 2
    assert result.stderr.startswith("error: ") and message in result.stderr
    assert "Traceback" not in result.stderr


def test_generate_and_train_explain_missing_or_broken_files(tmp_path, text_file):
    missing = run_cli("generate", "--checkpoint", str(tmp_path / "nope.pt"), data_dir=tmp_path)
    assert missing.returncode == 2 and "python -m ds9_utils train" in missing.stderr
    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"not a checkpoint")
    unreadable = run_cli("generate", "--checkpoint", str(broken), data_dir=tmp_path)
    assert unreadable.returncode == 2 and "not a readable checkpoint" in unreadable.stderr
    unknown = run_cli("train", "--text", str(text_file), "--preset", "huge", data_dir=tmp_path)
    assert unknown.returncode == 2 and "unknown preset 'huge'" in unknown.stderr and "cpu" in unknown.stderr
    no_text = run_cli("train", "--text", str(tmp_path / "none.txt"), data_dir=tmp_path)
    assert no_text.returncode == 2 and "no such file" in no_text.stderr
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("caf\u00e9 ".encode("latin-1") * 1000)
    not_utf8 = run_cli("train", "--text", str(latin1), data_dir=tmp_path)
    assert not_utf8.returncode == 2 and "not UTF-8" in not_utf8.stderr


def test_the_main_job_downloads_trains_and_prints_a_scene(tmp_path, mirror_url):
    """``python -m ds9_utils`` on an empty data folder: the whole job against the loopback mirror."""
    result = run_cli(data_dir=tmp_path, env={"DS9_BASE_URL": mirror_url, "DS9_DOWNLOAD_DELAY": "0"})
    assert result.returncode == 0, result.stderr
    assert len(list((tmp_path / "chakoteya" / "DS9").glob("[0-9][0-9][0-9].htm"))) == 165
    assert (tmp_path / "checkpoints" / "course_model.pt").exists()
    scene = result.stdout.split("Step 3: a new scene.", 1)[1].strip()
    assert scene.startswith("[Quark's]\n") and len(scene) > 50
    again = run_cli(data_dir=tmp_path, env={"DS9_BASE_URL": "http://127.0.0.1:9/", "DS9_DOWNLOAD_DELAY": "0"})
    assert again.returncode == 0, "a second run reuses the cache and the trained model: no site needed"
    assert again.stdout.split("Step 3: a new scene.", 1)[1] == result.stdout.split("Step 3: a new scene.", 1)[1]
