"""The package's base exception.

Every error that fiftyone-ai-search raises on purpose derives from
:class:`AISearchError`, so that callers may catch them all at once. Each one
also derives from the built-in class that fits it (``ValueError`` for bad
arguments, ``RuntimeError`` for a state that forbids the call, ...), so that
``except ValueError`` keeps working.
"""


class AISearchError(Exception):
    """Base class of the errors of fiftyone-ai-search."""


class IndexDamagedError(AISearchError, RuntimeError):
    """The index (or its state) is damaged: files truncated or missing,
    vectors that are zero or not finite, a state document that is not one.

    The message says what is wrong and what repairs it: a sync
    (``calculate_embeddings``, which rebuilds a damaged index beside it), a
    sync with ``verify_files=True`` (bad vectors), or
    ``disable_embeddings`` then ``enable_embeddings``.
    """


class StateDamagedError(IndexDamagedError):
    """The AI search state document of a dataset is not one (a field of
    the wrong type, missing, or garbage). Disabling AI search always works
    and repairs it; enable it again afterwards."""


class DiskFullError(AISearchError, OSError):
    """Too little free space where the index lives for a write: refused
    before it is made (an engine that runs out of space midway may crash
    the process). The message names the directory and the space needed.
    Searches keep working."""
