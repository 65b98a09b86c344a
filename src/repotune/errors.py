"""The one exception type the command line turns into a one-line error and a non-zero exit."""


class RepotuneError(Exception):
    """A problem with the user's input or environment, worded for the user (no traceback is shown)."""
