"""Atomic output: a result (file or folder) appears at its path complete, or not at all."""

from __future__ import annotations

import errno
import os
import re
import secrets
import shutil
import socket
import tempfile
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

#: Temporary files are ``.NAME.PID-XXXXXXXX.part`` beside their target: hidden, and traceable to the process that
#: writes them, so a later run can tell the leftovers of a killed run (dead PID) from another run's work in progress.
_PART = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)-[0-9a-f]{8}\.part$")


def temp_path(path: Path) -> Path:
    """A new temporary file beside ``path`` (created empty, exclusively, with the usual permissions)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.part"
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))  # umask applies, unlike mkstemp
    return tmp


def publish(tmp: Path, path: Path, *, overwrite: bool = True) -> Path:
    """Move the complete temporary file ``tmp`` to ``path`` (fsynced first). ``overwrite=False`` never replaces a
    file, even one that appeared while ``tmp`` was written (a hard link fails when the target exists; no
    check-then-replace race); ``FileExistsError`` then, and ``tmp`` is removed either way."""
    tmp, path = Path(tmp), Path(path)
    try:
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        if overwrite:
            os.replace(tmp, path)
            return path
        try:
            os.link(tmp, path)
        except FileExistsError:
            raise FileExistsError(f"{path}: exists (it appeared while this output was being written, e.g. by "
                                  "another run); kept the other's and wrote nothing there: use --overwrite to "
                                  "replace it") from None
        except OSError:  # a file system without hard links: the exclusive check is the best left
            if path.exists():
                raise FileExistsError(f"{path}: exists; kept it, use --overwrite to replace it") from None
            os.replace(tmp, path)
        return path
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write(path: Path, write: Callable[[Path], object], *, overwrite: bool = True) -> None:
    """Call ``write(tmp_path)`` then move it to ``path`` (see ``publish``); no partial file is ever visible at
    ``path``, and the temporary file is removed however the write ends."""
    tmp = temp_path(path)
    try:
        write(tmp)
        publish(tmp, Path(path), overwrite=overwrite)
    except OSError as exc:
        raise write_error(exc, Path(path)) from exc
    finally:
        tmp.unlink(missing_ok=True)


def is_disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` says the disk is full (``ENOSPC``, or a library's "262144 requested and 256928 written")."""
    text = f"{type(exc).__name__}: {exc}"
    return getattr(exc, "errno", None) == errno.ENOSPC or re.search(r"\d+ requested and \d+ written", text) is not None


def write_error(exc: BaseException, path: Path, *,
                after: str = "nothing was left at that path: free some space and run again") -> OSError:
    """``exc`` as an ``OSError`` naming ``path``; a full disk is said as such ("the disk is full (N MB free on
    ...)", then ``after``: what was kept and what to do)."""
    text = f"{type(exc).__name__}: {exc}"
    if is_disk_full(exc):
        try:
            free = f"{shutil.disk_usage(path.parent).free / 1e6:.0f} MB free"
        except OSError:
            free = "free space unknown"
        return OSError(errno.ENOSPC, f"{path}: the disk is full ({free} on {path.parent}); {after}")
    if isinstance(exc, OSError) and str(path) in str(exc):
        return exc
    return OSError(getattr(exc, "errno", None) or errno.EIO, f"{path}: writing failed ({text})")


def stale_parts(folder: Path) -> list[Path]:
    """Temporary files in ``folder`` left by runs that no longer exist (killed by SIGKILL, a power cut, ...)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = []
    for entry in folder.iterdir():
        match = _PART.match(entry.name)
        if match and entry.is_file() and not _running(int(match["pid"])):
            found.append(entry)
    return sorted(found)


def remove_stale_parts(folder: Path) -> list[Path]:
    """Remove ``stale_parts(folder)``; returns what was removed."""
    removed = []
    for entry in stale_parts(folder):
        try:
            entry.unlink()
            removed.append(entry)
        except FileNotFoundError:  # another run cleaned it up first
            continue
    return removed


def _running(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def writer_lock(path: Path) -> Path:
    """Where the run writing ``path`` says who it is: ``.NAME.alnet-lock`` beside it."""
    path = Path(path)
    return path.with_name(f".{path.name}.alnet-lock")


def claim_writer(path: Path) -> Path:
    """Make this process the one writer of ``path`` (a folder output written over a long run): creates
    ``writer_lock(path)`` exclusively, holding ``PID HOST``; returns it. A lock of a process of this host that no
    longer runs (SIGKILL, power cut) or of this process is taken over; another live run's raises
    ``FileExistsError`` naming it."""
    lock = writer_lock(path)
    lock.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(3):
        try:
            fd = os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            holder = _lock_holder(lock)
            if holder is not None:
                raise FileExistsError(f"{path}: another run ({holder}) is writing it") from None
            lock.unlink(missing_ok=True)
            continue
        with os.fdopen(fd, "w") as fh:
            fh.write(f"{os.getpid()} {socket.gethostname()}\n")
        return lock
    raise FileExistsError(f"{path}: another run keeps claiming it")


def _lock_holder(lock: Path) -> str | None:
    """Who holds ``lock`` ("PID N on HOST"), or ``None`` when it is stale (a dead process here, or this one)."""
    try:
        pid_text, _, host = lock.read_text().strip().partition(" ")
        pid = int(pid_text)
    except (OSError, ValueError):
        return "a run that is starting"  # created but not yet written, or unreadable: do not take it
    if host == socket.gethostname() and (pid == os.getpid() or not _running(pid)):
        return None
    return f"PID {pid} on {host}"


def release_writer(lock: Path | None) -> None:
    """Remove a lock ``claim_writer`` returned (if it is still this process's)."""
    if lock is None:
        return
    try:
        mine = lock.read_text().split()[0] == str(os.getpid())
    except (OSError, IndexError):
        return
    if mine:
        lock.unlink(missing_ok=True)


@contextmanager
def staging_directory(path: Path) -> Iterator[Path]:
    """A fresh hidden folder beside ``path`` (same file system, so its contents can be renamed into place),
    removed with everything left in it when the block ends, however it ends."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent))
    try:
        yield staging
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def move_into_place(source: Path, path: Path) -> None:
    """Rename the complete file or folder ``source`` to ``path`` (same file system). An existing ``path`` is
    moved aside first and deleted only once ``source`` is in place; if the rename fails it is put back."""
    source, path = Path(source), Path(path)
    if source.is_file():
        with open(source, "rb") as fh:
            os.fsync(fh.fileno())
    aside = None
    if path.exists() or path.is_symlink():
        aside = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.old")
        os.replace(path, aside)
    try:
        os.replace(source, path)
    except BaseException:
        if aside is not None:
            os.replace(aside, path)
        raise
    if aside is not None:
        if aside.is_dir() and not aside.is_symlink():
            shutil.rmtree(aside, ignore_errors=True)
        else:
            aside.unlink(missing_ok=True)
