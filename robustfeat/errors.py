"""User-facing errors.

Every mistake a user can make (a bad name, a bad value, a wrong checkpoint) raises a
subclass of :class:`RobustfeatError` whose message says what was wrong and how to fix
it. The CLI prints that message as one line; anything else is a bug and gets a
traceback.
"""

from __future__ import annotations


class RobustfeatError(Exception):
    """Base class of every error caused by user input."""


class ConfigError(RobustfeatError, ValueError):
    """A configuration field has a bad value or contradicts another field."""


class UnknownNameError(RobustfeatError, KeyError):
    """A name (method, model, dataset, ...) is not registered."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class TargetError(RobustfeatError, ValueError):
    """target_modules matched nothing, or matched a layer that cannot be adapted."""


class UnsupportedError(RobustfeatError):
    """The operation is not defined for this method or layer."""


class CheckpointError(RobustfeatError):
    """A checkpoint is missing, unsafe, corrupt, or does not fit the model."""


class PickleCheckpointError(CheckpointError):
    """A checkpoint is pickle-based (a raw pickle, a torch.save file); it is refused before
    it is opened as one."""


class BaseModelMismatchError(CheckpointError):
    """A checkpoint was trained on a different base model than the one given."""


class DeviceError(RobustfeatError, ValueError):
    """The device asked for does not exist here (no GPU, no such index, unsupported type)."""


class TrainingError(RobustfeatError):
    """Training cannot start or went wrong (diverged, bad output folder, ...), or a run
    folder cannot be used (no run record, damaged, data changed since training)."""


def warn(message: str) -> None:
    """Tell the user about something doubtful that does not stop the command: one line on
    stderr, ``robustfeat: warning: ...`` (shown once per message and process)."""
    import sys

    if message not in _warned:
        _warned.add(message)
        print(f"robustfeat: warning: {message}", file=sys.stderr)


_warned: set[str] = set()
