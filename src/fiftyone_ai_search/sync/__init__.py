"""Keeping an index in step with its dataset: what changed and committing
it batch by batch (:mod:`.images`), the same for the objects of a label
field (:mod:`.objects`), embeddings a dataset already has
(:mod:`.existing`), and running a sync here or in a background worker
under the target's lease (:mod:`.runner`).
"""
