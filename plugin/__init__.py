"""Entry point of the AI search plugin (@fiftyone-ai-search/ai-search).

It holds no logic: the operators and panel live in the ``fiftyone-ai-search``
package, which must be installed where FiftyOne runs.
"""

import os

try:
    from fiftyone_ai_search.app import register  # noqa: F401
except ModuleNotFoundError as e:
    if (e.name or "").partition(".")[0] != "fiftyone_ai_search":
        raise  # the package is installed; something it needs is not
    # the package is not on PyPI; a plugin directory that ``fiftyone plugins
    # download`` made holds its source (pyproject.toml, src/)
    _root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if os.path.isfile(os.path.join(_root, "pyproject.toml")):
        _install = "pip install '" + _root + "'"
    else:
        _install = ("pip install /path/to/fiftyone-ai-search  (a clone of "
                    "https://github.com/fiftyone-ai-search/fiftyone-ai-search)")
    raise ImportError(
        "The AI search plugin needs the fiftyone-ai-search package "
        "(0.1.0), which is not installed in this Python environment (it "
        "is not on PyPI). Install it from its source with\n"
        "    " + _install + "\n"
        "and check with\n"
        "    fiftyone plugins requirements @fiftyone-ai-search/ai-search --ensure"
    ) from e
