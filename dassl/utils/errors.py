"""Errors that mean "the input is wrong": train.py prints the message alone and exits with code 2.

Everything else that goes wrong keeps its traceback (in log.txt too), because it is a fault to
investigate, not a setting to change.
"""

__all__ = ["UserInputError", "CheckpointError", "CheckpointNotFoundError", "UnusableCheckpointError",
           "OutputWriteError",
           "BadImageError", "MissingImageError"]


class UserInputError(Exception):
    """A setting, file or folder given by the user is unusable; the message says what to do."""


class CheckpointError(UserInputError, ValueError):
    """A checkpoint is unreadable, foreign, or was trained with another shape."""


class CheckpointNotFoundError(UserInputError, FileNotFoundError):
    """No checkpoint where --model-dir / --load-epoch point (the original raises FileNotFoundError)."""


class UnusableCheckpointError(CheckpointError, RuntimeError):
    """A checkpoint not loaded as it is: its tensors are another model's (another trainer or
    config), or it pickles Python objects (opt-in). A RuntimeError, as torch's own errors for both."""


class OutputWriteError(OSError):
    """A file of the run could not be written (disk full, permissions); names the path."""


class BadImageError(UserInputError, OSError):
    """An image of the dataset cannot be read (missing, empty, truncated, not an image)."""

    def __str__(self):
        # Raised in a DataLoader worker, it reaches the main process rebuilt from a message
        # that holds the worker's traceback; the last line is the message itself.
        text = super().__str__()
        if "Original Traceback" in text:
            last = text.rstrip().splitlines()[-1]
            return last.split(": ", 1)[1] if last.startswith(type(self).__name__ + ":") else last
        return text


class MissingImageError(BadImageError, FileNotFoundError):
    """An image listed by the dataset does not exist."""
