"""Writing and reading the course's files safely: whole files only, and errors that say what to do.

Every file the course writes (pages, the corpus, tokenizers, checkpoints, adapters) goes through
``write_atomically``: the bytes go to a temporary file beside the target, which is then renamed over it, so
a reader (or a run interrupted by Ctrl-C or a full disk) never sees half a file. Torch files are saved and
loaded through ``save_torch`` and ``load_torch``, which add ``weights_only=True``: a checkpoint or adapter
from someone else can only hold tensors and plain values, never code that runs when it is opened.
"""

from __future__ import annotations

import errno
import io
import os
import tempfile
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout


class DamagedFileError(ValueError):
    """A file that is not what it should be: not a torch file, another program's, cut short or damaged.

    The message says which file and what to do; the command line reports it as a usage error (exit 2):
    the file given is not one it can use.
    """


class FileWriteError(OSError):
    """A file could not be written (full disk, no permission, a file where a folder should be); the message
    says which file and what to do."""


class FileInUseError(RuntimeError):
    """Another process is writing the same file (the message names it, and what to do): a usage error."""


@contextmanager
def sole_writer(path: str | Path, choose_another: str) -> Iterator[None]:
    """Hold the lock of ``path`` while this process writes it: a second writer is refused in one line.

    Two runs writing one checkpoint would each replace the other's file, and one run's work would be lost
    without a word. The lock is the operating system's, on ``.NAME.lock`` beside the file (``filelock``:
    ``fcntl`` on POSIX, ``msvcrt`` on Windows), so it ends with its process: a run killed with ``kill -9``
    leaves the small lock file behind but not the lock, and the next run takes it. The holder writes its pid
    into the file, so the refusal can name it; ``choose_another`` is the option that picks another file.
    """
    path = Path(path)
    target = Path(os.path.realpath(path))  # one lock per file, whatever link or relative path names it
    lock_path = target.with_name(f".{target.name}.lock")
    try:
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        lock = FileLock(lock_path)
        lock.acquire(timeout=0)
    except Timeout:
        try:
            holder = f"process {int(lock_path.read_text().strip())}"
        except (OSError, ValueError):  # it has not written its pid yet, or the system keeps others out
            holder = "another process"
        raise FileInUseError(
            f"{path} is being written by another run ({holder}); wait for it to finish, or write this run to "
            f"another file with {choose_another}"
        ) from None
    except OSError as error:
        raise _why_not_writable(lock_path, error) from error
    try:
        lock_path.write_text(str(os.getpid()))
        yield
    finally:
        lock.release()  # the file stays: removing it would let a third run lock a new file while one waits


def _umask() -> int:
    """The process's umask, the bits a new file must not have (Python < 3.13 cannot read it directly)."""
    try:
        with open("/proc/self/status") as status:  # Linux: read it without changing it
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _why_not_writable(path: Path, error: OSError) -> FileWriteError:
    """One clear line for the usual reasons a write fails."""
    if error.errno == errno.ENOSPC:
        return FileWriteError(
            f"the disk is full while writing {path}; free some space or write somewhere with room "
            "(DS9_DATA_DIR or --data-dir for the data, --out for a checkpoint)"
        )
    if isinstance(error, PermissionError):
        return FileWriteError(f"cannot write {path}: permission denied; choose a folder you can write to")
    if isinstance(error, IsADirectoryError) or path.is_dir():
        return FileWriteError(f"cannot write {path}: it is a folder; give the path of a file inside it")
    if isinstance(error, (NotADirectoryError, FileExistsError)):
        blocker = next((parent for parent in path.parents if parent.exists() and not parent.is_dir()), path.parent)
        return FileWriteError(f"cannot write {path}: {blocker} is a file, not a folder; choose another path")
    return FileWriteError(f"cannot write {path}: {error.strerror or error}")


STALE_PART_SECONDS = 300  # a temporary file this old is left by a write that will never finish


def _process_is_gone(pid: int) -> bool:
    """True when no process ``pid`` runs here (POSIX); elsewhere, or when unsure, False."""
    if os.name != "posix":  # on Windows os.kill(pid, 0) would end the process, not ask about it
        return False
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return True
    except OSError:  # PermissionError: it exists, and belongs to another user
        pass
    return False


def sweep_stale_parts(target: Path) -> None:
    """Remove the temporary files ``write_atomically`` left beside ``target`` when it was killed.

    A temporary file is ``.NAME.PID.RANDOM.part``. It is stale when its writer (``PID``) is gone, or when it
    is older than ``STALE_PART_SECONDS`` (a writer's pid may be reused, and older versions wrote no pid);
    a fresh one of a live writer is another write in progress, and is kept.
    """
    prefix = f".{target.name}."
    try:
        candidates = [p for p in target.parent.iterdir() if p.name.startswith(prefix) and p.name.endswith(".part")]
    except OSError:  # no folder yet, or one we cannot list: nothing of ours to sweep
        return
    for part in candidates:
        pid = part.name[len(prefix) :].split(".", 1)[0]
        try:
            if (pid.isdigit() and _process_is_gone(int(pid))) or (
                time.time() - part.stat().st_mtime > STALE_PART_SECONDS
            ):
                part.unlink()
        except OSError:  # gone already (another writer swept it), or not ours to remove
            continue


def write_atomically(path: str | Path, content: bytes) -> Path:
    """Write ``content`` to ``path`` whole or not at all, and return the path written.

    The temporary file is renamed over the target only once every byte is on disk; an interruption
    removes it and leaves any earlier file untouched, and what a killed write left behind is swept by the
    next write of the same file (``sweep_stale_parts``). The new file gets the usual permissions
    (``0o666`` minus the umask), not the owner-only ones of a temporary file. When ``path`` is a symbolic
    link, the file it points to is replaced and the link stays a link.
    """
    path = Path(path)
    target = Path(os.path.realpath(path)) if path.is_symlink() else path
    tmp_name = None
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        sweep_stale_parts(target)
        prefix = f".{target.name}.{os.getpid()}."  # the writer's pid: a later write can tell if it is gone
        handle, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=prefix, suffix=".part")
        with os.fdopen(handle, "wb") as tmp:
            tmp.write(content)
            tmp.flush()
            os.fsync(tmp.fileno())
        os.chmod(tmp_name, 0o666 & ~_umask())
        os.replace(tmp_name, target)
    except BaseException as error:
        if tmp_name is not None:
            Path(tmp_name).unlink(missing_ok=True)
        if isinstance(error, OSError) and not isinstance(error, FileWriteError):
            raise _why_not_writable(path, error) from error
        raise
    return path


def save_torch(path: str | Path, obj: Any) -> Path:
    """``torch.save`` through ``write_atomically``: only tensors and plain values, so it loads weights-only."""
    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return write_atomically(path, buffer.getvalue())


def load_torch(path: str | Path, map_location: Any = "cpu", *, what: str = "torch file", remedy: str) -> Any:
    """``torch.load(..., weights_only=True)`` with one clear line for a missing, unreadable or foreign file.

    ``what`` names the file for the user ("checkpoint", "adapter") and ``remedy`` says what to do about a
    bad one. ``map_location`` must already be a valid device (``settings.resolve_device``): torch's own
    error for a bad device looks like one for a bad file.
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no {what} at {path}: {remedy}")
    try:
        handle = open(path, "rb")  # closed below; opening is where the system says no
    except OSError as error:
        raise ValueError(f"cannot read {path}: {error.strerror or error}") from error
    try:
        with handle, warnings.catch_warnings():  # a damaged file can make torch warn (of pickle protocol 75...)
            warnings.simplefilter("ignore")
            return torch.load(handle, map_location=map_location, weights_only=True)
    except Exception as error:
        # Garbage or a foreign pickle, an empty, truncated or foreign zip, a changed byte: torch.load's
        # unpickler then fails in any of a dozen ways (UnpicklingError, EOFError, RuntimeError, OSError, but
        # also IndexError, KeyError, TypeError...). The device was checked before (settings.resolve_device)
        # and the file opened, so whatever it raises here is about the file's contents.
        raise DamagedFileError(
            f"{path} is not a readable {what} ({type(error).__name__}): it may be truncated, damaged or another "
            f"kind of file; {remedy}"
        ) from error
