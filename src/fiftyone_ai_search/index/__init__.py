"""What an index is of and where it stands: targets (a dataset's images, or
the objects of one of its label fields: :mod:`.targets`), which samples of a
dataset it holds (:mod:`.media`), its state in MongoDB (:mod:`.state`), and
opening, requiring and dropping its indexes (:mod:`.indexes`).
"""
