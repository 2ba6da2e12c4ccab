"""The one base of every error unetviz raises for a user's mistake.

``UnetvizError`` subclasses ``ValueError`` so code written against the first release (which
caught ``ValueError``) keeps working. The CLI and the app catch this base only: anything else
is a bug and reaches the log with its traceback.
"""

from __future__ import annotations


class UnetvizError(ValueError):
    """A user's input (a path, a config, a prompt, a flag) is wrong; the message says how."""


class OutputError(UnetvizError):
    """unetviz refused to write somewhere, or could not: nothing was written."""
