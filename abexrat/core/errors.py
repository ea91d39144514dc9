"""The one error type the CLI turns into a short message and exit code 2."""


class UserError(Exception):
    """Bad input (a file, a key, a row): the CLI prints the message, no traceback, exit 2."""


class Interrupted(Exception):
    """A run stopped on SIGINT with its state saved: the CLI prints how to resume, exit 130."""
