"""Answering a search: its scope (:mod:`.scope`), its query vectors
(:mod:`.vectors`), the top-k within the scope (:mod:`.topk`), and diverse
sampling (:mod:`.diverse`) of the vectors of an index (:mod:`.walk`).
"""
