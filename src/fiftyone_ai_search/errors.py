"""The errors of fiftyone-ai-search, all in one place.

Every error that fiftyone-ai-search raises on purpose derives from
:class:`AISearchError`, so that callers may catch them all at once. Each one
also derives from the built-in class that fits it (``ValueError`` for bad
arguments, ``RuntimeError`` for a state that forbids the call, ...), so that
``except ValueError`` keeps working.

The modules that raise them re-export them under their old names
(``fiftyone_ai_search.embeddings.IndexNotReadyError`` is
:class:`IndexNotReadyError`), and the package exports the ones a caller
meets (``fiftyone_ai_search.IndexNotReadyError``).
"""


class AISearchError(Exception):
    """Base class of the errors of fiftyone-ai-search."""


class _ReasonError(AISearchError):
    """An error whose message is a short human reason, also kept as
    ``error.reason``.

    Args:
        reason: the reason
    """

    def __init__(self, reason):
        super().__init__(reason)
        self.reason = reason


# --- the state of a dataset's AI search -------------------------------------


class AISearchNotEnabledError(AISearchError, RuntimeError):
    """Exception raised when AI search is off for the dataset."""


class IndexNotReadyError(AISearchError, RuntimeError):
    """Exception raised when the dataset has no complete index (of the model
    asked for) yet."""


class IndexDamagedError(AISearchError, RuntimeError):
    """Exception raised when the index (or its state) is damaged: files
    truncated or missing, vectors that are zero or not finite, a state
    document that is not one.

    The message says what is wrong and what repairs it: a sync
    (``calculate_embeddings``, which rebuilds a damaged index beside it), a
    sync with ``verify_files=True`` (bad vectors), or
    ``disable_embeddings`` then ``enable_embeddings``.
    """


class StateDamagedError(IndexDamagedError):
    """Exception raised when the AI search state document of a dataset is
    not one (a field of the wrong type, missing, or garbage).

    Disabling AI search always works and repairs it; enable it again
    afterwards.
    """


class DiskFullError(AISearchError, OSError):
    """Exception raised when there is too little free space where the index
    lives for a write.

    The write is refused before it is made (an engine that runs out of space
    midway may crash the process). The message names the directory and the
    space needed. Searches keep working.
    """


class UnsupportedPlatformError(AISearchError, RuntimeError):
    """Exception raised when the embedded index is asked for on a platform
    it cannot run on (Windows: its processes take turns with ``fcntl``
    locks, which Windows lacks).

    The message names the platform and the way out: the ``server`` backend
    (a Qdrant server, through qdrant-client), or Linux / macOS / WSL.
    """


class StaleGeneration(AISearchError):
    """Exception raised inside a computation when the state changed
    (enable, model change, rebuild, disable) since it started: it must
    write nothing more.

    Also ``fiftyone_ai_search.index.state.StaleGeneration``.
    """


class SyncCancelled(AISearchError):
    """Exception raised when AI search was disabled while the computation
    ran (or before it started).

    Also ``fiftyone_ai_search.sync.images.SyncCancelled``.
    """


# --- the index ----------------------------------------------------------------


class IndexMismatchError(AISearchError, ValueError):
    """Exception raised when the index was built with another model (or
    schema) than the one asked for: an index never mixes models."""


class IndexBusyError(AISearchError, RuntimeError):
    """Exception raised when the index stayed locked by another process for
    longer than allowed."""


class IndexNotFoundError(AISearchError, LookupError):
    """Exception raised when the index does not exist."""


class IndexExistsError(AISearchError, ValueError):
    """Exception raised when an index is created where one exists."""


class QdrantUnreachableError(AISearchError, ConnectionError):
    """Exception raised when the Qdrant server does not answer, or refuses
    the API key.

    The message names the server's URL without its credentials and says what
    to do.
    """


# --- what was asked for ------------------------------------------------------


class UnsupportedMediaError(AISearchError, ValueError):
    """Exception raised when the samples are of a kind AI search does not
    index (3D, point clouds), or not that way: the images of a video
    dataset, a frames or clips view given where images are searched. The
    message says what is indexed, and for videos how their frames are
    (``frames=True``)."""


class ObjectFieldError(AISearchError, ValueError):
    """Exception raised when a label field holds no objects with boxes."""


class CollectionNotFoundError(AISearchError, ValueError):
    """Exception raised when the dataset has no collection of that name."""


class BrainKeyTakenError(AISearchError, ValueError):
    """Exception raised when the brain key names another kind of Brain
    run."""


class ExistingEmbeddingsError(AISearchError, ValueError):
    """Exception raised when existing embeddings cannot be used: they are
    not of the model they are said to be of, or unreadable."""


# --- models and media -------------------------------------------------------


class ModelUnavailableError(AISearchError, RuntimeError):
    """Exception raised when the weights of a model cannot be obtained
    (offline, missing files)."""


class ImageDecodeError(_ReasonError):
    """Exception raised when an image file cannot be decoded.

    ``str(error)`` (also ``error.reason``) is a short human reason, e.g.
    ``"file not found"`` or ``"truncated image"``.

    Args:
        reason: the reason
    """


class VideoDecodeError(_ReasonError):
    """Exception raised when a video file yields no frame to embed: missing,
    unreadable, of a format OpenCV's FFmpeg cannot decode, without a single
    frame, or with frames above the pixel limit.

    ``str(error)`` (also ``error.reason``) is a short human reason, meant to
    be stored with the video's sample, e.g. ``"video has no frames"``.

    Args:
        reason: the reason
    """


class CropError(_ReasonError, ValueError):
    """Exception raised when no crop can be cut from a box.

    ``str(error)`` (also ``error.reason``) is a short human reason, e.g.
    ``"box has width <= 0: [0.1, 0.2, 0.0, 0.3]"``.

    Args:
        reason: the reason
    """
