"""Ctrl-C and SIGTERM during training: finish the step under way, save the position, stop.

A signal inside a training step only marks the stop; the trainer then writes the rolling
checkpoint (with the position inside the epoch) and raises ``TrainingInterrupted``, which
train.py turns into one line and exit code 128 + signal (130 for Ctrl-C, 143 for SIGTERM).
A signal outside a step, or a second one, stops at once. train.py installs one more handler
for the whole run (loading, evaluation, the final test), so that a signal there, too, ends
with one line, its exit code and the output folder's lock released.
"""
import contextlib
import signal


class TrainingInterrupted(Exception):
    """Ctrl-C or SIGTERM stopped training; the message says what was saved and how to resume."""

    def __init__(self, signum, message):
        super().__init__(message)
        self.signum = signum


class StopOnSignal:
    """SIGINT/SIGTERM during training: the step under way finishes, then training stops with
    a saved position (``requested``); outside a step, or on a second signal, it stops at once."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)
    AT_ONCE = ("Stopped by {name}. Checkpoints of completed epochs are kept in the output folder: run "
               "the same command again to resume from the newest one.")

    def __init__(self, message=AT_ONCE):
        self.message = message  # of a stop at once; "{name}" is the signal's name
        self.signum = None
        self._in_step = False
        self._previous = {}

    @property
    def requested(self):
        return self.signum is not None

    def _handle(self, signum, frame):
        if self._in_step and self.signum is None:
            self.signum = signum
            return
        raise TrainingInterrupted(signum, self.message.format(name=signal.Signals(signum).name))

    @contextlib.contextmanager
    def deferred(self):
        """A signal inside this block only marks the stop; the block runs to its end."""
        self._in_step = True
        try:
            yield
        finally:
            self._in_step = False

    def __enter__(self):
        try:
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        except ValueError:  # not the main thread: signals stay as they are
            self._previous = {}
        return self

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}
        return False
