"""`UserError`, a mistake in what the user asked for (the CLI prints it on one line, exits 2), `Interrupted`
(Ctrl-C where nothing could be exported: one line, exit 130) and `first_line`."""


class UserError(Exception):
    """Bad flags, missing files, impossible budgets: said in one line, no traceback."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C at a point where the run has nothing to export yet; says what was kept and how to go on. A
    KeyboardInterrupt, so a library caller's own handling of Ctrl-C still sees it."""


def first_line(error: BaseException, *, typed: bool = False) -> str:
    """An exception's message on one line (its first), for one-line errors; `typed`: prefixed by its type."""
    text = str(error).strip()
    line = text.splitlines()[0] if text else ""
    if typed:
        return f"{type(error).__name__}: {line}".rstrip(": ")
    return line or type(error).__name__
