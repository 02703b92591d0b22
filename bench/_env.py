"""Benchmarks run on an isolated, offline FiftyOne: see
:func:`fiftyone_ai_search.testing.isolated_fiftyone`. Call :func:`setup`
before importing ``fiftyone``."""

from fiftyone_ai_search.testing import isolated_fiftyone as setup  # noqa: F401
