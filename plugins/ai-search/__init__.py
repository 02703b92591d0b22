"""Entry point of the AI search plugin (@fiftyone-ai-search/ai-search).

It holds no logic: the operators and panel live in the ``fiftyone-ai-search``
package, which must be installed where FiftyOne runs.
"""

try:
    from fiftyone_ai_search.app import register  # noqa: F401
except ModuleNotFoundError as e:
    if (e.name or "").partition(".")[0] != "fiftyone_ai_search":
        raise  # the package is installed; something it needs is not
    raise ImportError(
        "The AI search plugin needs the fiftyone-ai-search package, which "
        "is not installed in this Python environment. Install it with\n"
        "    fiftyone plugins requirements @fiftyone-ai-search/ai-search --install\n"
        "or\n"
        "    pip install 'fiftyone-ai-search @ git+https://github.com/fiftyone-ai-search/fiftyone-ai-search'"
    ) from e
