"""The package's base exception.

Every error that fiftyone-ai-search raises on purpose derives from
:class:`AISearchError`, so that callers may catch them all at once. Each one
also derives from the built-in class that fits it (``ValueError`` for bad
arguments, ``RuntimeError`` for a state that forbids the call, ...), so that
``except ValueError`` keeps working.
"""


class AISearchError(Exception):
    """Base class of the errors of fiftyone-ai-search."""
