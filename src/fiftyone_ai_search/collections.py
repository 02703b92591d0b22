"""Transitional: the module is now :mod:`fiftyone_ai_search.results`.

This name shadowed the standard library's ``collections`` and read as
FiftyOne's ``fiftyone.core.collections``. It stays only until the last
importers (``runner.maintain_index``) import ``results``; it then goes. It is
the same module object, so a monkeypatch through either name is seen by both.
"""

import sys

from . import results

sys.modules[__name__] = results
