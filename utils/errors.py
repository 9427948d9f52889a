"""The errors a user can cause, and how each one ends the program.

A user error (bad config, command line, data or checkpoint) is reported as one line,
``error: <where>: <what is wrong>``, with exit code 2 and no traceback. Bugs are left to traceback.
"""
import signal


class UserError(Exception):
    """A mistake the user can fix: reported as one line with exit code 2.

    Examples:
        >>> raise ConfigError("trainer.epochs", "must be a positive integer, got 0")
    """

    exit_code = 2

    def __init__(self, where: str, what: str | None = None):
        # A single argument is accepted so that DataLoader workers can re-raise the error.
        self.where, self.what = (where, what) if what is not None else ("", where)
        super().__init__(f"{where}: {what}" if what is not None else where)


class ConfigError(UserError):
    """A config file, config value or command-line option is wrong."""


class DataError(UserError):
    """A dataset file or row is missing, unreadable or does not fit the model."""


class CheckpointError(UserError):
    """A checkpoint is missing, damaged, untrusted or does not fit the config."""


class NonFiniteLossError(Exception):
    """The training loss became NaN or infinite; the run stops with exit code 1."""

    exit_code = 1


class TrainingInterrupted(Exception):
    """Ctrl-C or SIGTERM stopped training after a checkpoint was saved.

    The exit code follows the shell convention 128 + signal number: 130 for SIGINT, 143 for SIGTERM.
    """

    def __init__(self, signum: int, resume_command: str):
        self.exit_code = 128 + signum
        self.resume_command = resume_command
        name = signal.Signals(signum).name
        super().__init__(f"stopped by {name}; resume with: {resume_command}")


class PredictionInterrupted(TrainingInterrupted):
    """Ctrl-C or SIGTERM stopped inference.py before its predictions file was complete."""

    def __init__(self, signum: int, output):
        self.exit_code = 128 + signum
        name = signal.Signals(signum).name
        Exception.__init__(self, f"stopped by {name}: {output} was not written (no partial file is left; a file "
                                 "of that name is an earlier run's)")
