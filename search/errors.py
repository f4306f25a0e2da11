"""`UserError`: a mistake in what the user asked for. The CLI prints its message on one line, exits 2."""


class UserError(Exception):
    """Bad flags, missing files, impossible budgets: said in one line, no traceback."""
