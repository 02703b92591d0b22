"""Embedding: the CLIP model (:mod:`.model`), decoding image files
(:mod:`.images`) and cropping boxes (:mod:`.crops`), open_clip's transform as
a torch-free recipe (:mod:`.preprocess`), the batch decoder (:mod:`.decode`),
its worker processes (:mod:`.pool`) and the pipeline that runs them beside
the model (:mod:`.pipeline`).

Kept free of imports: a decoding worker imports
:mod:`fiftyone_ai_search.embedding.pool` with the package stubbed, and runs
this file.
"""
