"""What every command line shares: one-line errors (exit 2), the help format, logging, `prunesearch <cmd>`.

    prunesearch run --agent abc --budget 0.4flops       # = python -m search.run ...
    prunesearch finetune RUN_DIR                        # = python -m search.finetune ...
    prunesearch export RUN_DIR --format onnx            # = python -m search.export ...

A user's mistake (a `UserError`, a bad flag) is printed as one line on stderr, `error: ...`, and the
command exits with 2; no traceback. Logging goes through one logger tree per package (`search`,
`evaluators`, `agents`, `spaces`), written through tqdm so progress bars stay intact; `--quiet` keeps
warnings only, for all of them.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Callable, Sequence
from typing import NoReturn

from search.errors import UserError, first_line
from search.engine.versions import version_text

LOGGERS = ("search", "evaluators", "agents", "spaces")
COMMANDS = {"run": "search.run", "finetune": "search.finetune", "export": "search.export"}


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows a default only where there is one worth showing (not None, not an off switch)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default in (None, False, argparse.SUPPRESS):
            return action.help or ""
        return super()._get_help_string(action)


class ArgumentParser(argparse.ArgumentParser):
    """An argparse parser whose errors are one line plus a hint, with exit code 2 (not the usage block)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        print(f"error: {message} (see {self.prog} --help)", file=sys.stderr)
        raise SystemExit(2)


def given_options(make_parser: Callable[[], argparse.ArgumentParser], argv: Sequence[str] | None) -> dict:
    """The options present on the command line (not their defaults), by destination name."""
    parser = make_parser()
    for action in parser._actions:
        action.default = argparse.SUPPRESS
    parser._defaults.clear()  # those of set_defaults (search.run reads its defaults from SearchConfig)
    return vars(parser.parse_args(list(sys.argv[1:] if argv is None else argv)))


class _TqdmHandler(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        from tqdm.auto import tqdm

        try:
            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:  # noqa: BLE001 - logging must never take a run down
            self.handleError(record)


def configure_logging(quiet: bool = False) -> None:
    """One handler for the package loggers; `quiet`: warnings and errors only."""
    handler = _TqdmHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    for name in LOGGERS:
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler]
        logger.setLevel(logging.WARNING if quiet else logging.INFO)
        logger.propagate = False
    logging.getLogger("ray").setLevel(logging.ERROR if quiet else logging.WARNING)


def guarded(run: Callable[[], int]) -> int:
    """Run a command; a UserError or a failed write becomes one line on stderr and exit code 2, Ctrl-C one line
    and exit code 130."""
    try:
        return run()
    except UserError as error:
        print(f"error: {first_line(error)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as error:  # Ctrl-C where nothing could be exported (a search's own Ctrl-C exports)
        print(f"interrupted{': ' + first_line(error) if str(error) else ''}", file=sys.stderr)
        return 130
    except OSError as error:  # disk full, read-only folder, ... after the run started: its journal is intact
        where = f" {error.filename}" if getattr(error, "filename", None) else ""
        print(f"error: cannot write{where}: {error.strerror or first_line(error)} (the journal is kept: "
              f"--resume continues)", file=sys.stderr)
        return 2


def command_main(module: str, argv: list[str] | None = None) -> int:
    """Import a command's module and run its `main`: a Ctrl-C while torch and the rest still import (the first
    seconds) is one line and exit code 130, as it is later, not Python's traceback."""
    try:
        command = importlib.import_module(module).main
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return command(argv)


def main(argv: list[str] | None = None) -> int:
    """`prunesearch run|finetune|export ...`"""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: prunesearch [--version] {run,finetune,export} ...\n\n"
              "  run       search a pruned architecture under a budget (python -m search.run)\n"
              "  finetune  fine-tune a run's exported subnet (python -m search.finetune)\n"
              "  export    write a run's subnet as pt2 / torchscript / onnx / state_dict (python -m search.export)\n",
              file=sys.stdout if argv else sys.stderr)  # asked for: stdout; a missing command is an error: stderr
        return 0 if argv else 2
    if argv[0] == "--version":
        print(version_text())
        return 0
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"error: unknown command {command!r}; choose from {', '.join(COMMANDS)} (see prunesearch --help)",
              file=sys.stderr)
        return 2
    return command_main(COMMANDS[command], rest)


if __name__ == "__main__":
    raise SystemExit(main())
