"""AI Search for FiftyOne.

CLIP embeddings of a dataset's images in a Qdrant index that keeps itself in
sync with the dataset; prompt, image and diverse search; collections.

Examples::

    import fiftyone_ai_search as ais

    ais.enable_embeddings(dataset)                  # starts computing
    report = ais.calculate_embeddings(dataset, wait=True)
    print(ais.get_status(dataset))

    name = ais.perform_ai_search(dataset, prompt="a person riding a bicycle")
    view = ais.get_collection(dataset, name, min_score=0.25)

    ais.start_refresher()  # keeps every enabled dataset's index in sync

    # objects: an index of the boxes of a label field, beside the images
    ais.enable_embeddings(dataset, patches_field="ground_truth")
    name = ais.perform_ai_search(dataset, prompt="a bumper",
                                 patches_field="ground_truth")
    patches = ais.get_collection(dataset, name)  # a patches view

    # the index is a FiftyOne Brain similarity index too (brain key
    # "ai_search"): sort_by_similarity, the App's similarity search,
    # compute_visualization / compute_uniqueness(similarity_index=...)
    view = dataset.sort_by_similarity("a red car", k=25, brain_key="ai_search")
    name = ais.find_near_duplicates(dataset, threshold=0.95)
"""

from .results import (
    TEMPORARY_COLLECTION,
    delete_collection,
    get_collection,
    get_collection_scores,
    get_frame_collection,
    get_frame_hits,
    get_score_histogram,
    is_frame_collection,
    is_latest_results,
    list_collections,
    rename_collection,
    save_collection,
)
from .config import get_settings
from .duplicates import (find_near_duplicates, near_duplicate_groups,
                         tag_near_duplicates)
from .uniqueness import compute_uniqueness
from .errors import (AISearchError, AISearchNotEnabledError,
                     BrainKeyTakenError, CollectionNotFoundError, CropError,
                     DiskFullError, ExistingEmbeddingsError, ImageDecodeError,
                     IndexBusyError, IndexDamagedError, IndexExistsError,
                     IndexMismatchError, IndexNotFoundError,
                     IndexNotReadyError,
                     ModelUnavailableError, ObjectFieldError,
                     QdrantUnreachableError, StateDamagedError,
                     SyncCancelled, UnsupportedMediaError, UnsupportedPlatformError,
                     VideoDecodeError)
from .embeddings import (
    calculate_embeddings,
    disable_embeddings,
    enable_embeddings,
    get_embeddings,
    get_embeddings_in_progress,
    get_embeddings_updated_at,
    get_status,
    is_embeddings_enabled,
    maintain_index,
)
from .embedding.crops import CropSettings
from .embedding.sampling import FrameSampling
from .frame_search import frames_view, perform_frame_search, search_frames
from .embedding.model import available_models, check_model
from .scheduler import start_refresher, stop_refresher
from .search import perform_ai_search
from .sync.images import SyncReport
from .index.targets import object_label_fields

from .brain_registry import declare_when_imported

# fob.compute_similarity(..., backend="ai_search") works after this import
declare_when_imported()

__version__ = "0.1.0"

__all__ = [
    "AISearchError",
    "AISearchNotEnabledError",
    "BrainKeyTakenError",
    "CollectionNotFoundError",
    "CropError",
    "CropSettings",
    "DiskFullError",
    "ExistingEmbeddingsError",
    "FrameSampling",
    "ImageDecodeError",
    "IndexBusyError",
    "IndexDamagedError",
    "IndexExistsError",
    "IndexMismatchError",
    "IndexNotFoundError",
    "IndexNotReadyError",
    "ModelUnavailableError",
    "ObjectFieldError",
    "QdrantUnreachableError",
    "StateDamagedError",
    "SyncCancelled",
    "SyncReport",
    "TEMPORARY_COLLECTION",
    "UnsupportedMediaError",
    "UnsupportedPlatformError",
    "VideoDecodeError",
    "delete_collection",
    "get_collection",
    "get_collection_scores",
    "get_frame_collection",
    "get_frame_hits",
    "get_score_histogram",
    "is_frame_collection",
    "is_latest_results",
    "list_collections",
    "perform_ai_search",
    "rename_collection",
    "save_collection",
    "available_models",
    "compute_uniqueness",
    "find_near_duplicates",
    "frames_view",
    "perform_frame_search",
    "near_duplicate_groups",
    "tag_near_duplicates",
    "search_frames",
    "calculate_embeddings",
    "check_model",
    "disable_embeddings",
    "enable_embeddings",
    "get_embeddings",
    "get_embeddings_in_progress",
    "get_embeddings_updated_at",
    "get_settings",
    "get_status",
    "is_embeddings_enabled",
    "maintain_index",
    "object_label_fields",
    "start_refresher",
    "stop_refresher",
]
