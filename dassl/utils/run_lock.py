"""One live run per output folder: a lock file holding the holder's host, PID and start time.

Two runs writing into one folder would overwrite each other's checkpoints and results. The lock
is a file created with O_EXCL (atomic on local and NFS v3+ file systems); a lock left by a dead
process on this host is taken over with a message; one held by a live process, or by a process
on another host (whose liveness cannot be checked from here), stops the new run.
"""
import json
import os
import os.path as osp
import socket
import time

from .errors import UserInputError

LOCK_NAME = "run.lock"


class OutputLockedError(UserInputError, RuntimeError):
    """Another live run holds the output folder."""


class OutputFolderError(UserInputError, OSError):
    """The output folder cannot be created or written."""


def _process_start(pid):
    """Start time of a process in clock ticks since boot (Linux), to tell a reused PID apart."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def _is_zombie(pid):
    """A killed process stays a zombie (state Z) until its parent reaps it: dead, though it exists."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return False


def _process_alive(holder):
    pid = int(holder.get("pid", -1))
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        pass
    if _is_zombie(pid):
        return False
    recorded, current = holder.get("process_start"), _process_start(pid)
    return recorded is None or current is None or recorded == current


def _read_holder(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None  # half-written by a process that died while creating it


def _describe(holder):
    return (f"PID {holder.get('pid')} on host {holder.get('host')}, started "
            f"{holder.get('started', '?')}")


def prepare_output_folder(folder):
    """Create ``folder`` (or check it) with one clear error for every way it can fail."""
    if osp.exists(folder) and not osp.isdir(folder):
        raise OutputFolderError(f'The output folder "{folder}" is a file; choose another --output-dir.')
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as exc:
        raise OutputFolderError(f'Cannot create the output folder "{folder}": {exc.strerror or exc}. '
                                "Choose a writable --output-dir.") from None


class OutputLock:
    """``with OutputLock(folder):`` or ``acquire()``/``release()``."""

    def __init__(self, folder):
        self.folder = folder
        self.path = osp.join(folder, LOCK_NAME)
        self.held = False

    def acquire(self):
        prepare_output_folder(self.folder)
        for _ in range(3):  # a stale lock is removed, then the creation is tried again
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            except FileExistsError:
                self._handle_existing()
                continue
            except OSError as exc:
                raise OutputFolderError(f'Cannot write into the output folder "{self.folder}": '
                                        f"{exc.strerror or exc}. Choose a writable --output-dir.") from None
            holder = {"host": socket.gethostname(), "pid": os.getpid(),
                      "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                      "process_start": _process_start(os.getpid())}
            with os.fdopen(fd, "w") as f:
                json.dump(holder, f)
            self.held = True
            return self
        raise OutputLockedError(f'Could not take the lock "{self.path}" (it keeps reappearing); '
                                "is another run starting in the same folder?")

    def _handle_existing(self):
        holder = _read_holder(self.path)
        if holder is not None and holder.get("host") == socket.gethostname() and holder.get("pid") == os.getpid():
            pass  # left by an earlier run in this same process (in-process tools and tests)
        elif holder is None:
            print(f'Note: removing the unreadable lock file "{self.path}" (left by a crashed run)')
        elif holder.get("host") != socket.gethostname():
            raise OutputLockedError(
                f'The output folder "{self.folder}" is in use by another run ({_describe(holder)}). '
                "Wait for it, use another --output-dir, or, if that run is dead, delete "
                f'"{self.path}".')
        elif _process_alive(holder):
            raise OutputLockedError(
                f'The output folder "{self.folder}" is in use by a running process ({_describe(holder)}). '
                "Wait for it to finish or use another --output-dir.")
        else:
            print(f"Note: taking over the lock of a run that is no longer alive ({_describe(holder)})")
        try:
            os.remove(self.path)
        except FileNotFoundError:
            pass

    def release(self):
        if self.held:
            self.held = False
            try:
                os.remove(self.path)
            except FileNotFoundError:
                pass

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()
