"""The entry point shared by the scripts: one clear line per user error, the right exit code."""
import argparse
import os
import signal
import sys
import threading
from collections.abc import Callable
from contextlib import contextmanager
from typing import NamedTuple

from utils.errors import ConfigError, NonFiniteLossError, TrainingInterrupted, UserError

DEBUG_ENV = "TEMPLATE_DEBUG"


class CliOption(NamedTuple):
    """A command-line flag that sets one config value, e.g. ``--lr`` for ``optimizer.args.lr``."""

    flags: list[str]
    type: type
    target: str
    help: str


# Shortcuts for the values changed most often; any value can be changed with KEY.PATH=VALUE.
CLI_OPTIONS = [
    CliOption(["--lr", "--learning_rate"], float, "optimizer.args.lr", "learning rate"),
    CliOption(["--bs", "--batch_size"], int, "data_loader.args.batch_size", "batch size per process"),
]



class ArgumentParser(argparse.ArgumentParser):
    """argparse, but a bad command line raises a UserError instead of printing usage and exiting."""

    def error(self, message: str):
        raise UserError("command line", f"{message} (see --help)")


def add_config_arguments(parser: ArgumentParser, options: list[CliOption], overrides_help: str) -> None:
    """The arguments every script that reads a config shares: -d, --debug, the shortcut flags of
    ``options`` and ``KEY.PATH=VALUE`` overrides (read back with ``overrides_of``)."""
    parser.add_argument("-d", "--device", help="GPUs to use, e.g. 0,1 (sets CUDA_VISIBLE_DEVICES)")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of config and data errors")
    for option in options:
        parser.add_argument(*option.flags, type=option.type, help=f"{option.help} (sets {option.target})")
    parser.add_argument("overrides", nargs="*", metavar="KEY.PATH=VALUE", help=overrides_help)


def overrides_of(args, options: list[CliOption]) -> dict:
    """The config changes a parsed command line asks for: the shortcut flags given, then ``KEY.PATH=VALUE``."""
    from utils.config.overrides import parse_overrides

    flags = {f"+{o.target}": getattr(args, o.flags[0].lstrip("-")) for o in options
             if getattr(args, o.flags[0].lstrip("-"), None) is not None}
    return flags | parse_overrides(getattr(args, "overrides", []))


def debug_requested(argv: list[str] | None = None) -> bool:
    """True when ``--debug`` is on the command line or TEMPLATE_DEBUG=1 is set."""
    argv = sys.argv[1:] if argv is None else argv
    return "--debug" in argv or os.environ.get(DEBUG_ENV, "") not in ("", "0")


def one_line(error: BaseException) -> str:
    """The message of an error as one line, also when a DataLoader worker wrapped it."""
    lines = [line for line in str(error).splitlines() if line.strip()]
    if len(lines) > 1 and lines[0].startswith("Caught "):
        # DataLoader workers re-raise "Caught X in DataLoader worker ... Traceback ... module.X: msg".
        _, _, message = lines[-1].partition(": ")
        return message
    return " ".join(lines)


def run_cli(main: Callable[[], None]) -> None:
    """Run a script's main function and turn its errors into exit codes.

    Exit codes: 0 success, 1 non-finite loss, 2 user error, 130/143 interrupted by SIGINT/SIGTERM.
    With --debug or TEMPLATE_DEBUG=1 the traceback of a user error is shown as well.

    Examples:
        >>> if __name__ == "__main__":
        ...     run_cli(main)
    """
    try:
        main()
    except (UserError, NonFiniteLossError) as error:
        if debug_requested():
            raise
        write_line(f"error: {one_line(error)}")
        sys.exit(error.exit_code)
    except TrainingInterrupted as stop:
        write_line(f"\n{stop}")
        sys.exit(stop.exit_code)


def write_line(text: str) -> None:
    """One write to stderr, newline included: under torchrun, lines of several processes share a pipe,
    and an unbuffered print writes the text and its newline apart, so that two lines can run together."""
    sys.stderr.write(text + "\n")
    sys.stderr.flush()


@contextmanager
def on_stop_signals(handler: Callable[[int], BaseException | None]):
    """Call ``handler(signum)`` on Ctrl-C (SIGINT) and SIGTERM inside the block, and raise the exception
    it returns, if any; then put the previous handlers back. Outside the main thread (where signals
    cannot be handled) it does nothing. Every script stops through it: training finishes the batch and
    saves a checkpoint, k-fold and tune stop between folds and trials, inference leaves no partial file.

    Examples:
        >>> with on_stop_signals(lambda signum: TrainingInterrupted(signum, "python train.py -r RUN")):
        ...     run_folds()
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_signal(signum, frame):
        error = handler(signum)
        if error is not None:
            raise error

    previous = {signum: signal.signal(signum, on_signal) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for signum, previous_handler in previous.items():
            signal.signal(signum, previous_handler)


@contextmanager
def blame(section: str, what: str):
    """Turn an error of the block into a ConfigError naming the config section to fix."""
    try:
        yield
    except (UserError, TrainingInterrupted):
        raise
    except Exception as error:
        text = str(error).strip()
        raise ConfigError(section, f"{what}: {text.splitlines()[0] if text else type(error).__name__}") from error
