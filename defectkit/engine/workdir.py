"""One run per work dir: creating the dir, and the lock file that keeps a second run out.

    lock = WorkDirLock(work_dir).acquire()   # WorkDirLockedError if another live run holds it
    ...
    lock.release()                           # also at interpreter exit

The lock is ``<work_dir>/.lock``, a small JSON file ``{"pid", "host", "started"}`` created
atomically (written to a temp name, then hard-linked onto ``.lock``, which fails if it
exists). A lock whose PID is dead on this host, or that cannot be read, is stale: it is
taken over with a warning. A lock held by another host is never taken over (its PID
cannot be checked from here); the message says how to remove it.
"""
from __future__ import annotations

import atexit
import datetime as _dt
import json
import os
import socket
import warnings
from pathlib import Path

LOCK_NAME = ".lock"


class WorkDirError(OSError):
    """The work dir cannot be created or written; the message names it."""


class WorkDirLockedError(WorkDirError):
    """Another run (named by PID and host) holds the work dir's lock."""


def make_work_dir(work_dir: str | os.PathLike) -> Path:
    """Create ``work_dir`` (and parents); :class:`WorkDirError` naming it if that fails."""
    work_dir = Path(work_dir)
    try:
        work_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise WorkDirError(f"work_dir {work_dir}: cannot create it ({type(e).__name__}: "
                           f"{e.strerror or e}); choose another with --work-dir") from None
    return work_dir


def pid_alive(pid: int) -> bool:
    """Whether a process with ``pid`` exists on this host."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:     # exists, owned by another user
        return True
    except OSError:
        return False
    return True


class WorkDirLock:
    """The lock of one work dir (see the module doc). ``acquire`` returns ``self``."""

    def __init__(self, work_dir: str | os.PathLike):
        self.work_dir = Path(work_dir)
        self.path = self.work_dir / LOCK_NAME
        self.held = False
        self.notes: list[str] = []     # e.g. a stale lock taken over (also warned)

    def _read(self) -> dict | None:
        try:
            info = json.loads(self.path.read_text(encoding="utf-8"))
            return info if isinstance(info, dict) and isinstance(info.get("pid"), int) else None
        except (OSError, ValueError):
            return None

    def _create(self, info: dict) -> bool:
        """Create the lock file holding ``info``; False if it already exists."""
        tmp = self.path.with_name(f"{LOCK_NAME}.tmp-{os.getpid()}")
        try:
            tmp.write_text(json.dumps(info), encoding="utf-8")
            try:
                os.link(tmp, self.path)
                return True
            except FileExistsError:
                return False
            except OSError:       # no hard links here: exclusive create instead
                try:
                    fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
                except FileExistsError:
                    return False
                with os.fdopen(fd, "w", encoding="utf-8") as f:
                    f.write(json.dumps(info))
                return True
        except OSError as e:
            raise WorkDirError(f"work_dir {self.work_dir}: cannot write its lock file ({type(e).__name__}: "
                               f"{e.strerror or e}); choose a writable --work-dir") from None
        finally:
            tmp.unlink(missing_ok=True)

    def acquire(self) -> "WorkDirLock":
        host = socket.gethostname()
        info = {"pid": os.getpid(), "host": host,
                "started": _dt.datetime.now().astimezone().isoformat(timespec="seconds")}
        for _ in range(3):
            if self._create(info):
                self.held = True
                atexit.register(self.release)
                return self
            other = self._read()
            if other is not None and (other.get("host") != host or pid_alive(other["pid"])):
                who = "this process" if other["pid"] == os.getpid() and other.get("host") == host \
                    else f"PID {other['pid']} on host {other.get('host')}"
                raise WorkDirLockedError(
                    f"work_dir {self.work_dir} is in use by another training run ({who}, started "
                    f"{other.get('started', '?')}; lock file {self.path}): wait for it to finish or "
                    f"choose another --work-dir; delete the lock file only if that run is gone")
            why = (f"PID {other['pid']} on this host is not running" if other is not None
                   else "its content cannot be read")
            note = f"took over the stale lock {self.path} ({why})"
            warnings.warn(note, RuntimeWarning, stacklevel=2)
            self.notes.append(note)
            self.path.unlink(missing_ok=True)
        raise WorkDirLockedError(f"work_dir {self.work_dir}: could not take its lock {self.path} "
                                 f"(another run keeps creating it)")

    def release(self) -> None:
        """Remove the lock file if this object holds it (idempotent)."""
        if not self.held:
            return
        self.held = False
        atexit.unregister(self.release)
        info = self._read()
        if info is not None and info.get("pid") == os.getpid():
            self.path.unlink(missing_ok=True)


def take_work_dir(work_dir: Path, is_main: bool, world_size: int) -> tuple["WorkDirLock | None", list[str]]:
    """What a run does first with its work dir: rank 0 creates and locks it, removes the temp
    files of killed saves and re-aligns ``latest.pth`` / ``last_checkpoint``; every rank
    raises (:class:`WorkDirError` on the others) if that failed. Returns ``(lock, notes)``
    (the lock on rank 0, None elsewhere; notes to log as warnings)."""
    from . import distributed as dist_utils
    from .checkpoint import remove_stale_temp_files, repair_latest

    lock, notes, error = None, [], None
    if is_main:
        try:
            make_work_dir(work_dir)
            lock = WorkDirLock(work_dir).acquire()
            notes += lock.notes
            removed = remove_stale_temp_files(work_dir)
            if removed:
                notes.append(f"removed {len(removed)} temp file(s) left by killed saves: {', '.join(removed)}")
            note = repair_latest(work_dir)
            if note:
                notes.append(note)
        except Exception as e:  # noqa: BLE001 - re-raised below, after telling the other ranks
            error = e
    if world_size > 1:
        msg = dist_utils.broadcast_object(f"{error}" if error is not None else None)
        if msg is not None and error is None:
            raise WorkDirError(msg)
    if error is not None:
        if lock is not None:
            lock.release()
        raise error
    return lock, notes
