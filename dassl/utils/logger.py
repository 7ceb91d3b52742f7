"""Tee the console into ``log.txt`` without touching the ``logging`` module.

Both stdout and stderr are copied into the log file, so warnings and the
traceback of a crash end up next to the training lines. Progress bars should
write to ``console_stream()`` (the real terminal) so they stay out of the log.
"""
import os
import os.path as osp
import sys
import time

from .tools import mkdir_if_missing

__all__ = ["setup_logger", "close_logger", "console_stream", "Logger"]


class Logger:
    """A stream that writes to a console stream and to a shared log file."""

    def __init__(self, console, logfile):
        self.console = console
        self.file = logfile

    def write(self, msg):
        self.console.write(msg)
        if self._file_usable():
            try:
                self.file.write(msg)
                self.file.flush()  # keep the log complete if the process is killed
            except OSError as exc:
                self._give_up(exc)

    def flush(self):
        self.console.flush()
        if self._file_usable():
            try:
                self.file.flush()
                os.fsync(self.file.fileno())
            except OSError as exc:
                self._give_up(exc)

    def _file_usable(self):
        return not self.file.closed and not getattr(self.file, "_tee_failed", False)

    def _give_up(self, exc):
        """A full disk (or a vanished folder) must not turn every print, the error message of
        the run included, into a new error: the console keeps the output, with one note."""
        try:
            self.file._tee_failed = True  # shared by the stdout and stderr tees
        except AttributeError:
            pass
        self.console.write(f"Note: the log file can no longer be written ({exc.strerror or exc}); "
                           "the output continues on the console only.\n")

    def isatty(self):
        return False

    def fileno(self):
        return self.console.fileno()

    @property
    def encoding(self):
        return getattr(self.console, "encoding", "utf-8")

    def __getattr__(self, name):  # anything else behaves like the console
        return getattr(self.console, name)


_state = {"file": None, "stdout": None, "stderr": None, "path": None}


def _log_path(output):
    if output.endswith(".txt") or output.endswith(".log"):
        fpath = output
    else:
        fpath = osp.join(output, "log.txt")
    if osp.exists(fpath):
        # keep the old log; the new one gets a timestamp suffix
        fpath += time.strftime("-%Y-%m-%d-%H-%M-%S")
    return fpath


def setup_logger(output=None):
    """Copy stdout and stderr into ``output/log.txt`` (or ``output`` if it names a
    .txt/.log file). Calling it again moves the tee to the new file. Returns the
    path of the log file, or None when ``output`` is None."""
    if output is None:
        return None
    close_logger()
    fpath = _log_path(output)
    mkdir_if_missing(osp.dirname(osp.abspath(fpath)))
    logfile = open(fpath, "w")
    _state.update(file=logfile, stdout=sys.stdout, stderr=sys.stderr, path=fpath)
    sys.stdout = Logger(sys.stdout, logfile)
    sys.stderr = Logger(sys.stderr, logfile)
    return fpath


def close_logger():
    """Restore the original streams and close the log file (no-op if not set up)."""
    if _state["file"] is None:
        return
    if isinstance(sys.stdout, Logger) and sys.stdout.file is _state["file"]:
        sys.stdout = _state["stdout"]
    if isinstance(sys.stderr, Logger) and sys.stderr.file is _state["file"]:
        sys.stderr = _state["stderr"]
    _state["file"].close()
    _state.update(file=None, stdout=None, stderr=None, path=None)


def console_stream():
    """The terminal's stderr, bypassing the log tee (for progress bars)."""
    stream = sys.stderr
    while isinstance(stream, Logger):
        stream = stream.console
    return stream
