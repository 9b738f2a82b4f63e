"""User-facing errors.

Every problem caused by the user's input raises :class:`SFRError`.  The command line prints
it as one line (``sfr: error: FILE: problem``) and exits with status 2; anything else is a bug
and keeps its traceback.
"""

from __future__ import annotations

import os


class SFRError(Exception):
    """A problem with the user's input or environment, with the file it concerns."""

    exit_code = 2

    def __init__(self, message: str, path: "str | os.PathLike | None" = None):
        self.message = message
        self.path = None if path is None else os.fspath(path)
        super().__init__(self.__str__())

    def __str__(self) -> str:  # one line, names the file first
        text = self.message.replace("\n", " ")
        return f"{self.path}: {text}" if self.path else text


class Cancelled(Exception):
    """Raised by a stage that stopped at a safe point because cancellation was requested.

    Everything the stage finished is saved; running it again with ``resume`` continues.
    """
