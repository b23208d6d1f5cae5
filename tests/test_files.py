"""Atomic writes and torch files: whole files with the usual permissions, links kept, one clear line on failure."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import time

import pytest
import torch

from ds9_utils import files
from ds9_utils.download import DownloadError
from ds9_utils.files import FileWriteError, load_torch, save_torch, write_atomically

POSIX = pytest.mark.skipif(sys.platform == "win32", reason="POSIX permissions and symbolic links")


@pytest.fixture
def umask():
    """Set the process's umask for one test, and put the old one back."""
    previous = os.umask(0o022)

    def set_umask(mask: int) -> None:
        os.umask(mask)

    yield set_umask
    os.umask(previous)


def test_writes_the_whole_file_and_leaves_no_temporary_file(tmp_path):
    path = tmp_path / "deep" / "folder" / "out.bin"
    assert write_atomically(path, b"first") == path
    write_atomically(path, b"second")
    assert path.read_bytes() == b"second"
    assert [p.name for p in path.parent.iterdir()] == ["out.bin"]


def a_finished_pid() -> int:
    """The pid of a process that has ended (and not been reused in the moment since)."""
    process = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(process.stdout)


@POSIX
def test_a_write_sweeps_what_killed_writes_of_its_file_left_and_keeps_a_live_writers(tmp_path):
    target = tmp_path / "model.pt"
    old = time.time() - files.STALE_PART_SECONDS - 60
    parts = {
        "dead writer": tmp_path / f".model.pt.{a_finished_pid()}.k3j9.part",
        "old, live writer": tmp_path / f".model.pt.{os.getpid()}.a1b2.part",
        "old, no pid (an older version's name)": tmp_path / ".model.pt.x7q2m1.part",
        "fresh, live writer": tmp_path / f".model.pt.{os.getpid()}.z9y8.part",
        "another file's": tmp_path / f".other.pt.{a_finished_pid()}.c3d4.part",
    }
    for name, part in parts.items():
        part.write_bytes(b"half a checkpoint")
        if name.startswith("old"):
            os.utime(part, (old, old))
    write_atomically(target, b"a whole checkpoint")
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == sorted(["model.pt", parts["fresh, live writer"].name, parts["another file's"].name])


def test_a_temporary_file_names_its_writer(tmp_path, monkeypatch):
    seen = []
    real_replace = os.replace

    def replace(source, destination):
        seen.append(os.path.basename(source))
        real_replace(source, destination)

    monkeypatch.setattr(files.os, "replace", replace)
    write_atomically(tmp_path / "out.bin", b"data")
    assert seen[0].startswith(f".out.bin.{os.getpid()}.") and seen[0].endswith(".part")


@POSIX
@pytest.mark.parametrize("mask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_a_new_file_gets_the_permissions_the_umask_allows(tmp_path, umask, mask, mode):
    umask(mask)
    path = write_atomically(tmp_path / "out.bin", b"data")
    assert path.stat().st_mode & 0o777 == mode, "not the owner-only mode of a temporary file"


@POSIX
def test_a_symbolic_link_stays_a_link_and_its_target_gets_the_bytes(tmp_path):
    (tmp_path / "runs").mkdir()
    real = tmp_path / "runs" / "model-v1.pt"
    real.write_bytes(b"old")
    link = tmp_path / "model.pt"
    link.symlink_to(real)
    write_atomically(link, b"new")
    assert link.is_symlink() and os.readlink(link) == str(real)
    assert real.read_bytes() == b"new"
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["model-v1.pt"]


def test_a_full_disk_is_one_clear_line_not_a_download_error(tmp_path, monkeypatch):
    path = tmp_path / "model.pt"
    path.write_bytes(b"the previous checkpoint")

    def disk_full(fd: int) -> None:  # what the kernel answers when the disk fills up during the write
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(files.os, "fsync", disk_full)
    with pytest.raises(FileWriteError, match="disk is full while writing") as caught:
        write_atomically(path, b"a new checkpoint")
    assert isinstance(caught.value, OSError) and not isinstance(caught.value, DownloadError)
    assert str(path) in str(caught.value) and "\n" not in str(caught.value)
    assert path.read_bytes() == b"the previous checkpoint"
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]


def test_a_file_where_a_folder_should_be_is_named(tmp_path):
    (tmp_path / "notes.txt").write_text("a file")
    with pytest.raises(FileWriteError, match=r"notes\.txt is a file, not a folder"):
        write_atomically(tmp_path / "notes.txt" / "model.pt", b"data")


def test_a_folder_where_the_file_should_be_is_named(tmp_path):
    (tmp_path / "model.pt").mkdir()
    with pytest.raises(FileWriteError, match="it is a folder"):
        write_atomically(tmp_path / "model.pt", b"data")
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]


@POSIX
@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root may write anywhere")
def test_a_folder_without_write_permission_is_named(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    try:
        with pytest.raises(FileWriteError, match="permission denied"):
            write_atomically(locked / "model.pt", b"data")
    finally:
        locked.chmod(0o700)


def test_torch_files_round_trip_weights_only(tmp_path):
    state = {"weights": torch.arange(6.0).reshape(2, 3), "step": 7, "history": {"loss": [1.5, 1.25]}}
    path = save_torch(tmp_path / "state.pt", state)
    loaded = load_torch(path, "cpu", what="state", remedy="save it again")
    assert torch.equal(loaded["weights"], state["weights"]) and loaded["history"] == state["history"]


@pytest.mark.parametrize("content", [b"", b"not a torch file", b"PK\x03\x04 a zip cut short"])
def test_an_unreadable_torch_file_is_one_clear_line(tmp_path, content):
    path = tmp_path / "broken.pt"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=r"broken\.pt is not a readable adapter .*; save it again"):
        load_torch(path, "cpu", what="adapter", remedy="save it again")
    with pytest.raises(FileNotFoundError, match=r"no adapter at .*missing\.pt: save it again"):
        load_torch(tmp_path / "missing.pt", "cpu", what="adapter", remedy="save it again")


class CreatesAFile:
    """A pickle that runs code when it is opened: unpickling it calls ``open(marker, "w")``."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_file_that_would_run_code_is_refused(tmp_path):
    """weights_only: a pickle that would run code (create a file) is refused, and the code does not run."""
    path = tmp_path / "evil.pt"
    marker = tmp_path / "the code ran"
    torch.save({"object": CreatesAFile(marker)}, path)
    with pytest.raises(ValueError, match="not a readable checkpoint"):
        load_torch(path, "cpu", what="checkpoint", remedy="train one")
    assert not marker.exists()
    # The file really runs code when loaded without weights_only: the test tests what its name says.
    torch.load(path, weights_only=False)["object"].close()  # the handle open() returned
    assert marker.exists()
