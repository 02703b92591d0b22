"""Benchmarks run on an isolated, offline FiftyOne: see
:func:`fiftyone_ai_search.testing.isolated_fiftyone`. Call :func:`setup`
before importing ``fiftyone``."""

from fiftyone_ai_search.testing import isolated_fiftyone as setup  # noqa: F401


def add_model_args(parser):
    """The options every benchmark comparing with the Brain shares:
    ``--threads`` (both sides alike) and ``--cache-dir`` (the random
    ViT-B-32 weights)."""
    import os
    import tempfile

    parser.add_argument(
        "--threads", type=int, default=1,
        help="threads for torch, BLAS and OpenMP, both sides alike "
             "(0: the libraries' defaults); see bench_search.py")
    parser.add_argument(
        "--cache-dir",
        default=os.path.join(tempfile.gettempdir(), "ais-bench-search"),
        help="where the random ViT-B-32 weights are kept")
