"""The plugin manifest (``fiftyone.yml``) and its requirement, as data.

The repository's root is the plugin directory: ``fiftyone.yml``,
``requirements.txt`` and the entry point ``plugin/__init__.py`` (what
``fiftyone plugins download`` finds first, and copies along with what the
repository's archives hold). ``install-plugin`` writes the same three files
for pip installs; a test keeps them equal.
"""

import fiftyone_ai_search

PLUGIN_NAME = "@fiftyone-ai-search/ai-search"

URL = "https://github.com/fiftyone-ai-search/fiftyone-ai-search"

# the entry point, relative to the plugin directory: the plugin's code lives
# in plugin/ so that the repository's root can be the plugin directory
PY_ENTRY = "plugin/__init__.py"

# the plugin directory's requirements.txt, for
# ``fiftyone plugins requirements @fiftyone-ai-search/ai-search --ensure``:
# the package at this very version (the manifest lists its operators), no
# extras (``mongod`` is for a FiftyOne without a working database, which a
# FiftyOne that loads plugins has). The package is not on PyPI: README, "The
# FiftyOne App", says how to install it from this repository.
REQUIREMENT = f"fiftyone-ai-search=={fiftyone_ai_search.__version__}"

OPERATOR_NAMES = (
    "enable_ai_search",
    "disable_ai_search",
    "compute_embeddings",
    "ai_search_status",
    "start_refresher",
    "ai_search",
    "search_similar",
    "find_near_duplicates",
    "tag_near_duplicates",
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


def manifest(py_entry=PY_ENTRY):
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
