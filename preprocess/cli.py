"""What the commands share: argument types that refuse impossible values, and one way to end
on an error.

The convention (every command: run_command below):
bad arguments are argparse errors (usage, then `PROG: error: ...`, exit status 2); bad input
found while running (a damaged file, a folder that cannot be written, ...) ends the command
with one line `error: ...` on stderr and exit status 2; the traceback is printed only with
--verbose. A failure that is not about the input (a bug) also ends with one line, saying so,
and exit status 1. A requirement missing from the Python that runs a command
(`python predict/predict.py` by a Python other than the project's) makes the command run
again with the project's .venv where there is one (`run_in_project_venv`), else exit
status 2.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from collections.abc import Callable
from pathlib import Path

PROJECT_VENV = Path(__file__).resolve().parents[1] / ".venv"
RUN_AGAIN_MARK = "BIRDCLEF_RUN_IN_VENV"  # set in the command run again: it runs again once


def command_parser(doc: str) -> argparse.ArgumentParser:
    """The parser of a command whose module docstring is its help: the first line the
    description, the rest shown as written after the options."""
    return argparse.ArgumentParser(
        description=doc.split("\n")[0],
        epilog=doc.split("\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def at_least(minimum: int, at_most: int | None = None) -> Callable[[str], int]:
    """argparse type: a whole number >= minimum (and <= at_most when given)."""

    def whole_number(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, not {value}")
        if at_most is not None and value > at_most:
            raise argparse.ArgumentTypeError(f"must be at most {at_most}, not {value}")
        return value

    whole_number.__name__ = f"whole number >= {minimum}"  # named so in argparse's messages
    return whole_number


def most_workers() -> int:
    """The most worker processes or threads a command accepts: 4 per core (more only adds
    memory use; a typo like --workers 1000000 would otherwise start that many)."""
    return 4 * (os.cpu_count() or 1)


def between(low: float, high: float, *, low_open: bool, high_open: bool) -> Callable:
    """argparse type: a number in the interval from low to high (open or closed ends)."""

    def number(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        above = value > low if low_open else value >= low
        below = value < high if high_open else value <= high
        if not (above and below):
            interval = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
            raise argparse.ArgumentTypeError(f"must be in {interval}, not {text}")
        return value

    number.__name__ = "number"
    return number


def run_command(work: Callable[[], int], verbose: bool, input_errors: tuple = ()) -> int:
    """work()'s exit status; a failure is reported as the module docstring says.

    input_errors: the exception classes that mean bad input (OSError always does: a missing
    file, a read-only folder, a full disk).
    """
    try:
        return work()
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except ModuleNotFoundError as error:
        if is_project_module(error.name):  # a module of this project missing: a bug
            return report_bug(error, verbose)
        run_in_project_venv(error)  # a requirement, imported where it is needed
        print(f"error: {missing_requirement(error)}", file=sys.stderr)
        return 2
    except (*input_errors, OSError) as error:
        if verbose:
            traceback.print_exc()
        print(f"error: {describe(error)}", file=sys.stderr)
        return 2
    except Exception as error:
        return report_bug(error, verbose)


def report_bug(error: Exception, verbose: bool) -> int:
    if verbose:
        traceback.print_exc()
    print(
        f"error: unexpected {type(error).__name__}: {describe(error)} (a bug: run again "
        "with --verbose for the traceback, and report it)",
        file=sys.stderr,
    )
    return 1


def describe(error: BaseException) -> str:
    """An exception as one line: OSErrors with their file name and reason; line breaks in a
    library's message (HDF5's name the file on a line of their own) become spaces."""
    if isinstance(error, OSError) and error.strerror:
        names = [name for name in (error.filename, error.filename2) if name is not None]
        text = f"{' -> '.join(map(str, names))}: {error.strerror}" if names else error.strerror
    else:
        text = str(error) or type(error).__name__
    return " ".join(text.splitlines())


def is_project_module(name: str | None) -> bool:
    """Whether a module name is one of this project's packages' (not a requirement's)."""
    top = (name or "").split(".")[0]
    return bool(top) and (PROJECT_VENV.parent / top / "__init__.py").is_file()


def missing_requirement(error: ModuleNotFoundError) -> str:
    return (
        f"the module {error.name!r} is not installed for {sys.executable}: run ./doall.sh or "
        "./test.sh once (they set up .venv), then use .venv/bin/python, or install "
        "requirements.txt into this Python"
    )


def run_in_project_venv(error: ModuleNotFoundError) -> None:
    """Run this command again, as it was called, with the project's .venv Python (which
    doall.sh and test.sh set up) where a requirement is missing from the Python running it:
    scorers run `python predict/predict.py ...` with whatever `python` is. Returns where that
    cannot help: no .venv, this is its Python, or the command was run again already."""
    python = PROJECT_VENV / "bin" / "python"
    if (
        not python.is_file()
        or Path(sys.prefix).resolve() == PROJECT_VENV.resolve()
        or os.environ.get(RUN_AGAIN_MARK)
        or not sys.argv[0].endswith(".py")  # python -c, the interactive interpreter
    ):
        return
    print(
        f"note: the module {error.name!r} is not installed for {sys.executable}: running "
        f"again with {python}",
        file=sys.stderr,
    )
    sys.stdout.flush()
    sys.stderr.flush()
    os.environ[RUN_AGAIN_MARK] = "1"
    os.execv(python, [str(python), *sys.argv])


def run_in_project_venv_when_a_requirement_is_missing() -> None:
    """For a command run as a file: a requirement missing when its modules are imported
    (before `run_command`) runs it again with the project's .venv too (`run_in_project_venv`),
    or ends it as run_command would (one line, status 2); anything else ends as Python ends
    it."""
    previous = sys.excepthook

    def hook(kind, error, trace):
        if issubclass(kind, ModuleNotFoundError) and not is_project_module(error.name):
            run_in_project_venv(error)
            print(f"error: {missing_requirement(error)}", file=sys.stderr)
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(2)  # as run_command ends on it: one line, status 2
        previous(kind, error, trace)

    sys.excepthook = hook
