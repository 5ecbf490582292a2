"""User-facing errors.

Every error a user can cause by bad input (a missing dataset, a wrong image size, an unknown plugin,
an out-of-range option, an incompatible checkpoint) is raised as a subclass of :class:`GanstackError`.
Its message is one paragraph that says what was wrong and what would be right. The CLI prints the
message and exits with status 2 instead of showing a traceback.
"""


class GanstackError(Exception):
    """Base class of all user-facing errors."""


class DatasetError(GanstackError):
    """A dataset could not be found, read, or does not have the expected shape."""


class CheckpointError(GanstackError):
    """A checkpoint is missing, corrupt, of the wrong kind, or incompatible with the request."""
