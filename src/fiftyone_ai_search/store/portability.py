"""Where the embedded index can run.

The embedded index (Qdrant Edge) is shared by the threads and processes of a
machine through ``flock`` locks (:mod:`fiftyone_ai_search.store.locks`):
first come first served, released by the kernel when a holder dies, and safe
across ``fork``. ``fcntl`` does not exist on Windows, and no portable lock
there gives all three, so the embedded index refuses to run on it, at enable
and at the import of the locks, with a message that says what to do: use the
``server`` backend (qdrant-client speaks HTTP to a Qdrant server and needs no
``fcntl``), or run under Linux, macOS or WSL.

Only the embedded index needs ``fcntl``: the package itself imports on any
platform (the locks are imported only when an embedded index is opened).
"""

import importlib
import sys

from ..errors import UnsupportedPlatformError


def embedded_index_supported() -> bool:
    """Whether the embedded index can run here: whether this platform has
    ``fcntl.flock``."""
    try:
        fcntl = importlib.import_module("fcntl")
    except ImportError:
        return False
    return hasattr(fcntl, "flock")


def check_embedded_index() -> None:
    """Refuses the embedded index where it cannot run.

    Raises:
        UnsupportedPlatformError: on a platform without ``fcntl.flock``
            (Windows); the message names the way out
    """
    if embedded_index_supported():
        return
    raise UnsupportedPlatformError(
        f"The embedded index (backend 'edge', the default) cannot run on "
        f"this platform ({sys.platform}): it shares an index between "
        "processes with fcntl file locks, which Windows does not have. Use a "
        "Qdrant server instead: set FIFTYONE_AI_SEARCH_QDRANT_URL (and "
        "FIFTYONE_AI_SEARCH_QDRANT_API_KEY) and enable with "
        "backend='server'; or run under Linux, macOS or WSL."
    )
