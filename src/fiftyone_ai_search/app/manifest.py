"""The plugin manifest (``fiftyone.yml``) and its requirement, as data.

The repository's plugin directory ``plugins/ai-search/`` (what
``fiftyone plugins download`` copies) and the one ``install-plugin`` writes
(for pip installs) both hold this manifest and :data:`REQUIREMENT`; a test
keeps them equal.
"""

import fiftyone_ai_search

PLUGIN_NAME = "@fiftyone-ai-search/ai-search"

URL = "https://github.com/fiftyone-ai-search/fiftyone-ai-search"

# the plugin directory's requirements.txt, for
# ``fiftyone plugins requirements @fiftyone-ai-search/ai-search --install``
REQUIREMENT = f"fiftyone-ai-search @ git+{URL}"

OPERATOR_NAMES = (
    "enable_ai_search",
    "disable_ai_search",
    "compute_embeddings",
    "ai_search_status",
    "ai_search",
    "search_similar",
    "find_near_duplicates",
    "filter_by_score",
    "save_collection",
    "rename_collection",
    "delete_collection",
)

PANEL_NAMES = ("ai_search_panel",)

SECRETS = (
    "FIFTYONE_AI_SEARCH_QDRANT_URL",
    "FIFTYONE_AI_SEARCH_QDRANT_API_KEY",
)


def manifest(py_entry="__init__.py"):
    """The manifest as a dict; ``py_entry`` is relative to the plugin dir."""
    return {
        "name": PLUGIN_NAME,
        "type": "plugin",
        "version": fiftyone_ai_search.__version__,
        "description": (
            "AI Search: CLIP embeddings in a self-syncing Qdrant index; "
            "prompt, image and diverse search of images and objects; "
            "collections"
        ),
        "url": URL,
        "license": "Apache-2.0",
        "fiftyone": {"version": ">=1.5"},
        "py_entry": py_entry,
        "secrets": list(SECRETS),
        "operators": list(OPERATOR_NAMES),
        "panels": list(PANEL_NAMES),
    }
