"""The errors that mean bad input, and how a command line reports them: one line, exit status 2.

Both ``fflab`` and ``python -m experiments.NAME`` catch :data:`USER_ERRORS` and print :func:`one_line` of
the error instead of a traceback. This module imports nothing heavy, so the command line can name these
classes before JAX loads.
"""

from __future__ import annotations

__all__ = [
    "USER_ERRORS",
    "CheckpointError",
    "DataError",
    "NonFiniteLossError",
    "RunLockedError",
    "UsageError",
    "one_line",
]


class UsageError(Exception):
    """A bad command-line argument or combination of them."""


class DataError(Exception):
    """A data set is missing, corrupt or could not be downloaded; the message names the file or the places
    searched."""


class CheckpointError(ValueError):
    """A checkpoint is missing, corrupt, truncated, or does not fit the template."""


class RunLockedError(Exception):
    """A run folder is in use by another process (its lock file names the process)."""


class NonFiniteLossError(FloatingPointError):
    """Training produced a NaN or infinite loss, gradient or parameter.

    Attributes:
        epoch: the 1-based epoch in which it happened.
        step: the 1-based step within that epoch: the first whose mini-batch loss or gradient is not finite,
            or, when only the parameters after the epoch are, the epoch's last step (its update broke them).
        global_step: the 1-based optimiser step counted from the start of training.
        state: the last good training state, from the start of that epoch.
        checkpoint: the last good checkpoint file, or ``None`` if none was written.
    """

    def __init__(self, epoch: int, step: int, steps: int, global_step: int, state, checkpoint_path=None):
        where = f"non-finite loss at epoch {epoch}, step {step} of {steps} (optimiser step {global_step})"
        kept = (
            f"; last good checkpoint kept: {checkpoint_path}"
            if checkpoint_path is not None
            else "; no checkpoint was written"
        )
        if global_step == 1:  # the first loss is taken before any update: no step size is to blame
            hint = ("; the loss is not finite before any update: check the data (labels outside "
                    "0..classes-1?) and the initial parameters")
        else:
            hint = "; try a smaller learning rate or --clip"
        super().__init__(where + kept + hint)
        self.epoch, self.step, self.global_step = epoch, step, global_step
        self.state, self.checkpoint = state, checkpoint_path


# OSError: unreadable files and folders; ValueError: bad names and numbers (CheckpointError is one).
USER_ERRORS = (UsageError, ValueError, DataError, NonFiniteLossError, RunLockedError, OSError)


def one_line(err: BaseException) -> str:
    """The message of ``err`` on one line (a data error lists the places it searched over several)."""
    text = " ".join(str(err).split())
    if isinstance(err, OSError) and err.filename is not None and str(err.filename) not in text:
        text = f"{text}: {err.filename}"
    return text or type(err).__name__
