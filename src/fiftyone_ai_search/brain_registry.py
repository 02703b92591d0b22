"""Declares the ``"ai_search"`` similarity backend to FiftyOne Brain.

Importing :mod:`fiftyone_ai_search` declares it in the process, without
importing FiftyOne (which reads its configuration when first imported):
at once when ``fiftyone.brain`` is already imported, else the moment it
is. So ``fob.compute_similarity(..., backend="ai_search")`` works after
``import fiftyone_ai_search``, whatever the order of the imports.

| Copyright the fiftyone-ai-search authors, Apache-2.0.
"""

import importlib.abc
import importlib.util
import sys

#: the name of the backend in ``fiftyone.brain.brain_config``
BACKEND_NAME = "ai_search"

#: the backend's config class, by its dotted path (as the Brain records it)
CONFIG_CLS = "fiftyone_ai_search.brain.AISearchSimilarityConfig"

_BRAIN = "fiftyone.brain"


def declare(brain_module) -> None:
    """Adds the backend to ``brain_module.brain_config`` (kept if the
    Brain's config already declares it, e.g. with parameters)."""
    brain_module.brain_config.similarity_backends.setdefault(
        BACKEND_NAME, {"config_cls": CONFIG_CLS})


class _DeclareOnImport(importlib.abc.MetaPathFinder):
    """Finds ``fiftyone.brain`` once, to declare the backend right after
    the module has run."""

    def find_spec(self, name, path=None, target=None):
        if name != _BRAIN:
            return None
        sys.meta_path.remove(self)  # once; and not for the lookup below
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None:
            return spec
        run = spec.loader.exec_module

        def run_and_declare(module):
            run(module)
            declare(module)

        spec.loader.exec_module = run_and_declare
        return spec


def declare_when_imported() -> None:
    """Declares the backend now, or when ``fiftyone.brain`` is imported."""
    if _BRAIN in sys.modules:
        declare(sys.modules[_BRAIN])
    elif not any(isinstance(f, _DeclareOnImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _DeclareOnImport())
