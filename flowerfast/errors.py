"""The one exception type that means "the user asked for something that cannot be done".

Library functions raise :class:`FlowerfastError` with a message written for a person; the CLI
prints that message on one line and exits non-zero, with no traceback. Anything else that escapes
is a bug and keeps its traceback.
"""


class FlowerfastError(Exception):
    """A clear, user-facing error: bad input, missing files, impossible options."""
