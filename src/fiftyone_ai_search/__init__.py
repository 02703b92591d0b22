"""AI Search for FiftyOne.

CLIP embeddings of a dataset's images in a Qdrant index that keeps itself in
sync with the dataset; prompt, image and diverse search; collections.

Examples::

    import fiftyone_ai_search as ais

    ais.enable_embeddings(dataset)                  # starts computing
    report = ais.calculate_embeddings(dataset, wait=True)
    print(ais.get_status(dataset))
"""

from .config import get_settings
from .embeddings import (
    AISearchNotEnabledError,
    calculate_embeddings,
    disable_embeddings,
    enable_embeddings,
    get_embeddings,
    get_embeddings_in_progress,
    get_embeddings_updated_at,
    get_status,
    is_embeddings_enabled,
)
from .sync import SyncReport

__version__ = "0.1.0"

__all__ = [
    "AISearchNotEnabledError",
    "SyncReport",
    "calculate_embeddings",
    "disable_embeddings",
    "enable_embeddings",
    "get_embeddings",
    "get_embeddings_in_progress",
    "get_embeddings_updated_at",
    "get_settings",
    "get_status",
    "is_embeddings_enabled",
]
