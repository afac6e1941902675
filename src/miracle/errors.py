"""Errors a user can act on.

Everything raised as a :class:`MiracleError` is the user's to fix (bad input, missing data,
a corrupt file). The command line prints its message and exits with status 2, without a
traceback; anything else is a bug in miracle and keeps its traceback.
"""


class MiracleError(Exception):
    """A problem with the user's input, data or files; the message says what to do."""


class InvalidInput(MiracleError, ValueError):
    """An argument is out of range, mis-shaped or not finite."""


class DataNotFound(MiracleError, FileNotFoundError):
    """A dataset is missing or fails its checksum."""


class WorkerDied(MiracleError):
    """A process of several doing the work died: killed from outside (out of memory, say) or crashed."""
