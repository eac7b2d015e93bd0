"""The one exception type that means "the user asked for something that cannot be done".

Library functions raise :class:`FlowerfastError` with a message written for a person; the CLI
prints that message on one line and exits non-zero, with no traceback. Anything else that escapes
is a bug and keeps its traceback.

The library speaks to Python callers, so a message names the function's parameters as they are
spelt in Python (``epochs must be at least 1``, ``pass pretrained=False``); the CLI prints the
same message with its flags (``--epochs must be at least 1``, ``pass --no-pretrained``). For
that, a message marks each parameter it names with a ``$`` and lists them:
``FlowerfastError("$epochs must be at least 1", parameters=("epochs",))``. Only the listed names
are placeholders, so ``$FLOWERFAST_CACHE`` or a ``$`` in a path stays as written.
"""

from __future__ import annotations

import re
from typing import Callable, Sequence


class FlowerfastError(Exception):
    """A clear, user-facing error: bad input, missing files, impossible options.

    The message is kept apart from ``args``: fastai rewrites the ``args`` of an exception raised
    in a callback (prefixing "Exception occured in ..."), and the person should still read only
    the sentence written for them.
    """

    def __init__(self, message: str, parameters: Sequence[str] = ()):
        self.template = message
        self.parameters = tuple(parameters)
        self.message = self.spelled(lambda name: name)
        super().__init__(self.message)

    def spelled(self, spell: Callable[[str], str]) -> str:
        """The message with each parameter written as ``spell(name)`` (a flag, for the CLI)."""
        if not self.parameters:  # no placeholders: a path or an environment variable stays as written
            return self.template
        names = "|".join(re.escape(name) for name in sorted(self.parameters, key=len, reverse=True))
        return re.sub(rf"\$({names})(?!\w)", lambda m: spell(m.group(1)), self.template)

    def __str__(self) -> str:
        return self.message


class ReportedByRankZero(FlowerfastError):
    """The error of a job of several processes (see :mod:`flowerfast.hardware.distributed`) as the other
    processes see it: rank 0 shows the message, they end without repeating it."""


class ProcessLost(FlowerfastError):
    """Another process of a job of several processes died or stopped answering: this one cannot
    go on alone (the last checkpoint is whole; the run resumes)."""


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message, or its type's name when it has none: how a
    reason from deep inside a library is quoted in a one-line error or warning."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
