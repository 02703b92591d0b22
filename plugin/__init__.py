"""Entry point of the plugin when this repository sits under FiftyOne's
plugins directory (``fiftyone plugins download``). It holds no logic: the
operators live in the ``fiftyone_ai_search`` package.
"""

try:
    from fiftyone_ai_search.app import register  # noqa: F401
except ImportError:  # repository checkout whose package is not pip-installed
    import os
    import sys

    sys.path.insert(
        0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "src")
    )
    from fiftyone_ai_search.app import register  # noqa: F401
